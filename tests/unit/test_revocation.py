"""The revocation field's arithmetic and names, as plain data."""

from __future__ import annotations

import hashlib

import pytest

from sealer.policy import digest
from sealer.policy.revocation import (
    REVOCATION_INDEX,
    RevocationIndex,
    bits_below,
    is_revoked,
    level_of,
    release_operand,
)

KEY_NAME = b"\x00\x0b" + hashlib.sha256(b"vendor").digest()


def test_revoking_below_n_sets_the_low_n_bits_and_nothing_else() -> None:
    assert bits_below(0) == 0 and bits_below(3) == 0b111 and bits_below(64) == 2**64 - 1
    assert [is_revoked(bits_below(3), r) for r in range(5)] == [True] * 3 + [False] * 2
    assert level_of(bits_below(3)) == 3 and level_of(0) == 0 and level_of(2**64 - 1) == 64
    assert level_of(0b101) == 1  # a hole: release 1 is still allowed, so the level is 1


def test_a_release_is_its_bit_as_eight_big_endian_bytes() -> None:
    assert release_operand(0) == bytes(7) + b"\x01"
    assert release_operand(63) == b"\x80" + bytes(7)
    for bad in (-1, 64):
        with pytest.raises(ValueError):
            release_operand(bad)
    with pytest.raises(ValueError):
        bits_below(65)


def test_the_fields_name_depends_on_its_authority_only() -> None:
    one = RevocationIndex(REVOCATION_INDEX, KEY_NAME)
    assert one.name == RevocationIndex(REVOCATION_INDEX, KEY_NAME).name  # every machine
    other = RevocationIndex(REVOCATION_INDEX, b"\x00\x0b" + bytes(32))
    assert one.name != other.name and one.name[:2] == b"\x00\x0b" and len(one.name) == 34
    # Writable only by the authority's statement, or once before anything was written.
    assert one.auth_policy == digest.policy_or([one.init_branch, one.revoke_branch])
    assert one.public_area(written=False) != one.public_area()
