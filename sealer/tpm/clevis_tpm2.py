"""Unsealing the JWK that clevis' tpm2 pin sealed (clevis v19, src/pins/tpm2/).

clevis persists no key in the TPM. Both clevis-encrypt-tpm2 and clevis-decrypt-tpm2 re-create
a primary key under the owner hierarchy with ``tpm2_createprimary -C o -g HASH -G KEY``, so
the key is whatever tpm2-tools' *default template* for KEY derives from the owner seed;
``primary_template`` rebuilds that template byte for byte (tpm2-tools 5.4,
tools/tpm2_createprimary.c DEFAULT_ATTRS and lib/tpm2_alg_util.c handle_ecc/handle_rsa/
handle_asym_detail). The sealed keyedhash object (``jwk_pub``/``jwk_priv``) is loaded under it
and unsealed with PolicyPCR, as ``tpm2_unseal -p pcr:BANK:IDS`` does.

One deliberate difference: clevis' tpm2_unseal runs an unsalted policy session without
parameter encryption, so the JWK crosses the TPM bus in clear. Here the policy session is
salted with the primary key and encrypts the response, so an interposer sees ciphertext only.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_ECC,
    TPM2_RC,
    TPM2_SE,
    TPMA_SESSION,
)
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from sealer.errors import PolicyMismatchError, TokenError, TPMMismatchError
from sealer.pcrs import BANKS, Bank
from sealer.tpm.connection import connect
from sealer.tpm.pcr import active_banks, selection
from sealer.tpm.primary import create_owner_primary
from sealer.tpm.templates import storage_primary


@dataclass(frozen=True)
class PrimaryKey:
    """What one tpm2-tools ``-G`` value means for a primary key."""

    alg: int  # TPM2_ALG.ECC or TPM2_ALG.RSA
    curve: int = 0  # TPM2_ECC_CURVE, for ECC
    bits: int = 0  # key size, for RSA


# The ``-G`` values clevis may have passed that sealer can re-create (clevis stores its "key"
# setting verbatim). tpm2-tools reads "ecc" as NIST P-256 and "rsa" as RSA 2048.
PRIMARY_KEYS: dict[str, PrimaryKey] = {
    "ecc": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P256),
    "ecc256": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P256),
    "ecc384": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P384),
    "ecc521": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P521),
    "ecc_nist_p256": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P256),
    "ecc_nist_p384": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P384),
    "ecc_nist_p521": PrimaryKey(TPM2_ALG.ECC, curve=TPM2_ECC.NIST_P521),
    "rsa": PrimaryKey(TPM2_ALG.RSA, bits=2048),
    "rsa2048": PrimaryKey(TPM2_ALG.RSA, bits=2048),
    "rsa3072": PrimaryKey(TPM2_ALG.RSA, bits=3072),
    "rsa4096": PrimaryKey(TPM2_ALG.RSA, bits=4096),
}

_AES128_CFB = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(aes=128),
    mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
)


def primary_template(name_alg: int, key: str) -> TPM2B_PUBLIC:
    """tpm2-tools' template for ``tpm2_createprimary -g <name_alg> -G <key>`` (no -a, -u, -L):
    tpm2-tools zeroes the public area first, so authPolicy and unique are empty."""
    spec = PRIMARY_KEYS[key]
    return storage_primary(name_alg, spec.alg, curve=spec.curve, rsa_bits=spec.bits)


def _corrupted(where: str, what: str) -> TokenError:
    return TokenError(
        f"{where} is corrupted ({what})",
        "unlock with the passphrase, then 'clevis luks unbind' this binding and bind again",
    )


def _sealed_object(where: str, public: bytes, private: bytes) -> tuple[TPM2B_PUBLIC, TPM2B_PRIVATE]:
    """The TPM2B blobs clevis stored, unmarshalled; malformed ones end in a TokenError."""
    try:
        pub, used_pub = TPM2B_PUBLIC.unmarshal(public)
        priv, used_priv = TPM2B_PRIVATE.unmarshal(private)
    except TSS2_Exception as exc:
        raise _corrupted(where, f"jwk_pub or jwk_priv is not a TPM2B blob: {exc}") from exc
    if used_pub != len(public) or used_priv != len(private):
        raise _corrupted(where, "jwk_pub or jwk_priv has trailing bytes")
    if int(pub.publicArea.type) != TPM2_ALG.KEYEDHASH:
        raise _corrupted(where, "jwk_pub is not a sealed data object")
    return pub, priv


def _session_bank(where: str, pub: TPM2B_PUBLIC) -> Bank:
    """The hash the policy session must use: the sealed object's name algorithm.

    clevis passes its "hash" setting to tpm2_createpolicy and tpm2_create alike, so the
    object's authPolicy was computed with its own name algorithm.
    """
    name_alg = int(pub.publicArea.nameAlg)
    for bank in BANKS.values():
        if bank.alg_id == name_alg:
            return bank
    raise _corrupted(where, f"the sealed object's name algorithm 0x{name_alg:04x} is unknown")


def _create_primary(ctx: ESAPI, name_alg: int, key: str) -> ESYS_TR:
    return create_owner_primary(
        ctx,
        primary_template(name_alg, key),
        "re-create clevis' primary key",
        "clevis cannot unseal here either; unlock with the passphrase",
    )


def _load(
    ctx: ESAPI, where: str, primary: ESYS_TR, pub: TPM2B_PUBLIC, priv: TPM2B_PRIVATE
) -> ESYS_TR:
    try:
        handle: ESYS_TR = ctx.load(primary, priv, pub)
    except TSS2_Exception as exc:
        if exc.error == TPM2_RC.INTEGRITY:
            # jwk_priv is protected by a key derived from the owner seed: another TPM, a
            # cleared TPM or an altered blob all fail its integrity check alike.
            raise TPMMismatchError(
                f"this TPM cannot load the key sealed in {where}: the volume was bound on "
                "another TPM, this TPM was cleared since, or the token was altered",
                "unlock with the passphrase, then bind again on this machine",
            ) from exc
        if exc.fmt1:  # a parameter the TPM found malformed: the blobs, not the TPM
            raise _corrupted(where, f"the TPM refused its sealed object: {exc}") from exc
        raise
    return handle


def _policy_refused(ctx: ESAPI, bank: Bank, pcrs: Sequence[int]) -> PolicyMismatchError:
    hint = (
        "the boot chain changed since 'clevis luks bind': unlock with the passphrase, then "
        "'clevis luks regen' (or 'sealer migrate') binds the current state"
    )
    if bank not in active_banks(ctx):  # asked only on failure: no command on the happy path
        return PolicyMismatchError(
            f"this TPM has no active {bank.name} PCR bank, the bank clevis bound to",
            "enable the bank in the firmware setup, or unlock with the passphrase",
        )
    if len(pcrs) == 1:
        return PolicyMismatchError(
            f"PCR {pcrs[0]} differs from the value clevis bound ({bank.name} bank)", hint
        )
    # clevis records only the policy digest, not the values: which PCR moved is unknowable.
    listed = ", ".join(map(str, pcrs))
    return PolicyMismatchError(
        f"PCRs {listed}: at least one differs from the values clevis bound ({bank.name} "
        "bank; clevis keeps only their digest, so which one cannot be told)",
        hint,
    )


def unseal_jwk(
    tcti: str | None,
    *,
    where: str,
    hash_name: str,
    key: str,
    public: bytes,
    private: bytes,
    pcr_bank: str,
    pcrs: Sequence[int],
) -> bytes:
    """The sealed data (clevis' JWK, as JSON text) of a clevis tpm2 binding.

    ``where`` names the token in messages; ``hash_name`` and ``key`` are clevis' "hash" and
    "key" settings; ``public``/``private`` the marshalled TPM2B blobs; ``pcrs`` empty when
    clevis bound without a PCR policy (then the object takes an empty password instead).
    Eight TPM commands: CreatePrimary, Load, StartAuthSession, PolicyPCR, Unseal and three
    FlushContext. Everything loaded or started is flushed, also on failure (swtpm and
    /dev/tpm0 have no resource manager to do it).
    """
    pub, priv = _sealed_object(where, public, private)
    session_bank = _session_bank(where, pub)
    name_alg = BANKS[hash_name].alg_id
    bank = BANKS[pcr_bank] if pcrs else None
    with connect(tcti) as ctx, ExitStack() as flush:
        primary = _create_primary(ctx, name_alg, key)
        flush.callback(ctx.flush_context, primary)
        sealed = _load(ctx, where, primary, pub, priv)
        flush.callback(ctx.flush_context, sealed)
        # Salted with the primary: the salt travels encrypted to its public key, so only this
        # TPM and we know the session key, and with it the key of the response encryption.
        session = ctx.start_auth_session(
            tpm_key=primary,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY if bank is not None else TPM2_SE.HMAC,
            symmetric=_AES128_CFB,
            auth_hash=session_bank.alg_id,
        )
        flush.callback(ctx.flush_context, session)
        ctx.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
        if bank is not None:
            # An empty pcrDigest: the TPM hashes its current values itself (tpm2_unseal
            # reads them first and sends their digest: one PCR_Read more, same policy).
            ctx.policy_pcr(session, b"", selection(bank, sorted(pcrs)))
        try:
            return bytes(ctx.unseal(sealed, session1=session))
        except TSS2_Exception as exc:
            if bank is not None and exc.error == TPM2_RC.POLICY_FAIL:
                raise _policy_refused(ctx, bank, sorted(pcrs)) from exc
            raise
