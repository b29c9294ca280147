"""Policy keys as the TPM sees them: their name, and loading them to verify approvals."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC


def _public(pem: str) -> TPM2B_PUBLIC:
    # One fixed template: the name below and the object loaded for VerifySignature must agree.
    return TPM2B_PUBLIC.from_pem(
        pem.encode("ascii"),
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.USERWITHAUTH,
    )


def policy_key_name(pem: str) -> bytes:
    """The TPM name of a policy public key (nameAlg || H(TPMT_PUBLIC)); no TPM needed."""
    return bytes(_public(pem).get_name())


@contextmanager
def loaded_policy_key(ctx: ESAPI, pem: str) -> Iterator[ESYS_TR]:
    # Loaded into the owner hierarchy: a key in the NULL hierarchy yields only NULL tickets,
    # which PolicyAuthorize refuses.
    handle = ctx.load_external(_public(pem), None, ESYS_TR.OWNER)
    try:
        yield handle
    finally:
        ctx.flush_context(handle)
