"""The captured boots of Debian's shim + GRUB chain (swtpm-fixtures/grubchain.py) say what
they claim: each log replays to the PCRs the guest read, GRUB's PCR 8 digests are the
hashes of the strings the events show, its PCR 9 digests are the files the JSON lists, and
the three boots differ where a kernel update and an edited entry must make them differ."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from sealer.measure.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_IPL,
    EventLog,
    parse,
)
from sealer.pcrs import BANKS

CAPTURED = Path(__file__).resolve().parents[2] / "swtpm-fixtures" / "eventlogs"
BOOTS = ("boot1", "boot2", "boot2-menu-break", "boot2-cfg-break")
SHA256 = BANKS["sha256"]


def _load(name: str) -> tuple[EventLog, dict[str, Any]]:
    stem = CAPTURED / f"debian-shim-grub-{name}"
    return parse(stem.with_suffix(".bin").read_bytes()), json.loads(
        stem.with_suffix(".json").read_text()
    )


def _pcrs(record: dict[str, Any]) -> dict[int, bytes]:
    return {int(k): bytes.fromhex(v) for k, v in record["sha256"].items()}


def _grub_strings(log: EventLog) -> list[str]:
    return [e.data.removesuffix(b"\0").decode() for e in log.events if e.pcr == 8]


def _file_key(path: str) -> str:
    """The JSON's name of a file GRUB read: (hd0) is the ESP, (hd1) and bare paths /boot."""
    if path.startswith("(hd0)"):
        return "esp:" + path.removeprefix("(hd0)")
    return "boot:" + path.removeprefix("(hd1)")


@pytest.mark.parametrize("name", BOOTS)
def test_the_log_replays_to_the_pcrs_the_guest_read(name: str) -> None:
    log, record = _load(name)
    # PCR 10 is IMA's (not in the firmware's log); PCR 15 was capped by sealer.
    live = {pcr: value for pcr, value in _pcrs(record).items() if pcr not in (10, 15)}
    assert log.mismatches(SHA256, live) == []


@pytest.mark.parametrize("name", BOOTS)
def test_grub_hashes_its_strings_without_prefix_or_nul(name: str) -> None:
    log, _ = _load(name)
    events = [e for e in log.events if e.pcr == 8]
    assert events
    for event in events:
        assert event.type == EV_IPL
        assert event.data.endswith(b"\0")
        prefix, _, text = event.data.removesuffix(b"\0").partition(b": ")
        assert prefix in (b"grub_cmd", b"kernel_cmdline")
        assert hashlib.sha256(text).digest() == event.digests["sha256"]


@pytest.mark.parametrize("name", BOOTS)
def test_pcr9_digests_are_the_listed_files(name: str) -> None:
    log, record = _load(name)
    read = [(e.data.removesuffix(b"\0").decode(), e.digests["sha256"].hex())
            for e in log.events if e.pcr == 9]
    version = record["default_kernel_version"]
    assert [path for path, _ in read] == [
        "(hd0)/EFI/debian/grub.cfg", "(hd1)/grub/grub.cfg", "(hd1)/grub/grubenv",
        "(hd1)/grub/grubenv", f"/vmlinuz-{version}", f"/initrd.img-{version}",
    ]
    for path, digest in read:
        assert record["files"][_file_key(path)]["sha256"] == digest, path
    texts = {
        "esp:/EFI/debian/grub.cfg": record["esp_grub_cfg"],
        "boot:/grub/grub.cfg": record["boot_grub_cfg"],
        "boot:/grub/grubenv": record["grubenv"],
    }
    for key, text in texts.items():
        assert hashlib.sha256(text.encode()).hexdigest() == record["files"][key]["sha256"]


@pytest.mark.parametrize("name", BOOTS)
def test_pcr4_holds_shim_grub_and_the_kernel_twice(name: str) -> None:
    log, record = _load(name)
    files = record["files"]
    kernel = files[f"boot:/vmlinuz-{record['default_kernel_version']}"]["authenticode_sha256"]
    images = [e.digests["sha256"].hex() for e in log.events
              if e.pcr == 4 and e.type == EV_EFI_BOOT_SERVICES_APPLICATION]
    assert images == [
        files["esp:/EFI/BOOT/BOOTX64.EFI"]["authenticode_sha256"],
        files["esp:/EFI/BOOT/grubx64.efi"]["authenticode_sha256"],
        kernel,
        kernel,
    ]


def test_a_kernel_update_changes_only_pcrs_8_and_9() -> None:
    before, after = (_pcrs(_load(name)[1]) for name in ("boot1", "boot2"))
    changed = {pcr for pcr in range(10) if before[pcr] != after[pcr]}
    assert changed == {8, 9}  # the same signed kernel bytes: PCR 4 and 7 stay


def _changed_grub_strings(name: str) -> list[tuple[str, str]]:
    """The PCR 8 strings of boot ``name`` that differ from boot2's, as (before, after)."""
    before, after = _grub_strings(_load("boot2")[0]), _grub_strings(_load(name)[0])
    assert len(before) == len(after)
    return [(b, a) for b, a in zip(before, after, strict=True) if b != a]


def _kinds(changed: list[tuple[str, str]]) -> list[list[str]]:
    return [after.split(" ", 2)[:2] for _, after in changed]


def test_an_entry_edited_at_the_menu_changes_only_pcr_8() -> None:
    updated, edited = _pcrs(_load("boot2")[1]), _pcrs(_load("boot2-menu-break")[1])
    assert {pcr for pcr in range(10) if updated[pcr] != edited[pcr]} == {8}
    changed = _changed_grub_strings("boot2-menu-break")
    version = _load("boot2")[1]["default_kernel_version"]
    # The entry's definition event keeps grub.cfg's text: only what ran differs.
    assert _kinds(changed) == [["grub_cmd:", "linux"], ["kernel_cmdline:", f"/vmlinuz-{version}"]]
    assert all(a == f"{b} break=bottom" for b, a in changed)


def test_an_edited_grub_cfg_changes_pcr_8_and_its_digest_in_pcr_9() -> None:
    updated, edited = _pcrs(_load("boot2")[1]), _pcrs(_load("boot2-cfg-break")[1])
    assert {pcr for pcr in range(10) if updated[pcr] != edited[pcr]} == {8, 9}
    changed = _changed_grub_strings("boot2-cfg-break")
    version = _load("boot2")[1]["default_kernel_version"]
    assert _kinds(changed) == [
        ["grub_cmd:", "menuentry"],
        ["grub_cmd:", "linux"],
        ["kernel_cmdline:", f"/vmlinuz-{version}"],
    ]
    assert all("break=bottom" in a and "break=bottom" not in b for b, a in changed)
    pcr9 = [[e.digests["sha256"] for e in _load(n)[0].events if e.pcr == 9]
            for n in ("boot2", "boot2-cfg-break")]
    assert [i for i, (b, a) in enumerate(zip(*pcr9, strict=True)) if b != a] == [1]
