"""``sealer unlock``: release the key from the TPM and open (or just test) the volume."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sealer.errors import PolicyMismatchError, SealerError, TokenError, TPMMismatchError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, default_mapping_name, require_enrollments
from sealer.luks.header import LuksHeader
from sealer.luks.token import TOKEN_TYPE, RetirementRef, RevocationRef
from sealer.pcrs import BANKS, Bank, PcrValues, format_pcrs
from sealer.policy import digest, retirement, revocation
from sealer.policy.approval import Approval, parse_approval, verify_approval
from sealer.services.secrets import pin_auth_value
from sealer.tpm.connection import connect
from sealer.tpm.lockout import refuse_if_locked_out
from sealer.tpm.nv import read_revoked_bits
from sealer.tpm.pcr import read_pcrs
from sealer.tpm.retirement import read_counter
from sealer.tpm.seal import AuthorizedPolicy, SealedBlob, unseal
from sealer.tpm.srk import require_srk

PinReader = Callable[[], bytes]


@dataclass(frozen=True)
class Released:
    device: str
    token_id: int
    keyslot: int
    approval_index: int  # -1 for another tool's binding (no approvals)
    binding: str = "sealer-tpm2"  # the token type that released the key


@dataclass(frozen=True)
class Match:
    approval_index: int
    approval: Approval
    branch_index: int


def approvals_of(enrollment: Enrollment) -> list[Approval]:
    """The token's approvals, each checked in software against the token's policy keys and
    against what the enrollment binds (the TPM checks both again at unseal: this only turns
    a refusal into a message that says why)."""
    token = enrollment.token
    binding = enrollment.binding
    keys = {k.name: k for k in token.policy_keys}
    found = []
    for index, doc in enumerate(token.approvals):
        where = f"approval {index} of token {enrollment.token_id}"
        approval = parse_approval(doc, where)
        key = keys.get(approval.key_name)
        if key is None:
            raise TokenError(f"{where} is signed by a key the enrollment does not trust")
        verify_approval(approval, key.public_pem)
        if approval.policy_ref != binding.policy_ref(key.role):
            raise PolicyMismatchError(
                f"{where} was signed for another enrollment or another PCR selection (its "
                "policyRef differs): the header was changed",
                "unlock with the passphrase or recovery key; 'sealer reseal' writes a valid "
                "approval of this boot",
            )
        misfit = binding.check_approval_fits(
            approval.pcrs, approval.bank, [b.get(binding.cap_pcr, b"") for b in approval.branches]
        )
        if misfit:
            raise PolicyMismatchError(
                f"{where} cannot serve this enrollment: {misfit} (the header was changed)",
                "unlock with the passphrase or recovery key; 'sealer reseal' writes a valid "
                "approval of this boot",
            )
        found.append(approval)
    return found


def pcrs_to_read(
    enrollment: Enrollment, approvals: Sequence[Approval]
) -> tuple[Bank, list[int]]:
    """The bank and the PCRs whose current values decide which approval, if any, applies."""
    token = enrollment.token
    bank = BANKS.get(token.pcr_bank)
    if bank is None:
        raise TokenError(f"token {enrollment.token_id} names unknown PCR bank {token.pcr_bank!r}")
    return bank, sorted({p for a in approvals for p in a.pcrs} | {*token.pcrs, token.cap_pcr})


def find_match(
    approvals: Sequence[Approval],
    current: PcrValues,
    holds: Callable[[Approval], bool] = lambda approval: True,
) -> Match | None:
    for index, approval in enumerate(approvals):
        if not holds(approval):
            continue
        branch = approval.matching_branch(current)
        if branch is not None:
            return Match(index, approval, branch)
    return None


def mismatch_error(approvals: Sequence[Approval], current: PcrValues) -> PolicyMismatchError:
    if not approvals:
        return PolicyMismatchError("the enrollment has no approved boot state")
    closest = min((a.differing_pcrs(current) for a in approvals), key=len)
    noun = "PCR" if len(closest) == 1 else "PCRs"
    verb = "differs" if len(closest) == 1 else "differ"
    return PolicyMismatchError(
        f"{noun} {format_pcrs(closest)} {verb} from every approved boot state",
        "the TPM will not release the key; 'sealer explain' shows which events changed, "
        "or unlock with the passphrase or recovery key",
    )


def authorized_policy(enrollment: Enrollment, match: Match) -> AuthorizedPolicy:
    approval = match.approval
    token = enrollment.token
    binding = enrollment.binding
    pem = next(k.public_pem for k in token.policy_keys if k.name == approval.key_name)
    authorized = binding.authorized_digests([(k.role, k.name) for k in token.policy_keys])
    return AuthorizedPolicy(
        bank=approval.bank,
        branches=approval.branches,
        branch_digests=[
            digest.policy_pcr(digest.ZERO, approval.bank, branch) for branch in approval.branches
        ],
        branch_index=match.branch_index,
        pcr_digest=digest.pcr_composite(approval.branches[match.branch_index]),
        approved_policy=approval.approved_policy,
        approval_digest=approval.approval_digest,
        policy_ref=approval.policy_ref,
        key_pem=pem,
        signature_rs=approval.signature_rs(),
        authorized_digests=authorized if len(authorized) > 1 else [],
        cap_check=None if binding.legacy else binding.cap_values(),
        with_pin=token.has_pin,
        release_check=_release_check(enrollment, approval),
        epoch_check=_epoch_check(enrollment, approval),
    )


def _release_check(enrollment: Enrollment, approval: Approval) -> tuple[int, bytes] | None:
    if approval.release is None:
        return None
    field = enrollment.token.revocation
    index = _index_of(enrollment, "revocation field", field, approval.nv_name)
    return index, revocation.release_operand(approval.release)


def _epoch_check(enrollment: Enrollment, approval: Approval) -> tuple[int, bytes] | None:
    if approval.epoch is None:
        return None
    counter = enrollment.token.retirement
    index = _index_of(enrollment, "retirement counter", counter, approval.epoch_nv_name)
    return index, retirement.epoch_operand(approval.epoch)


def _index_of(
    enrollment: Enrollment, what: str, ref: RevocationRef | RetirementRef | None, name: bytes
) -> int:
    """The NV index an approval's PolicyNV names, if it is the enrollment's."""
    if ref is None or ref.nv_name != name:
        raise TokenError(
            f"an approval of token {enrollment.token_id} checks a {what} the enrollment does "
            "not have"
        )
    return ref.nv_index


def retired_error(approval: Approval, counter: int) -> PolicyMismatchError:
    return PolicyMismatchError(
        f"the approval that matches this boot was retired (signed for epoch {approval.epoch}, "
        f"the enrollment's retirement counter is at {counter}): an older copy of the header, "
        "or of its approvals, was put back",
        "unlock with the passphrase or recovery key; 'sealer reseal' approves this boot "
        "again if you trust it",
    )


def not_retired(counter: int | None) -> Callable[[Approval], bool]:
    """Whether an approval still holds, given the retirement counter (None: not read)."""
    if counter is None:
        return lambda approval: True
    return lambda a: a.epoch is None or a.epoch >= counter


def still_holds(
    enrollment: Enrollment, bits: int | None, counter: int | None
) -> Callable[[Approval], bool]:
    """Neither revoked (the revocation field's ``bits``) nor retired (the ``counter``)."""
    unrevoked = not_revoked(enrollment, bits)
    unretired = not_retired(counter)
    return lambda approval: unrevoked(approval) and unretired(approval)


def revoked_error(approval: Approval, bits: int) -> PolicyMismatchError:
    level = revocation.level_of(bits)
    return PolicyMismatchError(
        f"this boot image was revoked: its approval is for release {approval.release}, and "
        f"releases below {level} are revoked",
        "boot a newer release, or unlock with the passphrase or recovery key",
    )


def not_revoked(enrollment: Enrollment, bits: int | None) -> Callable[[Approval], bool]:
    """Whether an approval still holds, given the revocation field's bits (None: unreadable)."""
    if enrollment.token.revocation is None:
        return lambda approval: True
    if bits is None:
        raise TPMMismatchError(
            f"the revocation field (TPM NV index 0x{enrollment.token.revocation.nv_index:08x}) "
            "is missing or was replaced: the TPM was cleared, this is another TPM, or the "
            "index was deleted",
            "unlock with the passphrase or recovery key, then enroll again",
        )
    return lambda a: a.release is None or not revocation.is_revoked(bits, a.release)


def release(
    enrollment: Enrollment, tcti: str | None, read_pin: PinReader
) -> tuple[bytes, Match]:
    """Unseal the enrollment's secret; return the keyslot passphrase and the approval used."""
    token = enrollment.token
    approvals = approvals_of(enrollment)
    bank, wanted = pcrs_to_read(enrollment, approvals)
    unsealing: Match | None = None  # set once only the TPM's own checks are left
    try:
        with connect(tcti) as ctx:
            srk = require_srk(ctx, token.srk_handle, token.srk_name)
            current = read_pcrs(ctx, bank, wanted)
            bits = None
            if token.revocation is not None:
                bits = read_revoked_bits(ctx, *token.revocation.locator)
            match = find_match(approvals, current, not_revoked(enrollment, bits))
            if match is None:
                revoked_match = find_match(approvals, current)
                if revoked_match is not None and bits is not None:
                    raise revoked_error(revoked_match.approval, bits)
                raise mismatch_error(approvals, current)
            # The PIN is asked for only now: a boot state the TPM would refuse anyway must
            # not cost the user a PIN attempt, and neither must a TPM in lockout, which
            # refuses even the right PIN (and would make the person wait for nothing).
            auth_value = b""
            if token.pin_salt is not None:
                refuse_if_locked_out(ctx)
                auth_value = pin_auth_value(read_pin(), token.pin_salt)
            policy = authorized_policy(enrollment, match)
            blob = SealedBlob(public=token.sealed_public, private=token.sealed_private)
            unsealing = match
            secret = unseal(ctx, srk, blob, policy, auth_value)
    except PolicyMismatchError as error:
        explained = None if unsealing is None else _explained(enrollment, unsealing.approval, tcti)
        if explained is None:
            raise
        raise explained from error
    return base64.b64encode(secret), match


def _explained(
    enrollment: Enrollment, approval: Approval, tcti: str | None
) -> PolicyMismatchError | None:
    """Why the TPM refused ``approval``, when the retirement counter is the reason. Read
    only after a refusal: a successful unlock need not spend the commands."""
    counter = enrollment.token.retirement
    if approval.epoch is None or counter is None:
        return None
    try:
        with connect(tcti) as ctx:
            value = read_counter(ctx, counter.nv_index).value
    except SealerError:
        return None
    return retired_error(approval, value) if value > approval.epoch else None


@dataclass(frozen=True)
class Unsealed:
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
