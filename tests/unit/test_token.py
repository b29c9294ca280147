"""Unit tests for sealer.luks.token: the sealer-tpm2 token's JSON, both ways."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sealer.errors import TokenError
from sealer.luks.token import (
    LEGACY_VERSION,
    TOKEN_TYPE,
    TOKEN_VERSION,
    PolicyKeyRef,
    SealerToken,
    parse_token,
)

PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"
APPROVAL: dict[str, Any] = {
    "version": 1,
    "pcr_bank": "sha256",
    "branches": [{"7": "00" * 32}],
    "signature": "MEUCIQ==",
}


def make_token(*, pin_salt: bytes | None = b"\x01" * 16, keys: int = 1) -> SealerToken:
    return SealerToken(
        keyslot=1,
        srk_handle=0x81000001,
        srk_name=bytes.fromhex("000b") + b"\xaa" * 32,
        pcr_bank="sha256",
        pcrs=(4, 7),
        cap_pcr=15,
        sealed_public=b"\x00\x4e public area",
        sealed_private=b"\x00\x7e private area",
        pin_salt=pin_salt,
        policy_keys=tuple(
            PolicyKeyRef(
                role="machine" if i == 0 else "vendor",
                public_pem=PEM,
                name=bytes.fromhex("000b") + bytes([i]) * 32,
            )
            for i in range(keys)
        ),
        approvals=(APPROVAL,),
        created="2024-01-02T03:04:05Z",
        enrollment_id=b"\x5e" * 16,
    )


@pytest.fixture
def doc() -> dict[str, Any]:
    return make_token().to_json()


def refuse(doc: dict[str, Any]) -> TokenError:
    with pytest.raises(TokenError) as info:
        parse_token(0, doc)
    return info.value


# ---------------------------------------------------------------------------------------------
# Round trip


@pytest.mark.parametrize("pin_salt", [b"\x01" * 16, None])
@pytest.mark.parametrize("keys", [1, 2])
def test_to_json_then_parse_token_round_trips(pin_salt: bytes | None, keys: int) -> None:
    token = make_token(pin_salt=pin_salt, keys=keys)
    assert parse_token(0, token.to_json()) == token


def test_round_trip_survives_a_json_text_round_trip() -> None:
    token = make_token()
    assert parse_token(0, json.loads(json.dumps(token.to_json()))) == token


def test_to_json_layout(doc: dict[str, Any]) -> None:
    assert doc["type"] == TOKEN_TYPE == "sealer-tpm2"
    assert doc["keyslots"] == ["1"]
    assert doc["version"] == TOKEN_VERSION
    assert doc["srk_handle"] == "0x81000001"
    assert doc["pcrs"] == [4, 7]
    assert doc["cap_pcr"] == 15
    assert doc["policy_keys"][0]["name"] == "000b" + "00" * 32


def test_has_pin_follows_pin_salt() -> None:
    assert make_token(pin_salt=b"salt").has_pin
    assert not make_token(pin_salt=None).has_pin


def test_pin_salt_null_means_no_pin(doc: dict[str, Any]) -> None:
    doc["pin_salt"] = None
    assert parse_token(0, doc).pin_salt is None


def test_unknown_fields_land_in_extra(doc: dict[str, Any]) -> None:
    doc["x-future"] = {"a": 1}
    assert parse_token(0, doc).extra == {"x-future": {"a": 1}}


def test_created_is_optional(doc: dict[str, Any]) -> None:
    del doc["created"]
    assert parse_token(0, doc).created == ""


# ---------------------------------------------------------------------------------------------
# Every field, property style

REQUIRED = [
    "type", "keyslots", "version", "srk_handle", "srk_name", "pcr_bank", "pcrs", "cap_pcr",
    "sealed_public", "sealed_private", "policy_keys", "approvals", "enrollment_id",
]
OPTIONAL = ["pin_salt", "created"]
JUNK: list[Any] = [None, 123, [], "x"]
NON_STRINGS: list[Any] = [None, 123, []]
# Junk values the parser accepts on purpose: no PIN; a bank it cannot know yet (unlock and
# status refuse it with a TokenError of their own); no user PCRs (only the cap PCR); no
# approval yet; and "created", which is free text.
ACCEPTED = {("pin_salt", None), ("pcr_bank", "x"), ("pcrs", ()), ("approvals", ())}


def test_the_field_lists_cover_to_json(doc: dict[str, Any]) -> None:
    assert sorted(REQUIRED + OPTIONAL) == sorted(doc)


def test_deleting_each_required_field_raises_token_error(doc: dict[str, Any]) -> None:
    for key in REQUIRED:
        broken = copy.deepcopy(doc)
        del broken[key]
        with pytest.raises(TokenError):
            parse_token(0, broken)


def test_deleting_each_optional_field_is_accepted(doc: dict[str, Any]) -> None:
    for key in OPTIONAL:
        broken = copy.deepcopy(doc)
        del broken[key]
        parse_token(0, broken)


def test_replacing_each_field_with_junk_raises_token_error(doc: dict[str, Any]) -> None:
    for key in [*REQUIRED, "pin_salt"]:
        for junk in JUNK:
            broken = copy.deepcopy(doc)
            broken[key] = copy.deepcopy(junk)
            frozen_junk = tuple(junk) if isinstance(junk, list) else junk
            if (key, frozen_junk) in ACCEPTED:
                parse_token(0, broken)
                continue
            try:
                parse_token(0, broken)
            except TokenError:
                continue
            pytest.fail(f"{key}={junk!r} was accepted")


def test_replacing_each_policy_key_field_with_junk_raises_token_error(
    doc: dict[str, Any],
) -> None:
    for key in ("role", "public_pem", "name"):
        for junk in NON_STRINGS:
            broken = copy.deepcopy(doc)
            broken["policy_keys"][0][key] = junk
            with pytest.raises(TokenError):
                parse_token(0, broken)
        broken = copy.deepcopy(doc)
        del broken["policy_keys"][0][key]
        with pytest.raises(TokenError):
            parse_token(0, broken)


# ---------------------------------------------------------------------------------------------
# Specific refusals


@pytest.mark.parametrize("token_type", ["systemd-tpm2", "sealer-tpm", "SEALER-TPM2", ""])
def test_wrong_type_string_raises_token_error(doc: dict[str, Any], token_type: str) -> None:
    doc["type"] = token_type
    refuse(doc)


@pytest.mark.parametrize("version", [0, 3, 99, "1", "2", "v2", True, 2.0])
def test_unknown_version_raises_token_error_naming_it(doc: dict[str, Any], version: Any) -> None:
    doc["version"] = version
    error = refuse(doc)
    assert repr(version) in error.message
    assert "sealer token 0" in error.message


@pytest.mark.parametrize("keyslots", [[], ["1", "2"], ["x"], ["-1"], [""], [None], [["1"]]])
def test_keyslots_must_name_exactly_one_numeric_slot(doc: dict[str, Any], keyslots: Any) -> None:
    doc["keyslots"] = keyslots
    refuse(doc)


@pytest.mark.parametrize("field", ["sealed_public", "sealed_private", "pin_salt"])
@pytest.mark.parametrize("text", ["not base64!", "abc", "AA=A", "A"])
def test_bad_base64_raises_token_error(doc: dict[str, Any], field: str, text: str) -> None:
    doc[field] = text
    refuse(doc)


@pytest.mark.parametrize("text", ["zz", "abc", "0x00", "\u00e9\u00e9"])
def test_bad_hex_srk_name_raises_token_error(doc: dict[str, Any], text: str) -> None:
    doc["srk_name"] = text
    refuse(doc)


@pytest.mark.parametrize("text", ["zz", "abc", "\u00e9\u00e9"])
def test_bad_hex_policy_key_name_raises_token_error(doc: dict[str, Any], text: str) -> None:
    doc["policy_keys"][0]["name"] = text
    refuse(doc)


@pytest.mark.parametrize("handle", ["", "0x", "81000001h", "handle", "0x8100 0001"])
def test_bad_srk_handle_raises_token_error(doc: dict[str, Any], handle: str) -> None:
    doc["srk_handle"] = handle
    refuse(doc)


@pytest.mark.parametrize("pcrs", [[24], [-1], [4, 24], ["7"], [7.0], [None], [[7]]])
def test_pcrs_out_of_range_or_not_ints_raise_token_error(doc: dict[str, Any], pcrs: Any) -> None:
    doc["pcrs"] = pcrs
    refuse(doc)


@pytest.mark.parametrize("cap_pcr", [24, -1, 100, "15", 15.0])
def test_cap_pcr_out_of_range_or_not_int_raises_token_error(
    doc: dict[str, Any], cap_pcr: Any
) -> None:
    doc["cap_pcr"] = cap_pcr
    refuse(doc)


@pytest.mark.parametrize(
    ("field", "value"),
    [("cap_pcr", True), ("cap_pcr", False), ("pcrs", [True]), ("pcrs", [4, False])],
)
def test_bool_where_int_expected_raises_token_error(
    doc: dict[str, Any], field: str, value: Any
) -> None:
    doc[field] = value
    refuse(doc)


def test_empty_policy_keys_raises_token_error(doc: dict[str, Any]) -> None:
    doc["policy_keys"] = []
    assert "no policy key" in refuse(doc).message


@pytest.mark.parametrize("entry", [None, "key", 1, ["machine", PEM, "00"]])
def test_policy_key_entry_that_is_not_an_object_raises_token_error(
    doc: dict[str, Any], entry: Any
) -> None:
    doc["policy_keys"].append(entry)
    refuse(doc)


@pytest.mark.parametrize("approval", [None, "approval", 1, [APPROVAL]])
def test_approval_that_is_not_an_object_raises_token_error(
    doc: dict[str, Any], approval: Any
) -> None:
    doc["approvals"].append(approval)
    refuse(doc)


def test_token_error_carries_a_hint(doc: dict[str, Any]) -> None:
    doc["cap_pcr"] = 24
    error = refuse(doc)
    assert error.hint is not None
    assert "passphrase" in error.hint


# ---------------------------------------------------------------------------------------------
# Bugs


@pytest.mark.parametrize("version", [True, 1.0])
def test_bool_or_float_version_raises_token_error(doc: dict[str, Any], version: Any) -> None:
    doc["version"] = version
    refuse(doc)


@pytest.mark.parametrize("field", ["sealed_public", "sealed_private", "pin_salt"])
def test_non_ascii_base64_raises_token_error(doc: dict[str, Any], field: str) -> None:
    doc[field] = "\u00e9"
    refuse(doc)


def test_keyslot_with_unicode_digit_raises_token_error(doc: dict[str, Any]) -> None:
    doc["keyslots"] = ["\u00b2"]
    refuse(doc)


def test_version_2_carries_the_enrollment_id(doc: dict[str, Any]) -> None:
    assert doc["version"] == TOKEN_VERSION == 2
    assert parse_token(0, doc).enrollment_id == b"\x5e" * 16


@pytest.mark.parametrize("bad", [None, "", "5e" * 15, "5e" * 17, "zz" * 16])
def test_version_2_needs_a_16_byte_enrollment_id(doc: dict[str, Any], bad: Any) -> None:
    doc["enrollment_id"] = bad
    assert "enrollment_id" in refuse(doc).message


def test_version_1_reads_as_a_legacy_token_without_id(doc: dict[str, Any]) -> None:
    doc["version"] = LEGACY_VERSION
    doc["enrollment_id"] = "5e" * 16  # ignored: a version 1 token has none
    assert parse_token(0, doc).enrollment_id is None
