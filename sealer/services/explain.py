"""``sealer explain``: why the TPM does (not) release a volume's key in this boot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealer.errors import MeasurementError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import require_enrollments
from sealer.measure.difference import PcrDifference, StateDifference, explain, grub_event
from sealer.measure.eventlog import EventLog
from sealer.measure.measurements import Measurement
from sealer.pcrs import Bank
from sealer.services.bootstate import BootState, read_boot_state
from sealer.services.matching import approvals_of, find_match, pcrs_to_read
from sealer.tpm.connection import connect
from sealer.tpm.pcr import read_pcrs


@dataclass(frozen=True)
class Explanation:
    """Why one enrollment would or would not unlock in this boot, state by approved state."""

    device: str
    token_id: int
    bank: str
    unlocks: bool
    verified: bool  # the event log was checked against the TPM's live PCRs
    states: tuple[StateDifference, ...]
    log_unreadable: str | None = None  # why there are no event details

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "token": self.token_id,
            "pcr_bank": self.bank,
            "unlocks": self.unlocks,
            "log_verified": self.verified,
            "log_error": self.log_unreadable,
            "approved_states": [_state_json(s) for s in self.states],
        }


def _measurement_json(m: Measurement) -> dict[str, Any]:
    grub = grub_event(m)
    return {
        "event": m.event,
        "pcr": m.pcr,
        "type": m.type_name,
        "description": m.description,
        "digest": m.digest.hex(),
        # GRUB's PCR 8 command / command line or PCR 9 file event, named; else null
        "grub": None if grub is None else grub.to_json(),
    }


def _difference_json(d: PcrDifference) -> dict[str, Any]:
    return {
        "pcr": d.pcr,
        "approved": d.approved.hex(),
        "current": d.current.hex(),
        "event_record": d.recorded,
        "unapproved_events": [_measurement_json(m) for m in d.unapproved],
        "missing_events": d.missing,
        "log_accounts_for_value": d.log_replays,
    }


def _state_json(s: StateDifference) -> dict[str, Any]:
    return {
        "approval": s.approval,
        "boot_state": s.branch,
        "created": s.created,
        "comment": s.comment,
        "differing": [_difference_json(d) for d in s.differences],
    }


def explain_volume(
    device: str, *, log_path: Path | None, tcti: str | None, offline: bool
) -> list[Explanation]:
    """Explain, for each sealer enrollment of ``device``, whether this boot unlocks it and why.

    Each approved state is compared with this boot, down to the events that changed a PCR. Online,
    an unreadable event log still gives an answer from the TPM's live PCRs (without event details);
    offline it raises MeasurementError, since the log is then the only source. TokenError when the
    device has no sealer enrollment.
    """
    header = cryptsetup.read_header(device)
    results = []
    for enrollment in require_enrollments(header):
        approvals = approvals_of(enrollment)
        bank, wanted = pcrs_to_read(enrollment, approvals)
        cap = enrollment.token.cap_pcr
        log_error = None
        try:
            state = read_boot_state(bank, wanted, log_path=log_path, tcti=tcti, offline=offline)
        except MeasurementError as exc:
            if offline:
                raise  # offline, the log is the only source of the PCR values
            log_error = exc.message
            state = _live_only(bank, wanted, tcti)
        current = state.values(wanted)
        # After a boot's unlock the capping PCR has moved on: what the TPM saw was its
        # reset value (or, when it refused, the key was never released and nothing capped).
        before_cap = {**current, cap: bank.initial_value(cap)}
        results.append(
            Explanation(
                device=device,
                token_id=enrollment.token_id,
                bank=bank.name,
                unlocks=find_match(approvals, before_cap) is not None,
                verified=state.verified and log_error is None,
                states=tuple(
                    explain(approvals, before_cap, state.measurements, state.replayed, bank)
                ),
                log_unreadable=log_error,
            )
        )
    return results


def _live_only(bank: Bank, pcrs: list[int], tcti: str | None) -> BootState:
    """A boot state without a log: the PCRs that differ, without their events."""
    with connect(tcti) as ctx:
        live = read_pcrs(ctx, bank, pcrs)
    empty = EventLog(algorithms={bank.name: bank.size}, events=())
    return BootState(log=empty, bank=bank, measurements=(), replayed={}, live=live)
