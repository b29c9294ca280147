"""Sealing and unsealing the disk secret under an authorized policy.

Both directions use a session salted with the SRK and AES-128-CFB parameter encryption: the
secret is encrypted on the wire when it goes into the TPM (Create's inSensitive) and when it
comes back out (Unseal's outData), so an interposer on the TPM bus sees only ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC, TPM2_SE, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST,
    TPMS_KEYEDHASH_PARMS,
    TPMS_SENSITIVE_CREATE,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from sealer.errors import PolicyMismatchError
from sealer.pcrs import Bank, PcrValues
from sealer.policy.digest import pcr_composite
from sealer.tpm.nv import apply_release_check, unsalted_session
from sealer.tpm.pcr import selection
from sealer.tpm.policykey import ecdsa_signature, loaded_policy_key, policy_key_name
from sealer.tpm.retirement import apply_epoch_check
from sealer.tpm.srk import Srk

_AES128_CFB = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(aes=128),
    mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
)


@dataclass(frozen=True)
class SealedBlob:
    """The sealed object as the TPM returns it, kept in the token to be loaded at unseal."""

    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes  # marshalled TPM2B_PRIVATE (encrypted by the TPM under the SRK)


@dataclass(frozen=True)
class AuthorizedPolicy:
    """What it takes to satisfy the sealed object's policy once, in one boot state."""

    bank: Bank
    branches: Sequence[PcrValues]  # every boot state of the approval
    branch_digests: Sequence[bytes]  # PolicyPCR digest of each branch, same order
    branch_index: int  # the branch the current PCRs are expected to match
    pcr_digest: bytes  # PolicyPCR's pcrDigest for that branch; b"": the TPM's current values
    approved_policy: bytes
    approval_digest: bytes  # aHash = H(approved_policy || policy_ref)
    policy_ref: bytes
    key_pem: str  # the public key that signed the approval
    signature_rs: tuple[int, int]
    authorized_digests: Sequence[bytes]  # PolicyAuthorize digest per trusted key (OR'ed if >1)
    with_pin: bool
    # The approval's release check: (revocation field's NV index, PolicyNV operand), or None.
    release_check: tuple[int, bytes] | None = None
    # The approval's epoch check: (retirement counter's NV index, PolicyNV operand), or None.
    epoch_check: tuple[int, bytes] | None = None
    # What the object itself requires after PolicyAuthorize: the capping PCR at its reset
    # value (sealer.policy.binding); None for objects sealed before it did.
    cap_check: PcrValues | None = None


@contextmanager
def _salted_session(ctx: ESAPI, srk: Srk, kind: TPM2_SE, attributes: int) -> Iterator[ESYS_TR]:
    session = ctx.start_auth_session(
        tpm_key=srk.handle,
        bind=ESYS_TR.NONE,
        session_type=kind,
        symmetric=_AES128_CFB,
        auth_hash=TPM2_ALG.SHA256,
    )
    try:
        ctx.trsess_set_attributes(session, attributes | TPMA_SESSION.CONTINUESESSION)
        yield session
    finally:
        ctx.flush_context(session)


def seal(ctx: ESAPI, srk: Srk, secret: bytes, auth_policy: bytes, auth_value: bytes) -> SealedBlob:
    """Create a keyedhash object holding ``secret`` under the SRK, usable only by policy."""
    attributes = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if not auth_value:
        # Without a PIN there is nothing to guess, so wrong attempts must not count toward
        # the TPM's lockout; with a PIN, guessing it must.
        attributes |= TPMA_OBJECT.NODA
    template = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=attributes,
        authPolicy=auth_policy,
        parameters=TPMU_PUBLIC_PARMS(
            keyedHashDetail=TPMS_KEYEDHASH_PARMS(
                scheme=TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.NULL)
            )
        ),
    )
    sensitive = TPM2B_SENSITIVE_CREATE(
        sensitive=TPMS_SENSITIVE_CREATE(userAuth=auth_value, data=secret)
    )
    with _salted_session(ctx, srk, TPM2_SE.HMAC, TPMA_SESSION.DECRYPT) as session:
        private, public, _, _, _ = ctx.create(
            srk.handle, sensitive, TPM2B_PUBLIC(publicArea=template), session1=session
        )
    return SealedBlob(public=public.marshal(), private=private.marshal())


def _apply_pcr_branches(ctx: ESAPI, session: ESYS_TR, policy: AuthorizedPolicy) -> None:
    """PolicyPCR for the expected boot state, then PolicyOR over all approved states."""
    branch = policy.branches[policy.branch_index]
    ctx.policy_pcr(session, policy.pcr_digest, selection(policy.bank, sorted(branch)))
    if len(policy.branch_digests) > 1:
        ctx.policy_or(session, TPML_DIGEST(list(policy.branch_digests)))


def _apply_release_check(ctx: ESAPI, session: ESYS_TR, policy: AuthorizedPolicy) -> None:
    """The approval's NV checks, in the order its approved policy has them."""
    if policy.release_check is not None:
        apply_release_check(ctx, session, *policy.release_check)
    if policy.epoch_check is not None:
        apply_epoch_check(ctx, session, *policy.epoch_check)


def _apply_policy(ctx: ESAPI, session: ESYS_TR, policy: AuthorizedPolicy, ticket: object) -> None:
    _apply_pcr_branches(ctx, session, policy)
    _apply_release_check(ctx, session, policy)
    key_name = policy_key_name(policy.key_pem)
    try:
        ctx.policy_authorize(session, policy.approved_policy, key_name, ticket, policy.policy_ref)
    except TSS2_Exception as exc:
        if exc.error != TPM2_RC.VALUE:  # the session's digest is not the approved policy
            raise
        raise PolicyMismatchError(
            "the TPM refused the approval: an NV index it checks (the revocation field or "
            "the retirement counter) is not the one it was signed for (replaced or redefined)",
            "unlock with the passphrase or recovery key, then enroll again",
        ) from exc
    if len(policy.authorized_digests) > 1:
        ctx.policy_or(session, TPML_DIGEST(list(policy.authorized_digests)))
    if policy.cap_check is not None:
        cap = policy.cap_check
        ctx.policy_pcr(session, pcr_composite(cap), selection(policy.bank, sorted(cap)))
    if policy.with_pin:
        ctx.policy_auth_value(session)


def unseal(
    ctx: ESAPI, srk: Srk, blob: SealedBlob, policy: AuthorizedPolicy, auth_value: bytes
) -> bytes:
    """Load the sealed object, satisfy its policy in a salted session, and unseal it."""
    public, _ = TPM2B_PUBLIC.unmarshal(blob.public)
    private, _ = TPM2B_PRIVATE.unmarshal(blob.private)
    with loaded_policy_key(ctx, policy.key_pem) as key:
        signature = ecdsa_signature(policy.signature_rs)
        ticket = ctx.verify_signature(key, policy.approval_digest, signature)
    sealed = ctx.load(srk.handle, private, public)
    try:
        with _salted_session(ctx, srk, TPM2_SE.POLICY, TPMA_SESSION.ENCRYPT) as session:
            _apply_policy(ctx, session, policy, ticket)
            if auth_value:
                ctx.tr_set_auth(sealed, auth_value)
            return bytes(ctx.unseal(sealed, session1=session))
    finally:
        ctx.flush_context(sealed)


def trial_policy_digest(ctx: ESAPI, policy: AuthorizedPolicy) -> bytes:
    """The policy digest the TPM computes for ``policy`` (no signature check, no unseal).

    Used to prove that sealer's software digests equal the TPM's own; with an empty
    ``pcr_digest`` the TPM hashes its current PCR values itself.
    """
    with unsalted_session(ctx, TPM2_SE.TRIAL) as session:
        _apply_pcr_branches(ctx, session, policy)
        _apply_release_check(ctx, session, policy)
        return bytes(ctx.policy_get_digest(session))
