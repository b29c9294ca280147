"""This boot's measured state: the firmware's event log, checked against the TPM's live PCRs.

Every measured-boot command (eventlog, predict, reseal, prune, explain) starts here. Online,
the live PCRs are the truth and the log only explains them; a PCR whose live value the log
does not replay to is reported and never predicted. Offline (``--offline``: a log captured on
another machine, or read on a build host), the log's replay stands in for the live values,
and every result says it was not checked against a TPM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sealer.measure.eventlog import EventLog, read_event_log
from sealer.measure.measurements import Measurement, measurements_of, replay
from sealer.pcrs import Bank
from sealer.tpm.connection import connect
from sealer.tpm.nv import read_revoked_bits
from sealer.tpm.pcr import read_pcrs, reset_count
from sealer.tpm.retirement import counter_value


@dataclass(frozen=True)
class BootState:
    """What this boot measured: its event log, replayed, and (online) the TPM's live values.

    Offline there is no TPM to check the log against, so ``live`` is None and the replayed log is
    all there is.
    """

    log: EventLog
    bank: Bank
    measurements: tuple[Measurement, ...]
    replayed: Mapping[int, bytes]  # the log replayed, every PCR it extends
    live: Mapping[int, bytes] | None  # the TPM's values of the PCRs read; None offline
    tpm_boot: int | None = None  # the TPM's reset count: which boot this is; None offline
    revoked_bits: int | None = None  # the revocation field, when asked for and online
    epoch_counter: int | None = None  # the retirement counter, when asked for and online

    @property
    def verified(self) -> bool:
        return self.live is not None

    def value(self, pcr: int) -> bytes:
        """The PCR's value in this boot: live when read, else the log's replay."""
        if self.live is not None and pcr in self.live:
            return self.live[pcr]
        return self.replayed.get(pcr, self.bank.initial_value(pcr))

    def values(self, pcrs: Sequence[int]) -> dict[int, bytes]:
        return {p: self.value(p) for p in pcrs}

    def unaccounted(self) -> list[int]:
        """PCRs read live whose value the log does not replay to."""
        return sorted(
            p for p, v in (self.live or {}).items()
            if self.replayed.get(p, self.bank.initial_value(p)) != v
        )


def read_boot_state(
    bank: Bank,
    pcrs: Sequence[int],
    *,
    log_path: Path | None,
    tcti: str | None,
    offline: bool,
    revocation: tuple[int, bytes] | None = None,
    retirement_index: int | None = None,
) -> BootState:
    """The event log (``log_path`` or this boot's) and, unless offline, ``pcrs`` read live
    (and the revocation field ``revocation``: its index and name)."""
    log = read_event_log(log_path)
    measurements = measurements_of(log, bank)
    live = None
    tpm_boot = bits = counter = None
    if not offline:
        with connect(tcti) as ctx:
            live = read_pcrs(ctx, bank, sorted(set(pcrs)))
            tpm_boot = reset_count(ctx)
            if revocation is not None:
                bits = read_revoked_bits(ctx, *revocation)
            counter = counter_value(ctx, retirement_index)
    return BootState(
        log=log,
        bank=bank,
        measurements=tuple(measurements),
        replayed=replay(measurements, bank, log.startup_locality),
        live=live,
        tpm_boot=tpm_boot,
        revoked_bits=bits,
        epoch_counter=counter,
    )
