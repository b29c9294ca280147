"""Prediction, explanation and coverage on the event log captured from the e2e boot.

Plain data: the log is the captured one; the boot images are real PE files on this machine
(systemd's stub, standing in for a kernel: any EFI application is measured the same way).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sealer.errors import MeasurementError
from sealer.measure import eventlog
from sealer.measure.coverage import coverage, coverage_warnings
from sealer.measure.difference import explain
from sealer.measure.eventlog import EventLog, parse
from sealer.measure.measurements import event_record, measurements_of, prefix, replay
from sealer.measure.pe import authenticode_digest, linux_load_options_digest
from sealer.measure.predict import NextBoot, predict
from sealer.pcrs import BANKS
from sealer.policy.approval import parse_approval, sign_approval

LOG_PATH = Path(__file__).resolve().parents[2] / "swtpm-fixtures/eventlogs/ovmf-secureboot-uki.bin"
LOG = parse(LOG_PATH.read_bytes())
SHA256 = BANKS["sha256"]
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
APPLICATION, INITRD_EVENT = 24, 34


@pytest.fixture
def kernel() -> Path:
    if not STUB.exists():
        pytest.skip(f"{STUB} (systemd-boot-efi) is not installed")
    return STUB


def without(log: EventLog, drop: set[int]) -> EventLog:
    return replace(log, events=tuple(e for e in log.events if e.number not in drop))


# ---------------------------------------------------------------------------------------------
# Prediction


def test_a_kernel_and_initrd_replace_exactly_their_events(kernel: Path, tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"another initramfs")
    prediction = predict(LOG, SHA256, NextBoot(kernel=kernel, initrd=initrd))
    new_app = authenticode_digest(kernel.read_bytes(), SHA256)
    new_initrd = hashlib.sha256(b"another initramfs").digest()
    assert [(c.pcr, c.event, c.new) for c in prediction.changes] == [
        (4, APPLICATION, new_app),
        (9, INITRD_EVENT, new_initrd),
    ]
    # Replaying by hand: the same extends with the two digests swapped.
    by_hand = eventlog.replay_digests(
        (
            (e.pcr, {APPLICATION: new_app, INITRD_EVENT: new_initrd}.get(e.number,
                                                                           e.digests["sha256"]))
            for e in LOG.events
            if e.type != eventlog.EV_NO_ACTION
        ),
        SHA256,
    )
    assert prediction.predicted == by_hand
    assert prediction.value(7) == LOG.replay(SHA256)[7]
    assert prediction.changed_pcrs() == [4, 9]
    # The stub file carries no signature: Secure Boot would refuse it, PCR 7 says why.
    assert "not signed" in prediction.unpredictable[7]


def test_without_secure_boot_the_signer_does_not_matter(kernel: Path) -> None:
    authority = {e.number for e in LOG.events if e.type == eventlog.EV_EFI_VARIABLE_AUTHORITY}
    prediction = predict(without(LOG, authority), SHA256, NextBoot(kernel=kernel))
    assert 7 not in prediction.unpredictable


def test_a_pcr_the_log_does_not_account_for_is_unpredictable(kernel: Path) -> None:
    live = {4: b"\x01" * 32, 11: LOG.replay(SHA256)[11]}
    prediction = predict(LOG, SHA256, NextBoot(kernel=kernel), live)
    assert set(prediction.unpredictable) == {4, 7}
    assert "not what the event log replays to" in prediction.unpredictable[4]


def test_a_log_without_a_boot_application_cannot_predict(kernel: Path) -> None:
    with pytest.raises(MeasurementError, match="no boot application in PCR 4"):
        predict(without(LOG, {APPLICATION}), SHA256, NextBoot(kernel=kernel))


def test_next_boot_takes_a_uki_or_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=r"a UKI, a kernel .* or a GRUB config"):
        NextBoot()
    with pytest.raises(MeasurementError, match="either a UKI or a kernel"):
        NextBoot(uki=tmp_path, kernel=tmp_path)
    with pytest.raises(MeasurementError, match="carries its own initrd"):
        NextBoot(uki=tmp_path, initrd=tmp_path)


def test_an_unreadable_image_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="cannot read the boot image"):
        predict(LOG, SHA256, NextBoot(kernel=tmp_path / "missing"))
    junk = tmp_path / "junk.efi"
    junk.write_bytes(b"MZ" + b"\0" * 10)
    with pytest.raises(MeasurementError):
        predict(LOG, SHA256, NextBoot(uki=junk))


def test_a_captured_update_boot_measured_what_sealer_computes() -> None:
    """Another captured boot, of a UKI whose digests were recorded at capture (the image itself,
    35 MB, is not kept): the firmware, systemd-stub and Linux measured exactly those."""
    captured = LOG_PATH.with_name("ovmf-secureboot-uki-v2.bin")
    meta = json.loads(captured.with_suffix(".json").read_text())
    log = parse(captured.read_bytes())
    replayed = log.replay(SHA256)
    for pcr in ("0", "2", "4", "7", "9", "11"):
        assert replayed[int(pcr)].hex() == meta["sha256"][pcr], pcr
    uki = meta["uki"]
    events = measurements_of(log, SHA256)
    [application] = [m for m in events if m.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert application.digest.hex() == uki["authenticode_sha256"]
    assert application.description == f"image of {uki['size']} bytes at \\EFI\\BOOT\\BOOTX64.EFI"
    assert [m.digest.hex() for m in events if m.pcr == 11] == uki["pcr11_sha256"]
    tagged = {e.tag: e.digests["sha256"] for e in log.events if e.pcr == 9}
    assert tagged[eventlog.LINUX_INITRD_TAG].hex() == uki["sections_sha256"][".initrd"]
    assert tagged[eventlog.LINUX_LOAD_OPTIONS_TAG] == linux_load_options_digest(
        uki["cmdline"].encode(), SHA256
    )


# ---------------------------------------------------------------------------------------------
# Explanation


def _approval(record_of: EventLog | None) -> list:  # type: ignore[type-arg]
    key = ec.generate_private_key(ec.SECP256R1())
    measurements = measurements_of(LOG, SHA256)
    values = {p: LOG.replay(SHA256)[p] for p in (4, 7)}
    record = event_record(measurements, (4, 7)) if record_of is not None else None
    signed = sign_approval(key, b"\0\x0b" + b"k" * 32, SHA256, [values], "enroll", events=[record])
    return [parse_approval(signed.to_json())]  # through JSON, as the token keeps it


def test_explain_names_the_event_that_changed() -> None:
    other = b"\x42" * 32
    data = LOG_PATH.read_bytes()
    approvals = _approval(LOG)
    changed = parse(data)
    events = tuple(
        replace(e, digests={**e.digests, "sha256": other}) if e.number == APPLICATION else e
        for e in changed.events
    )
    changed = replace(changed, events=events)
    measurements = measurements_of(changed, SHA256)
    replayed = replay(measurements, SHA256, 0)
    current = {p: replayed[p] for p in (4, 7)}
    [state] = explain(approvals, current, measurements, replayed, SHA256)
    [difference] = state.differences
    assert difference.pcr == 4 and difference.recorded and difference.log_replays
    assert [m.event for m in difference.unapproved] == [APPLICATION]
    assert difference.missing == 1
    assert prefix(other) == "4242424242424242"


def test_explain_without_a_record_lists_this_boots_events() -> None:
    approvals = _approval(None)
    measurements = measurements_of(LOG, SHA256)
    current = {4: b"\0" * 32, 7: LOG.replay(SHA256)[7]}
    [state] = explain(approvals, current, measurements, LOG.replay(SHA256), SHA256)
    [difference] = state.differences
    assert not difference.recorded and not difference.log_replays
    assert [m.event for m in difference.events] == [15, 20, APPLICATION]


def test_a_damaged_event_record_is_ignored_not_fatal() -> None:
    [approval] = _approval(LOG)
    doc = approval.to_json()
    damages: list[object] = [{"4": "x"}, ["x"], {"²": []}, {"4": [1]}, "text"]
    for damage in damages:
        approval_doc = {**doc, "events": [damage]}
        assert parse_approval(approval_doc).events == ()
    assert parse_approval({**doc, "events": None}).events == ()
    assert parse_approval({**doc, "tpm_boot": "7"}).tpm_boot is None
    assert parse_approval({**doc, "tpm_boot": 7}).tpm_boot == 7


# ---------------------------------------------------------------------------------------------
# Coverage


def test_a_uki_boot_measures_everything_into_pcr_4() -> None:
    found = coverage(LOG)
    assert (found.kernel, found.initrd, found.cmdline) == ((4, 11), (4, 9, 11), (4, 9, 11))
    assert coverage_warnings(LOG, (4, 7)) == []
    assert coverage_warnings(LOG, (7, 9)) == [
        "--pcrs 7,9 leaves the kernel unmeasured: on this boot the firmware and systemd-stub "
        "measure it into PCR 4,11; add PCR 4 to bind it"
    ]


def test_a_kernel_boot_without_an_initrd_event_is_warned_about() -> None:
    stub_events = {e.number for e in LOG.events if e.pcr in (9, 11)}
    direct = without(LOG, stub_events)
    found = coverage(direct)
    assert (found.kernel, found.initrd, found.cmdline) == ((4,), (), ())
    warnings = coverage_warnings(direct, (4, 7))
    assert warnings == [
        "this boot measures the initrd into no PCR, so no binding can protect it",
        "this boot measures the kernel command line into no PCR, so no binding can protect it",
    ]
