"""What the initramfs does with the TPM: wait for it and release a volume's key.

Capping is separate (sealer.boot.pcrcap): the initramfs may unlock several volumes (one
keyscript run each, or one password agent answering each request), and every one of them
must still find the TPM willing. So each unlock records which PCR its enrollment caps, and
one step after the last unlock (initramfs-tools' init-bottom, or sealer-cap.service in a
dracut initramfs) extends them all, whichever way the volumes were opened.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sealer.boot.pcrcap import CAP_RECORD, record_cap
from sealer.errors import AuthError, PolicyMismatchError, SealerError, TPMUnavailableError
from sealer.services.unlock import Unsealed, enrolled_header, release_key

TPM_DEVICE = Path("/dev/tpmrm0")
_POLL_SECONDS = 0.05
# How long a boot waits for the TPM's device node before falling back to the passphrase.
TPM_WAIT_SECONDS = 10.0
# How many times a boot asks for a PIN the TPM rejects before the passphrase prompt; fewer
# when the TPM locks out first (then the passphrase prompt follows at once).
PIN_PROMPTS = 3


class PinAsker(Protocol):
    """Asks the person at the console for the TPM PIN; ``note`` is said first (why again)."""

    def __call__(self, note: str = "") -> bytes: ...


class _PinAttempt:
    """One prompt: remembers whether a PIN was entered, so that a rejection of it by the TPM
    (ask again) is told apart from no PIN at all (give up: the passphrase prompt)."""

    def __init__(self, ask: PinAsker, note: str) -> None:
        self.ask = ask
        self.note = note
        self.entered = False

    def __call__(self) -> bytes:
        pin = self.ask(self.note)
        self.entered = True
        return pin


@dataclass(frozen=True)
class BootUnlock:
    """The key the TPM released for a volume at boot, and how long that took."""

    unsealed: Unsealed
    seconds: float  # from the start of this process to the key in hand


def wait_for_tpm(device: Path = TPM_DEVICE, timeout: float = TPM_WAIT_SECONDS) -> float:
    """Wait until the TPM's device node exists; return the seconds waited.

    The kernel's TPM driver creates the node through devtmpfs as soon as it has probed the
    chip, so polling the path is enough; the bound keeps a machine without a TPM (or with a
    dead one) from hanging its boot: it falls back to the passphrase instead.
    """
    start = time.monotonic()
    while not device.exists():
        waited = time.monotonic() - start
        if waited >= timeout:
            raise TPMUnavailableError(
                f"no TPM appeared within {timeout:g} s ({device} does not exist)",
                "check that the TPM is enabled in the firmware setup",
            )
        time.sleep(_POLL_SECONDS)
    return time.monotonic() - start


def seconds_since_process_start() -> float:
    """Wall time since this process was started, interpreter start-up and imports included."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])  # field 22 of proc(5), counted after "pid (comm)"
    started = start_ticks / os.sysconf("SC_CLK_TCK")
    return time.clock_gettime(time.CLOCK_BOOTTIME) - started


def unlock_for_boot(
    device: str, *, tcti: str | None, read_pin: PinAsker, tpm_timeout: float
) -> BootUnlock:
    """Release ``device``'s key in the initramfs: wait for the TPM, then unseal.

    A wrong PIN is asked again, up to PIN_PROMPTS times, saying what went wrong. Raises
    SealerError (PolicyMismatchError, AuthError, TPMUnavailableError, ...) when no key is
    released; the caller then falls back to the passphrase.
    """
    # The header first: a volume with no enrollment falls back at once, not after the wait.
    header = enrolled_header(device)
    if tcti is None:
        wait_for_tpm(TPM_DEVICE, tpm_timeout)
    note = ""
    for prompt in range(1, PIN_PROMPTS + 1):
        attempt = _PinAttempt(read_pin, note)
        try:
            unsealed = release_key(
                device, token_id=None, tcti=tcti, read_pin=attempt, header=header
            )
        except AuthError as error:
            # The TPM rejected the PIN entered: ask again, saying how many tries are left.
            # If that PIN locked the TPM out, the next try refuses before asking.
            if not attempt.entered or prompt == PIN_PROMPTS:
                raise
            note = error.message
            continue
        return BootUnlock(unsealed, seconds_since_process_start())
    raise AssertionError("unreachable: the last prompt returns or raises")


def fallback_line(volume: str, error: BaseException) -> str:
    """The one console line that says why the TPM did not unlock ``volume``.

    The keyscript and the systemd password agent say it in the same words, so a user (and a
    test) reads the same reason whichever initramfs the machine has.
    """
    if isinstance(error, PolicyMismatchError):
        reason = f"{error.message} (see 'sealer explain')"
    elif isinstance(error, SealerError):
        reason = error.message
    else:  # a bug: say what it was, but never cost the user the passphrase prompt
        reason = f"internal error ({type(error).__name__}: {error})"
    return f"sealer: {volume}: {reason}; asking for the passphrase instead"


def released_line(volume: str, seconds: float) -> str:
    """The console line that says the TPM released ``volume``'s key, and how fast."""
    return f"sealer: {volume}: key released by the TPM in {seconds:.2f} s"


def record_cap_of(result: BootUnlock, volume: str, record: Path | None = None) -> str | None:
    """Record the PCR this unlock's enrollment caps; a line to say if that failed, else None."""
    try:
        record_cap(result.unsealed.enrollment.token.cap_pcr, record or CAP_RECORD)
    except OSError as error:
        return f"sealer: {volume}: cannot record the PCR to cap ({error}); PCR 15 will be capped"
    return None
