"""Unit tests for sealer.policy.approval: signing, verifying and parsing approvals."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from sealer.errors import PolicyMismatchError, TokenError
from sealer.pcrs import BANKS, PcrValues
from sealer.policy import digest
from sealer.policy.approval import APPROVAL_VERSION, Approval, parse_approval, sign_approval
from sealer.policy.approval import verify_approval as verify

SHA256 = BANKS["sha256"]
SHA1 = BANKS["sha1"]
KEY_NAME = bytes.fromhex("000b") + hashlib.sha256(b"policy key").digest()


def pcr_value(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def boot_state(tag: str) -> dict[int, bytes]:
    return {4: pcr_value(f"{tag}-4"), 7: pcr_value(f"{tag}-7"), 15: pcr_value(f"{tag}-15")}


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def approval(key: ec.EllipticCurvePrivateKey) -> Approval:
    return sign_approval(
        key, KEY_NAME, SHA256, [boot_state("a"), boot_state("b")], "test", policy_ref=b"ref"
    )


@pytest.fixture
def doc(approval: Approval) -> dict[str, Any]:
    return approval.to_json()


# ---------------------------------------------------------------------------------------------
# sign / verify


def test_signed_approval_verifies_with_its_key(
    key: ec.EllipticCurvePrivateKey, approval: Approval
) -> None:
    verify(approval, public_pem(key))


def test_single_branch_approval_verifies(key: ec.EllipticCurvePrivateKey) -> None:
    single = sign_approval(key, KEY_NAME, SHA256, [boot_state("a")], "one")
    verify(single, public_pem(key))
    assert single.approved_policy == digest.policy_pcr(digest.ZERO, SHA256, boot_state("a"))


def test_sign_approval_records_its_inputs(approval: Approval) -> None:
    assert approval.bank is SHA256
    assert approval.branches == (boot_state("a"), boot_state("b"))
    assert approval.key_name == KEY_NAME
    assert approval.policy_ref == b"ref"
    assert approval.comment == "test"
    assert approval.pcrs == (4, 7, 15)
    assert approval.created.endswith("Z")


def test_approval_digest_is_hash_of_approved_policy_and_ref(approval: Approval) -> None:
    approved = digest.approved_policy(SHA256, [boot_state("a"), boot_state("b")])
    assert approval.approved_policy == approved
    assert approval.approval_digest == hashlib.sha256(approved + b"ref").digest()


def test_signature_decodes_to_r_and_s(approval: Approval) -> None:
    r, s = approval.signature_rs()
    assert r > 0
    assert s > 0


@pytest.mark.parametrize("count", [0, 9])
def test_sign_approval_refuses_zero_or_nine_branches(
    key: ec.EllipticCurvePrivateKey, count: int
) -> None:
    with pytest.raises(ValueError):
        sign_approval(key, KEY_NAME, SHA256, [boot_state(str(i)) for i in range(count)], "")


def test_verify_with_another_key_raises_policy_mismatch(
    other_key: ec.EllipticCurvePrivateKey, approval: Approval
) -> None:
    with pytest.raises(PolicyMismatchError):
        verify(approval, public_pem(other_key))


def test_verify_with_unreadable_pem_raises_token_error(approval: Approval) -> None:
    with pytest.raises(TokenError):
        verify(approval, "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")


def test_verify_with_non_ecc_key_raises_token_error(approval: Approval) -> None:
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(TokenError, match="not an ECC key"):
        verify(approval, pem)


# ---------------------------------------------------------------------------------------------
# JSON round trip


def test_to_json_then_parse_round_trips(approval: Approval, doc: dict[str, Any]) -> None:
    parsed = parse_approval(doc)
    assert parsed.branches == approval.branches
    assert parsed.bank == approval.bank
    assert parsed.signature == approval.signature
    assert parsed.policy_ref == approval.policy_ref
    assert parsed.key_name == approval.key_name
    assert parsed.created == approval.created
    assert parsed.comment == approval.comment
    assert parsed == approval


def test_parsed_approval_still_verifies(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    verify(parse_approval(doc), public_pem(key))


def test_to_json_layout(doc: dict[str, Any]) -> None:
    assert doc["version"] == APPROVAL_VERSION
    assert doc["pcr_bank"] == "sha256"
    assert list(doc["branches"][0]) == ["4", "7", "15"]
    assert doc["branches"][0]["7"] == pcr_value("a-7").hex()
    assert doc["policy_ref"] == b"ref".hex()
    assert doc["key_name"] == KEY_NAME.hex()


# ---------------------------------------------------------------------------------------------
# Tampering


def test_tampering_any_pcr_value_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    pem = public_pem(key)
    checked = 0
    for branch_index, branch in enumerate(doc["branches"]):
        for pcr in branch:
            tampered = copy.deepcopy(doc)
            tampered["branches"][branch_index][pcr] = pcr_value("evil").hex()
            parsed = parse_approval(tampered)
            with pytest.raises(PolicyMismatchError):
                verify(parsed, pem)
            checked += 1
    assert checked == 6


def test_tampering_one_bit_of_a_pcr_value_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    raw = bytearray(bytes.fromhex(doc["branches"][1]["15"]))
    raw[-1] ^= 0x01
    doc["branches"][1]["15"] = raw.hex()
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


def test_swapping_branch_order_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    doc["branches"].reverse()
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


def test_dropping_a_branch_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    del doc["branches"][1]
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


def test_tampering_policy_ref_breaks_the_signature(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any]
) -> None:
    doc["policy_ref"] = b"other".hex()
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


@pytest.mark.parametrize("position", [0, 10, -1])
def test_tampering_the_signature_breaks_it(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any], position: int
) -> None:
    signature = bytearray(base64.b64decode(doc["signature"]))
    signature[position] ^= 0x01
    doc["signature"] = base64.b64encode(bytes(signature)).decode()
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


@pytest.mark.parametrize("signature", [b"", b"garbage", b"\x30\x00"])
def test_non_der_signature_fails_verification_with_policy_mismatch(
    key: ec.EllipticCurvePrivateKey, doc: dict[str, Any], signature: bytes
) -> None:
    doc["signature"] = base64.b64encode(signature).decode()
    with pytest.raises(PolicyMismatchError):
        verify(parse_approval(doc), public_pem(key))


# ---------------------------------------------------------------------------------------------
# matching_branch / differing_pcrs


def test_matching_branch_finds_each_branch(approval: Approval) -> None:
    assert approval.matching_branch(boot_state("a")) == 0
    assert approval.matching_branch(boot_state("b")) == 1


def test_matching_branch_ignores_pcrs_the_approval_does_not_select(approval: Approval) -> None:
    current = {**boot_state("b"), 0: pcr_value("firmware"), 23: pcr_value("other")}
    assert approval.matching_branch(current) == 1


def test_matching_branch_is_none_when_one_pcr_differs(approval: Approval) -> None:
    assert approval.matching_branch({**boot_state("a"), 7: pcr_value("evil")}) is None


def test_matching_branch_is_none_when_a_pcr_is_missing(approval: Approval) -> None:
    current = boot_state("a")
    del current[15]
    assert approval.matching_branch(current) is None


def test_matching_branch_does_not_mix_branches(approval: Approval) -> None:
    a, b = boot_state("a"), boot_state("b")
    assert approval.matching_branch({4: a[4], 7: b[7], 15: a[15]}) is None


def test_differing_pcrs_reports_the_closest_branch(approval: Approval) -> None:
    a, b = boot_state("a"), boot_state("b")
    # Differs from branch a in 7 and 15, from branch b only in 4.
    current: PcrValues = {4: a[4], 7: b[7], 15: b[15]}
    assert approval.differing_pcrs(current) == [4]


def test_differing_pcrs_is_sorted_and_complete(approval: Approval) -> None:
    current = {4: pcr_value("x"), 7: pcr_value("y"), 15: pcr_value("z")}
    assert approval.differing_pcrs(current) == [4, 7, 15]


def test_differing_pcrs_is_empty_for_a_matching_state(approval: Approval) -> None:
    assert approval.differing_pcrs(boot_state("b")) == []


def test_differing_pcrs_counts_missing_pcrs(approval: Approval) -> None:
    assert approval.differing_pcrs({4: boot_state("a")[4]}) == [7, 15]


# ---------------------------------------------------------------------------------------------
# parse_approval on hostile input

Mutation = Callable[[dict[str, Any]], None]


def setting(key: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc[key] = value

    return mutate


def deleting(key: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        del doc[key]

    return mutate


def setting_branch(value: Any, index: int = 0) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["branches"][index] = value

    return mutate


def setting_pcr(pcr: str, value: Any, index: int = 0) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["branches"][index][pcr] = value

    return mutate


def nine_branches(doc: dict[str, Any]) -> None:
    doc["branches"] = [dict(doc["branches"][0]) for _ in range(9)]


def branches_with_different_pcrs(doc: dict[str, Any]) -> None:
    doc["branches"][1] = {"4": doc["branches"][1]["4"], "7": doc["branches"][1]["7"]}


def sha1_bank_with_sha256_values(doc: dict[str, Any]) -> None:
    doc["pcr_bank"] = "sha1"


HOSTILE: list[Any] = [
    pytest.param(setting("version", 2), id="version-2"),
    pytest.param(setting("version", "1"), id="version-string"),
    pytest.param(setting("version", None), id="version-null"),
    pytest.param(deleting("version"), id="version-missing"),
    pytest.param(setting("pcr_bank", "md5"), id="bank-unknown"),
    pytest.param(setting("pcr_bank", "SHA256"), id="bank-uppercase"),
    pytest.param(setting("pcr_bank", None), id="bank-null"),
    pytest.param(setting("pcr_bank", ["sha256"]), id="bank-list"),
    pytest.param(deleting("pcr_bank"), id="bank-missing"),
    pytest.param(sha1_bank_with_sha256_values, id="bank-sha1-values-sha256"),
    pytest.param(setting("branches", []), id="no-branches"),
    pytest.param(deleting("branches"), id="branches-missing"),
    pytest.param(setting("branches", None), id="branches-null"),
    pytest.param(setting("branches", "4,7"), id="branches-string"),
    pytest.param(setting("branches", {"4": "00"}), id="branches-object"),
    pytest.param(nine_branches, id="nine-branches"),
    pytest.param(branches_with_different_pcrs, id="different-pcr-sets"),
    pytest.param(setting_branch({}), id="empty-branch"),
    pytest.param(setting_pcr("7", "zz" * 32), id="bad-hex"),
    pytest.param(setting_pcr("7", "a" * 63), id="odd-hex"),
    pytest.param(setting_pcr("7", "\u00e9" * 64), id="non-ascii-hex"),
    pytest.param(setting_pcr("7", "00" * 31), id="value-31-bytes"),
    pytest.param(setting_pcr("7", "00" * 33), id="value-33-bytes"),
    pytest.param(setting_pcr("7", None), id="value-null"),
    pytest.param(setting_pcr("7", 0), id="value-int"),
    pytest.param(setting_pcr("7", ["00"] * 32), id="value-list"),
    pytest.param(setting_pcr("24", "00" * 32), id="pcr-24"),
    pytest.param(setting_pcr("-1", "00" * 32), id="pcr-negative"),
    pytest.param(setting_pcr("x", "00" * 32), id="pcr-not-a-number"),
    pytest.param(setting_pcr("", "00" * 32), id="pcr-empty-name"),
    pytest.param(setting_pcr("99999999999999999999999", "00" * 32), id="pcr-huge"),
    pytest.param(setting_branch([]), id="branch-empty-list"),
    pytest.param(setting_branch(["7"]), id="branch-list-of-string"),
    pytest.param(setting_branch([4, 7, 15]), id="branch-list-of-ints"),
    pytest.param(setting_branch("4,7,15"), id="branch-string"),
    pytest.param(setting_branch("ab"), id="branch-two-char-string"),
    pytest.param(setting_branch(""), id="branch-empty-string"),
    pytest.param(setting_branch(None), id="branch-null"),
    pytest.param(setting_branch(7), id="branch-int"),
    pytest.param(setting_branch(True), id="branch-bool"),
    pytest.param(setting("signature", "not base64!"), id="signature-not-base64"),
    pytest.param(setting("signature", "abc"), id="signature-bad-padding"),
    pytest.param(setting("signature", "\u00e9\u00e9\u00e9\u00e9"), id="signature-non-ascii"),
    pytest.param(setting("signature", 12345), id="signature-int"),
    pytest.param(setting("key_name", "zz"), id="key-name-bad-hex"),
    pytest.param(deleting("key_name"), id="key-name-missing"),
    pytest.param(setting("policy_ref", "xyz"), id="policy-ref-bad-hex"),
    pytest.param(setting("policy_ref", None), id="policy-ref-null"),
]


@pytest.mark.parametrize("mutate", HOSTILE)
def test_parse_approval_raises_only_token_error_on_hostile_input(
    doc: dict[str, Any], mutate: Mutation
) -> None:
    mutate(doc)
    with pytest.raises(TokenError):
        parse_approval(doc)


def test_parse_approval_reports_unknown_version(doc: dict[str, Any]) -> None:
    doc["version"] = 7
    with pytest.raises(TokenError, match="version 7"):
        parse_approval(doc)


def test_parse_approval_names_where_the_approval_came_from(doc: dict[str, Any]) -> None:
    doc["pcr_bank"] = "md5"
    with pytest.raises(TokenError, match="token 3 approval 0"):
        parse_approval(doc, where="token 3 approval 0")


def test_parse_approval_accepts_eight_branches(key: ec.EllipticCurvePrivateKey) -> None:
    states = [boot_state(str(i)) for i in range(8)]
    signed = sign_approval(key, KEY_NAME, SHA256, states, "eight")
    parsed = parse_approval(signed.to_json())
    assert len(parsed.branches) == 8
    verify(parsed, public_pem(key))


def test_parse_approval_accepts_sha1_bank(key: ec.EllipticCurvePrivateKey) -> None:
    state = {7: b"\x01" * 20}
    signed = sign_approval(key, KEY_NAME, SHA1, [state], "sha1")
    parsed = parse_approval(signed.to_json())
    assert parsed.bank is SHA1
    assert parsed.branches == (state,)


def test_parse_approval_defaults_missing_optional_fields(doc: dict[str, Any]) -> None:
    for optional in ("policy_ref", "created", "comment"):
        del doc[optional]
    parsed = parse_approval(doc)
    assert parsed.policy_ref == b""
    assert parsed.created == ""
    assert parsed.comment == ""


def test_parse_approval_refuses_branch_given_as_list_of_pairs(doc: dict[str, Any]) -> None:
    doc["branches"][0] = [[pcr, hex_value] for pcr, hex_value in doc["branches"][0].items()]
    with pytest.raises(TokenError):
        parse_approval(doc)


def test_parse_approval_refuses_infinite_pcr_number(doc: dict[str, Any]) -> None:
    doc["branches"] = [[[float("inf"), "00" * 32]]]
    with pytest.raises(TokenError):
        parse_approval(doc)


@pytest.mark.parametrize("mutate", [deleting("signature"), setting("signature", None)])
def test_parse_approval_refuses_missing_signature(doc: dict[str, Any], mutate: Mutation) -> None:
    mutate(doc)
    with pytest.raises(TokenError):
        parse_approval(doc)


@pytest.mark.parametrize("version", [True, 1.0])
def test_parse_approval_refuses_non_integer_version(doc: dict[str, Any], version: Any) -> None:
    doc["version"] = version
    with pytest.raises(TokenError):
        parse_approval(doc)
