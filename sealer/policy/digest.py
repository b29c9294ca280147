"""TPM 2.0 policy digests, computed in software (TPM 2.0 Part 3, section 23).

The sealed object's authPolicy and every approved policy are computed here, before any TPM
is involved; an integration test replays the same commands in a TPM trial session and
compares. Policy digests always use SHA-256 (the sealed object's name algorithm), whatever
bank the PCR values come from.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from sealer.pcrs import Bank, PcrValues

DIGEST_SIZE = 32
ZERO = b"\x00" * DIGEST_SIZE
MAX_OR_BRANCHES = 8  # TPML_DIGEST holds at most eight digests

CC_NV_SET_BITS = 0x00000135
CC_POLICY_NV = 0x00000149
CC_POLICY_CP_HASH = 0x0000016E
CC_POLICY_AUTHORIZE = 0x0000016A
CC_POLICY_AUTH_VALUE = 0x0000016B
CC_POLICY_COMMAND_CODE = 0x0000016C
CC_POLICY_OR = 0x00000171
CC_POLICY_PCR = 0x0000017F
CC_POLICY_NV_WRITTEN = 0x0000018F
EO_BITCLEAR = 0x000B  # PolicyNV: every bit set in operandB is clear in the NV data


def _h(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _cc(code: int) -> bytes:
    return struct.pack(">I", code)


def pcr_selection(bank: Bank, indices: Sequence[int]) -> bytes:
    """A marshalled TPML_PCR_SELECTION with one bank (three bytes of bitmap: PCRs 0-23)."""
    bitmap = bytearray(3)
    for index in indices:
        bitmap[index // 8] |= 1 << (index % 8)
    return struct.pack(">IHB", 1, bank.alg_id, len(bitmap)) + bytes(bitmap)


def pcr_composite(values: PcrValues) -> bytes:
    """PolicyPCR's pcrDigest: the selected values, in ascending index order, hashed with the
    policy session's algorithm (SHA-256), not with the bank's (Part 3, TPM2_PolicyPCR)."""
    return _h(*(values[i] for i in sorted(values)))


def policy_pcr(previous: bytes, bank: Bank, values: PcrValues) -> bytes:
    """The policy digest after TPM2_PolicyPCR of ``values`` in ``bank``."""
    selection = pcr_selection(bank, sorted(values))
    return _h(previous, _cc(CC_POLICY_PCR), selection, pcr_composite(values))


def policy_or(branches: Sequence[bytes]) -> bytes:
    """The policy digest after TPM2_PolicyOR of ``branches`` (2 to MAX_OR_BRANCHES); ValueError
    otherwise.
    """
    if not 2 <= len(branches) <= MAX_OR_BRANCHES:
        raise ValueError(f"PolicyOR takes 2 to {MAX_OR_BRANCHES} branches, not {len(branches)}")
    # PolicyOR resets the digest, then hashes in the list of allowed branch digests.
    return _h(ZERO, _cc(CC_POLICY_OR), *branches)


def policy_authorize(previous: bytes, key_name: bytes, policy_ref: bytes) -> bytes:
    """The policy digest after TPM2_PolicyAuthorize by the key named ``key_name``."""
    return _h(_h(previous, _cc(CC_POLICY_AUTHORIZE), key_name), policy_ref)


def policy_auth_value(previous: bytes) -> bytes:
    """The policy digest after TPM2_PolicyAuthValue (the PIN)."""
    return _h(previous, _cc(CC_POLICY_AUTH_VALUE))


def approved_policy(bank: Bank, branches: Sequence[PcrValues]) -> bytes:
    """The policy an approval signs: one PolicyPCR per boot state, OR'ed when several."""
    digests = [policy_pcr(ZERO, bank, values) for values in branches]
    if len(digests) == 1:
        return digests[0]
    return policy_or(digests)


def policy_nv(
    previous: bytes, nv_name: bytes, operand: bytes, offset: int, operation: int
) -> bytes:
    """The policy digest after TPM2_PolicyNV comparing ``operand`` with the NV index's data."""
    args = _h(operand, struct.pack(">HH", offset, operation))
    return _h(previous, _cc(CC_POLICY_NV), args, nv_name)


def policy_cp_hash(previous: bytes, cp_hash: bytes) -> bytes:
    """The policy digest after TPM2_PolicyCpHash: only the command with these parameters."""
    return _h(previous, _cc(CC_POLICY_CP_HASH), cp_hash)


def policy_command_code(previous: bytes, code: int) -> bytes:
    """The policy digest after TPM2_PolicyCommandCode: only the command ``code``."""
    return _h(previous, _cc(CC_POLICY_COMMAND_CODE), _cc(code))


def policy_nv_written(previous: bytes, written: bool) -> bytes:
    """The policy digest after TPM2_PolicyNvWritten: the index was (or was never) written."""
    return _h(previous, _cc(CC_POLICY_NV_WRITTEN), bytes([written]))


def nv_set_bits_cp_hash(nv_name: bytes, bits: int) -> bytes:
    """cpHash of NV_SetBits on an index that authorizes itself: H(CC || auth name || index
    name || bits), the command's handles by name, then its one parameter (UINT64)."""
    return _h(_cc(CC_NV_SET_BITS), nv_name, nv_name, struct.pack(">Q", bits))


def approval_digest(approved: bytes, policy_ref: bytes) -> bytes:
    """aHash: what the policy key signs (TPM 2.0 Part 3, PolicyAuthorize)."""
    return _h(approved, policy_ref)
