"""Unit tests for sealer.luks.header: the binary probe and cryptsetup's JSON metadata."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import pytest

from sealer.errors import DeviceError
from sealer.luks.header import MAX_KEYSLOTS, PROBE_LENGTH, parse_metadata, probe

UUID = "8a6d3d5e-1f2b-4c3d-9e8f-0a1b2c3d4e5f"


def luks_bytes(version: int, uuid: str = UUID, length: int = 4096) -> bytes:
    """The start of a LUKS binary header: magic, version, label..., UUID at offset 168."""
    head = b"LUKS\xba\xbe" + struct.pack(">H", version)
    head += b"\x00" * (168 - len(head))
    head += uuid.encode("ascii").ljust(40, b"\x00")
    return head.ljust(length, b"\x00")


# ---------------------------------------------------------------------------------------------
# probe


def test_probe_reads_version_and_uuid_of_luks2() -> None:
    result = probe("/dev/sda2", luks_bytes(2))
    assert result.version == 2
    assert result.uuid == UUID


def test_probe_accepts_exactly_probe_length_bytes() -> None:
    assert PROBE_LENGTH == 208
    assert probe("img", luks_bytes(2, length=208)).uuid == UUID


@pytest.mark.parametrize(
    "uuid",
    [
        "u" * 40,  # fills all forty bytes
        "../../../../../../tmp/x",  # a path (issue 15): it would name the escrow record
        UUID[:8],  # stopped at a NUL
        UUID + "/",
        UUID.replace("-", ""),  # parses as a UUID elsewhere, but is not RFC 4122's text
        "{" + UUID[:-2] + "}",
        UUID[:-1] + "\n",
        "",
    ],
)
def test_probe_refuses_a_uuid_that_is_not_one(uuid: str) -> None:
    with pytest.raises(DeviceError, match=r"UUID .* is not a UUID") as info:
        probe("img", luks_bytes(2, uuid=uuid))
    assert info.value.hint is not None and "luksUUID" in info.value.hint
    assert "\n" not in info.value.one_line()


def test_probe_accepts_an_upper_case_uuid() -> None:
    assert probe("img", luks_bytes(2, uuid=UUID.upper())).uuid == UUID.upper()


def test_probe_stops_the_uuid_at_the_first_nul() -> None:
    raw = bytearray(luks_bytes(2))
    raw[168 + 8] = 0
    with pytest.raises(DeviceError, match=f"UUID '{UUID[:8]}' is not a UUID"):
        probe("img", bytes(raw))


def test_probe_refuses_luks1_naming_it() -> None:
    with pytest.raises(DeviceError, match="LUKS1") as info:
        probe("/dev/sdb1", luks_bytes(1))
    assert "/dev/sdb1" in info.value.message
    assert info.value.hint is not None
    assert "convert" in info.value.hint


@pytest.mark.parametrize("version", [0, 3, 0x0200, 0xFFFF])
def test_probe_refuses_unknown_versions(version: int) -> None:
    with pytest.raises(DeviceError, match=f"unknown LUKS version {version}"):
        probe("img", luks_bytes(version))


def test_probe_refuses_random_bytes() -> None:
    data = b"\x00" + os.urandom(4095)  # never starts with the magic
    with pytest.raises(DeviceError, match="not a LUKS volume"):
        probe("img", data)


@pytest.mark.parametrize("length", [0, 6, 8, 207])
def test_probe_refuses_short_input(length: int) -> None:
    with pytest.raises(DeviceError, match="not a LUKS volume"):
        probe("img", luks_bytes(2)[:length])


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x00" * 4096, id="zeros"),
        pytest.param(b"SKUL\xba\xbe" + luks_bytes(2)[6:], id="luks2-on-disk-secondary-magic"),
        pytest.param(b"LUKS\xbe\xba" + luks_bytes(2)[6:], id="byte-swapped-magic"),
        pytest.param(b"luks\xba\xbe" + luks_bytes(2)[6:], id="lowercase-magic"),
    ],
)
def test_probe_refuses_wrong_magic(data: bytes) -> None:
    with pytest.raises(DeviceError):
        probe("img", data)


# ---------------------------------------------------------------------------------------------
# parse_metadata

METADATA: dict[str, Any] = {
    "keyslots": {
        "0": {
            "type": "luks2",
            "key_size": 64,
            "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": "32768",
                "size": "258048",
                "encryption": "aes-xts-plain64",
                "key_size": 64,
            },
            "kdf": {
                "type": "pbkdf2",
                "hash": "sha256",
                "iterations": 1000,
                "salt": "c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ=",
            },
        },
        "1": {
            "type": "luks2",
            "key_size": 64,
            "af": {"type": "luks1", "stripes": 4000, "hash": "sha256"},
            "area": {
                "type": "raw",
                "offset": "290816",
                "size": "258048",
                "encryption": "aes-xts-plain64",
                "key_size": 64,
            },
            "kdf": {
                "type": "argon2id",
                "time": 4,
                "memory": 32,
                "cpus": 1,
                "salt": "c2FsdHNhbHRzYWx0c2FsdHNhbHRzYWx0c2FsdHNhbHQ=",
            },
        },
    },
    "tokens": {
        "0": {
            "type": "sealer-tpm2",
            "keyslots": ["1"],
            "version": 1,
            "pcrs": [4, 7],
        },
        "1": {
            "type": "systemd-tpm2",
            "keyslots": [],
            "tpm2-pcrs": [7],
        },
    },
    "segments": {
        "0": {
            "type": "crypt",
            "offset": "16777216",
            "size": "dynamic",
            "iv_tweak": "0",
            "encryption": "aes-xts-plain64",
            "sector_size": 512,
        }
    },
    "digests": {
        "0": {
            "type": "pbkdf2",
            "keyslots": ["0", "1"],
            "segments": ["0"],
            "hash": "sha256",
            "iterations": 1000,
            "salt": "c2FsdA==",
            "digest": "ZGlnZXN0",
        }
    },
    "config": {"json_size": "12288", "keyslots_size": "16744448"},
}


def parse(doc: Any) -> Any:
    return parse_metadata("/dev/vda3", UUID, json.dumps(doc))


def test_parse_metadata_reads_keyslots_with_their_kdf() -> None:
    header = parse(METADATA)
    assert header.device == "/dev/vda3"
    assert header.uuid == UUID
    assert sorted(header.keyslots) == [0, 1]
    assert header.keyslots[0].slot == 0
    assert header.keyslots[0].kdf == "pbkdf2"
    assert header.keyslots[1].kdf == "argon2id"


def test_parse_metadata_reads_tokens() -> None:
    header = parse(METADATA)
    assert sorted(header.tokens) == [0, 1]
    assert header.tokens[0].type == "sealer-tpm2"
    assert header.tokens[0].keyslots == (1,)
    assert header.tokens[0].data == METADATA["tokens"]["0"]
    assert header.tokens[1].type == "systemd-tpm2"
    assert header.tokens[1].keyslots == ()


def test_free_keyslot_is_the_lowest_unused() -> None:
    assert parse(METADATA).free_keyslot() == 2


def test_free_token_id_is_the_lowest_unused() -> None:
    assert parse(METADATA).free_token_id() == 2


def test_keyslots_without_token_are_the_passphrase_slots() -> None:
    assert parse(METADATA).keyslots_without_token() == [0]


def test_tokens_of_type_filters_by_type() -> None:
    header = parse(METADATA)
    assert [t.token_id for t in header.tokens_of_type("sealer-tpm2")] == [0]
    assert [t.token_id for t in header.tokens_of_type("systemd-tpm2")] == [1]
    assert header.tokens_of_type("systemd-fido2") == []


def test_tokens_of_type_are_sorted_by_id() -> None:
    doc = {
        "keyslots": {},
        "tokens": {
            "5": {"type": "sealer-tpm2", "keyslots": []},
            "2": {"type": "sealer-tpm2", "keyslots": []},
            "3": {"type": "other", "keyslots": []},
        },
    }
    assert [t.token_id for t in parse(doc).tokens_of_type("sealer-tpm2")] == [2, 5]


def test_free_ids_fill_gaps() -> None:
    doc = {
        "keyslots": {"0": {"kdf": {"type": "pbkdf2"}}, "2": {"kdf": {"type": "pbkdf2"}}},
        "tokens": {"1": {"type": "x", "keyslots": []}},
    }
    header = parse(doc)
    assert header.free_keyslot() == 1
    assert header.free_token_id() == 0


def test_empty_metadata_has_everything_free() -> None:
    header = parse({})
    assert header.keyslots == {}
    assert header.tokens == {}
    assert header.free_keyslot() == 0
    assert header.free_token_id() == 0
    assert header.keyslots_without_token() == []


def test_null_sections_are_treated_as_empty() -> None:
    header = parse({"keyslots": None, "tokens": None})
    assert header.free_keyslot() == 0


def test_full_header_has_no_free_keyslot_or_token() -> None:
    doc = {
        "keyslots": {str(n): {"kdf": {"type": "pbkdf2"}} for n in range(MAX_KEYSLOTS)},
        "tokens": {str(n): {"type": "x", "keyslots": [str(n)]} for n in range(32)},
    }
    header = parse(doc)
    assert header.free_keyslot() is None
    assert header.free_token_id() is None
    assert header.keyslots_without_token() == []


def test_keyslot_without_kdf_has_unknown_kdf() -> None:
    assert parse({"keyslots": {"0": {}}}).keyslots[0].kdf == "?"
    assert parse({"keyslots": {"0": "junk"}}).keyslots[0].kdf == "?"


def test_token_that_is_not_an_object_is_skipped() -> None:
    header = parse({"tokens": {"0": "junk", "1": {"type": "x", "keyslots": ["0"]}}})
    assert sorted(header.tokens) == [1]


def test_token_claiming_several_keyslots() -> None:
    doc = {
        "keyslots": {str(n): {"kdf": {"type": "pbkdf2"}} for n in range(4)},
        "tokens": {"0": {"type": "x", "keyslots": ["1", "3"]}},
    }
    header = parse(doc)
    assert header.tokens[0].keyslots == (1, 3)
    assert header.keyslots_without_token() == [0, 2]


@pytest.mark.parametrize("text", ["", "{", "not json", '{"keyslots": }', "\x00"])
def test_malformed_json_raises_device_error(text: str) -> None:
    with pytest.raises(DeviceError, match="unreadable"):
        parse_metadata("/dev/vda3", UUID, text)


@pytest.mark.parametrize("text", ["[]", "null", '"keyslots"', "42", "true"])
def test_json_that_is_not_an_object_raises_device_error(text: str) -> None:
    with pytest.raises(DeviceError, match="not a JSON object"):
        parse_metadata("/dev/vda3", UUID, text)


@pytest.mark.parametrize("slot_id", ["x", "", "1.5", "0x1"])
def test_bad_keyslot_id_raises_device_error(slot_id: str) -> None:
    with pytest.raises(DeviceError, match="malformed keyslot id"):
        parse({"keyslots": {slot_id: {"kdf": {"type": "pbkdf2"}}}})


@pytest.mark.parametrize("token_id", ["x", "", "1.5"])
def test_bad_token_id_raises_device_error(token_id: str) -> None:
    with pytest.raises(DeviceError, match="malformed token id"):
        parse({"tokens": {token_id: {"type": "x", "keyslots": []}}})


@pytest.mark.parametrize("slot", ["x", None, "1.5"])
def test_bad_keyslot_reference_in_a_token_raises_device_error(slot: Any) -> None:
    with pytest.raises(DeviceError, match="malformed keyslot id"):
        parse({"tokens": {"0": {"type": "x", "keyslots": [slot]}}})


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param({"keyslots": ["0"]}, id="keyslots-list"),
        pytest.param({"tokens": "0"}, id="tokens-string"),
        pytest.param({"tokens": {"0": {"type": "x", "keyslots": 5}}}, id="token-keyslots-int"),
    ],
)
def test_malformed_sections_raise_device_error(doc: dict[str, Any]) -> None:
    with pytest.raises(DeviceError):
        parse(doc)


@pytest.mark.parametrize("kdf", [None, "pbkdf2", 5])
def test_a_malformed_kdf_is_shown_as_unknown(kdf: Any) -> None:
    # Only the status display reads the KDF: an odd one must not hide the rest of the header.
    header = parse({"keyslots": {"0": {"kdf": kdf}}})
    assert header.keyslots[0].kdf == "?"
