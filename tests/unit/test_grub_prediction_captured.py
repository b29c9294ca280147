"""sealer's GRUB prediction against real boots: from the log of one captured boot of Debian's
shim + GRUB chain and the recorded inputs of the next (its grub.cfg, grubenv and the digests
of its kernel and initrd; swtpm-fixtures/grubchain.py), PCRs 4, 7, 8 and 9 come out as the
TPM had them in that next boot, with no boot and no kernel or initrd on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sealer.errors import MeasurementError
from sealer.measure import grub
from sealer.measure.eventlog import EventLog, parse
from sealer.measure.grubscript import UnsupportedScript
from sealer.measure.measurements import Measurement, measurements_of, replay
from sealer.pcrs import BANKS, Bank

CAPTURED = Path(__file__).resolve().parents[2] / "swtpm-fixtures" / "eventlogs"
SHA256 = BANKS["sha256"]


class RecordedFiles(grub.HostGrubFiles):
    """/boot as a captured boot's JSON records it: texts of the configs, digests of the rest."""

    def __init__(self, device: str, record: dict[str, Any]) -> None:
        super().__init__(device, Path("/nonexistent"))
        self.record = record
        self.texts = {
            "boot:/grub/grub.cfg": record["boot_grub_cfg"],
            "boot:/grub/grubenv": record["grubenv"],
        }

    def _key(self, path: str) -> str:
        device, _, rest = path[1:].partition(")")
        if device != self.device:
            raise UnsupportedScript(f"GRUB reads {path}, which is not on its /boot file system")
        return "boot:" + rest

    def exists(self, path: str) -> bool:
        return self._key(path) in self.record["files"]

    def read(self, path: str) -> bytes:
        key = self._key(path)
        if key not in self.texts:
            raise MeasurementError(f"the capture recorded only the digests of {key}")
        return str(self.texts[key]).encode()

    def digest(self, path: str, bank: Bank) -> bytes:
        return bytes.fromhex(self.record["files"][self._key(path)]["sha256"])

    def image_digest(self, path: str, bank: Bank) -> bytes:
        return bytes.fromhex(self.record["files"][self._key(path)]["authenticode_sha256"])


def _load(name: str) -> tuple[EventLog, dict[str, Any]]:
    stem = CAPTURED / f"debian-shim-grub-{name}"
    return parse(stem.with_suffix(".bin").read_bytes()), json.loads(
        stem.with_suffix(".json").read_text()
    )


def _predicted_pcrs(template: str, target: str) -> dict[int, bytes]:
    """PCRs of boot ``target`` predicted from boot ``template``'s log and ``target``'s files:
    this boot's GRUB events replaced, PCR by PCR, by the run of the new grub.cfg."""
    log, _ = _load(template)
    _, record = _load(target)
    measurements = measurements_of(log, SHA256)
    boot = grub.read_grub_boot(log)
    found = grub.predict_grub(
        log, SHA256, measurements, grub.DEFAULT_GRUB_CFG, files=RecordedFiles(boot.device, record)
    )
    predicted: list[Measurement] = []
    inserted: set[int] = set()
    for m in measurements:
        if m.event in found.replaced.get(m.pcr, []):
            if m.pcr not in inserted:
                predicted += found.measurements[m.pcr]
                inserted.add(m.pcr)
            continue
        predicted.append(m)
    return replay(predicted, SHA256, log.startup_locality)


@pytest.mark.parametrize(
    ("template", "target"),
    [
        ("boot1", "boot1"),  # the same files: this boot again
        ("boot1", "boot2"),  # a kernel update: new version, new initrd, new grub.cfg
        ("boot2", "boot2-cfg-break"),  # grub.cfg edited: predicted from the edited file
    ],
)
def test_grub_chain_pcrs_are_predicted_as_the_next_boot_had_them(
    template: str, target: str
) -> None:
    predicted = _predicted_pcrs(template, target)
    live = {int(k): bytes.fromhex(v) for k, v in _load(target)[1]["sha256"].items()}
    assert {pcr: predicted[pcr] == live[pcr] for pcr in (4, 7, 8, 9)} == dict.fromkeys(
        (4, 7, 8, 9), True
    )


def test_an_entry_edited_at_the_menu_is_not_what_any_grub_cfg_predicts() -> None:
    predicted = _predicted_pcrs("boot1", "boot2")  # the grub.cfg it booted from
    live = {int(k): bytes.fromhex(v) for k, v in _load("boot2-menu-break")[1]["sha256"].items()}
    assert predicted[8] != live[8]
    assert all(predicted[pcr] == live[pcr] for pcr in (4, 7, 9))
