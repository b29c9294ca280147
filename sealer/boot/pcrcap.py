"""Capping: after the initramfs, the TPM must not release a key again until the next boot.

Each unlock records the PCR its enrollment caps; one step after the last unlock extends them
all. This module imports only the TPM layer: ``python -m sealer.boot.cap_or_poweroff``
runs in every boot and its imports are most of its time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from sealer.pcrs import BANKS, Bank
from sealer.policy.binding import CAP_PCRS
from sealer.tpm.bare import extend_all_banks, open_tpm

DEFAULT_CAP_PCR = 15
# What the cap extends into the PCR. Fixed and public: its only job is to move the PCR away
# from the value every approval requires, for the rest of this boot.
CAP_EVENT = b"sealer: boot-time unlock finished"
# Where this boot's unlocks record the PCRs to cap (tmpfs: gone at the next boot). The
# variable exists for tests on a running system, which must not write the host's /run.
CAP_RECORD = Path(os.environ.get("SEALER_CAP_RECORD") or "/run/sealer/cap-pcrs")


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
    # Only PCRs no program can reset (sealer.policy.binding): the unlocker records what the
    # sealed object itself binds, and nothing else should ever be in this file.
    pcrs = {int(line) for line in lines if line.isdigit() and int(line) in CAP_PCRS}
    return sorted(pcrs) or [DEFAULT_CAP_PCR]


def cap(pcrs: Iterable[int], *, tcti: str | None) -> list[str]:
    """Extend each PCR in every active bank; return the banks extended."""
    with open_tpm(tcti) as tpm:
        banks: list[str] = []
        for pcr in pcrs:
            banks = [bank.name for bank in extend_all_banks(tpm, pcr, CAP_EVENT)]
    return banks


def capped_value(pcr: int = DEFAULT_CAP_PCR, bank: Bank = BANKS["sha256"]) -> bytes:
    """What ``pcr`` reads in ``bank`` after one cap on a freshly reset TPM."""
    return bank.extend(bank.initial_value(pcr), bank.hash(CAP_EVENT))
