"""Capture an event log fixture: boot a signed UKI in QEMU and keep its log and digests.

Writes ``eventlogs/NAME.bin`` (the firmware's log, as the guest read it) and ``NAME.json``
(the PCRs the guest reported, and the digests sealer computes from the UKI: Authenticode,
sections, systemd-stub's PCR 11 events, the command line). The UKI itself (35 MB) is not
kept; the unit tests check that the log holds exactly the recorded digests.

Run: .venv/bin/python swtpm-fixtures/capture_eventlog.py NAME   (needs the boot chain:
scripts/setup.sh --boot-chain; about a minute)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

from bootimage import extended_initramfs
from bootkit import make_boot_kit, type_passphrase
from qemu import Machine

from sealer.measure.pe import authenticode_digest, stub_sections, uki_pcr11_events
from sealer.pcrs import BANKS

HERE = Path(__file__).resolve().parent

SHA256 = BANKS["sha256"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="file name stem under swtpm-fixtures/eventlogs/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        kit = make_boot_kit(work)
        # The e2e update test's v2: Debian's initramfs plus an appended archive, another cmdline.
        initrd = extended_initramfs(
            work / "initrd-v2.img", kit.initrd, {"etc/sealer-e2e-release": b"v2\n"}
        )
        cmdline = kit.cmdline("sealer.e2e=v2")
        uki = kit.uki(keys=kit.owner, cmdline=cmdline, initrd=initrd)
        esp = kit.esp(keys=kit.owner, cmdline=cmdline, initrd=initrd)
        disk = kit.new_root(work / "machine")
        machine = Machine(work / "machine", kit.owner.vars_template, [esp, disk])
        boot = machine.boot(answers=type_passphrase())
        data = uki.read_bytes()
    sections = stub_sections(data)
    meta = {
        "what": "event log, sha256 PCRs and boot image digests of one e2e boot: OVMF 4M "
        "secboot (Debian bookworm), Secure Boot on test keys, a signed UKI (systemd-stub 252 + "
        "linux-image-cloud-amd64 + initramfs-tools with sealer's hook and an appended cpio), "
        "swtpm; the passphrase was typed (no enrollment), so PCR 15 is capped",
        "sha256": {str(p): v.hex() for p, v in sorted(boot.pcrs().items())},
        "uki": {
            "size": len(data),
            "authenticode_sha256": authenticode_digest(data, SHA256).hex(),
            "cmdline": sections[".cmdline"].data.decode(),
            "sections_sha256": {n: hashlib.sha256(s.data).hexdigest() for n, s in sections.items()},
            "pcr11_sha256": [d.hex() for _, d in uki_pcr11_events(data, SHA256)],
        },
    }
    out = HERE / "eventlogs"
    (out / f"{args.name}.bin").write_bytes(boot.event_log())
    (out / f"{args.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out / args.name}.bin and .json ({boot.seconds:.1f} s boot)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
