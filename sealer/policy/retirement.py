"""Retiring the machine's old approvals for good: a TPM NV counter per enrollment.

Dropping an approval from the header is not enough: whoever kept a copy of an older header
(or of its approvals) could put it back, and the machine key's signature on it would still
be good. So every approval the machine key signs also requires (PolicyNV, UNSIGNED_LE) that
the enrollment's counter is at most the approval's *epoch*, and every time sealer rewrites
the machine's approvals (reseal, prune) it signs the new one for the next epoch, writes it,
then increments the counter: every approval signed before is dead in the TPM.

Why a counter (TPM_NT_COUNTER) and not bits: a counter only goes up, and one that is deleted
and defined again starts at the highest value any counter of this TPM ever had (TPM 2.0
Part 1, NV counters), so deleting it (which the owner hierarchy allows, and Linux leaves the
owner authorization empty) cannot bring a retired epoch back. Anyone may increment it (its
auth value is empty): that only retires approvals, which the passphrase survives, and
whoever can run code on the machine could delete the index as well.

Vendor approvals do not check it: one vendor signature serves the whole fleet, and each
machine's counter has its own value. They are retired by the vendor's revocation field.
"""

from __future__ import annotations

import hashlib
import struct

from sealer.errors import RefusedError
from sealer.policy import digest

# Where sealer defines the counters (the owner range, next to the revocation field's index).
FIRST_INDEX = 0x01335EB0
LAST_INDEX = 0x01335EEF
EO_UNSIGNED_LE = 0x0009  # PolicyNV: the NV data is at most operandB, unsigned

# TPMA_NV bits (TPM 2.0 Part 2, 13.4)
_TPM_NT_COUNTER = 0x1 << 4
_AUTHWRITE = 0x00000004
_AUTHREAD = 0x00040000
_NO_DA = 0x02000000
ATTRIBUTES = _TPM_NT_COUNTER | _AUTHWRITE | _AUTHREAD | _NO_DA
COUNTER_BYTES = 8
WRITTEN = 0x20000000  # TPMA_NV_WRITTEN: set by the first increment
_SHA256 = 0x000B


def counter_tag(enrollment_id: bytes) -> bytes:
    """The counter's authPolicy: never used to authorize anything (writes use the empty
    auth value), it makes the counter's name, which approvals bind, unique to one
    enrollment, and lets 'sealer remove' tell its own counter from another one."""
    return hashlib.sha256(b"sealer retirement counter v1\x00" + enrollment_id).digest()


def check_counter_index(index: int) -> None:
    """RefusedError unless ``index`` is in sealer's range of retirement counters: a header
    naming another index must not make sealer read or change it."""
    if not FIRST_INDEX <= index <= LAST_INDEX:
        raise RefusedError(
            f"TPM NV index 0x{index:08x} is not in sealer's range of retirement counters: "
            "refused (the header was changed)",
            "unlock with the passphrase or recovery key, then enroll again",
        )


def counter_public_area(index: int, enrollment_id: bytes) -> bytes:
    """The marshalled TPMS_NV_PUBLIC of an enrollment's counter, once written (every counter
    is: sealer.tpm.retirement.define_counter increments it at once)."""
    tag = counter_tag(enrollment_id)
    return struct.pack(">IHIH", index, _SHA256, ATTRIBUTES | WRITTEN, len(tag)) + tag + (
        struct.pack(">H", COUNTER_BYTES)
    )


def epoch_operand(epoch: int) -> bytes:
    """``epoch`` as the 8-byte big-endian operand a PolicyNV compares the counter with."""
    if not 0 <= epoch < 2**64:
        raise ValueError(f"an epoch is a 64-bit counter value, not {epoch}")
    return struct.pack(">Q", epoch)


def policy_epoch(previous: bytes, nv_name: bytes, epoch: int) -> bytes:
    """PolicyNV: the counter named ``nv_name`` is at most ``epoch``."""
    return digest.policy_nv(previous, nv_name, epoch_operand(epoch), 0, EO_UNSIGNED_LE)
