"""Policy keys as the TPM sees them: their name, and loading them to verify approvals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_SIGNATURE_ECC, TPMT_SIGNATURE, TPMU_SIGNATURE

from sealer.policy import keyname


def _public(pem: str) -> TPM2B_PUBLIC:
    # One fixed template (sealer.policy.keyname): the name and the object loaded for
    # VerifySignature must agree.
    public, _ = TPM2B_PUBLIC.unmarshal(keyname.policy_key_public(pem))
    return public


def policy_key_name(pem: str) -> bytes:
    """The TPM name of a policy public key (nameAlg || H(TPMT_PUBLIC)); no TPM needed."""
    return keyname.policy_key_name(pem)


@contextmanager
def loaded_policy_key(ctx: ESAPI, pem: str) -> Iterator[ESYS_TR]:
    """The public policy key ``pem``, loaded into the TPM for the ``with`` block, then flushed."""
    # Loaded into the owner hierarchy: a key in the NULL hierarchy yields only NULL tickets,
    # which PolicyAuthorize refuses.
    handle = ctx.load_external(_public(pem), None, ESYS_TR.OWNER)
    try:
        yield handle
    finally:
        ctx.flush_context(handle)


def ecdsa_signature(rs: tuple[int, int]) -> TPMT_SIGNATURE:
    """An ECDSA P-256/SHA-256 signature ``(r, s)`` in the TPM's form, for it to verify."""
    r, s = rs
    return TPMT_SIGNATURE(
        sigAlg=TPM2_ALG.ECDSA,
        signature=TPMU_SIGNATURE(
            ecdsa=TPMS_SIGNATURE_ECC(
                hash=TPM2_ALG.SHA256,
                signatureR=r.to_bytes(32, "big"),
                signatureS=s.to_bytes(32, "big"),
            )
        ),
    )
