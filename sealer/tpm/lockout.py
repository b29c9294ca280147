"""The TPM's dictionary-attack (DA) lockout: its state, and what to tell a person about it.

TPM 2.0 (Part 1, "Dictionary Attack Protection") counts failed authorizations of DA-protected
objects (a PIN-protected sealed object is one; a NODA object without PIN never counts) in
``failedTries``. When it reaches ``maxTries`` the TPM is in lockout and refuses every
DA-protected authorization (TPM_RC_LOCKOUT), even the right PIN. It forgets one failure every
``recoveryTime`` seconds (TPM2_PT_LOCKOUT_INTERVAL), counted from the last failure and only
while the TPM is powered (the reference implementation restarts that timer at every startup);
a recoveryTime of 0 disables DA protection. The lockout hierarchy's authorization, if known,
resets the count at once (TPM2_DictionaryAttackLockReset).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sealer.errors import AuthError, LockoutError

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI

# The values of TPM 2.0 Part 2 (TPM_CAP, TPM_PT, TPMA_PERMANENT): this module is pure, so
# that the boot path (sealer.tpm.esys) reads the same state without tpm2-pytss's Python layer.
CAP_TPM_PROPERTIES = 0x00000006
_FIRST = 0x200  # TPM_PT_PERMANENT (PT_VAR + 0)
_LOCKOUT_COUNTER = 0x200 + 14
_MAX_AUTH_FAIL = 0x200 + 15
_LOCKOUT_INTERVAL = 0x200 + 16
_LAST = 0x200 + 17  # TPM_PT_LOCKOUT_RECOVERY: one GetCapability reads all of them
_IN_LOCKOUT = 0x00000200  # TPMA_PERMANENT.inLockout

# Reads TPM properties: (first property, how many) -> (more to read, [(property, value)]).
PropertyReader = Callable[[int, int], tuple[bool, list[tuple[int, int]]]]
_AFTER_LOCKOUT = "unlock with the passphrase or recovery key meanwhile"


@dataclass(frozen=True)
class LockoutState:
    """The TPM's dictionary-attack state: failures so far, tries left, and how they heal."""

    failed_tries: int  # TPM2_PT_LOCKOUT_COUNTER
    max_tries: int  # TPM2_PT_MAX_AUTH_FAIL
    tries_left: int  # before the TPM locks out
    interval_s: int  # TPM2_PT_LOCKOUT_INTERVAL: one failure forgiven this often; 0: no DA
    lockout_recovery_s: int  # TPM2_PT_LOCKOUT_RECOVERY: wait after a failed lockoutAuth
    in_lockout: bool  # TPMA_PERMANENT.inLockout

    @property
    def protects(self) -> bool:
        """False when the TPM's DA protection is off (recoveryTime 0): nothing ever locks."""
        return self.interval_s != 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def comes_back(self) -> str:
        """When tries come back, in the TPM's own terms (see the module's docstring)."""
        every = f"one try comes back every {self.interval_s} s while the TPM is powered"
        return f"{every}, the next within {self.interval_s} s"


def lockout_state(read: PropertyReader) -> LockoutState:
    """The TPM's DA state, from its variable properties (no authorization needed)."""
    values: dict[int, int] = {}
    start, more = _FIRST, True
    while more and start <= _LAST:
        more, found = read(start, _LAST - start + 1)
        if not found:
            break
        values.update(found)
        start = max(p for p, _ in found) + 1
    failed = values.get(_LOCKOUT_COUNTER, 0)
    max_tries = values.get(_MAX_AUTH_FAIL, 0)
    interval = values.get(_LOCKOUT_INTERVAL, 0)
    locked = bool(values.get(_FIRST, 0) & _IN_LOCKOUT)
    return LockoutState(
        failed_tries=failed,
        max_tries=max_tries,
        tries_left=max(0, max_tries - failed),
        interval_s=interval,
        lockout_recovery_s=values.get(_LAST, 0),
        in_lockout=locked or (interval != 0 and failed >= max_tries),
    )


def read_lockout(ctx: ESAPI) -> LockoutState:
    """The TPM's DA state, read through tpm2-pytss's ESAPI."""

    def read(start: int, count: int) -> tuple[bool, list[tuple[int, int]]]:
        more, data = ctx.get_capability(CAP_TPM_PROPERTIES, start, count)
        return bool(more), [(int(p.property), int(p.value)) for p in data.data.tpmProperties]

    return lockout_state(read)


def lockout_error(state: LockoutState | None) -> LockoutError:
    """The TPM refuses every PIN now, the right one too."""
    if state is None:
        return LockoutError(
            "the TPM is in dictionary-attack lockout after too many wrong PINs",
            f"wait for the lockout to expire, or {_AFTER_LOCKOUT}",
        )
    return LockoutError(
        "the TPM is in dictionary-attack lockout after too many wrong PINs "
        f"({state.comes_back()})",
        _AFTER_LOCKOUT,
    )


def pin_rejected_error(state: LockoutState | None) -> AuthError:
    """A wrong PIN: how many tries are left, or that this one locked the TPM out."""
    if state is None or not state.protects:
        return AuthError("the TPM rejected the PIN", "check it and try again")
    if state.in_lockout:
        return AuthError(
            f"the TPM rejected the PIN and is now in dictionary-attack lockout "
            f"({state.comes_back()})",
            _AFTER_LOCKOUT,
        )
    tries = "1 try" if state.tries_left == 1 else f"{state.tries_left} tries"
    return AuthError(
        f"the TPM rejected the PIN: {tries} left before the TPM locks out",
        "try again, or unlock with the passphrase or recovery key",
    )
