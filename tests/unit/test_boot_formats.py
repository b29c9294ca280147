"""The TPM structures the boot path writes and reads itself (sealer.tpm.release,
sealer.policy.keyname, the token's srk_public): plain data, checked against known values."""

from __future__ import annotations

import base64
import hashlib

import pytest
from test_token import make_token

from sealer.errors import TokenError
from sealer.luks.token import parse_token
from sealer.pcrs import BANKS
from sealer.policy import retirement
from sealer.policy.approval import decode_ecdsa_signature
from sealer.policy.keyname import policy_key_name, policy_key_public
from sealer.tpm.bare import _digests, _selected, pcr_selection
from sealer.tpm.release import _ecdsa

# A P-256 key and its TPM name as tpm2-pytss's TPM2B_PUBLIC.from_pem made them: the names
# bound into every sealed object since the first enrollment.
PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEEC4yMg/RF3fjkJvs6hyLoGh4c+V+\n"
    "t/6dLRTJtah1Q5Fcbpy1RhrdHkhkvr6FJZ4iMFJxQ7mYV26e6s+f/I5iiw==\n"
    "-----END PUBLIC KEY-----\n"
)
PUBLIC = bytes.fromhex(
    "00560023000b00040040000000100010000300100020102e32320fd11777e3909becea1c8ba0687873e57e"
    "b7fe9d2d14c9b5a875439100205c6e9cb5461add1e4864bebe85259e2230527143b998576e9eeacf9ffc8e628b"
)


def test_the_policy_key_area_is_the_one_tpm2_pytss_made() -> None:
    assert policy_key_public(PEM) == PUBLIC
    assert policy_key_name(PEM) == b"\x00\x0b" + hashlib.sha256(PUBLIC[2:]).digest()


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----\n",
        # A P-384 key: another OID, another length.
        "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE"
        + "A" * 96
        + "\n-----END PUBLIC KEY-----",
    ],
)
def test_a_policy_key_that_is_not_p256_is_refused(pem: str) -> None:
    with pytest.raises(TokenError):
        policy_key_public(pem)


def test_pcr_selection_round_trip() -> None:
    selection = pcr_selection(BANKS["sha256"], [0, 7, 15, 23])
    assert selection == bytes.fromhex("00000001" "000b" "03" "818080")
    assert _selected(selection) == [0, 7, 15, 23]


def test_digest_list() -> None:
    data = bytes.fromhex("00000002" "0002" "abcd" "0001" "ef")
    assert _digests(data) == [b"\xab\xcd", b"\xef"]


def test_ecdsa_signature_marshalling() -> None:
    signature = _ecdsa((1, 2))
    assert signature[:4] == bytes.fromhex("0018000b")
    assert signature[4:6] == b"\x00\x20" and signature[6:38] == (1).to_bytes(32, "big")
    assert signature[38:40] == b"\x00\x20" and signature[40:] == (2).to_bytes(32, "big")


@pytest.mark.parametrize(
    "der",
    [
        "",
        "3006020101020102ff",  # a byte after the sequence
        "3006020181020101",  # a negative r
        "300702020001020101",  # r with a needless leading zero
        "3106020101020101",  # not a SEQUENCE
        "3007020101020101",  # a length that lies
    ],
)
def test_malformed_approval_signatures_are_refused(der: str) -> None:
    with pytest.raises(TokenError):
        decode_ecdsa_signature(bytes.fromhex(der))


def test_a_der_signature_decodes() -> None:
    assert decode_ecdsa_signature(bytes.fromhex("3007020101020200ff")) == (1, 255)


def test_the_counter_area_names_the_counter() -> None:
    area = retirement.counter_public_area(0x01335EB0, b"\x5e" * 16)
    tag = retirement.counter_tag(b"\x5e" * 16)
    assert area == bytes.fromhex("01335eb0" "000b" "22040014" "0020") + tag + b"\x00\x08"


SRK_AREA = bytes.fromhex("0023000b00030472000000060080004300100003001000200000")


def test_srk_public_must_be_the_key_srk_name_names() -> None:
    public = len(SRK_AREA).to_bytes(2, "big") + SRK_AREA
    name = b"\x00\x0b" + hashlib.sha256(SRK_AREA).digest()
    doc = make_token().to_json() | {"srk_name": name.hex()}
    doc["srk_public"] = base64.b64encode(public).decode()
    assert parse_token(0, doc).srk_public == public
    # A header that names another key's area (an attacker's, to read the salt) is refused.
    doc["srk_name"] = ("000b" + "aa" * 32)
    with pytest.raises(TokenError, match="srk_public is not the public area"):
        parse_token(0, doc)
    doc["srk_public"] = base64.b64encode(public[:-1]).decode()
    with pytest.raises(TokenError, match="not a TPM2B_PUBLIC"):
        parse_token(0, doc)
