"""Unsealing a secret that systemd-cryptenroll 252 sealed (a ``systemd-tpm2`` LUKS2 token).

systemd 252 keeps no key in the TPM: at enrollment and at every unlock it derives the same
transient primary key from the owner hierarchy's seed with a fixed template
(src/shared/tpm2-util.c, tpm2_make_primary), and seals a keyedhash object under it whose
authPolicy is PolicyPCR over the chosen PCRs (plus PolicyAuthValue with a PIN). So the
template below must match systemd's byte for byte: any difference (even the TCG SRK
template's NODA bit or its 32-byte zero ``unique``) derives another key, and the TPM refuses
to load the sealed object under it.

systemd itself unseals through two sessions (a salted HMAC session for encryption and a
salted policy session); one salted policy session with response encryption does the same
job in fewer commands: the secret leaves the TPM encrypted with a key only the TPM and this
process know (the salt travels encrypted to the primary key).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
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

from sealer.errors import PolicyMismatchError, TokenError, TPMError
from sealer.pcrs import Bank
from sealer.tpm.pcr import selection
from sealer.tpm.primary import create_owner_primary
from sealer.tpm.templates import storage_primary

PRIMARY_ALGS = ("ecc", "rsa")

def primary_template(alg: str) -> TPM2B_PUBLIC:
    """systemd 252's primary key template for ``alg`` ("ecc": NIST P-256, "rsa": RSA 2048)."""
    if alg == "ecc":
        return storage_primary(TPM2_ALG.SHA256, TPM2_ALG.ECC)
    if alg == "rsa":
        return storage_primary(TPM2_ALG.SHA256, TPM2_ALG.RSA)
    raise ValueError(f"systemd 252 knows no primary key algorithm {alg!r}")


def pin_auth_value(pin: bytes) -> bytes:
    """The sealed object's authValue for ``pin``: systemd 252 uses SHA-256 of the PIN's
    bytes, unsalted (tpm2-util.c, hash_pin; the salted form came with systemd 253)."""
    return hashlib.sha256(pin).digest()


@dataclass(frozen=True)
class SystemdSealedObject:
    """What the TPM needs of a systemd-tpm2 token."""

    primary_alg: str  # "ecc" or "rsa"
    private: bytes  # marshalled TPM2B_PRIVATE
    public: bytes  # marshalled TPM2B_PUBLIC
    bank: Bank
    pcrs: tuple[int, ...]  # empty: systemd enrolled without PCRs (policy of PIN only, or none)
    with_pin: bool


def _unmarshal(obj: SystemdSealedObject) -> tuple[TPM2B_PRIVATE, TPM2B_PUBLIC]:
    """The blob halves as TSS structures; hostile bytes end in a TokenError, not a TSS one."""
    try:
        private, used_private = TPM2B_PRIVATE.unmarshal(obj.private)
        public, used_public = TPM2B_PUBLIC.unmarshal(obj.public)
    except (TSS2_Exception, ValueError, TypeError) as exc:
        raise TokenError(
            f"the sealed object in the systemd-tpm2 token is malformed ({exc})",
            "unlock with the passphrase or recovery key, then enroll again",
        ) from exc
    if used_private != len(obj.private) or used_public != len(obj.public):
        raise TokenError(
            "the sealed object in the systemd-tpm2 token has trailing bytes",
            "unlock with the passphrase or recovery key, then enroll again",
        )
    return private, public


def _create_primary(ctx: ESAPI, alg: str) -> ESYS_TR:
    try:
        # systemd 252 uses an empty owner password too, so it fails the same way here.
        return create_owner_primary(
            ctx,
            primary_template(alg),
            "recreate systemd's primary key",
            "unlock with the passphrase or recovery key",
        )
    except TSS2_Exception as exc:
        if alg == "ecc" and exc.error in (TPM2_RC.CURVE, TPM2_RC.ASYMMETRIC, TPM2_RC.VALUE):
            raise TPMError(
                "this TPM cannot create an ECC P-256 key, but the volume was enrolled with one: "
                "it was enrolled with another TPM",
                "unlock with the passphrase or recovery key",
            ) from exc
        raise


@contextmanager
def _salted_policy_session(ctx: ESAPI, primary: ESYS_TR) -> Iterator[ESYS_TR]:
    """A policy session salted with ``primary`` that encrypts the command's response."""
    session = ctx.start_auth_session(
        tpm_key=primary,
        bind=ESYS_TR.NONE,
        session_type=TPM2_SE.POLICY,
        symmetric=TPMT_SYM_DEF(
            algorithm=TPM2_ALG.AES,
            keyBits=TPMU_SYM_KEY_BITS(aes=128),
            mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
        ),
        auth_hash=TPM2_ALG.SHA256,
    )
    try:
        ctx.trsess_set_attributes(session, TPMA_SESSION.ENCRYPT | TPMA_SESSION.CONTINUESESSION)
        yield session
    finally:
        ctx.flush_context(session)


def _pcr_list(obj: SystemdSealedObject) -> str:
    return "+".join(str(p) for p in obj.pcrs)


def unseal(ctx: ESAPI, obj: SystemdSealedObject, pin: bytes | None) -> bytes:
    """Recreate systemd's primary key, load the sealed object under it, satisfy its policy
    in a salted session with response encryption, and return the unsealed secret.

    Every handle is flushed before returning: swtpm and a bare /dev/tpm0 have no resource
    manager to do it for us.
    """
    if obj.with_pin and pin is None:
        raise ValueError("the sealed object needs a PIN")
    private, public = _unmarshal(obj)
    primary = _create_primary(ctx, obj.primary_alg)
    try:
        sealed = ctx.load(primary, private, public)
        try:
            with _salted_policy_session(ctx, primary) as session:
                # Same policy, same order as systemd 252's tpm2_make_policy_session: PolicyPCR
                # on the TPM's current values (empty pcrDigest), then PolicyAuthValue.
                if obj.pcrs:
                    ctx.policy_pcr(session, b"", selection(obj.bank, obj.pcrs))
                if obj.with_pin and pin is not None:
                    ctx.policy_auth_value(session)
                    ctx.tr_set_auth(sealed, pin_auth_value(pin))
                try:
                    return bytes(ctx.unseal(sealed, session1=session))
                except TSS2_Exception as exc:
                    if exc.error == TPM2_RC.POLICY_FAIL:
                        raise PolicyMismatchError(
                            f"the TPM refused to release the key: {obj.bank.name} PCRs "
                            f"{_pcr_list(obj)} differ from the values systemd-cryptenroll bound",
                            "unlock with the passphrase or recovery key",
                        ) from exc
                    if exc.error == TPM2_RC.PCR_CHANGED:
                        raise PolicyMismatchError(
                            "a PCR changed while the TPM was checking the policy",
                            "try again",
                        ) from exc
                    raise
        finally:
            ctx.flush_context(sealed)
    finally:
        ctx.flush_context(primary)
