"""Event logs captured from this project's QEMU boots, and what tests derive from them.

A test "boots" a software TPM by extending a log's digests into it, and makes the log of
another boot by changing digests of a captured one (only the bank it names; the others keep
their captured values, which no test reads).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from sealer.measure.eventlog import EV_NO_ACTION, EventLog, parse
from sealer.pcrs import BANKS, Bank
from sealer.tpm.connection import connect
from sealer.tpm.pcr import extend_pcr

EVENTLOGS = Path(__file__).resolve().parent / "eventlogs"
# OVMF (Secure Boot, test keys) -> signed UKI (systemd-stub 252 + Debian kernel + initramfs).
UKI_BOOT_LOG = EVENTLOGS / "ovmf-secureboot-uki.bin"


def read(path: Path = UKI_BOOT_LOG) -> EventLog:
    return parse(path.read_bytes())


def extends(log: EventLog, bank: Bank) -> list[tuple[int, bytes]]:
    """The (PCR, digest) extends the firmware made, in order."""
    return [(e.pcr, e.digests[bank.name]) for e in log.events if e.type != EV_NO_ACTION]


def extend_into(tcti: str, extended: Iterable[tuple[int, bytes]], bank: Bank) -> None:
    """Make a freshly started TPM's ``bank`` look like a boot that measured ``extended``."""
    with connect(tcti) as ctx:
        for pcr, digest in extended:
            extend_pcr(ctx, bank, pcr, digest)


def rewrite(data: bytes, bank: Bank, digests: Mapping[int, bytes]) -> bytes:
    """The log ``data`` with ``bank``'s digest of each event number in ``digests`` replaced."""
    log = parse(data)
    order = {name: BANKS[name].alg_id for name in log.algorithms}
    # The Spec ID event (old format) is copied as it is: 32 bytes of header, then its data.
    (first_size,) = struct.unpack_from("<I", data, 28)
    out = bytearray(data[: 32 + first_size])
    for event in log.events:
        out += struct.pack("<III", event.pcr, event.type, len(order))
        for name, alg in order.items():
            digest = event.digests[name]
            if name == bank.name:
                digest = digests.get(event.number, digest)
            out += struct.pack("<H", alg) + digest
        out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)
