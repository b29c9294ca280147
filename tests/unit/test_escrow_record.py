"""Unit tests for sealer.escrow.record: the escrow record's format, reading and writing."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from sealer.errors import DeviceError, StateError, TokenError, UsageError
from sealer.escrow.record import (
    MAX_RECORD_BYTES,
    EscrowRecord,
    find_records,
    parse_record,
    read_record,
    record_name,
    write_record,
)
from sealer.host import checkpoint

UUID = "564fedb6-c653-4f75-9d78-8a760590c397"
MACHINE = "3d1219c7c4c5404aaa1f6d2a48adfda4"


def a_record(**changes: Any) -> EscrowRecord:
    fields: dict[str, Any] = {
        "machine_id": MACHINE, "hostname": "web1", "device": "/dev/sda2", "volume_uuid": UUID,
        "token": 0, "keyslot": 2, "created": "2026-11-23T17:28:22Z",
        "certificate_sha256": "ab" * 32, "certificate_subject": "CN=Org escrow,O=Org",
        "cms": "-----BEGIN CMS-----\nMIIB\n-----END CMS-----\n",
    }
    fields.update(changes)
    return EscrowRecord(**fields)


def test_the_json_has_exactly_the_documented_fields_and_reads_back() -> None:
    record = a_record()
    doc = record.to_json()
    assert set(doc) == {
        "type", "version", "machine_id", "hostname", "device", "volume_uuid", "token",
        "keyslot", "created", "certificate_sha256", "certificate_subject", "cms", "keyslot_salt",
    }
    assert doc["type"] == "sealer-escrow" and doc["version"] == 2
    assert parse_record(json.loads(json.dumps(doc))) == record


def test_version_1_records_still_read() -> None:
    doc = {**a_record().to_json(), "version": 1}
    assert parse_record(doc) == a_record(version=1)


def test_the_file_name_carries_machine_volume_and_keyslot() -> None:
    assert a_record().file_name == f"{MACHINE}-{UUID}-keyslot2.json"
    assert record_name("m", UUID, 17) == f"m-{UUID}-keyslot17.json"


def test_unknown_fields_are_ignored() -> None:
    doc = {**a_record().to_json(), "added_later": [1, 2]}
    assert parse_record(doc) == a_record()


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"type": "sealer-tpm2"}, "its type is 'sealer-tpm2'"),
        ({"type": None}, "its type is None"),
        ({"version": 3}, "it has version 3; this sealer reads versions 1 and 2"),
        ({"version": "1"}, "it has version '1'"),
        ({"version": True}, "it has version True"),
        ({"machine_id": ""}, "its machine_id is missing"),
        ({"machine_id": "../../etc/passwd"}, "its machine_id is not a machine id"),
        ({"hostname": 7}, "its hostname is missing or not a string"),
        ({"device": None}, "its device is missing"),
        ({"volume_uuid": "not-a-uuid"}, "its volume_uuid is not a UUID"),
        ({"token": -1}, "its token is not a number from 0 to 31"),
        ({"token": True}, "its token is not a number"),
        ({"keyslot": 32}, "its keyslot is not a number from 0 to 31"),
        ({"keyslot": "2"}, "its keyslot is not a number"),
        ({"created": "yesterday"}, "its created time is not ISO 8601"),
        ({"created": "2026-11-23T17:28:22"}, "its created time is not in UTC"),
        ({"created": "2026-11-23T17:28:22+01:00"}, "its created time is not in UTC"),
        ({"certificate_sha256": "AB" * 32}, "its certificate_sha256 is not 64 lowercase hex"),
        ({"certificate_sha256": "ab" * 20}, "its certificate_sha256 is not 64"),
        ({"certificate_subject": ""}, "its certificate_subject is missing"),
        ({"cms": "-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n"}, "its cms field is not"),
    ],
)
def test_each_bad_field_is_named(change: dict[str, Any], complaint: str) -> None:
    doc = {**a_record().to_json(), **change}
    with pytest.raises(TokenError) as raised:
        parse_record(doc)
    assert raised.value.message.startswith(complaint), raised.value.message


@pytest.mark.parametrize("field", ["hostname", "cms", "token", "keyslot", "type", "version"])
def test_a_missing_field_is_a_token_error(field: str) -> None:
    doc = a_record().to_json()
    del doc[field]
    with pytest.raises(TokenError):
        parse_record(doc)


def test_not_an_object() -> None:
    with pytest.raises(TokenError, match="not a JSON object"):
        parse_record([a_record().to_json()])


def test_write_is_0600_in_a_0700_directory_and_announced(tmp_path: Path) -> None:
    seen: list[str] = []
    stop = checkpoint.observe(seen.append)
    try:
        path = write_record(tmp_path / "escrow", a_record())
    finally:
        stop()
    assert seen == [f"state: write escrow record {a_record().file_name}"]
    assert path == tmp_path / "escrow" / a_record().file_name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert read_record(path) == a_record()


def test_a_new_key_in_the_same_keyslot_replaces_the_record(tmp_path: Path) -> None:
    write_record(tmp_path, a_record(hostname="old"))
    path = write_record(tmp_path, a_record(hostname="new"))
    assert read_record(path).hostname == "new"
    assert len(list(tmp_path.iterdir())) == 1


def test_an_unwritable_directory_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError) as raised:
        write_record(blocker / "escrow", a_record())
    assert "--escrow-dir" in str(raised.value.hint)


def test_reading_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        read_record(tmp_path / "absent.json")
    cases = {
        "not-json.json": b"{",
        "binary.json": b"\xff\xfe",
        "huge.json": b" " * (MAX_RECORD_BYTES + 1),
        "wrong.json": json.dumps({**a_record().to_json(), "keyslot": None}).encode(),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(TokenError) as raised:
            read_record(tmp_path / name)
        assert raised.value.message.startswith(f"{tmp_path / name} is not a sealer escrow record")
        assert "\n" not in raised.value.one_line()


def test_find_records_only_valid_ones_for_that_volume_and_keyslot(tmp_path: Path) -> None:
    write_record(tmp_path, a_record())
    write_record(tmp_path, a_record(machine_id="other", keyslot=3))
    write_record(tmp_path, a_record(volume_uuid="00000000-0000-0000-0000-000000000000"))
    (tmp_path / f"broken-{UUID}-keyslot3.json").write_text("{}")
    # A valid record under a name that does not match its content escrows nothing here.
    (tmp_path / f"m-{UUID}-keyslot5.json").write_text(json.dumps(a_record().to_json()))
    assert [r.machine_id for r in find_records(tmp_path, UUID, 2)] == [MACHINE]
    assert [r.machine_id for r in find_records(tmp_path, UUID, 3)] == ["other"]
    assert find_records(tmp_path, UUID, 5) == []
    assert find_records(tmp_path, UUID, 4) == []


@pytest.mark.parametrize("hostile", ["/../../../escaped", "*", UUID + "/..", UUID.replace("-", "")])
def test_a_uuid_that_is_not_one_never_names_a_record(hostile: str, tmp_path: Path) -> None:
    """Issue 15: the UUID comes from an attacker-writable header; read_header refuses it, and
    the record's name and the search for records refuse it again."""
    with pytest.raises(DeviceError, match="is not a UUID"):
        record_name(MACHINE, hostile, 2)
    with pytest.raises(DeviceError):
        write_record(tmp_path / "escrow", a_record(volume_uuid=hostile))
    assert not (tmp_path / "escrow").exists() and list(tmp_path.rglob("*.json")) == []
    write_record(tmp_path / "escrow", a_record())
    assert find_records(tmp_path / "escrow", "*", 2) == []
