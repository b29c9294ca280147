"""The revocation bit field in TPM NV memory: define and initialise it, read it, set bits.

What the index is and why it is made this way: sealer.policy.revocation.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_RC, TPM2_SE
from tpm2_pytss.types import (
    TPM2B_NV_PUBLIC,
    TPML_DIGEST,
    TPMS_NV_PUBLIC,
    TPMT_SYM_DEF,
)

from sealer.errors import RefusedError
from sealer.host.checkpoint import before_write
from sealer.policy import digest
from sealer.policy.revocation import ATTRIBUTES, REVOKE_REF, WRITTEN, RevocationIndex
from sealer.tpm.policykey import ecdsa_signature, loaded_policy_key, policy_key_name

_FIELD_BYTES = 8


# ESYS handles of NV indices per context: resolving one costs an NV_ReadPublic, and an unlock
# needs the field twice (read it, then PolicyNV). The cache dies with the context.
_HANDLES: weakref.WeakKeyDictionary[ESAPI, dict[int, ESYS_TR]] = weakref.WeakKeyDictionary()


def nv_handle(ctx: ESAPI, index: int) -> ESYS_TR | None:
    """An ESAPI handle for NV index ``index``, or None when it is not defined; kept per
    connection.
    """
    known = _HANDLES.setdefault(ctx, {})
    if index in known:
        return known[index]
    try:
        handle = ctx.tr_from_tpmpublic(index)
    except TSS2_Exception as exc:
        if exc.error == TPM2_RC.HANDLE:
            return None
        raise
    known[index] = handle
    return handle


def forget_handle(ctx: ESAPI, index: int) -> None:
    """Drop a cached handle: its index was undefined."""
    _HANDLES.get(ctx, {}).pop(index, None)


@contextmanager
def unsalted_session(ctx: ESAPI, kind: TPM2_SE = TPM2_SE.POLICY) -> Iterator[ESYS_TR]:
    """A policy (or trial) session that carries no secret, so needs no salt or encryption."""
    session = ctx.start_auth_session(
        tpm_key=ESYS_TR.NONE,
        bind=ESYS_TR.NONE,
        session_type=kind,
        symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        auth_hash=TPM2_ALG.SHA256,
    )
    try:
        yield session
    finally:
        ctx.flush_context(session)


def ensure_revocation_index(ctx: ESAPI, wanted: RevocationIndex) -> bytes:
    """Define and initialise the index if absent; return its name (what PolicyNV binds).

    An index already there is used only if its public area is exactly the one wanted: an
    index of another authority, or of another program, is never taken over.
    """
    handle = nv_handle(ctx, wanted.index)
    if handle is None:
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=wanted.index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=ATTRIBUTES,
                authPolicy=wanted.auth_policy,
                dataSize=_FIELD_BYTES,
            )
        )
        before_write(f"tpm: define NV index 0x{wanted.index:08x}")
        handle = ctx.nv_define_space(None, public, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
    public, name = ctx.nv_read_public(handle)
    area = public.nvPublic
    if (int(area.attributes) & ~WRITTEN, bytes(area.authPolicy), int(area.dataSize)) != (
        ATTRIBUTES, wanted.auth_policy, _FIELD_BYTES,
    ):
        raise RefusedError(
            f"TPM NV index 0x{wanted.index:08x} exists but is not this revocation field (another "
            "program's, or one made for another revocation authority)",
            "enroll with the same vendor key as the other volumes of this machine",
        )
    if not int(area.attributes) & WRITTEN:
        before_write(f"tpm: initialise NV index 0x{wanted.index:08x}")
        with unsalted_session(ctx) as session:
            ctx.policy_command_code(session, TPM2_CC.NV_SetBits)
            ctx.policy_nv_written(session, False)
            ctx.policy_or(session, TPML_DIGEST([wanted.init_branch, wanted.revoke_branch]))
            ctx.nv_set_bits(handle, 0, auth_handle=handle, session1=session)
        _, name = ctx.nv_read_public(handle)
    if bytes(name) != wanted.name:  # the name vendors sign against, computed in software
        raise RefusedError(
            f"TPM NV index 0x{wanted.index:08x} has name {bytes(name).hex()}, not the expected "
            f"{wanted.name.hex()}"
        )
    return bytes(name)


def undefine_revocation_index(ctx: ESAPI, index: RevocationIndex) -> bool:
    """Delete the field if it is exactly ``index`` (its authority's); False if it is not."""
    handle = nv_handle(ctx, index.index)
    if handle is None:
        return False
    _, name = ctx.nv_read_public(handle)
    if bytes(name) != index.name:
        return False
    before_write(f"tpm: undefine NV index 0x{index.index:08x}")
    try:
        ctx.nv_undefine_space(handle, ESYS_TR.OWNER, session1=ESYS_TR.PASSWORD)
    finally:
        forget_handle(ctx, index.index)
    return True


def read_revoked_bits(ctx: ESAPI, index: int, name: bytes | None = None) -> int | None:
    """The field's bits; None when the index does not exist (or was never written), or is
    not the field named ``name`` (the one an enrollment's approvals check: another field
    at that index would make the TPM refuse them all)."""
    handle = nv_handle(ctx, index)
    if handle is None:
        return None
    if name is not None and bytes(ctx.tr_get_name(handle)) != name:
        return None  # known from the NV_ReadPublic that resolved the handle: no command
    try:
        data = ctx.nv_read(handle, _FIELD_BYTES, auth_handle=handle, session1=ESYS_TR.PASSWORD)
    except TSS2_Exception as exc:
        if exc.error == TPM2_RC.NV_UNINITIALIZED:
            return None
        raise
    return int.from_bytes(bytes(data), "big")


def set_revoked_bits(
    ctx: ESAPI,
    index: RevocationIndex,
    bits: int,
    key_pem: str,
    signature_rs: tuple[int, int],
) -> None:
    """Set ``bits`` under a statement signed by the index's authority (``key_pem``)."""
    name = index.name
    statement = digest.policy_cp_hash(digest.ZERO, digest.nv_set_bits_cp_hash(name, bits))
    handle = nv_handle(ctx, index.index)
    if handle is None:
        raise RefusedError(f"TPM NV index 0x{index.index:08x} (the revocation field) is missing")
    with loaded_policy_key(ctx, key_pem) as key:
        ticket = ctx.verify_signature(
            key, digest.approval_digest(statement, REVOKE_REF), ecdsa_signature(signature_rs)
        )
    before_write(f"tpm: set bits of NV index 0x{index.index:08x}")
    with unsalted_session(ctx) as session:
        ctx.policy_cp_hash(session, digest.nv_set_bits_cp_hash(name, bits))
        ctx.policy_authorize(session, statement, policy_key_name(key_pem), ticket, REVOKE_REF)
        ctx.policy_or(session, TPML_DIGEST([index.init_branch, index.revoke_branch]))
        ctx.nv_set_bits(handle, bits, auth_handle=handle, session1=session)
