"""Which of an enrollment's approvals holds in this boot, and why none does.

Every command that reasons about approvals goes through here: unlock (before asking the TPM),
status, explain, next-boot prediction, reseal and recovery. The checks are made in software
from the token and the current PCR values; the TPM makes the same ones again at unseal, so
this only decides which approval to try and turns a refusal into a message that says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sealer.errors import PolicyMismatchError, TokenError
from sealer.luks.enrollment import Enrollment
from sealer.luks.token import RetirementRef, RevocationRef
from sealer.pcrs import BANKS, Bank, PcrValues, format_pcrs
from sealer.policy import digest, retirement, revocation
from sealer.policy.approval import Approval, parse_approval, verify_approval
from sealer.tpm.release import AuthorizedPolicy


@dataclass(frozen=True)
class Match:
    """The approval, and the branch of it, whose PCR values this boot's state matches."""

    approval_index: int
    approval: Approval
    branch_index: int


def approvals_of(enrollment: Enrollment, *, verify_signatures: bool = True) -> list[Approval]:
    """The token's approvals, each checked in software against the token's policy keys and
    against what the enrollment binds (the TPM checks both again at unseal: this only turns
    a refusal into a message that says why).

    The unlock passes ``verify_signatures=False``: the TPM verifies the signature of the
    approval it uses (VerifySignature), and checking every one in software as well would
    bring ``cryptography`` into every boot.
    """
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
        if verify_signatures:
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
    """The first approval (among those ``holds`` accepts) with a branch that ``current`` matches, or
    None.
    """
    for index, approval in enumerate(approvals):
        if not holds(approval):
            continue
        branch = approval.matching_branch(current)
        if branch is not None:
            return Match(index, approval, branch)
    return None


def mismatch_error(approvals: Sequence[Approval], current: PcrValues) -> PolicyMismatchError:
    """The error for a boot state no approval matches, naming the fewest PCRs that differ."""
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
    """What the TPM needs to satisfy the sealed object's policy with the matched approval."""
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
    """The error for a matching approval signed for an epoch the retirement counter has passed."""
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
    """The error for a matching approval whose release the revocation field has revoked."""
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
        raise revocation.field_missing_error(enrollment.token.revocation.nv_index)
    return lambda a: a.release is None or not revocation.is_revoked(bits, a.release)
