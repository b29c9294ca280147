"""The sealed object's policy and the policyRefs that bind approvals to one enrollment."""

from __future__ import annotations

import hashlib

import pytest

from sealer.errors import UsageError
from sealer.pcrs import BANKS
from sealer.policy import digest
from sealer.policy.binding import VENDOR_BINDING, Binding, check_cap_pcr

SHA256 = BANKS["sha256"]
ZERO32 = b"\x00" * 32
CC_POLICY_AUTHORIZE = (0x16A).to_bytes(4, "big")
CC_POLICY_AUTH_VALUE = (0x16B).to_bytes(4, "big")
CC_POLICY_OR = (0x171).to_bytes(4, "big")
KEY_A = bytes.fromhex("000b") + hashlib.sha256(b"key a").digest()
KEY_B = bytes.fromhex("000b") + hashlib.sha256(b"key b").digest()
ID_1 = b"\x01" * 16
ID_2 = b"\x02" * 16


def sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def legacy(pcrs: tuple[int, ...] = (7,)) -> Binding:
    return Binding(SHA256, pcrs, 15, None)


# Legacy objects (token version 1): empty policyRef, no cap in the object's policy.


def test_legacy_one_key_without_pin() -> None:
    expected = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_A), b"")
    assert legacy().object_policy([("machine", KEY_A)], with_pin=False) == expected


def test_legacy_one_key_with_pin_appends_policy_auth_value() -> None:
    authorized = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_A), b"")
    expected = sha256(authorized, CC_POLICY_AUTH_VALUE)
    assert legacy().object_policy([("machine", KEY_A)], with_pin=True) == expected


def test_legacy_two_keys_or_their_authorizations() -> None:
    auth_a = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_A), b"")
    auth_b = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_B), b"")
    expected = sha256(ZERO32, CC_POLICY_OR, auth_a, auth_b)
    keys = [("machine", KEY_A), ("vendor", KEY_B)]
    assert legacy().object_policy(keys, with_pin=False) == expected


def test_object_policy_refuses_nine_keys() -> None:
    keys = [("machine", bytes.fromhex("000b") + sha256(b"%d" % i)) for i in range(9)]
    with pytest.raises(ValueError):
        legacy().object_policy(keys, with_pin=False)


# Bound objects (token version 2).


def test_bound_policy_requires_the_cap_pcr_at_reset_after_the_authorization() -> None:
    binding = Binding(SHA256, (4, 7), 15, ID_1)
    ref = binding.policy_ref("machine")
    authorized = sha256(sha256(ZERO32, CC_POLICY_AUTHORIZE, KEY_A), ref)
    expected = digest.policy_pcr(authorized, SHA256, {15: ZERO32})
    assert binding.object_policy([("machine", KEY_A)], with_pin=False) == expected
    with_pin = binding.object_policy([("machine", KEY_A)], with_pin=True)
    assert with_pin == sha256(expected, CC_POLICY_AUTH_VALUE)


def test_machine_refs_differ_per_enrollment_and_per_selection() -> None:
    refs = {
        Binding(SHA256, (4, 7), 15, ID_1).policy_ref("machine"),
        Binding(SHA256, (4, 7), 15, ID_2).policy_ref("machine"),
        Binding(SHA256, (7,), 15, ID_1).policy_ref("machine"),
        Binding(SHA256, (4, 7), 14, ID_1).policy_ref("machine"),
        Binding(BANKS["sha1"], (4, 7), 15, ID_1).policy_ref("machine"),
    }
    assert len(refs) == 5
    assert all(len(ref) == 32 for ref in refs)


def test_vendor_refs_name_the_selection_but_not_the_enrollment() -> None:
    one = Binding(SHA256, (4, 7), 15, ID_1).policy_ref("vendor")
    assert Binding(SHA256, (4, 7), 15, ID_2).policy_ref("vendor") == one
    assert Binding(SHA256, (4, 7), 15, VENDOR_BINDING).policy_ref("vendor") == one
    assert Binding(SHA256, (7,), 15, ID_1).policy_ref("vendor") != one
    assert Binding(SHA256, (4, 7), 14, ID_1).policy_ref("vendor") != one
    assert Binding(SHA256, (4, 7), 15, ID_1).policy_ref("machine") != one


@pytest.mark.parametrize("pcr", [16, 17, 22, 23, 24, -1])
def test_resettable_cap_pcrs_are_refused(pcr: int) -> None:
    with pytest.raises(UsageError, match="capping PCR"):
        check_cap_pcr(pcr)


def test_approval_must_select_the_binding_and_require_the_cap_at_reset() -> None:
    binding = Binding(SHA256, (4, 7), 15, ID_1)
    assert binding.check_approval_fits((4, 7, 15), SHA256, [ZERO32]) == ""
    assert "binds" in binding.check_approval_fits((7, 15), SHA256, [ZERO32])
    assert "binds" in binding.check_approval_fits((4, 7, 16), SHA256, [ZERO32])
    assert "reset value" in binding.check_approval_fits((4, 7, 15), SHA256, [b"\x01" * 32])
