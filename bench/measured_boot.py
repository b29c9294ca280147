"""Benchmark: the measured-boot work of an update, and what an approval of two states costs.

One run, real parts (the event log captured from the e2e QEMU boot, Debian's kernel, systemd's
stub, sbsign, swtpm, a LUKS2 image), prints and compares side by side:

- parsing and replaying the real event log (in process; median of many);
- predicting the PCRs of a signed UKI of realistic size (Debian's kernel + a 48 MiB
  initramfs): in process, and as the whole ``sealer predict`` command (Python start included);
- the TPM commands of one unlock through an approval of one boot state and of two OR'ed
  states (the state after ``sealer reseal``), counted on swtpm's wire log.

Run: .venv/bin/python bench/measured_boot.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import eventlogs
from bootimage import assemble_uki, installed_kernel
from luks_image import make_luks_image
from secureboot import make_keys, sign
from swtpm import Swtpm, WireLog, log_size

from sealer.measure.eventlog import parse
from sealer.measure.predict import NextBoot, predict
from sealer.pcrs import BANKS

SHA256 = BANKS["sha256"]
PASSPHRASE = b"bench passphrase"
INITRD_MIB = 48


def median_seconds(action: Callable[[], object], runs: int) -> tuple[float, float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), max(times)


def sealer(*args: str, tcti: str = "", stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    tcti_args = ["--tcti", tcti] if tcti else []
    return subprocess.run(
        [sys.executable, "-m", "sealer", *tcti_args, *args],
        input=stdin, capture_output=True, check=True,
    )


def realistic_uki(work: Path) -> Path:
    kernel = installed_kernel()
    parts = {
        ".osrel": b'ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
        ".cmdline": b"root=/dev/mapper/cryptroot ro quiet",
        ".linux": kernel.image.read_bytes(),
        ".initrd": os.urandom(INITRD_MIB * 1024 * 1024),  # compressed cpio looks like this
    }
    files = {}
    for name, data in parts.items():
        files[name] = work / name.lstrip(".")
        files[name].write_bytes(data)
    unsigned = assemble_uki(work / "unsigned.efi", files)
    return sign(unsigned, make_keys(work / "keys", "bench"), work / "uki.efi")


def unlock_commands(work: Path, uki: Path) -> dict[str, dict[str, int]]:
    """TPM commands of one unlock: approval of one state, then of two (after reseal)."""
    log = work / "wire.log"
    image = make_luks_image(work / "volume.img", PASSPHRASE)
    state = work / "state"
    with Swtpm(work / "tpm", log_file=log) as tpm:
        eventlogs.extend_into(tpm.tcti, eventlogs.extends(eventlogs.read(), SHA256), SHA256)
        sealer(
            "enroll", "--quiet", "--unlock-key-file", "-", "--state-dir", str(state),
            "--pcrs", "4,11", "--eventlog", str(eventlogs.UKI_BOOT_LOG), str(image),
            tcti=tpm.tcti, stdin=PASSPHRASE,
        )
        counts = {}
        for label in ("1 boot state", "2 OR'ed boot states"):
            if label.startswith("2"):
                sealer(
                    "reseal", "--quiet", "--eventlog", str(eventlogs.UKI_BOOT_LOG),
                    "--state-dir", str(state), "--uki", str(uki), str(image), tcti=tpm.tcti,
                )
            start = log_size(log)
            sealer("unlock", "--test", str(image), tcti=tpm.tcti)
            counts[label] = dict(sorted(WireLog.read(log, start).counts().items()))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    data = eventlogs.UKI_BOOT_LOG.read_bytes()
    results: dict[str, Any] = {}

    def parse_and_replay() -> None:
        parse(data).replay(SHA256)

    results["eventlog_parse_replay_s"] = median_seconds(parse_and_replay, 200)
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        uki = realistic_uki(work)
        results["uki_mib"] = round(uki.stat().st_size / 2**20, 1)
        log = eventlogs.read()
        boot = NextBoot(uki=uki)
        results["predict_in_process_s"] = median_seconds(lambda: predict(log, SHA256, boot), 5)
        command = (
            "predict", "--offline", "--eventlog", str(eventlogs.UKI_BOOT_LOG),
            "--uki", str(uki), "--pcrs", "4,7,9,11",
        )
        results["predict_command_s"] = median_seconds(lambda: sealer(*command), 5)
        results["unlock_tpm_commands"] = unlock_commands(work, uki)

    def row(label: str, figures: tuple[float, float, float]) -> str:
        low, mid, high = figures
        return f"| {label} | {mid * 1000:.1f} ms | {low * 1000:.1f} / {high * 1000:.1f} ms |"

    print("| measured-boot work | median | min / max |\n| --- | --- | --- |")
    print(row(f"parse + replay the captured log ({len(data)} bytes)",
              results["eventlog_parse_replay_s"]))
    print(row(f"predict a {results['uki_mib']} MiB signed UKI, in process",
              results["predict_in_process_s"]))
    print(row("`sealer predict` command, same UKI", results["predict_command_s"]))
    counts = results["unlock_tpm_commands"]
    names = sorted({name for c in counts.values() for name in c})
    labels = list(counts)
    print(f"\n| TPM command | {' | '.join(labels)} |\n| --- |{' --- |' * len(labels)}")
    for name in names:
        print(f"| {name} | {' | '.join(str(counts[label].get(name, 0)) for label in labels)} |")
    totals = " | ".join(f"**{sum(counts[label].values())}**" for label in labels)
    print(f"| total | {totals} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
