"""Why the TPM refuses: which PCRs differ from each approved boot state, and which events.

An approval holds PCR values, which say *that* a PCR changed but not *why*. So every approval
sealer signs also carries an event record per boot state (the digest prefix of each event that
made up each selected PCR). Comparing that record with this boot's event log names the events
that are new, changed or gone. Approvals without a record (signed with explicit --pcr values)
still get the PCRs that differ and this boot's events for them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sealer.measure.measurements import Measurement, prefix
from sealer.pcrs import Bank
from sealer.policy.approval import Approval, EventRecord


@dataclass(frozen=True)
class PcrDifference:
    """How one PCR of this boot differs from an approved state, down to the events."""

    pcr: int
    approved: bytes
    current: bytes
    recorded: bool  # the approved state has an event record for this PCR
    unapproved: tuple[Measurement, ...]  # this boot's events the approved state did not have
    missing: int  # events of the approved state that this boot did not make
    events: tuple[Measurement, ...]  # all of this boot's events for the PCR (no record: context)
    log_replays: bool  # this boot's log accounts for the PCR's live value


@dataclass(frozen=True)
class StateDifference:
    """How this boot differs from one approved state (a branch of an approval), PCR by PCR."""

    approval: int
    branch: int
    created: str
    comment: str
    differences: tuple[PcrDifference, ...]


def _difference(
    pcr: int,
    approved: bytes,
    current: bytes,
    record: EventRecord | None,
    measurements: Sequence[Measurement],
    replayed: Mapping[int, bytes],
    bank: Bank,
) -> PcrDifference:
    mine = tuple(m for m in measurements if m.pcr == pcr)
    log_replays = replayed.get(pcr, bank.initial_value(pcr)) == current
    if record is None or pcr not in record:
        return PcrDifference(pcr, approved, current, False, (), 0, mine, log_replays)
    remaining = Counter(record[pcr])
    unapproved = []
    for measurement in mine:
        key = prefix(measurement.digest)
        if remaining[key] > 0:
            remaining[key] -= 1
        else:
            unapproved.append(measurement)
    missing = sum(remaining.values())
    return PcrDifference(
        pcr, approved, current, True, tuple(unapproved), missing, mine, log_replays
    )


def explain(
    approvals: Sequence[Approval],
    current: Mapping[int, bytes],
    measurements: Sequence[Measurement],
    replayed: Mapping[int, bytes],
    bank: Bank,
) -> list[StateDifference]:
    """Every approved boot state and how this boot differs from it, closest states first."""
    states = []
    for a_index, approval in enumerate(approvals):
        for b_index, branch in enumerate(approval.branches):
            record = approval.event_record(b_index)
            differences = tuple(
                _difference(pcr, value, current[pcr], record, measurements, replayed, bank)
                for pcr, value in sorted(branch.items())
                if current.get(pcr) != value
            )
            states.append(
                StateDifference(a_index, b_index, approval.created, approval.comment, differences)
            )
    states.sort(key=lambda s: len(s.differences))
    return states
