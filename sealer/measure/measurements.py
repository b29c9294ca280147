"""One bank's view of an event log: the (PCR, digest) extends, in order, and their replay.

Prediction edits this list (replacing the events new boot images change); explanation
compares it with an approved state's record. Events that extend nothing (EV_NO_ACTION)
are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealer.measure import eventlog
from sealer.measure.eventlog import EventLog
from sealer.pcrs import Bank
from sealer.policy.approval import EVENT_PREFIX_HEX, EventRecord


@dataclass(frozen=True)
class Measurement:
    """One extend of one PCR in one bank, from the log or predicted."""

    pcr: int
    digest: bytes
    type_name: str
    description: str
    event: int | None  # its number in the current log; None for a new measurement



def measurements_of(log: EventLog, bank: Bank) -> list[Measurement]:
    """The log's measurements in ``bank``, described for a person (EV_NO_ACTION events left
    out); EventLogError when the log does not record that bank.
    """
    log.replay(bank)  # refuses a bank the log does not record, with a clear message
    found = []
    previous: eventlog.Event | None = None
    for e in log.events:
        if e.type == eventlog.EV_NO_ACTION:
            continue
        description = e.description
        # systemd-stub logs a section's name event and its contents event with the same data
        # (the name); say which one a person is looking at.
        if _stub_contents(e, previous):
            description += " contents"
        found.append(Measurement(e.pcr, e.digests[bank.name], e.type_name, description, e.number))
        previous = e
    return found


def _stub_contents(event: eventlog.Event, previous: eventlog.Event | None) -> bool:
    return (
        event.pcr == 11
        and event.type == eventlog.EV_IPL
        and previous is not None
        and (previous.pcr, previous.type, previous.data) == (11, eventlog.EV_IPL, event.data)
    )


def replay(measurements: Sequence[Measurement], bank: Bank, locality: int) -> dict[int, bytes]:
    """The PCR values ``measurements`` give when extended from reset (PCR 0's depends on
    ``locality``).
    """
    return eventlog.replay_digests(((m.pcr, m.digest) for m in measurements), bank, locality)


def prefix(digest: bytes) -> str:
    """The leading hex digits of ``digest`` that event records keep and messages show."""
    return digest.hex()[:EVENT_PREFIX_HEX]


def event_record(measurements: Sequence[Measurement], pcrs: Sequence[int]) -> EventRecord:
    """The record an approval keeps of the events that make up ``pcrs``."""
    return {p: tuple(prefix(m.digest) for m in measurements if m.pcr == p) for p in pcrs}
