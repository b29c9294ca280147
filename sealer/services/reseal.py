"""``sealer reseal`` and ``sealer prune``: keep the approvals in step with the boot images.

Neither unseals anything nor needs a passphrase: the sealed object accepts any boot state
the machine's policy key approves (PolicyAuthorize), so both only sign a new approval and
write it into the token, in one header update.

reseal approves this boot's state plus the predicted state of each new boot image. It
refuses when this boot is not an approved state itself (unless told to trust it): the
prediction starts from this boot's log, and a boot that was tampered with must not become
the template of the next one.

prune runs after a boot that the TPM would unlock: it keeps the approved state that matches
this boot, and any state approved during this boot (an update waiting for its reboot), and
drops the rest, so that an older boot image no longer unlocks. "During this boot" is decided
by the TPM's reset count, which every approval records and every platform reset increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from sealer.errors import MeasurementError, PolicyMismatchError, StateError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, require_enrollments
from sealer.measure.measurements import event_record
from sealer.measure.predict import NextBoot, Prediction, predict
from sealer.pcrs import BANKS, Bank, PcrValues, format_pcrs
from sealer.policy import digest, keys, revocation
from sealer.policy.approval import Approval, EventRecord, sign_approval
from sealer.services.bootstate import BootState, read_boot_state
from sealer.services.matching import approvals_of, not_retired, still_holds
from sealer.tpm.connection import connect
from sealer.tpm.nv import read_revoked_bits
from sealer.tpm.pcr import read_pcrs, reset_count
from sealer.tpm.policykey import policy_key_name
from sealer.tpm.retirement import counter_value, increment_counter, read_counter
from sealer.tpm.srk import pinned_srk_public

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ApprovedState:
    """One boot state to approve: its PCR values and, when known, the events behind them."""

    label: str  # "this boot", "next boot: UKI /boot/efi/...", "kept: approved <time>"
    values: PcrValues
    record: EventRecord | None


@dataclass(frozen=True)
class VolumeApproval:
    """One enrollment's approvals after reseal or prune, and whether they were written."""

    device: str
    token_id: int
    bank: str
    pcrs: tuple[int, ...]
    states: tuple[ApprovedState, ...]
    dropped: int  # approved states no longer approved
    written: bool
    predictions: tuple[Prediction, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "token": self.token_id,
            "pcr_bank": self.bank,
            "pcrs": list(self.pcrs),
            "approved_states": [
                {"label": s.label, "pcrs": {str(p): v.hex() for p, v in sorted(s.values.items())}}
                for s in self.states
            ],
            "dropped_states": self.dropped,
            "written": self.written,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class ResealRequest:
    """The volumes to reseal and the boot images whose next state to approve."""

    devices: Sequence[str]
    boots: Sequence[NextBoot]  # empty: approve this boot's state only
    log_path: Path | None
    offline: bool
    approve_current: bool  # trust this boot even though no approval matches it
    state_dir: Path
    tcti: str | None
    dry_run: bool


def _machine_key(
    enrollment: Enrollment, state_dir: Path
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = keys.load_machine_key(state_dir)
    if key is None:
        raise StateError(
            f"there is no policy key in {state_dir}",
            "approvals are signed by the key 'sealer enroll' made on this machine; give its "
            "state directory with --state-dir",
        )
    name = policy_key_name(keys.public_pem(key))
    if name not in {k.name for k in enrollment.token.policy_keys}:
        raise StateError(
            f"the policy key in {state_dir} is not one that token {enrollment.token_id} trusts",
            "this volume was enrolled with another state directory (or on another machine)",
        )
    return key, name


def _bank_of(enrollment: Enrollment) -> Bank:
    bank = BANKS.get(enrollment.token.pcr_bank)
    assert bank is not None  # parse_token accepts known banks only
    return bank


def _with_cap(enrollment: Enrollment, values: PcrValues) -> dict[int, bytes]:
    """``values`` plus the capping PCR at its reset value, which every approval requires."""
    cap = enrollment.token.cap_pcr
    return {**values, cap: _bank_of(enrollment).initial_value(cap)}


def _matching(approvals: Sequence[Approval], values: PcrValues) -> tuple[int, int] | None:
    for a_index, approval in enumerate(approvals):
        branch = approval.matching_branch(values)
        if branch is not None:
            return a_index, branch
    return None


def _pending(
    mine: Sequence[Approval], machine_pem: str, tpm_boot: int | None, skip: PcrValues
) -> list[ApprovedState]:
    """States this machine approved during this boot (``tpm_boot``): updates waiting for
    their reboot. Only from ``mine`` (approvals by the machine key that still hold), and only
    where the machine key signed the reset count too: the header says which approvals are
    recent, and whoever can write it must not make reseal sign an old state again."""
    kept = []
    for approval in mine:
        if tpm_boot is None or approval.signed_tpm_boot(machine_pem) != tpm_boot:
            continue
        for index, branch in enumerate(approval.branches):
            if dict(branch) != dict(skip):
                kept.append(
                    ApprovedState(f"kept: approved {approval.created}", branch,
                                  approval.event_record(index))
                )
    return kept


def _dedupe(states: Sequence[ApprovedState]) -> list[ApprovedState]:
    seen: list[dict[int, bytes]] = []
    unique = []
    for state in states:
        if dict(state.values) not in seen:
            seen.append(dict(state.values))
            unique.append(state)
    return unique


def _holds(
    enrollment: Enrollment, bits: int | None, counter: int | None, approval: Approval
) -> bool:
    """False for an approval the revocation field revokes or the retirement counter retired;
    what was not read (offline) revokes nothing here: the TPM still checks it at unlock."""
    if bits is None or enrollment.token.revocation is None:
        return not_retired(counter)(approval)
    return still_holds(enrollment, bits, counter)(approval)


def _release(
    enrollment: Enrollment, mine: Sequence[Approval], bits: int | None
) -> tuple[int, bytes] | None:
    """The release a new machine approval is for: the lowest one not revoked, so that any
    later revocation also retires it. Offline (no bits), the newest release already used."""
    field = enrollment.token.revocation
    if field is None:
        return None  # enrolled before revocation existed: its approvals cannot check it
    if bits is not None:
        return revocation.level_of(bits), field.nv_name
    used = [a.release for a in mine if a.release is not None]
    return (max(used) if used else 0), field.nv_name


@dataclass(frozen=True)
class _Rewrite:
    """One rewrite of the machine's approvals of an enrollment."""

    enrollment: Enrollment
    device: str
    key: ec.EllipticCurvePrivateKey
    key_name: bytes
    comment: str
    dry_run: bool
    tpm_boot: int | None
    release: tuple[int, bytes] | None
    tcti: str | None
    offline: bool = False


def _write(rewrite: _Rewrite, states: Sequence[ApprovedState], mine: Sequence[Approval]) -> None:
    """Replace the approvals signed by the machine key with one approval of ``states``, and
    retire every approval it signed before: the new one is signed for the next epoch of the
    enrollment's retirement counter, written, and then the counter moves on to it. Stopped in
    between, the old approvals still hold until the next rewrite: nothing is lost."""
    index = rewrite.enrollment.counter_index
    if index is None or rewrite.offline:
        # Offline the counter cannot move: sign for the epoch in force (the newest used).
        epochs = [a.epoch for a in mine if a.epoch is not None]
        epoch = None if index is None or not epochs else max(epochs)
        _sign_and_write(rewrite, states, epoch)
        return
    with connect(rewrite.tcti) as ctx:
        next_epoch = read_counter(ctx, index).value + 1
        # A token made before enroll kept the SRK's public area gets it now: the boot then
        # salts its session from the token, one ReadPublic less.
        token = rewrite.enrollment.token
        srk_public = token.srk_public or pinned_srk_public(ctx, token.srk_handle, token.srk_name)
        _sign_and_write(rewrite, states, next_epoch, srk_public)
        if not rewrite.dry_run:
            increment_counter(ctx, index)


def _sign_and_write(
    rewrite: _Rewrite,
    states: Sequence[ApprovedState],
    epoch: int | None,
    srk_public: bytes | None = None,
) -> None:
    enrollment = rewrite.enrollment
    token = enrollment.token
    others = [
        doc for doc, approval in zip(token.approvals, approvals_of(enrollment), strict=True)
        if approval.key_name != rewrite.key_name
    ]
    counter = token.retirement
    approval = sign_approval(
        rewrite.key,
        rewrite.key_name,
        _bank_of(enrollment),
        [s.values for s in states],
        comment=rewrite.comment,
        events=[s.record for s in states],
        tpm_boot=rewrite.tpm_boot,
        release=rewrite.release,
        policy_ref=enrollment.binding.policy_ref("machine"),
        epoch=None if epoch is None or counter is None else (epoch, counter.nv_name),
    )
    new_token = replace(
        token, approvals=(*others, approval.to_json()), srk_public=srk_public or token.srk_public
    )
    if not rewrite.dry_run:
        cryptsetup.import_token(
            rewrite.device, enrollment.token_id, new_token.to_json(), replace=True
        )


def _predicted_state(
    enrollment: Enrollment, state: BootState, boot: NextBoot
) -> tuple[ApprovedState, Prediction]:
    pcrs = enrollment.token.pcrs
    live = {p: v for p, v in (state.live or {}).items() if p in pcrs}
    prediction = predict(state.log, state.bank, boot, live)
    blocked = {p: why for p, why in prediction.unpredictable.items() if p in pcrs}
    if blocked:
        pcr, why = sorted(blocked.items())[0]
        raise MeasurementError(
            f"cannot predict PCR {pcr} for the {boot.describe()}: {why}",
            "nothing was changed; after booting it, unlock with the passphrase and run "
            "'sealer reseal' to approve the new state",
        )
    values = _with_cap(enrollment, {p: prediction.value(p) for p in pcrs})
    record = event_record(prediction.measurements, pcrs)
    return ApprovedState(f"next boot: {boot.describe()}", values, record), prediction


def _reseal_one(
    device: str, enrollment: Enrollment, req: ResealRequest, progress: Progress
) -> VolumeApproval:
    token = enrollment.token
    key, key_name = _machine_key(enrollment, req.state_dir)
    approvals = approvals_of(enrollment)
    field = token.revocation
    state = read_boot_state(
        _bank_of(enrollment), token.pcrs, log_path=req.log_path, tcti=req.tcti,
        offline=req.offline, revocation=field.locator if field else None,
        retirement_index=enrollment.counter_index,
    )
    current_values = _with_cap(enrollment, state.values(token.pcrs))
    warnings = []
    if not state.verified:
        warnings.append("the event log was not checked against a TPM (--offline)")
    # A revoked approval does not make this boot approved: re-signing it would undo the
    # revocation. Offline the field cannot be read; the TPM still checks it at unlock.
    holding = [
        a for a in approvals if _holds(enrollment, state.revoked_bits, state.epoch_counter, a)
    ]
    if _matching(holding, current_values) is None:
        if not req.approve_current:
            differing = min((a.differing_pcrs(current_values) for a in approvals), key=len)
            raise PolicyMismatchError(
                f"this boot is not an approved state (PCR {format_pcrs(differing)} differ), so "
                "it cannot be the base of a prediction",
                "run 'sealer explain' to see why; if you trust this boot, rerun with "
                "--approve-current",
            )
        warnings.append("this boot's state was approved on your word (--approve-current)")
    states = [
        ApprovedState("this boot", current_values, event_record(state.measurements, token.pcrs))
    ]
    predictions = []
    for boot in req.boots:
        progress(f"predicting the PCRs of the {boot.describe()}")
        predicted, prediction = _predicted_state(enrollment, state, boot)
        states.append(predicted)
        predictions.append(prediction)
    mine = [a for a in approvals if a.key_name == key_name]
    machine_pem = keys.public_pem(key)
    states += _pending(
        [a for a in holding if a.key_name == key_name], machine_pem, state.tpm_boot,
        current_values,
    )
    states = _dedupe(states)[: digest.MAX_OR_BRANCHES]
    progress(f"signing an approval of {len(states)} boot state(s) for token {enrollment.token_id}")
    release = _release(enrollment, mine, state.revoked_bits)
    rewrite = _Rewrite(
        enrollment, device, key, key_name, "reseal", req.dry_run, state.tpm_boot, release,
        req.tcti, offline=req.offline,
    )
    _write(rewrite, states, mine)
    return VolumeApproval(
        device=device,
        token_id=enrollment.token_id,
        bank=token.pcr_bank,
        pcrs=token.pcrs,
        states=tuple(states),
        dropped=max(0, sum(len(a.branches) for a in mine) - len(states)),
        written=not req.dry_run,
        predictions=tuple(predictions),
        warnings=tuple(warnings),
    )


def _enrollments(devices: Sequence[str]) -> Iterator[tuple[str, Enrollment]]:
    for device in devices:
        for enrollment in require_enrollments(cryptsetup.read_header(device)):
            yield device, enrollment


def reseal(req: ResealRequest, progress: Progress) -> list[VolumeApproval]:
    """Approve this boot's state plus the predicted state of each image in ``req.boots``, for every
    sealer enrollment of the devices given, and write the approvals into their tokens.

    PolicyMismatchError when this boot matches no approval that holds (unless ``approve_current``),
    since a tampered boot must not become the base of a prediction; MeasurementError when a next
    boot's state cannot be predicted; StateError when the machine policy key is missing or is not
    the one the enrollment trusts.
    """
    return [_reseal_one(d, e, req, progress) for d, e in _enrollments(req.devices)]


def _prune_one(
    device: str, enrollment: Enrollment, state_dir: Path, tcti: str | None, dry_run: bool
) -> VolumeApproval:
    token = enrollment.token
    key, key_name = _machine_key(enrollment, state_dir)
    with connect(tcti) as ctx:
        live = read_pcrs(ctx, _bank_of(enrollment), list(token.pcrs))
        tpm_boot = reset_count(ctx)
        bits = read_revoked_bits(ctx, *token.revocation.locator) if token.revocation else None
        counter = counter_value(ctx, enrollment.counter_index)
    approvals = [
        a for a in approvals_of(enrollment)
        if a.key_name == key_name and _holds(enrollment, bits, counter, a)
    ]
    current = _with_cap(enrollment, live)
    match = _matching(approvals, current)
    if match is None:
        raise PolicyMismatchError(
            "this boot is not an approved state, so nothing tells which states are stale; "
            "nothing was pruned",
            "run 'sealer explain' to see why this boot differs",
        )
    a_index, b_index = match
    keep = [
        ApprovedState("this boot", approvals[a_index].branches[b_index],
                      approvals[a_index].event_record(b_index)),
        *_pending(approvals, keys.public_pem(key), tpm_boot, current),
    ]
    keep = _dedupe(keep)[: digest.MAX_OR_BRANCHES]
    before = sum(len(a.branches) for a in approvals)
    changed = before != len(keep)
    if changed:
        release = _release(enrollment, approvals, bits)
        rewrite = _Rewrite(
            enrollment, device, key, key_name, "prune", dry_run, tpm_boot, release, tcti
        )
        _write(rewrite, keep, approvals)
    return VolumeApproval(
        device=device,
        token_id=enrollment.token_id,
        bank=token.pcr_bank,
        pcrs=token.pcrs,
        states=tuple(keep),
        dropped=before - len(keep),
        written=changed and not dry_run,
    )


def prune(
    devices: Sequence[str], state_dir: Path, tcti: str | None, dry_run: bool
) -> list[VolumeApproval]:
    """Drop the approvals that no longer matter, for every sealer enrollment of ``devices``.

    Keeps the approved state that matches this boot and any approved during this boot (an update
    waiting for its reboot); the rest go, so that older boot images no longer unlock. Reads the TPM,
    so works online only. PolicyMismatchError when this boot matches no approval: then nothing tells
    which states are stale, and nothing is pruned.
    """
    return [_prune_one(d, e, state_dir, tcti, dry_run) for d, e in _enrollments(devices)]
