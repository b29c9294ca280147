"""Benchmark: boot to an unlocked root with sealer's TPM path versus a plain keyscript.

One run, real parts: OVMF with Secure Boot, swtpm, a signed UKI with Debian's initramfs,
QEMU under TCG. It builds the initramfs twice from the same configuration, once with
sealer's hook and once with a keyscript that just prints the passphrase, and reports:

- seconds from QEMU start to the root file system being up, for both;
- seconds inside the unlocker (its own report: process start to key in hand);
- initramfs sizes, compressed and uncompressed, with and without the sealer hook.

Run: .venv/bin/python bench/boot_unlock.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from bootimage import build_initramfs
from bootkit import (
    KEYSCRIPT,
    ROOT_PASSPHRASE,
    enroll_on_host,
    make_boot_kit,
    missing_boot_parts,
    type_passphrase,
)
from qemu import Machine

ROOT_UP = "SEALER-E2E: root file system is up"
UNLOCKER_LINE = re.compile(r"key released by the TPM in ([0-9.]+) s")

PRINTING_KEYSCRIPT_HOOK = f"""#!/bin/sh
# Baseline: a keyscript that prints the passphrase, at the path sealer's would have.
[ "$1" = prereqs ] && exit 0
mkdir -p "$DESTDIR{Path(KEYSCRIPT).parent}"
printf '#!/bin/sh\\nprintf %%s "%s"\\n' > "$DESTDIR{KEYSCRIPT}"
chmod 0755 "$DESTDIR{KEYSCRIPT}"
"""


def unpacked_size(initrd: Path) -> int:
    with tempfile.TemporaryDirectory() as tree:
        subprocess.run(["unmkinitramfs", str(initrd), tree], check=True, capture_output=True)
        out = subprocess.run(["du", "-sb", tree], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    reason = missing_boot_parts()
    if reason is not None:
        print(f"bench: cannot boot here: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sealer-bench-") as tmp:
        work = Path(tmp)
        print("bench: building keys, root disk and the sealer initramfs...", file=sys.stderr)
        kit = make_boot_kit(work)
        plain = build_initramfs(
            work / "initrd-plain.img", kit.kernel, work / "plain", with_sealer=False,
            extra_hooks={"print-passphrase": PRINTING_KEYSCRIPT_HOOK % ROOT_PASSPHRASE},
        )

        print("bench: provisioning boot (passphrase typed), then enrolling...", file=sys.stderr)
        disk = kit.new_root(work / "machine")
        machine = Machine(
            work / "machine", kit.owner.vars_template, [kit.esp(keys=kit.owner), disk]
        )
        first = machine.boot(answers=type_passphrase())
        enroll_on_host(machine, disk, first.pcrs(), work / "state")

        print("bench: boot with the TPM path...", file=sys.stderr)
        tpm_boot = machine.boot(marks=(ROOT_UP,))
        print("bench: boot with the printing keyscript...", file=sys.stderr)
        machine.disks[0] = kit.esp(keys=kit.owner, initrd=plain)
        plain_boot = machine.boot(marks=(ROOT_UP,))

        tpm_seconds = tpm_boot.seconds_until(ROOT_UP)
        plain_seconds = plain_boot.seconds_until(ROOT_UP)
        unlocker = UNLOCKER_LINE.search(tpm_boot.transcript)
        if tpm_seconds is None or plain_seconds is None or unlocker is None:
            print("bench: a boot did not reach its root file system", file=sys.stderr)
            return 1
        figures = {
            "boot_to_root_tpm_s": round(tpm_seconds, 2),
            "boot_to_root_printed_passphrase_s": round(plain_seconds, 2),
            "ratio": round(tpm_seconds / plain_seconds, 3),
            "unlocker_s": float(unlocker.group(1)),
            "initramfs_with_sealer_bytes": kit.initrd.stat().st_size,
            "initramfs_without_sealer_bytes": plain.stat().st_size,
            "initramfs_with_sealer_unpacked_bytes": unpacked_size(kit.initrd),
            "initramfs_without_sealer_unpacked_bytes": unpacked_size(plain),
        }
    mib = 1024 * 1024
    rows = [
        ("boot to unlocked root, TPM path (s)", f"{figures['boot_to_root_tpm_s']:.1f}"),
        ("boot to unlocked root, keyscript prints passphrase (s)",
         f"{figures['boot_to_root_printed_passphrase_s']:.1f}"),
        ("ratio TPM / printed passphrase", f"{figures['ratio']:.2f}"),
        ("inside the unlocker, start to key (s)", f"{figures['unlocker_s']:.2f}"),
        ("initramfs compressed, with / without sealer (MiB)",
         f"{figures['initramfs_with_sealer_bytes'] / mib:.1f} / "
         f"{figures['initramfs_without_sealer_bytes'] / mib:.1f}"),
        ("initramfs unpacked, with / without sealer (MiB)",
         f"{figures['initramfs_with_sealer_unpacked_bytes'] / mib:.1f} / "
         f"{figures['initramfs_without_sealer_unpacked_bytes'] / mib:.1f}"),
    ]
    print("| figure (QEMU -accel tcg, one run) | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
