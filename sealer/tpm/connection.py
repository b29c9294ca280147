"""Opening the TPM: TCTI choice and the mapping of TSS errors to sealer errors."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import TPM2_RC

from sealer.errors import (
    AuthError,
    LockoutError,
    PolicyMismatchError,
    SealerError,
    TPMError,
    TPMMismatchError,
    TPMUnavailableError,
)

DEFAULT_TCTI = "device:/dev/tpmrm0"
TCTI_ENV = "SEALER_TCTI"


def resolve_tcti(tcti: str | None) -> str:
    return tcti or os.environ.get(TCTI_ENV) or DEFAULT_TCTI


def _device_path(tcti: str) -> str | None:
    kind, _, conf = tcti.partition(":")
    if kind != "device":
        return None
    return conf or "/dev/tpm0"


@contextmanager
def connect(tcti: str | None = None) -> Iterator[ESAPI]:
    """An ESAPI context on the chosen TPM, closed on exit."""
    spec = resolve_tcti(tcti)
    device = _device_path(spec)
    if device is not None and not os.path.exists(device):
        raise TPMUnavailableError(
            f"no TPM found: {device} does not exist",
            "enable the TPM in the firmware setup, or point SEALER_TCTI/--tcti at one",
        )
    try:
        ctx = ESAPI(spec)
    except TSS2_Exception as exc:
        raise TPMUnavailableError(
            f"cannot reach the TPM through {spec!r} ({exc})",
            "check that the TPM (or swtpm) is running and that you are root",
        ) from exc
    try:
        yield ctx
    except TSS2_Exception as exc:
        raise translate(exc) from exc
    finally:
        ctx.close()


def translate(exc: TSS2_Exception) -> SealerError:
    """Turn a TSS return code into the error a person can act on."""
    error = exc.error
    if error == TPM2_RC.LOCKOUT:
        return LockoutError(
            "the TPM is in dictionary-attack lockout after too many wrong PINs",
            "wait for the lockout to expire, or unlock with the passphrase or recovery key",
        )
    if error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
        return AuthError(
            "the TPM rejected the PIN",
            "try again (each wrong PIN counts toward the TPM's lockout)",
        )
    if error in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
        return PolicyMismatchError(
            "the TPM refused to release the key: the boot state matches no approval",
            "run 'sealer status' to see which PCRs differ",
        )
    if error == TPM2_RC.POLICY:  # PolicyNV: the revocation field says no
        return PolicyMismatchError(
            "the TPM refused to release the key: this boot image's release was revoked",
            "boot a newer release, or unlock with the passphrase or recovery key",
        )
    if error in (TPM2_RC.INTEGRITY, TPM2_RC.HANDLE):
        return TPMMismatchError(
            "this TPM cannot load the sealed key: the volume was enrolled with another TPM",
            "unlock with the passphrase or recovery key, then enroll again on this machine",
        )
    if error in (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY):
        return TPMError(
            "the TPM is out of memory for objects or sessions",
            "another program leaked TPM handles; use /dev/tpmrm0 or restart the TPM service",
        )
    text = str(exc)
    if text.startswith("tcti:"):
        return TPMUnavailableError(f"lost the connection to the TPM ({text})")
    return TPMError(f"the TPM reported an error: {text} (0x{exc.rc:x})")
