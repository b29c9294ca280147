"""TPM response codes, and what each means to the person at the machine.

Pure: both ways sealer talks to the TPM (tpm2-pytss's ESAPI in sealer.tpm.connection, and the
boot path's bare binding in sealer.tpm.esys) report a return code, and both translate it here.
"""

from __future__ import annotations

from typing import TypeVar

from sealer.errors import (
    AuthError,
    PolicyMismatchError,
    SealerError,
    TPMError,
    TPMMismatchError,
    TPMUnavailableError,
)
from sealer.tpm.lockout import LockoutState, lockout_error, pin_rejected_error

E = TypeVar("E", bound=BaseException)

# TPM 2.0 Part 2, 6.6: format-one codes carry the handle, session or parameter they refer
# to in bits 6 and 8 to 11; ``error_of`` strips those, as tpm2-pytss's TSS2_Exception.error does.
FMT1 = 0x080
VER1 = 0x100
WARN = 0x900
VALUE = FMT1 + 0x004
HANDLE = FMT1 + 0x00B
AUTH_FAIL = FMT1 + 0x00E
SIGNATURE = FMT1 + 0x01B
POLICY_FAIL = FMT1 + 0x01D
INTEGRITY = FMT1 + 0x01F
BAD_AUTH = FMT1 + 0x022
POLICY = VER1 + 0x026
PCR_CHANGED = VER1 + 0x028
NV_UNINITIALIZED = VER1 + 0x04A
OBJECT_MEMORY = WARN + 0x002
SESSION_MEMORY = WARN + 0x003
LOCKOUT = WARN + 0x021


def error_of(rc: int) -> int:
    """The error of a TSS return code, without the handle, session or parameter number."""
    return FMT1 + (rc & 0x3F) if rc & FMT1 else rc


def translate(rc: int, text: str, lockout: LockoutState | None = None) -> SealerError:
    """Turn a TSS return code (``text``: libtss2's own words for it) into the error a person
    can act on."""
    error = error_of(rc)
    if error == LOCKOUT:
        return lockout_error(lockout)
    if error == AUTH_FAIL:  # a DA-protected object: the failure counted
        return pin_rejected_error(lockout)
    if error == BAD_AUTH:  # a NODA object: nothing counted
        return AuthError("the TPM rejected the PIN", "check it and try again")
    if error in (POLICY_FAIL, PCR_CHANGED):
        return PolicyMismatchError(
            "the TPM refused to release the key: the boot state matches no approval",
            "run 'sealer status' to see which PCRs differ",
        )
    if error == POLICY:  # PolicyNV: the revocation field says no
        return PolicyMismatchError(
            "the TPM refused to release the key: this boot image's release was revoked",
            "boot a newer release, or unlock with the passphrase or recovery key",
        )
    if error in (INTEGRITY, HANDLE):
        return TPMMismatchError(
            "this TPM cannot load the sealed key: the volume was enrolled with another TPM",
            "unlock with the passphrase or recovery key, then enroll again on this machine",
        )
    if error in (OBJECT_MEMORY, SESSION_MEMORY):
        return TPMError(
            "the TPM is out of memory for objects or sessions",
            "another program leaked TPM handles; use /dev/tpmrm0 or restart the TPM service",
        )
    if text.startswith("tcti:"):
        return TPMUnavailableError(
            f"lost the connection to the TPM ({text})",
            "check that the TPM (or swtpm) is still there; nothing was changed, try again",
        )
    return TPMError(f"the TPM reported an error: {text} (0x{rc:x})")


def is_pin_failure(rc: int) -> bool:
    """A refused PIN, after which the lockout state says how many tries are left."""
    return error_of(rc) in (AUTH_FAIL, LOCKOUT)


def first_cause(exc: E, kind: type[E]) -> E:
    """The first ``kind`` error in the chain that ended in ``exc``: after a lost connection
    the flushes in ``finally`` blocks fail too, and the last of those errors would hide the
    cause."""
    first = exc
    context = exc.__context__
    while context is not None:
        if isinstance(context, kind):
            first = context
        context = context.__context__
    return first
