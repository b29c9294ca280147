"""Unit tests for sealer.policy.digest, against hand computations of TPM 2.0 Part 3 formulas.

Every expected value here is built with hashlib and literal command codes, never by calling
another function of the module under test (except where a test is about how two of its
functions compose).
"""

from __future__ import annotations

import hashlib

import pytest

from sealer.pcrs import BANKS, PcrValues
from sealer.policy import digest

SHA1 = BANKS["sha1"]
SHA256 = BANKS["sha256"]
ZERO32 = bytes(32)

# Command codes as marshalled big-endian UINT32, written out by hand.
CC_POLICY_PCR = bytes.fromhex("0000017f")
CC_POLICY_OR = bytes.fromhex("00000171")
CC_POLICY_AUTHORIZE = bytes.fromhex("0000016a")
CC_POLICY_AUTH_VALUE = bytes.fromhex("0000016b")

# TPML_PCR_SELECTION { count=1, { hash=TPM_ALG_SHA256, sizeofSelect=3, PCRs 4, 7, 15 } }
SEL_SHA256_4_7_15 = bytes.fromhex("00000001000b03908000")

# A key name: nameAlg SHA-256 (0x000b) followed by a digest.
KEY_A = bytes.fromhex("000b") + hashlib.sha256(b"key a").digest()
KEY_B = bytes.fromhex("000b") + hashlib.sha256(b"key b").digest()


def sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def value(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def boot_state(tag: str) -> dict[int, bytes]:
    return {4: value(f"{tag}-4"), 7: value(f"{tag}-7"), 15: value(f"{tag}-15")}


# ---------------------------------------------------------------------------------------------
# pcr_selection


@pytest.mark.parametrize(
    ("bank_name", "indices", "expected_hex"),
    [
        ("sha256", [4, 7, 15], "00000001000b03908000"),
        ("sha256", [15, 7, 4], "00000001000b03908000"),
        ("sha256", [4, 7, 7, 15, 4], "00000001000b03908000"),
        ("sha256", [0], "00000001000b03010000"),
        ("sha256", [7], "00000001000b03800000"),
        ("sha256", [8], "00000001000b03000100"),
        ("sha256", [16], "00000001000b03000001"),
        ("sha256", [23], "00000001000b03000080"),
        ("sha256", [], "00000001000b03000000"),
        ("sha256", list(range(24)), "00000001000b03ffffff"),
        ("sha1", [0, 1, 2, 3, 4, 5, 6, 7], "00000001000403ff0000"),
        ("sha384", [7], "00000001000c03800000"),
        ("sha512", [7], "00000001000d03800000"),
    ],
)
def test_pcr_selection_marshalling_is_byte_exact(
    bank_name: str, indices: list[int], expected_hex: str
) -> None:
    assert digest.pcr_selection(BANKS[bank_name], indices) == bytes.fromhex(expected_hex)


def test_pcr_selection_for_4_7_15_matches_documented_example() -> None:
    assert digest.pcr_selection(SHA256, [4, 7, 15]) == SEL_SHA256_4_7_15


# ---------------------------------------------------------------------------------------------
# policy_pcr


def test_policy_pcr_matches_hand_computation() -> None:
    values = boot_state("a")
    composite = sha256(values[4], values[7], values[15])
    expected = sha256(ZERO32, CC_POLICY_PCR, SEL_SHA256_4_7_15, composite)
    assert digest.policy_pcr(ZERO32, SHA256, values) == expected


def test_policy_pcr_concatenates_values_in_ascending_pcr_order() -> None:
    values = boot_state("a")
    reversed_insertion = {15: values[15], 7: values[7], 4: values[4]}
    assert digest.policy_pcr(ZERO32, SHA256, reversed_insertion) == digest.policy_pcr(
        ZERO32, SHA256, values
    )
    wrong_order = sha256(
        ZERO32, CC_POLICY_PCR, SEL_SHA256_4_7_15, sha256(values[15], values[7], values[4])
    )
    assert digest.policy_pcr(ZERO32, SHA256, reversed_insertion) != wrong_order


def test_policy_pcr_extends_a_non_zero_previous_digest() -> None:
    previous = value("previous policy")
    values = boot_state("b")
    composite = sha256(values[4], values[7], values[15])
    expected = sha256(previous, CC_POLICY_PCR, SEL_SHA256_4_7_15, composite)
    assert digest.policy_pcr(previous, SHA256, values) == expected


def test_policy_pcr_with_a_single_pcr() -> None:
    values = {7: value("seven")}
    expected = sha256(
        ZERO32, CC_POLICY_PCR, bytes.fromhex("00000001000b03800000"), sha256(values[7])
    )
    assert digest.policy_pcr(ZERO32, SHA256, values) == expected


def test_policy_pcr_changes_when_any_value_changes() -> None:
    values = boot_state("a")
    reference = digest.policy_pcr(ZERO32, SHA256, values)
    for pcr in values:
        changed = {**values, pcr: value(f"changed-{pcr}")}
        assert digest.policy_pcr(ZERO32, SHA256, changed) != reference


@pytest.mark.parametrize("bank_name", ["sha1", "sha384", "sha512"])
def test_policy_pcr_in_non_sha256_bank_hashes_values_with_sha256(bank_name: str) -> None:
    bank = BANKS[bank_name]
    values = {4: b"\x11" * bank.size, 7: b"\x22" * bank.size}
    selection = (
        bytes.fromhex("00000001") + bank.alg_id.to_bytes(2, "big") + bytes.fromhex("03900000")
    )
    expected = sha256(ZERO32, CC_POLICY_PCR, selection, sha256(values[4], values[7]))
    assert digest.policy_pcr(ZERO32, bank, values) == expected


# ---------------------------------------------------------------------------------------------
# policy_or


def test_policy_or_matches_hand_computation_for_two_branches() -> None:
    a, b = value("branch a"), value("branch b")
    assert digest.policy_or([a, b]) == sha256(ZERO32, CC_POLICY_OR, a, b)


def test_policy_or_matches_hand_computation_for_eight_branches() -> None:
    branches = [value(f"branch {i}") for i in range(8)]
    assert digest.policy_or(branches) == sha256(ZERO32, CC_POLICY_OR, *branches)


def test_policy_or_is_order_sensitive() -> None:
    a, b = value("branch a"), value("branch b")
    assert digest.policy_or([a, b]) != digest.policy_or([b, a])


@pytest.mark.parametrize("count", [0, 1, 9, 20])
def test_policy_or_refuses_fewer_than_two_or_more_than_eight_branches(count: int) -> None:
    with pytest.raises(ValueError, match="2 to 8"):
        digest.policy_or([value(f"branch {i}") for i in range(count)])


# ---------------------------------------------------------------------------------------------
# policy_authorize, policy_auth_value, approval_digest


@pytest.mark.parametrize("policy_ref", [b"", b"sealer", b"\x00" * 32])
def test_policy_authorize_matches_hand_computation(policy_ref: bytes) -> None:
    expected = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_A), policy_ref)
    assert digest.policy_authorize(ZERO32, KEY_A, policy_ref) == expected


def test_policy_authorize_depends_on_key_name() -> None:
    assert digest.policy_authorize(ZERO32, KEY_A, b"") != digest.policy_authorize(
        ZERO32, KEY_B, b""
    )


def test_policy_auth_value_matches_hand_computation() -> None:
    previous = value("previous")
    assert digest.policy_auth_value(previous) == sha256(previous, CC_POLICY_AUTH_VALUE)


def test_policy_auth_value_from_zero_is_the_well_known_digest() -> None:
    # The published PolicyAuthValue digest from an empty SHA-256 policy (tpm2_policyauthvalue).
    known = "8fcd2169ab92694e0c633f1ab772842b8241bbc20288981fc7ac1eddc1fddb0e"
    assert digest.policy_auth_value(ZERO32).hex() == known


def test_approval_digest_is_hash_of_policy_then_ref() -> None:
    approved = value("approved")
    assert digest.approval_digest(approved, b"ref") == sha256(approved, b"ref")
    assert digest.approval_digest(approved, b"") == sha256(approved)


# ---------------------------------------------------------------------------------------------
# approved_policy


def test_approved_policy_with_one_branch_is_that_policy_pcr() -> None:
    state = boot_state("a")
    assert digest.approved_policy(SHA256, [state]) == digest.policy_pcr(ZERO32, SHA256, state)


def test_approved_policy_with_two_branches_is_policy_or_of_both() -> None:
    a, b = boot_state("a"), boot_state("b")
    expected = digest.policy_or(
        [digest.policy_pcr(ZERO32, SHA256, a), digest.policy_pcr(ZERO32, SHA256, b)]
    )
    assert digest.approved_policy(SHA256, [a, b]) == expected


def test_approved_policy_with_two_branches_matches_full_hand_computation() -> None:
    a, b = boot_state("a"), boot_state("b")

    def pcr_branch(state: PcrValues) -> bytes:
        composite = sha256(state[4], state[7], state[15])
        return sha256(ZERO32, CC_POLICY_PCR, SEL_SHA256_4_7_15, composite)

    expected = sha256(ZERO32, CC_POLICY_OR, pcr_branch(a), pcr_branch(b))
    assert digest.approved_policy(SHA256, [a, b]) == expected


def test_approved_policy_refuses_nine_branches() -> None:
    with pytest.raises(ValueError):
        digest.approved_policy(SHA256, [boot_state(str(i)) for i in range(9)])


