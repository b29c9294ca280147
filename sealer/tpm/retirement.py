"""The retirement counters in TPM NV memory: define one per enrollment, read, increment.

What they are and why: sealer.policy.retirement.
"""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_RC
from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

from sealer.errors import HeaderFullError, RefusedError
from sealer.host.checkpoint import before_write
from sealer.policy.retirement import (
    ATTRIBUTES,
    COUNTER_BYTES,
    FIRST_INDEX,
    LAST_INDEX,
    check_counter_index,
)
from sealer.policy.revocation import WRITTEN
from sealer.tpm.nv import forget_handle, nv_handle


@dataclass(frozen=True)
class Counter:
    """An enrollment's retirement counter in NV memory: its index, TPM name and value."""

    index: int
    name: bytes  # what an approval's PolicyNV binds
    value: int


def define_counter(ctx: ESAPI, tag: bytes) -> Counter:
    """Define a new counter at the first free index of sealer's range and give it its
    first value (a fresh counter starts above every count this TPM ever had)."""
    free = (i for i in range(FIRST_INDEX, LAST_INDEX + 1) if nv_handle(ctx, i) is None)
    index = next(free, None)
    if index is None:
        raise HeaderFullError(
            f"every TPM NV index sealer may use for a retirement counter (0x{FIRST_INDEX:08x} "
            f"to 0x{LAST_INDEX:08x}) is taken",
            "remove enrollments you no longer use with 'sealer remove', which frees theirs",
        )
    public = TPM2B_NV_PUBLIC(
        nvPublic=TPMS_NV_PUBLIC(
            nvIndex=index, nameAlg=TPM2_ALG.SHA256, attributes=ATTRIBUTES, authPolicy=tag,
            dataSize=COUNTER_BYTES,
        )
    )
    before_write(f"tpm: define NV counter 0x{index:08x}")
    handle = ctx.nv_define_space(None, public, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
    before_write(f"tpm: first increment of NV counter 0x{index:08x}")
    ctx.nv_increment(handle, auth_handle=handle, session1=ESYS_TR.PASSWORD)
    return read_counter(ctx, index)


def _checked_handle(ctx: ESAPI, index: int) -> ESYS_TR:
    """The index's handle, if it is one of sealer's retirement counters."""
    check_counter_index(index)
    handle = nv_handle(ctx, index)
    if handle is None:
        raise RefusedError(
            f"the retirement counter (TPM NV index 0x{index:08x}) is missing: the TPM was "
            "cleared, or the index was deleted",
            "unlock with the passphrase or recovery key, then enroll again",
        )
    return handle


def read_counter(ctx: ESAPI, index: int) -> Counter:
    """The counter's name and value; RefusedError unless it is one of sealer's counters."""
    handle = _checked_handle(ctx, index)
    public, name = ctx.nv_read_public(handle)
    attributes = int(public.nvPublic.attributes)
    if attributes & ~WRITTEN != ATTRIBUTES or len(bytes(public.nvPublic.authPolicy)) != 32:
        raise RefusedError(f"TPM NV index 0x{index:08x} is not a sealer retirement counter")
    if not attributes & WRITTEN:
        return Counter(index, bytes(name), 0)
    data = ctx.nv_read(handle, COUNTER_BYTES, auth_handle=handle, session1=ESYS_TR.PASSWORD)
    return Counter(index, bytes(name), int.from_bytes(bytes(data), "big"))


def counter_value(ctx: ESAPI, index: int | None) -> int | None:
    """The value of the counter at ``index``; None for no index (a legacy enrollment)."""
    return None if index is None else read_counter(ctx, index).value


def increment_counter(ctx: ESAPI, index: int) -> None:
    """Move the counter on by one: every approval of an earlier epoch stops holding."""
    counter = read_counter(ctx, index)  # refuses an index that is not a sealer counter
    before_write(f"tpm: increment NV counter 0x{index:08x}")
    handle = _checked_handle(ctx, counter.index)
    ctx.nv_increment(handle, auth_handle=handle, session1=ESYS_TR.PASSWORD)


def undefine_counter(ctx: ESAPI, index: int, name: bytes) -> bool:
    """Free the counter of an enrollment that is gone; False (and nothing done) when the
    index is missing or is not the one named ``name`` (another enrollment's, or another
    program's: never deleted)."""
    try:
        if read_counter(ctx, index).name != name:
            return False
    except RefusedError:
        return False
    handle = _checked_handle(ctx, index)
    before_write(f"tpm: undefine NV counter 0x{index:08x}")
    try:
        ctx.nv_undefine_space(handle, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
    except TSS2_Exception as exc:
        if exc.error != TPM2_RC.HANDLE:
            raise
    finally:
        forget_handle(ctx, index)
    return True
