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

from dataclasses import asdict, dataclass
from typing import Any

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import TPM2_CAP, TPM2_PT, TPMA_PERMANENT

from sealer.errors import AuthError, LockoutError

_FIRST = int(TPM2_PT.PERMANENT)  # PT_VAR + 0
_LAST = int(TPM2_PT.LOCKOUT_RECOVERY)  # PT_VAR + 17: one GetCapability reads all of them
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


def read_lockout(ctx: ESAPI) -> LockoutState:
    """The TPM's DA state, from its variable properties (no authorization needed)."""
    values: dict[int, int] = {}
    start, more = _FIRST, True
    while more and start <= _LAST:
        more, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, start, _LAST - start + 1)
        found = [(int(p.property), int(p.value)) for p in data.data.tpmProperties]
        if not found:
            break
        values.update(found)
        start = max(p for p, _ in found) + 1
    failed = values.get(int(TPM2_PT.LOCKOUT_COUNTER), 0)
    max_tries = values.get(int(TPM2_PT.MAX_AUTH_FAIL), 0)
    interval = values.get(int(TPM2_PT.LOCKOUT_INTERVAL), 0)
    locked = bool(values.get(_FIRST, 0) & int(TPMA_PERMANENT.INLOCKOUT))
    return LockoutState(
        failed_tries=failed,
        max_tries=max_tries,
        tries_left=max(0, max_tries - failed),
        interval_s=interval,
        lockout_recovery_s=values.get(int(TPM2_PT.LOCKOUT_RECOVERY), 0),
        in_lockout=locked or (interval != 0 and failed >= max_tries),
    )


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


def refuse_if_locked_out(ctx: ESAPI) -> None:
    """Raise LockoutError before a PIN is asked for that the TPM would refuse unseen."""
    state = read_lockout(ctx)
    if state.in_lockout:
        raise lockout_error(state)
