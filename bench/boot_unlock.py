"""Benchmark: boot to an unlocked LUKS2 root, sealer side by side with its peers and floors.

One run, real parts, the same for every variant: QEMU (TCG), OVMF with Secure Boot on test
keys, one swtpm (one machine's TPM), the host's Debian cloud kernel in a signed UKI, and the
same tiny LUKS2 root (a fresh copy per variant). Only the initramfs, the command line its
unlocker needs, and the root's keyslot/token differ:

- ``floor``: initramfs-tools, a keyscript that prints the passphrase (no TPM);
- ``sealer``: initramfs-tools with sealer's hook, its token bound to PCRs 4 and 7;
- ``clevis``: initramfs-tools with Debian's clevis-initramfs, tpm2 pin bound to PCR 7
  (images built in an mmdebstrap root, never on the host: peer_initramfs.py), with
  ``clevis_floor``, that root's image before clevis was installed, as its size baseline;
- ``systemd_floor``: dracut (systemd in the initramfs), the passphrase as a key file;
- ``systemd``: dracut with its tpm2-tss module, systemd-cryptenroll's tpm2 token on PCR 7.

PCR 7 is the same for every UKI signed by one key, so clevis and systemd-cryptenroll bind on
the host after the provisioning boot's PCR 7 extends (from its event log) are replayed onto
the machine's swtpm: both read the current PCR value at bind time. sealer enrolls with the
provisioning boot's PCR values, as tests/e2e does.

Reported per variant: seconds from QEMU start to the root file system being up; the
unlocker's own figure where it prints one (sealer: "key released by the TPM in N s"; clevis
and systemd print none), plus the span between two console lines as the host saw them;
initramfs size compressed and unpacked. Every boot is checked: no passphrase typed, the
root came up, and the variant's own unlock path was the one taken. Each variant boots
``--rounds`` times (default 3, round after round; each figure's median is reported: one
variant's boots differ by up to 10 s here): about 18 minutes, a quarter of it building the
images.

Run: make bench-boot (or .venv/bin/python bench/boot_unlock.py [--json FILE] [--keep DIR])
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventlogs
from bootimage import build_initramfs
from bootkit import (
    DRACUT_PROMPT,
    KEYSCRIPT,
    PROMPT,
    ROOT_PASSPHRASE,
    TPM_UNLOCKED,
    BootKit,
    DracutKit,
    enroll_on_host,
    make_boot_kit,
    missing_boot_parts,
    type_passphrase,
)
from dracut_image import missing_dracut
from peer_initramfs import DRACUT_KEY_FILE, build_clevis_images, build_systemd_initramfs
from qemu import Boot, Machine
from rootdisk import ROOT_UP
from swtpm import Swtpm

from sealer.measure.eventlog import parse
from sealer.pcrs import BANKS
from sealer.tpm.connection import connect
from sealer.tpm.pcr import read_pcrs

SHA256 = BANKS["sha256"]
UNLOCKER_LINE = re.compile(r"key released by the TPM in ([0-9.]+) s")
# The kernel's line (with its own clock: time since the kernel started) when the opened root
# is mounted, in every variant: the boot without the firmware's part, which grows with the
# UKI's size (OVMF hashes the whole UKI under TCG, the stub each section).
ROOT_MOUNTED = re.compile(r"\[\s*([0-9.]+)\] EXT4-fs \(dm-0\): mounted filesystem")
# clevis-initramfs' local-top loop answers askpass' prompt through its fifo; its own "Unlocked
# ... with clevis" line is often lost (local-bottom kills the loop first), so the proof is
# the prompt, no answer typed, and cryptroot's success line.
# initramfs-tools' unlock span, the same two lines for the floor, sealer and clevis: the
# local-top scripts start (cryptroot runs there: sealer's keyscript, clevis' askpass answer),
# and cryptroot's line once the volume is open.
ITOOLS_UNLOCK_START = "Running /scripts/local-top"
CRYPTROOT_DONE = "cryptroot: set up successfully"
ITOOLS_SPAN = (ITOOLS_UNLOCK_START, CRYPTROOT_DONE)
# systemd's status lines around systemd-cryptsetup@luks-UUID.service, as the serial console
# shows them: the unit's name in bold (ANSI), cut short with an ellipsis.
SYSTEMD_UNLOCK_START = "Starting \x1b[0;1;39msystemd-cryptsetu"
SYSTEMD_UNLOCK_DONE = "Finished \x1b[0;1;39msystemd-cryptsetu"
BIND_PCR = 7
MIB = 1024 * 1024

PRINTING_KEYSCRIPT_HOOK = f"""#!/bin/sh
# Baseline: a keyscript that prints the passphrase, at the path sealer's would have.
[ "$1" = prereqs ] && exit 0
mkdir -p "$DESTDIR{Path(KEYSCRIPT).parent}"
printf '#!/bin/sh\\nprintf %%s "%s"\\n' > "$DESTDIR{KEYSCRIPT}"
chmod 0755 "$DESTDIR{KEYSCRIPT}"
"""


@dataclass
class Variant:
    """One column of the table: an initramfs, the command line it needs, and its disk."""

    key: str
    title: str
    initrd: Path
    cmdline: str
    floor: str  # the variant whose initramfs and boot are this one's baseline ("" for floors)
    boots: bool = True
    # Console lines between which the host times the unlock: (start, done); None: no span.
    span: tuple[str, str] | None = None
    disk: Path | None = None
    boot: Boot | None = None  # the last boot of the run
    # Every boot's figures, in order; the table shows each one's median over the rounds.
    to_root_s: list[float | None] = field(default_factory=list)
    kernel_s: list[float | None] = field(default_factory=list)
    unlocker_s: list[float | None] = field(default_factory=list)
    span_s: list[float | None] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)


def disk_of(variant: Variant) -> Path:
    if variant.disk is None:
        raise RuntimeError(f"{variant.key} has no disk (it is not booted)")
    return variant.disk


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def unpacked_size(initrd: Path) -> int:
    """Bytes of every file the image unpacks to (unmkinitramfs reads initramfs-tools' and
    dracut's images alike, early microcode archive included)."""
    with tempfile.TemporaryDirectory() as tree:
        subprocess.run(["unmkinitramfs", str(initrd), tree], check=True, capture_output=True)
        out = subprocess.run(["du", "-sb", tree], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def initramfs_tools_cmdline(kit: BootKit, *, keyscript: bool) -> str:
    """kit.cmdline() (sealer's and the floor's), or the same without the keyscript: Debian's
    cryptroot then asks through askpass, which clevis-initramfs answers."""
    if keyscript:
        return kit.cmdline()
    return (
        "console=ttyS0 root=/dev/mapper/cryptroot rootfstype=ext4 panic=1 "
        f"cryptopts=target=cryptroot,source=UUID={kit.root_uuid},luks"
    )


def build_variants(kit: BootKit, work: Path) -> tuple[dict[str, Variant], dict[str, str]]:
    """Every initramfs of the run (minutes: the clevis root is most of it); also the
    clevis root's package versions."""
    floor_hooks = {"print-passphrase": PRINTING_KEYSCRIPT_HOOK % ROOT_PASSPHRASE}
    log("initramfs-tools floor (keyscript prints the passphrase)...")
    floor = build_initramfs(
        work / "initrd-floor.img", kit.kernel, work / "floor", with_sealer=False,
        extra_hooks=floor_hooks,
    )
    log("clevis: mmdebstrap root, its floor image, clevis-initramfs, its image...")
    clevis = build_clevis_images(work / "clevis", kit.kernel, floor_hooks, work / "clevis.log")
    log("dracut: systemd initramfs with tpm2-tss, and its key-file floor...")
    dracut = DracutKit(
        build_systemd_initramfs(work / "initrd-systemd.img", kit.kernel, work / "sd", key=None),
        kit.root_uuid,
    )
    dracut_floor = build_systemd_initramfs(
        work / "initrd-systemd-floor.img", kit.kernel, work / "sdfloor",
        key=ROOT_PASSPHRASE.encode(),
    )
    plain = initramfs_tools_cmdline(kit, keyscript=False)
    variants = [
        Variant("floor", "passphrase floor (initramfs-tools keyscript)", floor, kit.cmdline(), "",
                span=ITOOLS_SPAN),
        Variant("sealer", "sealer (initramfs-tools)", kit.initrd, kit.cmdline(), "floor",
                span=ITOOLS_SPAN),
        Variant("clevis_floor", "clevis root's floor image (not booted)", clevis.floor, plain,
                "", boots=False),
        Variant("clevis", "clevis-initramfs, tpm2 pin", clevis.clevis, plain, "floor",
                span=ITOOLS_SPAN),
        Variant("systemd_floor", "passphrase floor (dracut, key file)", dracut_floor,
                f"{dracut.cmdline()} rd.luks.key={DRACUT_KEY_FILE}", "",
                span=(SYSTEMD_UNLOCK_START, SYSTEMD_UNLOCK_DONE)),
        Variant("systemd", "systemd-cryptenroll tpm2 (dracut)", dracut.initrd,
                f"{dracut.cmdline()} rd.luks.options=tpm2-device=auto", "systemd_floor",
                span=(SYSTEMD_UNLOCK_START, SYSTEMD_UNLOCK_DONE)),
    ]
    return {v.key: v for v in variants}, clevis.versions


def replay_pcr7(tcti: str, first_boot: Boot) -> None:
    """Make the freshly started swtpm's PCR 7 what the provisioning boot measured into it."""
    log_extends = eventlogs.extends(parse(first_boot.event_log()), SHA256)
    extends = [(pcr, digest) for pcr, digest in log_extends if pcr == BIND_PCR]
    eventlogs.extend_into(tcti, extends, SHA256)
    with connect(tcti) as ctx:
        now = read_pcrs(ctx, SHA256, [BIND_PCR])[BIND_PCR]
    if now != first_boot.pcrs()[BIND_PCR]:
        raise RuntimeError("replaying the event log's PCR 7 extends gave another PCR 7")


def run(argv: list[str], stdin: bytes, env: dict[str, str]) -> None:
    result = subprocess.run(argv, input=stdin, capture_output=True, env={**os.environ, **env})
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")


def enroll_peers(
    machine: Machine, first_boot: Boot, clevis_disk: Path, systemd_disk: Path
) -> None:
    """clevis and systemd-cryptenroll bind to PCR 7 on the machine's own TPM."""
    with Swtpm(machine.tpm_state) as tpm:
        replay_pcr7(tpm.tcti, first_boot)
        run(["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(clevis_disk), "tpm2",
             json.dumps({"pcr_bank": "sha256", "pcr_ids": str(BIND_PCR)})],
            ROOT_PASSPHRASE.encode(), {"TPM2TOOLS_TCTI": tpm.tcti})
        run(["systemd-cryptenroll", f"--tpm2-device={tpm.tcti}", f"--tpm2-pcrs={BIND_PCR}",
             str(systemd_disk)], b"", {"PASSWORD": ROOT_PASSPHRASE})


def check(variant: Variant, first_boot: Boot) -> list[str]:
    """What is wrong with the variant's boot; empty when its own path unlocked the root with
    nothing typed (Machine.boot got no answers: a prompt would have hung it to the limit)."""
    boot = variant.boot
    assert boot is not None
    text = boot.transcript
    problems = []
    if not boot.powered_off or ROOT_UP not in text:
        problems.append("the root never came up (stopped at a prompt, or failed)")
    if variant.key in ("floor", "sealer") and PROMPT in text:
        problems.append("initramfs-tools asked for the passphrase")
    if variant.key == "sealer":
        if TPM_UNLOCKED not in text:
            problems.append("no 'key released by the TPM' from sealer")
        if boot.pcrs().get(7) != first_boot.pcrs().get(7):
            problems.append("PCR 7 differs from the provisioning boot's")
    if variant.key == "clevis" and (PROMPT not in text or CRYPTROOT_DONE not in text):
        problems.append("no askpass prompt answered by clevis before cryptroot opened the root")
    if variant.key.startswith("systemd") and DRACUT_PROMPT in text:
        problems.append("systemd-cryptsetup asked for the passphrase")
    return problems


def boot_variants(
    kit: BootKit, variants: dict[str, Variant], machine: Machine, first_boot: Boot, rounds: int
) -> None:
    """Boot every bootable variant ``rounds`` times on the one machine (its disk swapped
    in), round after round so that no variant gets all the warm host caches; the table
    shows the last round, the JSON every round's time to root."""
    for round_number in range(1, rounds + 1):
        for variant in variants.values():
            if not variant.boots:
                continue
            log(f"boot {round_number}/{rounds}: {variant.title}...")
            machine.disks = [
                kit.esp(keys=kit.owner, cmdline=variant.cmdline, initrd=variant.initrd),
                disk_of(variant),
            ]
            marks = (ROOT_UP, *(variant.span or ()))
            variant.boot = machine.boot(marks=marks, timeout=300)
            variant.to_root_s.append(variant.boot.seconds_until(ROOT_UP))
            mounted = ROOT_MOUNTED.search(variant.boot.transcript)
            variant.kernel_s.append(float(mounted.group(1)) if mounted else None)
            reported = UNLOCKER_LINE.search(variant.boot.transcript)
            variant.unlocker_s.append(float(reported.group(1)) if reported else None)
            variant.span_s.append(span_seconds(variant))
            problems = check(variant, first_boot)
            variant.checks += [f"boot {round_number}: {p}" for p in problems]
            name = f"console-{variant.key}-{round_number}.txt"
            (machine.directory / name).write_text(variant.boot.transcript)
            if problems:
                log(f"{variant.key}: " + "; ".join(problems))


def span_seconds(variant: Variant) -> float | None:
    if variant.boot is None or variant.span is None:
        return None
    start, done = (variant.boot.seconds_until(mark) for mark in variant.span)
    return None if start is None or done is None else round(done - start, 2)


def figures(variant: Variant) -> dict[str, Any]:
    """The variant's row of bench/boot_unlock.json."""
    row: dict[str, Any] = {
        "title": variant.title,
        "floor": variant.floor or None,
        "initramfs_bytes": variant.initrd.stat().st_size,
        "initramfs_unpacked_bytes": unpacked_size(variant.initrd),
        "cmdline": variant.cmdline,
    }
    if variant.boot is None:
        return row
    row.update({
        "unlocked": not variant.checks,
        "problems": variant.checks,
        "boot_to_root_s": median_of(variant.to_root_s),
        "boot_to_root_every_round_s": rounded(variant.to_root_s),
        "kernel_to_root_mounted_s": median_of(variant.kernel_s),
        "kernel_to_root_mounted_every_round_s": rounded(variant.kernel_s),
        "unlocker_reported_s": median_of(variant.unlocker_s),
        "unlock_console_span": list(variant.span) if variant.span else None,
        "unlock_console_span_s": median_of(variant.span_s),
        "unlock_console_span_every_round_s": rounded(variant.span_s),
    })
    return row


def rounded(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(v, 2) for v in values]


def median_of(values: list[float | None]) -> float | None:
    """The median of the boots that gave the figure; None when none did."""
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def add_overheads(rows: dict[str, dict[str, Any]]) -> None:
    """Each TPM variant's cost over its floor: boot seconds (the same initramfs generator's
    floor) and initramfs growth (the floor built in the same build environment)."""
    size_floor = {"sealer": "floor", "clevis": "clevis_floor", "systemd": "systemd_floor"}
    for key, base in size_floor.items():
        row, floor = rows[key], rows[base]
        row["growth_bytes"] = row["initramfs_bytes"] - floor["initramfs_bytes"]
        row["growth_unpacked_bytes"] = (
            row["initramfs_unpacked_bytes"] - floor["initramfs_unpacked_bytes"]
        )
        boot_floor = rows[row["floor"]]
        for figure, overhead in (("boot_to_root_s", "overhead_s"),
                                 ("kernel_to_root_mounted_s", "kernel_overhead_s")):
            if row.get(figure) is not None and boot_floor.get(figure) is not None:
                row[overhead] = round(row[figure] - boot_floor[figure], 2)


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


NOTES = """\
Power-on to root: host clock, QEMU start to the root's first line; it includes the firmware
loading and hashing the UKI (slower the bigger the initramfs, under TCG). Kernel start to
root mounted: the kernel's timestamp on "EXT4-fs (dm-0): mounted filesystem". Spans: host
clock on the serial console (50 ms polling), initramfs-tools from "Running
/scripts/local-top" to "cryptroot: set up successfully", dracut from systemd's "Starting"
to "Finished" line of systemd-cryptsetup@luks-UUID.service. Sizes: the initramfs file, and
every file it unpacks to (unmkinitramfs). clevis' growth is over the floor image built in
its own build root (mmdebstrap), before clevis-initramfs was installed."""


def markdown(rows: dict[str, dict[str, Any]], rounds: int) -> str:
    order = ["floor", "sealer", "clevis", "systemd_floor", "systemd"]
    titles = " | ".join(rows[k]["title"] for k in order)
    lines = [
        f"| figure (QEMU -accel tcg, median of {rounds} boots each) | {titles} |",
        "|---|" + "---|" * len(order),
    ]

    def line(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    line("power-on to unlocked root (s)",
         [_cell(rows[k].get("boot_to_root_s"), ".1f") for k in order])
    line("overhead over its floor (s)", [_cell(rows[k].get("overhead_s"), "+.1f") for k in order])
    line("kernel start to root mounted, guest clock (s)",
         [_cell(rows[k].get("kernel_to_root_mounted_s"), ".1f") for k in order])
    line("same, overhead over its floor (s)",
         [_cell(rows[k].get("kernel_overhead_s"), "+.1f") for k in order])
    line("inside the unlocker, its own report (s)",
         [_cell(rows[k].get("unlocker_reported_s"), ".2f") if k == "sealer" else
          ("not reported" if k in ("clevis", "systemd") else "n/a") for k in order])
    line("unlock span on the console, host clock (s)",
         [_cell(rows[k].get("unlock_console_span_s"), ".2f") for k in order])
    line("initramfs compressed (MiB)",
         [_cell(rows[k]["initramfs_bytes"] / MIB, ".1f") for k in order])
    line("initramfs unpacked (MiB)",
         [_cell(rows[k]["initramfs_unpacked_bytes"] / MIB, ".1f") for k in order])
    line("growth over its floor, compressed / unpacked (MiB)",
         [f"{rows[k]['growth_bytes'] / MIB:+.1f} / {rows[k]['growth_unpacked_bytes'] / MIB:+.1f}"
          if "growth_bytes" in rows[k] else "n/a" for k in order])
    line("unlocked as expected, nothing typed",
         ["yes" if rows[k].get("unlocked") else "NO" for k in order])
    return "\n".join(lines) + "\n\n" + NOTES


def package_versions(*packages: str) -> dict[str, str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *packages],
        capture_output=True, text=True,
    ).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def environment(kit: BootKit, clevis_versions: dict[str, str]) -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu, "accel": "tcg"},
        "guest_kernel": kit.kernel.version,
        "sealer_commit": commit,
        "host_packages": package_versions(
            f"linux-image-{kit.kernel.version}", "systemd", "dracut-core", "cryptsetup-bin",
            "initramfs-tools", "qemu-system-x86", "ovmf", "swtpm", "tpm2-tools", "clevis",
        ),
        "clevis_root_packages": clevis_versions,
    }


def missing_parts() -> str | None:
    reason = missing_boot_parts() or missing_dracut()
    for tool in ("mmdebstrap", "clevis", "systemd-cryptenroll", "unmkinitramfs"):
        if reason is None and shutil.which(tool) is None:
            reason = f"{tool} is not installed"
    return reason


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--keep", type=Path, help="work here and keep it (console transcripts)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="boots of each variant; each figure's median is reported (default 3)")
    args = parser.parse_args()
    reason = missing_parts()
    if reason is not None:
        log(f"cannot boot here: {reason}")
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sealer-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log("keys, root disk and the sealer initramfs...")
        kit = make_boot_kit(work)
        variants, clevis_versions = build_variants(kit, work)
        for variant in variants.values():
            if variant.boots:
                variant.disk = kit.new_root(work / "disks" / variant.key)

        log("provisioning boot (sealer's image, passphrase typed), then enrolling...")
        sealer_disk = disk_of(variants["sealer"])
        machine = Machine(
            work / "machine", kit.owner.vars_template, [kit.esp(keys=kit.owner), sealer_disk]
        )
        first = machine.boot(answers=type_passphrase())
        enroll_on_host(machine, sealer_disk, first.pcrs(), work / "state")
        enroll_peers(machine, first, disk_of(variants["clevis"]), disk_of(variants["systemd"]))

        boot_variants(kit, variants, machine, first, args.rounds)
        rows = {key: figures(v) for key, v in variants.items()}
        add_overheads(rows)
        result = {
            **environment(kit, clevis_versions),
            # bench/peers.py reads these two (sealer's initramfs growth) from earlier runs' file.
            "initramfs_with_sealer_bytes": rows["sealer"]["initramfs_bytes"],
            "initramfs_without_sealer_bytes": rows["floor"]["initramfs_bytes"],
            "rounds": args.rounds,
            "total_s": round(time.monotonic() - started),
            "variants": rows,
        }
    print(markdown(rows, args.rounds))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    failed = [key for key, row in rows.items() if row.get("unlocked") is False]
    if failed:
        log("NOT unlocked as expected: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
