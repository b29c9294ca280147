"""Rollback revocation: a bit field in TPM NV memory that every approval checks (PolicyNV).

Each approval names a *release*, a number from 0 to 63, and holds only while bit ``release``
of the field is clear (PolicyNV, operation BITCLEAR). ``sealer revoke --below N`` sets bits
0 to N-1, so every approval of a release below N stops working. An NV bit field is
monotonic in hardware: NV_SetBits can only OR bits in, never clear them.

The index (``REVOCATION_INDEX``, in the owner range of the TCG handle registry) is made so that
only the revocation authority can set bits:

- write (NV_SetBits) needs its policy: either a signed statement of the revocation authority
  (PolicyAuthorize; the statement pins the exact bits with PolicyCpHash, so a published
  statement cannot be reused to set other bits), or, only while it was never written,
  anyone, so that enrollment can initialise it without the authority's key;
- read needs nothing (AUTHREAD with an empty auth value): the boot-time unlocker reads it.

What it does not stop: whoever holds the TPM's owner authorization can undefine the index and
define a fresh, all-clear one with the same name (TPMA_NV_POLICY_DELETE, which would prevent
that, is reserved to indices the platform firmware creates). Linux leaves owner authorization
empty; a fleet that wants rollback protection against an attacker who gets code running on
the machine (say, through the vulnerable release itself) sets an owner password after
enrollment. A TPM NV counter would survive redefinition, but its first value differs from TPM
to TPM, and then one vendor signature could not serve the whole fleet.

PolicyNV binds the index by its name, which hashes its public area, authorization policy
included. With a vendor as the authority, that name is the same on every machine, so one
vendor signature approves a release for the whole fleet.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from sealer.errors import TPMMismatchError
from sealer.policy import digest

REVOCATION_INDEX = 0x01335EA1
RELEASES = 64  # bits of the field: releases 0 to 63
REVOKE_REF = b"sealer revoke"  # policyRef of the authority's signed revocation statements

# TPMA_NV bits (TPM 2.0 Part 2, 13.4)
_TPM_NT_BITS = 0x2 << 4
_POLICYWRITE = 0x00000008
_AUTHREAD = 0x00040000
_NO_DA = 0x02000000
WRITTEN = 0x20000000
ATTRIBUTES = _TPM_NT_BITS | _POLICYWRITE | _AUTHREAD | _NO_DA
_SHA256 = 0x000B


@dataclass(frozen=True)
class RevocationIndex:
    """The NV index whose bits revoke releases, and the key whose statements alone may set them."""

    index: int
    authority_name: bytes  # TPM name of the key whose statements may set bits

    @property
    def init_branch(self) -> bytes:
        """Anyone may write it once, while it was never written (to initialise it)."""
        return digest.policy_nv_written(
            digest.policy_command_code(digest.ZERO, digest.CC_NV_SET_BITS), False
        )

    @property
    def revoke_branch(self) -> bytes:
        return digest.policy_authorize(digest.ZERO, self.authority_name, REVOKE_REF)

    @property
    def auth_policy(self) -> bytes:
        return digest.policy_or([self.init_branch, self.revoke_branch])

    def public_area(self, written: bool = True) -> bytes:
        """The marshalled TPMS_NV_PUBLIC."""
        attributes = ATTRIBUTES | (WRITTEN if written else 0)
        policy = self.auth_policy
        return struct.pack(">IHIH", self.index, _SHA256, attributes, len(policy)) + policy + (
            struct.pack(">H", 8)
        )

    @property
    def name(self) -> bytes:
        """nameAlg || H(TPMS_NV_PUBLIC) of the written index: what PolicyNV binds."""
        return struct.pack(">H", _SHA256) + hashlib.sha256(self.public_area()).digest()


def check_release(release: int) -> int:
    """``release``, when it is a number the revocation field can revoke; ValueError otherwise."""
    if not 0 <= release < RELEASES:
        raise ValueError(f"a release is numbered 0 to {RELEASES - 1}, not {release}")
    return release


def release_operand(release: int) -> bytes:
    """PolicyNV's operandB for ``release``: its bit, as the 8 bytes of the field."""
    return (1 << check_release(release)).to_bytes(8, "big")


def policy_release(previous: bytes, nv_name: bytes, release: int) -> bytes:
    """PolicyNV: ``release`` is not revoked (its bit is clear)."""
    return digest.policy_nv(previous, nv_name, release_operand(release), 0, digest.EO_BITCLEAR)


def bits_below(level: int) -> int:
    """The bits that revoke every release below ``level``."""
    if not 0 <= level <= RELEASES:
        raise ValueError(f"a revocation level is 0 to {RELEASES}, not {level}")
    return (1 << level) - 1


def level_of(bits: int) -> int:
    """The lowest release that is not revoked (releases below it are)."""
    level = 0
    while level < RELEASES and bits & (1 << level):
        level += 1
    return level


def is_revoked(bits: int, release: int) -> bool:
    """Whether the revocation field's ``bits`` revoke ``release``."""
    return bool(bits & (1 << release))


def revocation_statement_policy(nv_name: bytes, bits: int) -> bytes:
    """The policy an authority signs to allow setting exactly ``bits``."""
    return digest.policy_cp_hash(digest.ZERO, digest.nv_set_bits_cp_hash(nv_name, bits))


def field_missing_error(index: int) -> TPMMismatchError:
    """The revocation field an enrollment's approvals check is gone, or another index."""
    return TPMMismatchError(
        f"the revocation field (TPM NV index 0x{index:08x}) is missing or was replaced: the "
        "TPM was cleared, this is another TPM, or the index was deleted",
        "unlock with the passphrase or recovery key, then enroll again",
    )
