"""The event log parser against a log captured from a real boot, and against hostile bytes."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from sealer.measure.eventlog import (
    EV_NO_ACTION,
    LINUX_INITRD_TAG,
    SPEC_ID_SIGNATURE,
    EventLogError,
    parse,
)
from sealer.pcrs import BANKS

CAPTURED = Path(__file__).resolve().parents[2] / "swtpm-fixtures" / "eventlogs"
LOG = (CAPTURED / "ovmf-secureboot-uki.bin").read_bytes()
REPORTED = {
    int(pcr): bytes.fromhex(value)
    for pcr, value in json.loads((CAPTURED / "ovmf-secureboot-uki.pcrs.json").read_text())[
        "sha256"
    ].items()
}
SHA256 = BANKS["sha256"]


def test_the_captured_log_replays_to_the_pcrs_the_guest_reported() -> None:
    log = parse(LOG)
    assert set(log.algorithms) == {"sha1", "sha256", "sha384", "sha512"}
    replayed = log.replay(SHA256)
    for pcr in (0, 2, 4, 7, 9, 11):
        assert replayed[pcr] == REPORTED[pcr], pcr
    # sealer capped PCR 15 after the firmware's log ended: the log cannot tell its value.
    assert log.mismatches(SHA256, REPORTED) == [15]


def test_the_captured_log_decodes_what_a_person_needs_to_read() -> None:
    log = parse(LOG)
    by_type: dict[str, list[str]] = {}
    for event in log.events:
        by_type.setdefault(event.type_name, []).append(event.description)
    assert any(
        d.startswith("SecureBoot (8be4df61-") for d in by_type["EV_EFI_VARIABLE_DRIVER_CONFIG"]
    )
    assert any(d.startswith("db (d719b2cb-") for d in by_type["EV_EFI_VARIABLE_AUTHORITY"])
    assert len(by_type["EV_EFI_BOOT_SERVICES_APPLICATION"]) == 1  # the UKI, into PCR 4
    assert {".linux", ".osrel", ".cmdline", ".initrd"} <= set(by_type["EV_IPL"])  # PCR 11
    assert f"tag 0x{LINUX_INITRD_TAG:08x}: Linux initrd" in by_type["EV_EVENT_TAG"]
    assert "Exit Boot Services Returned with Success" in by_type["EV_EFI_ACTION"]


def test_every_truncation_is_our_error_or_a_shorter_log() -> None:
    for end in range(len(LOG)):
        try:
            log = parse(LOG[:end])
        except EventLogError:
            continue
        assert len(log.events) < len(parse(LOG).events)


def test_random_corruption_never_raises_anything_else() -> None:
    rng = random.Random(20261123)
    for _ in range(3000):
        data = bytearray(LOG)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            log = parse(bytes(data))
        except EventLogError:
            continue
        for event in log.events:
            assert isinstance(event.description, str)


def test_a_huge_length_field_is_refused_before_anything_is_read() -> None:
    spec = SPEC_ID_SIGNATURE + bytes(8) + struct.pack("<I", 1) + struct.pack("<HH", 0x0B, 32)
    spec += b"\0"
    header = struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(spec)) + spec
    event = struct.pack("<III", 7, 4, 1) + struct.pack("<H", 0x0B) + bytes(32)
    event += struct.pack("<I", 0xFFFFFFFF)  # event size: 4 GiB
    with pytest.raises(EventLogError, match="truncated or corrupted"):
        parse(header + event)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", 16) + bytes(16),
         "not crypto-agile"),
        (struct.pack("<II", 4, 1) + bytes(20) + struct.pack("<I", 0), "does not start with"),
    ],
)
def test_logs_that_are_not_crypto_agile_say_so(data: bytes, message: str) -> None:
    with pytest.raises(EventLogError, match=message):
        parse(data)
