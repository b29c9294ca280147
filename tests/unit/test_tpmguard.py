"""The lockout authorization sealer generates: tpm2-tools must be able to read it back."""

from __future__ import annotations

from sealer.services.tpmguard import new_lockout_auth


def test_lockout_authorizations_have_no_zero_byte_and_differ() -> None:
    # tpm2-tools reads '-p file:PATH' as a C string: a 0 byte would cut it short (one random
    # 32-byte value in 8 has one; tests/integration/test_tpm_hygiene.py met it).
    drawn = [new_lockout_auth() for _ in range(2000)]
    assert all(len(auth) == 32 and 0 not in auth for auth in drawn)
    assert len(set(drawn)) == len(drawn)
