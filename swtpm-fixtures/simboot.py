"""A machine simulated on swtpm: boots are the extends of a captured event log.

The TPM "boots" the way the e2e QEMU guest did: every digest of the event log captured from
that boot (OVMF with Secure Boot, a signed UKI) is extended into a fresh swtpm, so its PCRs
and the log agree as on the real machine. A reboot restarts swtpm on the same state (PCRs
reset; the storage root key and NV memory kept) and extends another boot's measurements.

The measurements of a boot of a new UKI are built here by hand, not by sealer's predictor:
PCR 4's boot application event gets the UKI's Authenticode digest, and PCR 11 gets
systemd-stub's events: each section's name event as the captured boot logged it, and the
hash of the file put into each section.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import eventlogs
from bootimage import assemble_uki
from swtpm import Swtpm

from sealer.measure.pe import authenticode_digest
from sealer.pcrs import BANKS

SHA256 = BANKS["sha256"]
APPLICATION_EVENT = 24  # PCR 4's EV_EFI_BOOT_SERVICES_APPLICATION in the captured log
STUB_NAME_EVENTS = {".linux": 25, ".osrel": 27, ".cmdline": 29, ".initrd": 31}


class SimulatedMachine:
    """One TPM across boots; ``tcti`` changes with every boot (swtpm takes new ports)."""

    def __init__(self, directory: Path, log_file: Path | None = None) -> None:
        self.tpm = Swtpm(directory / "tpm", log_file=log_file)
        self.tpm.start()

    @property
    def tcti(self) -> str:
        return self.tpm.tcti

    def boot(self, extended: list[tuple[int, bytes]]) -> None:
        self.tpm.stop()
        self.tpm.start()
        eventlogs.extend_into(self.tpm.tcti, extended, SHA256)

    def stop(self) -> None:
        self.tpm.stop()


def captured_boot() -> list[tuple[int, bytes]]:
    return eventlogs.extends(eventlogs.read(), SHA256)


def make_uki(directory: Path, *, initrd: bytes, cmdline: bytes) -> tuple[Path, dict[str, bytes]]:
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        ".osrel": b'ID=debian\nPRETTY_NAME="sealer integration"\n',
        ".cmdline": cmdline,
        ".linux": b"a kernel would be here " * 512,
        ".initrd": initrd,
    }
    files = {}
    for name, data in contents.items():
        files[name] = directory / name.lstrip(".")
        files[name].write_bytes(data)
    return assemble_uki(directory / "uki.efi", files), contents


def boot_of(uki: Path, contents: dict[str, bytes]) -> list[tuple[int, bytes]]:
    """What the captured boot would have measured into PCRs 4 and 11 with ``uki`` instead."""
    log = eventlogs.read()
    by_number = {e.number: e for e in log.events}
    stub_pcr11 = []
    for name in (".linux", ".osrel", ".cmdline", ".initrd"):  # systemd-stub's fixed order
        stub_pcr11.append((11, by_number[STUB_NAME_EVENTS[name]].digests["sha256"]))
        stub_pcr11.append((11, hashlib.sha256(contents[name]).digest()))
    extended = []
    for event in log.events:
        if event.type == 0x3 or event.pcr == 11:
            continue
        digest = event.digests["sha256"]
        if event.number == APPLICATION_EVENT:
            digest = authenticode_digest(uki.read_bytes(), SHA256)
        extended.append((event.pcr, digest))
    return extended + stub_pcr11
