"""One exception hierarchy for every failure a user can cause or meet.

Each class carries the process exit code the CLI returns for it, so that scripts and the
initramfs can tell "the TPM refused" from "the volume is not LUKS2" without parsing text.
The codes are documented in README.md; never renumber one.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The process exit codes, one per error class (documented in README.md)."""

    OK = 0
    INTERNAL = 1  # a bug in sealer: please report it
    USAGE = 2  # bad command line (click's own code)
    DEVICE = 3  # device missing, unreadable, not LUKS2
    TPM_UNAVAILABLE = 4  # no TPM reachable
    POLICY = 5  # the boot state matches no approval: the TPM will not release the key
    AUTH = 6  # wrong passphrase, recovery key or PIN
    TPM_MISMATCH = 7  # the volume was enrolled with another TPM (or its SRK is gone)
    LOCKOUT = 8  # the TPM is in dictionary-attack lockout
    TOKEN = 9  # no usable sealer token: missing, corrupted, unknown version
    HEADER_FULL = 10  # no free keyslot or no room for the token in the LUKS2 header
    STATE = 11  # the state directory or the policy key cannot be used
    REFUSED = 12  # the operation would leave the volume without a way to open it
    SYSTEM_FILES = 13  # a system file (crypttab, initramfs hook) or the initramfs rebuild failed
    MEASUREMENT = 14  # the event log or a boot image is unusable, or cannot predict a PCR


class SealerError(Exception):
    """A failure with a message written for the person at the terminal.

    ``message`` says what happened; ``hint`` (optional) says what to do next.
    """

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message


class DeviceError(SealerError):
    """The device is missing, unreadable, or not a LUKS2 volume."""

    exit_code = ExitCode.DEVICE


class TPMUnavailableError(SealerError):
    """No TPM can be reached: no device node, no resource manager, or a bad TCTI."""

    exit_code = ExitCode.TPM_UNAVAILABLE


class PolicyMismatchError(SealerError):
    """The boot state matches no approval that holds, so the TPM will not release the key."""

    exit_code = ExitCode.POLICY


class AuthError(SealerError):
    """A wrong passphrase, recovery key or PIN."""

    exit_code = ExitCode.AUTH


class TPMMismatchError(SealerError):
    """The volume was enrolled with another TPM, or that TPM's SRK is gone."""

    exit_code = ExitCode.TPM_MISMATCH


class LockoutError(SealerError):
    """The TPM is in dictionary-attack lockout and refuses authorization for now."""

    exit_code = ExitCode.LOCKOUT


class TokenError(SealerError):
    """No usable sealer token: none, a corrupted one, one of an unknown version."""

    exit_code = ExitCode.TOKEN


class HeaderFullError(SealerError):
    """The LUKS2 header has no free keyslot, or no room left for the token."""

    exit_code = ExitCode.HEADER_FULL


class StateError(SealerError):
    """The state directory or the machine policy key in it cannot be used."""

    exit_code = ExitCode.STATE


class RefusedError(SealerError):
    """Going on would leave the volume without a passphrase or recovery key to open it."""

    exit_code = ExitCode.REFUSED


class UsageError(SealerError):
    """The request itself is wrong: conflicting options, a value out of range, a missing input."""

    exit_code = ExitCode.USAGE


class TPMError(SealerError):
    """The TPM answered with an error that no more specific class describes."""

    exit_code = ExitCode.INTERNAL


class SystemFilesError(SealerError):
    """crypttab, the initramfs hook files or update-initramfs: the system's boot wiring."""

    exit_code = ExitCode.SYSTEM_FILES


class MeasurementError(SealerError):
    """The event log or a boot image cannot be read, or cannot predict a PCR."""

    exit_code = ExitCode.MEASUREMENT
