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

# GRUB's own events (Debian's shim + GRUB chain): PCR 8 holds each command it runs as
# "grub_cmd: ..." (a menu entry's whole multi-line text among them) and the kernel command
# line as "kernel_cmdline: ..."; PCR 9 holds each file it reads, named by its path.
_GRUB_COMMAND = "grub_cmd: "
_GRUB_CMDLINE = "kernel_cmdline: "
_SUMMARY_CHARS = 100


@dataclass(frozen=True)
class GrubEvent:
    """What a GRUB event of PCR 8 or 9 is, for a person."""

    kind: str  # "command", "kernel_cmdline" or "file"
    name: str  # the command ("linux", "menuentry", ...), "kernel_cmdline", or the file's path
    summary: str  # one line: a command whole, a menu entry's (or a block's) first line only

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "summary": self.summary}

    def label(self) -> str:
        if self.kind == "file":
            return f"GRUB read file {self.name}"
        if self.kind == "kernel_cmdline":
            return f"GRUB kernel command line: {self.summary}"
        return f"GRUB command '{self.name}': {self.summary}"


def _first_line(text: str) -> str:
    first, _, rest = text.partition("\n")
    block = first.split(maxsplit=1)[:1] in (["menuentry"], ["submenu"])
    if rest or (block and len(first) > _SUMMARY_CHARS):
        cut = first if len(first) <= _SUMMARY_CHARS else first[: _SUMMARY_CHARS - 3]
        return f"{cut.rstrip()} ..."
    return first  # a one-line command is kept whole: its last word may be what changed


def grub_event(m: Measurement) -> GrubEvent | None:
    """GRUB's command, command line or file event, named; None for any other event."""
    if m.type_name != "EV_IPL" or m.pcr not in (8, 9):
        return None
    text = m.description
    if m.pcr == 8 and text.startswith(_GRUB_COMMAND):
        command = text[len(_GRUB_COMMAND) :]
        words = command.split(maxsplit=1)
        return GrubEvent("command", words[0] if words else "", _first_line(command))
    if m.pcr == 8 and text.startswith(_GRUB_CMDLINE):
        return GrubEvent("kernel_cmdline", "kernel_cmdline", text[len(_GRUB_CMDLINE) :])
    if m.pcr == 9 and "\n" not in text and not text.startswith("tag "):
        return GrubEvent("file", text, text)
    return None


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
