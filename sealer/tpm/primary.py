"""Creating a primary key in the owner hierarchy: the one place its refusal is explained.

sealer's SRK, systemd-cryptenroll's and clevis' primary keys are all derived from the owner
seed with an empty owner authorization (as Linux leaves it). When the owner hierarchy has a
password, each of them fails the same way, and the person needs to hear that, not a TPM
return code.
"""

from __future__ import annotations

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_RC
from tpm2_pytss.types import TPM2B_PUBLIC

from sealer.errors import TPMError


def create_owner_primary(ctx: ESAPI, template: TPM2B_PUBLIC, action: str, hint: str) -> ESYS_TR:
    """A transient primary key from ``template``; TPMError "cannot {action}: ..." with
    ``hint`` when the owner hierarchy has a password. Other TPM errors pass through."""
    try:
        handle: ESYS_TR = ctx.create_primary(None, template, ESYS_TR.OWNER)[0]
    except TSS2_Exception as exc:
        if exc.error in (TPM2_RC.BAD_AUTH, TPM2_RC.AUTH_FAIL):
            raise TPMError(
                f"cannot {action}: the TPM's owner hierarchy has a password", hint
            ) from exc
        raise
    return handle
