"""What one unlock asks of the TPM, and nothing more.

Every boot runs this (the keyscript, the password agent), so it uses the bare ESAPI binding
(sealer.tpm.esys, sealer.tpm.bare), and it sends the fewest commands that still let the TPM
check everything: an enrollment without PIN costs 13.

- PCR_Read: which approval this boot matches (sealer.services.matching decides);
- LoadExternal, VerifySignature, FlushContext: the TPM checks the approval's signature;
- Load, StartAuthSession (salted with the SRK), PolicyPCR, PolicyNV (the release is not
  revoked), PolicyNV (the approval is not retired), PolicyAuthorize, PolicyPCR (the capping
  PCR is at its reset value), Unseal, FlushContext of the sealed object. The session is not
  flushed: without continueSession, the TPM ends it with the Unseal it authorizes.

No ReadPublic or NV_ReadPublic: the SRK's public area is in the token (checked against the
name pinned there) and the NV indices' public areas are computed from the token and checked
against the names the approvals bind. What is needed only to explain a refusal (the revocation
bits, the retirement counter, whether the SRK is gone or another) is read after the refusal.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sealer.errors import (
    PolicyMismatchError,
    RefusedError,
    SealerError,
    TokenError,
    TPMMismatchError,
)
from sealer.luks.token import SealerToken
from sealer.pcrs import Bank, PcrValues
from sealer.policy.digest import pcr_composite
from sealer.policy.keyname import policy_key_name, policy_key_public
from sealer.policy.retirement import COUNTER_BYTES, check_counter_index, counter_public_area
from sealer.policy.revocation import RevocationIndex, field_missing_error
from sealer.tpm import esys, rc
from sealer.tpm.bare import pcr_selection
from sealer.tpm.esys import EsysError, Tpm

_EO_BITCLEAR = 0x000B  # PolicyNV: every bit set in the operand is clear in the index
_EO_UNSIGNED_LE = 0x0009  # PolicyNV: the index is at most the operand
_ALG_ECDSA = 0x0018
_FIELD_BYTES = 8


@dataclass(frozen=True)
class SealedBlob:
    """The sealed object as the TPM returns it, kept in the token to be loaded at unseal."""

    public: bytes  # marshalled TPM2B_PUBLIC
    private: bytes  # marshalled TPM2B_PRIVATE (encrypted by the TPM under the SRK)


@dataclass(frozen=True)
class AuthorizedPolicy:
    """What it takes to satisfy the sealed object's policy once, in one boot state."""

    bank: Bank
    branches: Sequence[PcrValues]  # every boot state of the approval
    branch_digests: Sequence[bytes]  # PolicyPCR digest of each branch, same order
    branch_index: int  # the branch the current PCRs are expected to match
    pcr_digest: bytes  # PolicyPCR's pcrDigest for that branch; b"": the TPM's current values
    approved_policy: bytes
    approval_digest: bytes  # aHash = H(approved_policy || policy_ref)
    policy_ref: bytes
    key_pem: str  # the public key that signed the approval
    signature_rs: tuple[int, int]
    authorized_digests: Sequence[bytes]  # PolicyAuthorize digest per trusted key (OR'ed if >1)
    with_pin: bool
    # The approval's release check: (revocation field's NV index, PolicyNV operand), or None.
    release_check: tuple[int, bytes] | None = None
    # The approval's epoch check: (retirement counter's NV index, PolicyNV operand), or None.
    epoch_check: tuple[int, bytes] | None = None
    # What the object itself requires after PolicyAuthorize: the capping PCR at its reset
    # value (sealer.policy.binding); None for objects sealed before it did.
    cap_check: PcrValues | None = None


# The handles of an enrollment's SRK and NV indices.


@dataclass(frozen=True)
class Handles:
    """ESAPI handles for the SRK and the NV indices an enrollment's approvals check."""

    srk: int
    srk_from_token: bool  # True: not read from the TPM, so a refusal may mean another SRK
    nv: dict[int, int]  # NV index -> handle


def srk_missing(persistent: int) -> TPMMismatchError:
    return TPMMismatchError(
        f"this TPM has no storage root key at 0x{persistent:08x}: it was evicted, the TPM "
        "was cleared, or this volume was enrolled with another TPM",
        # The SRK derives from the owner seed: recreated on an uncleared TPM, it has the
        # pinned name again, and every enrollment made with it works again.
        "unlock with the passphrase or recovery key, then run 'sealer enroll' (it "
        "recreates the key; unless the TPM was cleared, this enrollment then works too)",
    )


def srk_differs() -> TPMMismatchError:
    return TPMMismatchError(
        "this volume was enrolled with another TPM (its storage root key differs)",
        "unlock with the passphrase or recovery key, then enroll again on this machine",
    )


def read_srk(tpm: Tpm, persistent: int, pinned_name: bytes) -> int:
    """The SRK read from the TPM (ReadPublic); TPMMismatchError when gone or another."""
    try:
        handle = tpm.tr_from_public(persistent)
    except EsysError as exc:
        if rc.error_of(exc.rc) == rc.HANDLE:
            raise srk_missing(persistent) from exc
        raise
    if tpm.tr_name(handle) != pinned_name:
        raise srk_differs()
    return handle


def _nv_name(area: bytes) -> bytes:
    return area[4:6] + hashlib.sha256(area).digest()


def _nv_handle(tpm: Tpm, index: int, name: bytes, area: bytes | None) -> int:
    """The index's handle from its computed public area when that is the one ``name`` names
    (no command), else from the TPM (NV_ReadPublic; HANDLE error when it is missing)."""
    if area is not None and _nv_name(area) == name:
        return tpm.tr_deserialize(index, name, esys.RESOURCE_NV, esys.tpm2b(area))
    return tpm.tr_from_public(index)


def _revocation_area(token: SealerToken) -> bytes | None:
    revocation = token.revocation
    if revocation is None:
        return None
    authority = next((k for k in token.policy_keys if k.role == revocation.authority), None)
    if authority is None:
        return None
    return RevocationIndex(revocation.nv_index, authority.name).public_area(written=True)


def handles_of(tpm: Tpm, token: SealerToken) -> Handles:
    """Handles for the token's SRK and NV indices; commands only for what the token does not
    let sealer know (an enrollment made before the SRK's public area was kept)."""
    if token.srk_public is not None:
        srk = tpm.tr_deserialize(
            token.srk_handle, token.srk_name, esys.RESOURCE_KEY, token.srk_public
        )
    else:
        srk = read_srk(tpm, token.srk_handle, token.srk_name)
    nv = {}
    if token.revocation is not None:
        r = token.revocation
        nv[r.nv_index] = _missing_means(
            lambda: _nv_handle(tpm, r.nv_index, r.nv_name, _revocation_area(token)),
            _revocation_missing(r.nv_index),
        )
    if token.retirement is not None:
        counter = token.retirement
        check_counter_index(counter.nv_index)
        area = None
        if token.enrollment_id is not None:
            area = counter_public_area(counter.nv_index, token.enrollment_id)
        nv[counter.nv_index] = _missing_means(
            lambda: _nv_handle(tpm, counter.nv_index, counter.nv_name, area),
            _counter_missing(counter.nv_index),
        )
    return Handles(srk, token.srk_public is not None, nv)


def _revocation_missing(index: int) -> TPMMismatchError:
    return field_missing_error(index)


def _counter_missing(index: int) -> RefusedError:
    return RefusedError(
        f"the retirement counter (TPM NV index 0x{index:08x}) is missing: the TPM was "
        "cleared, or the index was deleted",
        "unlock with the passphrase or recovery key, then enroll again",
    )


def _missing_means(call: Callable[[], int], error: SealerError) -> int:
    try:
        return call()
    except EsysError as exc:
        if rc.error_of(exc.rc) == rc.HANDLE:
            raise error from exc
        raise


def explain_srk(tpm: Tpm, handles: Handles, token: SealerToken) -> None:
    """After the TPM refused to load the sealed object under an SRK known from the token:
    raise the error that says whether the SRK is gone or another; return if it is the one."""
    # ESAPI answers a second lookup of a handle it knows from its own record: forget it.
    tpm.tr_close(handles.srk)
    read_srk(tpm, token.srk_handle, token.srk_name)


def _fresh_nv(tpm: Tpm, handles: Handles, index: int) -> int:
    """The index as the TPM has it now (NV_ReadPublic), replacing the handle computed from the
    token: ESAPI answers a lookup of a handle it knows from its own record."""
    known = handles.nv.pop(index, None)
    if known is not None:
        tpm.tr_close(known)
    handle = tpm.tr_from_public(index)
    handles.nv[index] = handle
    return handle


def read_revoked_bits(tpm: Tpm, handles: Handles, index: int, name: bytes) -> int | None:
    """The revocation field's bits, read after a refusal (or before a PIN prompt); None when
    the index is missing, was never written, or is not the field named ``name``
    (sealer.tpm.nv.read_revoked_bits)."""
    try:
        handle = _fresh_nv(tpm, handles, index)
        if tpm.tr_name(handle) != name:
            return None
        return int.from_bytes(tpm.nv_read(handle, _FIELD_BYTES), "big")
    except EsysError as exc:
        if rc.error_of(exc.rc) in (rc.HANDLE, rc.NV_UNINITIALIZED):
            return None
        raise


def read_counter_value(tpm: Tpm, handles: Handles, index: int) -> int:
    """The retirement counter's value, read after a refusal (or before a PIN prompt)."""
    check_counter_index(index)
    handle = _missing_means(lambda: _fresh_nv(tpm, handles, index), _counter_missing(index))
    return int.from_bytes(tpm.nv_read(handle, COUNTER_BYTES), "big")


# The policy session and the unseal.


def _ecdsa(rs: tuple[int, int]) -> bytes:
    """An ECDSA P-256/SHA-256 signature ``(r, s)`` as a marshalled TPMT_SIGNATURE."""
    r, s = rs
    return struct.pack(">HH", _ALG_ECDSA, esys.ALG_SHA256) + b"".join(
        esys.tpm2b(v.to_bytes(32, "big")) for v in (r, s)
    )


def _apply_pcr_branches(tpm: Tpm, session: int, policy: AuthorizedPolicy) -> None:
    """PolicyPCR for the expected boot state, then PolicyOR over all approved states."""
    branch = policy.branches[policy.branch_index]
    tpm.policy_pcr(session, policy.pcr_digest, pcr_selection(policy.bank, sorted(branch)))
    if len(policy.branch_digests) > 1:
        tpm.policy_or(session, list(policy.branch_digests))


def _apply_nv_checks(tpm: Tpm, session: int, policy: AuthorizedPolicy, nv: dict[int, int]) -> None:
    """The approval's NV checks, in the order its approved policy has them."""
    if policy.release_check is not None:
        index, operand = policy.release_check
        if index not in nv:
            raise _revocation_missing(index)
        tpm.policy_nv(nv[index], session, operand, _EO_BITCLEAR)
    if policy.epoch_check is not None:
        index, operand = policy.epoch_check
        if index not in nv:
            raise _counter_missing(index)
        tpm.policy_nv(nv[index], session, operand, _EO_UNSIGNED_LE)


def _apply_policy(
    tpm: Tpm, session: int, policy: AuthorizedPolicy, nv: dict[int, int], ticket: bytes
) -> None:
    _apply_pcr_branches(tpm, session, policy)
    _apply_nv_checks(tpm, session, policy, nv)
    key_name = policy_key_name(policy.key_pem)
    try:
        tpm.policy_authorize(session, policy.approved_policy, policy.policy_ref, key_name, ticket)
    except EsysError as exc:
        if rc.error_of(exc.rc) != rc.VALUE:  # the session's digest is not the approved policy
            raise
        raise PolicyMismatchError(
            "the TPM refused the approval: an NV index it checks (the revocation field or "
            "the retirement counter) is not the one it was signed for (replaced or redefined)",
            "unlock with the passphrase or recovery key, then enroll again",
        ) from exc
    if len(policy.authorized_digests) > 1:
        tpm.policy_or(session, list(policy.authorized_digests))
    if policy.cap_check is not None:
        cap = policy.cap_check
        tpm.policy_pcr(session, pcr_composite(cap), pcr_selection(policy.bank, sorted(cap)))
    if policy.with_pin:
        tpm.policy_auth_value(session)


def _ticket(tpm: Tpm, policy: AuthorizedPolicy) -> bytes:
    """The TPM's proof that the approval's signature verifies with its key."""
    # Loaded into the owner hierarchy: a key in the NULL hierarchy yields only NULL tickets,
    # which PolicyAuthorize refuses.
    key = tpm.load_external(policy_key_public(policy.key_pem), esys.TR_OWNER)
    try:
        return tpm.verify_signature(key, policy.approval_digest, _ecdsa(policy.signature_rs))
    except EsysError as exc:
        if rc.error_of(exc.rc) != rc.SIGNATURE:
            raise
        raise TokenError(
            "the TPM found the approval's signature invalid (the header was changed)",
            "unlock with the passphrase or recovery key; 'sealer reseal' writes a valid "
            "approval of this boot",
        ) from exc
    finally:
        tpm.flush(key)


def unseal(
    tpm: Tpm, handles: Handles, blob: SealedBlob, policy: AuthorizedPolicy, auth_value: bytes
) -> bytes:
    """Load the sealed object, satisfy its policy in a salted session, and unseal it."""
    ticket = _ticket(tpm, policy)
    sealed = tpm.load(handles.srk, blob.private, blob.public)
    try:
        session: int | None = tpm.start_session(esys.SE_POLICY, salt_key=handles.srk)
        try:
            assert session is not None
            # Encrypt the response (the secret); no continueSession: the TPM ends the
            # session with the Unseal, which spares a FlushContext.
            tpm.set_session_attributes(session, esys.SESSION_ENCRYPT)
            _apply_policy(tpm, session, policy, handles.nv, ticket)
            if auth_value:
                tpm.set_auth(sealed, auth_value)
            secret = tpm.unseal(sealed, session)
            session = None  # ended by the TPM
            return secret
        finally:
            if session is not None:
                tpm.flush(session)
    finally:
        tpm.flush(sealed)


def trial_policy_digest(tpm: Tpm, policy: AuthorizedPolicy) -> bytes:
    """The policy digest the TPM computes for ``policy`` (no signature check, no unseal).

    Used to prove that sealer's software digests equal the TPM's own; with an empty
    ``pcr_digest`` the TPM hashes its current PCR values itself.
    """
    checks = [c for c in (policy.release_check, policy.epoch_check) if c is not None]
    nv = {index: tpm.tr_from_public(index) for index, _ in checks}
    session = tpm.start_session(esys.SE_TRIAL)
    try:
        _apply_pcr_branches(tpm, session, policy)
        _apply_nv_checks(tpm, session, policy, nv)
        return tpm.policy_digest(session)
    finally:
        tpm.flush(session)
