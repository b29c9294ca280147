"""What the initramfs does with the TPM: wait for it, release a volume's key, cap a PCR.

Capping is separate from releasing: the initramfs may unlock several volumes, one keyscript
run each, and every one of them must still find the TPM willing. So each run records which
PCR its enrollment caps in ``CAP_RECORD``, and one step after the last unlock (initramfs-tools'
init-bottom, or dracut's pre-pivot) extends them all, whichever way the volumes were opened.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sealer.errors import TPMUnavailableError
from sealer.services.unlock import PinReader, Unsealed, release_key
from sealer.tpm.connection import connect
from sealer.tpm.pcr import extend_all_banks

TPM_DEVICE = Path("/dev/tpmrm0")
DEFAULT_CAP_PCR = 15
# What the cap extends into the PCR. Fixed and public: its only job is to move the PCR away
# from the value every approval requires, for the rest of this boot.
CAP_EVENT = b"sealer: boot-time unlock finished"
# Where this boot's unlocks record the PCRs to cap (tmpfs: gone at the next boot). The
# variable exists for tests on a running system, which must not write the host's /run.
CAP_RECORD = Path(os.environ.get("SEALER_CAP_RECORD") or "/run/sealer/cap-pcrs")
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class BootUnlock:
    unsealed: Unsealed
    seconds: float  # from the start of this process to the key in hand


def wait_for_tpm(device: Path = TPM_DEVICE, timeout: float = 10.0) -> float:
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
    device: str, *, tcti: str | None, read_pin: PinReader, tpm_timeout: float
) -> BootUnlock:
    if tcti is None:
        wait_for_tpm(TPM_DEVICE, tpm_timeout)
    unsealed = release_key(device, token_id=None, tcti=tcti, read_pin=read_pin)
    return BootUnlock(unsealed, seconds_since_process_start())


def record_cap(pcr: int, record: Path = CAP_RECORD) -> None:
    """Remember that ``pcr`` must be capped before the initramfs hands over to the system."""
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(record, "a", encoding="ascii") as handle:
        handle.write(f"{pcr}\n")


def recorded_caps(record: Path = CAP_RECORD) -> list[int]:
    """The PCRs recorded by this boot's unlocks, or the default when none was recorded."""
    try:
        lines = record.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        lines = []
    pcrs = {int(line) for line in lines if line.isdigit() and int(line) < 24}
    return sorted(pcrs) or [DEFAULT_CAP_PCR]


def cap(pcrs: Iterable[int], *, tcti: str | None) -> list[str]:
    """Extend each PCR in every active bank; return the banks extended."""
    with connect(tcti) as ctx:
        banks: list[str] = []
        for pcr in pcrs:
            banks = [bank.name for bank in extend_all_banks(ctx, pcr, CAP_EVENT)]
    return banks
