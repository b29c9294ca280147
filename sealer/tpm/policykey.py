"""Policy keys as the TPM sees them: their name, and loading them to verify approvals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC, TPMS_SIGNATURE_ECC, TPMT_SIGNATURE, TPMU_SIGNATURE

# Bytes of a coordinate on each curve the TPM knows.
_COORDINATE_SIZE = {
    TPM2_ECC.NIST_P192: 24, TPM2_ECC.NIST_P224: 28, TPM2_ECC.NIST_P256: 32,
    TPM2_ECC.NIST_P384: 48, TPM2_ECC.NIST_P521: 66,
}


def _public(pem: str) -> TPM2B_PUBLIC:
    # One fixed template: the name below and the object loaded for VerifySignature must agree.
    public = TPM2B_PUBLIC.from_pem(
        pem.encode("ascii"),
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH,
    )
    area = public.publicArea
    if area.type == TPM2_ALG.ECC:
        # from_pem drops a coordinate's leading zero bytes (1 key in 128 has one); the TPM
        # refuses a point whose coordinates are shorter than the curve's size (TPM_RC_KEY,
        # 0x2dc) and hashes the padded form into the name.
        size = _COORDINATE_SIZE[area.parameters.eccDetail.curveID]
        area.unique.ecc.x = bytes(area.unique.ecc.x).rjust(size, b"\0")
        area.unique.ecc.y = bytes(area.unique.ecc.y).rjust(size, b"\0")
    return public


def policy_key_name(pem: str) -> bytes:
    """The TPM name of a policy public key (nameAlg || H(TPMT_PUBLIC)); no TPM needed."""
    return bytes(_public(pem).get_name())


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
