"""Unit tests for sealer.pcrs: banks, reset values, and the --pcrs / --pcr grammar."""

from __future__ import annotations

import hashlib

import pytest

from sealer.errors import UsageError
from sealer.pcrs import BANKS, PCR_COUNT, bank_named, parse_pcr_list, parse_pcr_value

SHA1 = BANKS["sha1"]
SHA256 = BANKS["sha256"]

# ---------------------------------------------------------------------------------------------
# Bank


@pytest.mark.parametrize(
    ("name", "alg_id", "size"),
    [("sha1", 0x0004, 20), ("sha256", 0x000B, 32), ("sha384", 0x000C, 48), ("sha512", 0x000D, 64)],
)
def test_banks_have_tpm_algorithm_ids_and_sizes(name: str, alg_id: int, size: int) -> None:
    bank = BANKS[name]
    assert bank.name == name
    assert bank.alg_id == alg_id
    assert bank.size == size


@pytest.mark.parametrize("name", sorted(BANKS))
def test_bank_hash_matches_hashlib(name: str) -> None:
    data = b"sealer test data"
    assert BANKS[name].hash(data) == hashlib.new(name, data).digest()
    assert len(BANKS[name].hash(data)) == BANKS[name].size


@pytest.mark.parametrize("name", sorted(BANKS))
@pytest.mark.parametrize("pcr", range(PCR_COUNT))
def test_initial_value_is_ones_for_pcrs_17_to_22_and_zeros_elsewhere(name: str, pcr: int) -> None:
    bank = BANKS[name]
    expected_byte = b"\xff" if 17 <= pcr <= 22 else b"\x00"
    assert bank.initial_value(pcr) == expected_byte * bank.size


def test_initial_value_boundaries_16_and_23_are_zero() -> None:
    assert SHA256.initial_value(16) == bytes(32)
    assert SHA256.initial_value(23) == bytes(32)
    assert SHA256.initial_value(17) == b"\xff" * 32
    assert SHA256.initial_value(22) == b"\xff" * 32


def test_extend_is_hash_of_old_value_then_digest() -> None:
    old = SHA256.initial_value(7)
    measurement = hashlib.sha256(b"event").digest()
    assert SHA256.extend(old, measurement) == hashlib.sha256(old + measurement).digest()


def test_extend_is_order_sensitive() -> None:
    a = hashlib.sha256(b"a").digest()
    b = hashlib.sha256(b"b").digest()
    start = SHA256.initial_value(4)
    assert SHA256.extend(SHA256.extend(start, a), b) != SHA256.extend(SHA256.extend(start, b), a)


def test_extend_in_sha1_bank_uses_sha1() -> None:
    old = SHA1.initial_value(0)
    measurement = hashlib.sha1(b"event").digest()
    assert SHA1.extend(old, measurement) == hashlib.sha1(old + measurement).digest()


# ---------------------------------------------------------------------------------------------
# bank_named


@pytest.mark.parametrize("text", ["sha256", "SHA256", "Sha256"])
def test_bank_named_is_case_insensitive(text: str) -> None:
    assert bank_named(text) is SHA256


@pytest.mark.parametrize("text", ["md5", "", "sha3_256", "sha-256"])
def test_bank_named_refuses_unknown_banks_with_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        bank_named(text)
    assert info.value.hint is not None
    assert "sha256" in info.value.hint


# ---------------------------------------------------------------------------------------------
# parse_pcr_list


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4,7", (4, 7)),
        ("7+4", (4, 7)),
        ("7,4", (4, 7)),
        ("7", (7,)),
        ("0", (0,)),
        ("23", (23,)),
        ("4,7,4,7", (4, 7)),
        ("4+7,4", (4, 7)),
        (" 4 , 7 ", (4, 7)),
        ("4,,7", (4, 7)),
        ("15,4,7", (4, 7, 15)),
    ],
)
def test_parse_pcr_list_sorts_and_deduplicates(text: str, expected: tuple[int, ...]) -> None:
    assert parse_pcr_list(text) == expected


@pytest.mark.parametrize("text", ["", " ", ",", "+", ", +"])
def test_parse_pcr_list_refuses_empty_list(text: str) -> None:
    with pytest.raises(UsageError, match="no PCRs"):
        parse_pcr_list(text)


@pytest.mark.parametrize(
    "text", ["24", "4,24", "100", "-1", "x", "4,x", "7a", "0x7", "4.0", "4;7", "1e1"]
)
def test_parse_pcr_list_refuses_bad_indices_with_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pcr_list(text)


@pytest.mark.parametrize("text", ["\u00b2", "7\u00b2"])
def test_parse_pcr_list_refuses_unicode_digits_with_usage_error(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pcr_list(text)


# ---------------------------------------------------------------------------------------------
# parse_pcr_value

HEX32 = "ab" * 32
HEX20 = "cd" * 20


def test_parse_pcr_value_with_explicit_bank() -> None:
    assert parse_pcr_value(f"7=sha256:{HEX32}", SHA1) == (7, SHA256, bytes.fromhex(HEX32))


def test_parse_pcr_value_without_bank_uses_default_bank() -> None:
    assert parse_pcr_value(f"7={HEX32}", SHA256) == (7, SHA256, bytes.fromhex(HEX32))
    assert parse_pcr_value(f"4={HEX20}", SHA1) == (4, SHA1, bytes.fromhex(HEX20))


def test_parse_pcr_value_accepts_uppercase_hex_and_bank() -> None:
    index, bank, value = parse_pcr_value(f"15=SHA256:{HEX32.upper()}", SHA1)
    assert (index, bank, value) == (15, SHA256, bytes.fromhex(HEX32))


def test_parse_pcr_value_accepts_surrounding_whitespace() -> None:
    assert parse_pcr_value(f" 7 = {HEX32} ", SHA256) == (7, SHA256, bytes.fromhex(HEX32))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"7=sha256:{HEX20}", id="sha1-length-in-sha256-bank"),
        pytest.param(f"7={HEX32}00", id="one-byte-too-long"),
        pytest.param(f"7={HEX32[:-2]}", id="one-byte-too-short"),
        pytest.param("7=", id="empty-value"),
        pytest.param("7=sha256:", id="empty-value-with-bank"),
    ],
)
def test_parse_pcr_value_refuses_wrong_length(text: str) -> None:
    with pytest.raises(UsageError, match="bytes"):
        parse_pcr_value(text, SHA256)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("7=" + "zz" * 32, id="non-hex"),
        pytest.param("7=" + "a" * 63, id="odd-length"),
        pytest.param("7=sha256:0x" + "ab" * 31, id="0x-prefix"),
        pytest.param("7=" + "\u00e9" * 64, id="non-ascii"),
    ],
)
def test_parse_pcr_value_refuses_bad_hex(text: str) -> None:
    with pytest.raises(UsageError, match="not hex"):
        parse_pcr_value(text, SHA256)


@pytest.mark.parametrize("text", ["7", "", HEX32, f"7:sha256:{HEX32}"])
def test_parse_pcr_value_refuses_missing_equals(text: str) -> None:
    with pytest.raises(UsageError, match="no '='"):
        parse_pcr_value(text, SHA256)


@pytest.mark.parametrize(
    "text", [f"24={HEX32}", f"-1={HEX32}", f"x={HEX32}", f"={HEX32}", f"md5:7={HEX32}"]
)
def test_parse_pcr_value_refuses_bad_index(text: str) -> None:
    with pytest.raises(UsageError):
        parse_pcr_value(text, SHA256)


def test_parse_pcr_value_refuses_unknown_bank() -> None:
    with pytest.raises(UsageError, match="unknown PCR bank"):
        parse_pcr_value(f"7=md5:{HEX32}", SHA256)
