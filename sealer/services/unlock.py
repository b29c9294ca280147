"""``sealer unlock``: release the key from the TPM and open (or just test) the volume."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sealer.errors import PolicyMismatchError, SealerError, TokenError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, default_mapping_name, require_enrollments
from sealer.luks.header import LuksHeader
from sealer.luks.passphrase import keyslot_passphrase
from sealer.luks.token import TOKEN_TYPE
from sealer.pcrs import PcrValues
from sealer.policy.approval import Approval
from sealer.services.matching import (
    Match,
    approvals_of,
    authorized_policy,
    find_match,
    mismatch_error,
    not_revoked,
    pcrs_to_read,
    retired_error,
    revoked_error,
    still_holds,
)
from sealer.services.secrets import pin_auth_value
from sealer.tpm import rc
from sealer.tpm.bare import open_tpm, read_pcrs, refuse_if_locked_out
from sealer.tpm.esys import EsysError, Tpm
from sealer.tpm.release import (
    Handles,
    SealedBlob,
    explain_srk,
    handles_of,
    read_counter_value,
    read_revoked_bits,
    unseal,
)

PinReader = Callable[[], bytes]


@dataclass(frozen=True)
class Released:
    """Which enrollment (or other tool's binding) released the key that opened the volume."""

    device: str
    token_id: int
    keyslot: int
    approval_index: int  # -1 for another tool's binding (no approvals)
    binding: str = "sealer-tpm2"  # the token type that released the key


def release(
    enrollment: Enrollment, tcti: str | None, read_pin: PinReader
) -> tuple[bytes, Match]:
    """Unseal the enrollment's secret; return the keyslot passphrase and the approval used.

    The TPM checks everything (sealer.tpm.release); what would only explain a refusal (is
    the approval revoked, or retired, or is the SRK another) is read after one.
    """
    token = enrollment.token
    approvals = approvals_of(enrollment, verify_signatures=False)
    bank, wanted = pcrs_to_read(enrollment, approvals)
    blob = SealedBlob(public=token.sealed_public, private=token.sealed_private)
    with open_tpm(tcti) as tpm:
        handles = handles_of(tpm, token)
        current = read_pcrs(tpm, bank, wanted)
        match = find_match(approvals, current)
        if match is None:
            _refuse_tampered(enrollment)
            raise mismatch_error(approvals, current)
        # The PIN is asked for only now: a boot state the TPM would refuse anyway must
        # not cost the user a PIN attempt, and neither must a TPM in lockout, which
        # refuses even the right PIN (and would make the person wait for nothing).
        auth_value = b""
        if token.pin_salt is not None:
            # A person types the PIN: first what the TPM would refuse after it (a revoked
            # release, a retired approval), which a boot without PIN reads only after a
            # refusal. Four commands, on PIN enrollments only.
            match = _judged(tpm, handles, enrollment, approvals, current, match)
            refuse_if_locked_out(tpm)
            auth_value = pin_auth_value(read_pin(), token.pin_salt)
        try:
            secret = unseal(tpm, handles, blob, authorized_policy(enrollment, match), auth_value)
        except (EsysError, PolicyMismatchError) as refusal:
            match = _after_refusal(tpm, handles, enrollment, approvals, current, match, refusal)
            secret = unseal(tpm, handles, blob, authorized_policy(enrollment, match), auth_value)
    return keyslot_passphrase(secret), match


def _refuse_tampered(enrollment: Enrollment) -> None:
    """After a refusal, raise the error for an approval whose signature does not verify: a
    header changed by someone explains it better than the PCRs that differ. The check needs
    ``cryptography``, which the initramfs does not carry: there the other reasons stand."""
    try:
        approvals_of(enrollment)
    except ImportError:
        return


def _after_refusal(
    tpm: Tpm,
    handles: Handles,
    enrollment: Enrollment,
    approvals: Sequence[Approval],
    current: PcrValues,
    match: Match,
    refusal: EsysError | PolicyMismatchError,
) -> Match:
    """Why the TPM refused ``match``: raise the error that says so, or return another
    approval to try when the refused one was revoked or retired and another still holds."""
    _refuse_tampered(enrollment)
    code = rc.error_of(refusal.rc) if isinstance(refusal, EsysError) else None
    if code in (rc.HANDLE, rc.INTEGRITY) and handles.srk_from_token:
        explain_srk(tpm, handles, enrollment.token)  # raises when the SRK is gone or another
    judged = _judged(tpm, handles, enrollment, approvals, current, match)
    if judged is match:  # neither revoked nor retired: the refusal has another reason
        raise refusal
    return judged


def _judged(
    tpm: Tpm,
    handles: Handles,
    enrollment: Enrollment,
    approvals: Sequence[Approval],
    current: PcrValues,
    match: Match,
) -> Match:
    """``match`` if neither its release is revoked nor it is retired (read from the TPM),
    else the next approval that holds for this boot; the error that says why when none does."""
    token = enrollment.token
    bits = None
    if token.revocation is not None:
        bits = read_revoked_bits(tpm, handles, *token.revocation.locator)
    counter = None
    if match.approval.epoch is not None and token.retirement is not None:
        counter = read_counter_value(tpm, handles, token.retirement.nv_index)
    holds = still_holds(enrollment, bits, counter)  # raises when the field is gone
    if holds(match.approval):
        return match
    other = find_match(approvals, current, holds)
    if other is not None:
        return other
    if bits is not None and not not_revoked(enrollment, bits)(match.approval):
        raise revoked_error(match.approval, bits)
    assert counter is not None  # neither revoked nor retired would have held
    raise retired_error(match.approval, counter)


@dataclass(frozen=True)
class Unsealed:
    """The key the TPM released, with the enrollment and the approval that released it."""

    key: bytes  # the keyslot passphrase: a secret, never logged
    header: LuksHeader
    enrollment: Enrollment
    match: Match


def enrolled_header(device: str) -> LuksHeader:
    """The LUKS2 header of ``device``, refused (TokenError) when it has no enrollment."""
    header = cryptsetup.read_header(device)
    require_enrollments(header)
    return header


def release_key(
    device: str,
    *,
    token_id: int | None,
    tcti: str | None,
    read_pin: PinReader,
    header: LuksHeader | None = None,
) -> Unsealed:
    """The first enrollment of ``device`` whose approval matches the boot state, unsealed."""
    header = header or cryptsetup.read_header(device)
    errors: list[SealerError] = []
    for enrollment in require_enrollments(header, token_id):
        try:
            key, match = release(enrollment, tcti, read_pin)
        except (PolicyMismatchError, TokenError) as exc:
            errors.append(exc)  # another enrollment of the same volume may still work
            continue
        return Unsealed(key, header, enrollment, match)
    raise errors[0]


def unlock(
    device: str,
    *,
    name: str | None,
    test_only: bool,
    token_id: int | None,
    tcti: str | None,
    read_pin: PinReader,
) -> Released:
    """Release the key from the TPM and open ``device`` as ``name`` (or test it, with
    ``test_only``).

    A volume with only another tool's binding (systemd-cryptenroll, clevis) is opened as that tool
    would. ``read_pin`` is asked for the PIN when the enrollment has one. Returns which enrollment
    and approval released the key. PolicyMismatchError when this boot matches no approval; AuthError
    for a wrong PIN; LockoutError, TPMMismatchError as the TPM answers; TokenError when the released
    key does not open its keyslot.
    """
    header = cryptsetup.read_header(device)
    if token_id is None and not header.tokens_of_type(TOKEN_TYPE):
        from sealer.interop.bindings import has_tool_binding

        if has_tool_binding(header):  # only another tool's binding: open it as that tool would
            return _unlock_tool_bound(header, name, test_only, tcti, read_pin)
    unsealed = release_key(
        device, token_id=token_id, tcti=tcti, read_pin=read_pin, header=header
    )
    slot = unsealed.enrollment.token.keyslot
    if test_only:
        if not cryptsetup.test_key(device, unsealed.key, slot):
            raise TokenError(
                f"the TPM released a key that keyslot {slot} does not accept "
                "(the keyslot was replaced after enrollment)",
                "remove this enrollment with 'sealer remove' and enroll again",
            )
    else:
        mapping = name or default_mapping_name(unsealed.header)
        cryptsetup.open_volume(device, mapping, unsealed.key, slot)
    return Released(device, unsealed.enrollment.token_id, slot, unsealed.match.approval_index)


def _unlock_tool_bound(
    header: LuksHeader, name: str | None, test_only: bool, tcti: str | None, read_pin: PinReader
) -> Released:
    from sealer.interop.bindings import release_tool_key

    released = release_tool_key(header, tcti, read_pin)
    binding = released.binding
    device = header.device
    slot = next(
        (s for s in binding.keyslots if cryptsetup.test_key(device, released.key, s)), None
    )
    if slot is None:
        raise TokenError(
            f"the TPM released the {binding.tool} key of token {binding.token_id}, but none of "
            f"its keyslots ({', '.join(map(str, binding.keyslots))}) accepts it"
        )
    if not test_only:
        cryptsetup.open_volume(device, name or default_mapping_name(header), released.key, slot)
    return Released(device, binding.token_id, slot, approval_index=-1, binding=binding.kind)
