"""Cap the PCRs this boot's unlocks bound, or stop the machine: the one capping program.

``python -m sealer.boot.cap_or_poweroff`` is run by ``/usr/lib/sealer/cap``
(sealer/install/hookfiles/initramfs-tools/cap), which every exit of the initramfs goes through:

- initramfs-tools: init-bottom (after the last volume is open) and ``/scripts/panic/sealer``,
  which ``panic()`` runs before it starts a shell (the ALERT path, ``break=``, a missing init);
- dracut: sealer-cap.service (before the switch to the real root), and a drop-in that runs
  it before emergency.service, rescue.service, dracut-emergency.service and
  debug-shell.service start their shell.

Capping on the way to a shell happens always, not only after a release: once a shell runs,
nothing stops its user from running the unlocker by hand, so the TPM must already refuse.

Exit status 0: the PCRs are capped (or there is no TPM in this machine and no key was released
in this boot, so there is nothing to cap). Anything else: the PCRs may still release a key, so
this program has already wiped the keys of the open dm-crypt mappings, and the shell wrapper
powers the machine off. A machine whose TPM is present but cannot be capped does not boot
through the TPM path until the TPM works again (or is disabled in the firmware setup, which
leaves the passphrase).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sealer.boot.pcrcap import CAP_RECORD, cap, recorded_caps
from sealer.errors import SealerError
from sealer.pcrs import format_pcrs

TPM_DEVICE = Path("/dev/tpmrm0")
# As long as the unlocker waits for the TPM (sealer.boot.unlocker.TPM_WAIT_SECONDS): a shell
# started before the TPM driver has probed the chip would otherwise see no TPM and run with
# the PCRs uncapped once it appears.
TPM_WAIT_SECONDS = 10.0
_POLL_SECONDS = 0.05


def _say(line: str) -> None:
    # stderr is the console in both initramfs kinds (journal+console under systemd).
    print(line, file=sys.stderr, flush=True)


def _wait_for_device(device: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not device.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True


def _released(record: Path) -> bool:
    """Whether an unlock of this boot recorded a PCR to cap: a key left the TPM."""
    try:
        return bool(record.read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError):
        return False


def main(argv: list[str] | None = None) -> int:
    """Cap the recorded PCRs; returns 0 when capped (or no TPM and no key released), otherwise 1
    after wiping the open mappings' keys, for the wrapper to power off.

    Takes no options (``argv`` is ignored), so that no caller can weaken it.
    """
    del argv  # no options: the same program for every caller, so that none can weaken it
    pcrs = recorded_caps()
    released = _released(CAP_RECORD)
    tcti = os.environ.get("SEALER_TCTI") or None
    if tcti is None and not _wait_for_device(TPM_DEVICE, TPM_WAIT_SECONDS):
        if not released:
            # No TPM, no key released: nothing can be unsealed in this boot (a machine whose
            # TPM is off in the firmware boots by passphrase, as without sealer).
            _say(f"sealer: no TPM ({TPM_DEVICE} does not exist): nothing to cap")
            return 0
        return _halt(pcrs, f"{TPM_DEVICE} disappeared after the TPM released a key")
    try:
        banks = cap(pcrs, tcti=tcti)
    except SealerError as error:
        return _halt(pcrs, error.message, wipe=tcti is None)
    except Exception as error:  # a bug must stop the machine too, never leave the PCRs open
        return _halt(pcrs, f"{type(error).__name__}: {error}", wipe=tcti is None)
    _say(f"sealer: capped PCR {format_pcrs(pcrs)} ({', '.join(banks)})")
    return 0


def _halt(pcrs: list[int], reason: str, *, wipe: bool = True) -> int:
    """The PCRs may still release a key: wipe what is open, let the caller power off.

    ``wipe`` is False with a TPM named by SEALER_TCTI (a simulator: tests on a running
    system, whose own dm-crypt mappings are none of this program's business)."""
    _say(f"sealer: cannot cap PCR {format_pcrs(pcrs)}: {reason}")
    if wipe:
        # Imported only here: sealer.luks is not needed on any other path.
        from sealer.luks.cryptsetup import wipe_open_keys

        for line in wipe_open_keys():
            _say(f"sealer: {line}")
    _say("sealer: the TPM could still release the disk key in this boot")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
