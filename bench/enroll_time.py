"""Benchmark: where `sealer enroll`'s time goes, beside systemd-cryptenroll's whole run.

One run, on one swtpm, RUNS fresh LUKS2 images each (the same PBKDF2 passphrase keyslot as
bench/peers.py), PCR 7: a later enrollment (the SRK and the revocation field already made by
a first one). Each of sealer's enrollments runs in a fresh interpreter that times its own
parts (no profiler: a profiler's overhead would land in the Python parts):

- the interpreter's own start (``python -c pass`` with the same interpreter, timed apart);
- importing Python modules (click and sealer's CLI, then the enroll service with
  tpm2-pytss and cryptography);
- cryptsetup: each call is a process (read the header, add the keyslot, which derives the
  passphrase's key, write the token twice: incomplete, then complete, so that an interrupted
  enrollment is found and cleared, set the keyslot priority);
- the TPM: every tpm2-pytss ESAPI call;
- the rest (sealer's own work: the approval's signature, the policy digests, JSON).

Run: .venv/bin/python bench/enroll_time.py [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from luks_image import make_luks_image
from swtpm import Swtpm

PASSPHRASE = b"bench passphrase"
RUNS = 5


# Run in the child: import what `sealer enroll` imports, then run the command in-process with
# subprocess.run (every cryptsetup call goes through it) and tpm2-pytss's ESAPI methods timed.
_CHILD = """
import json, subprocess, sys, time
started = time.perf_counter()
import sealer.cli.main, sealer.services.enroll
imported = time.perf_counter()
from tpm2_pytss import ESAPI
spent = {"cryptsetup_s": 0.0, "cryptsetup_processes": 0, "tpm_s": 0.0}
depth = [0]

def timed(function, key, counter=None):
    def wrapper(*args, **kwargs):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                spent[key] += time.perf_counter() - start
                if counter:
                    spent[counter] += 1
    return wrapper

subprocess.run = timed(subprocess.run, "cryptsetup_s", "cryptsetup_processes")
for name, value in list(vars(ESAPI).items()):
    if callable(value) and not name.startswith("_"):
        setattr(ESAPI, name, timed(value, "tpm_s"))
sys.argv = ["sealer", *sys.argv[1:]]
try:
    sealer.cli.main.main(prog_name="sealer")
except SystemExit as exit:
    if exit.code:
        raise
done = time.perf_counter()
spent["imports_s"] = imported - started
spent["in_process_s"] = done - started
spent["rest_s"] = done - imported - spent["cryptsetup_s"] - spent["tpm_s"]
print(json.dumps(spent), file=sys.stderr)
"""


def _sealer_enroll(tcti: str, image: Path, state: Path, timed: bool) -> tuple[float, str]:
    argv = [sys.executable, "-c", _CHILD] if timed else [sys.executable, "-m", "sealer"]
    argv += ["--tcti", tcti, "enroll", "--quiet", "--unlock-key-file", "-",
             "--state-dir", str(state), "--pcrs", "7", str(image)]
    start = time.perf_counter()
    done = subprocess.run(argv, input=PASSPHRASE, check=True, capture_output=True)
    return time.perf_counter() - start, done.stderr.decode()


def _systemd_enroll(port: int, image: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["systemd-cryptenroll", f"--tpm2-device=swtpm:host=127.0.0.1,port={port}",
         "--tpm2-pcrs=7", str(image)],
        env={"PASSWORD": PASSPHRASE.decode(), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        check=True, capture_output=True,
    )
    seconds = time.perf_counter() - start
    # systemd leaves a session loaded (swtpm has no resource manager): the third run would
    # find the TPM out of session memory.
    subprocess.run(["tpm2_flushcontext", "-T", f"swtpm:host=127.0.0.1,port={port}",
                    "--loaded-session"], check=True, capture_output=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if shutil.which("systemd-cryptenroll") is None:
        print("bench: systemd-cryptenroll is not installed: run scripts/setup.sh --boot-chain")
        return 1
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        template = make_luks_image(work / "template.img", PASSPHRASE)
        splits: list[dict[str, float]] = []
        walls: list[float] = []
        systemd: list[float] = []
        with Swtpm(work / "tpm") as tpm:
            first = work / "first.img"
            shutil.copyfile(template, first)
            _sealer_enroll(tpm.tcti, first, work / "state", False)  # the SRK and field, once
            for run in range(RUNS):
                image = work / f"sealer-{run}.img"
                shutil.copyfile(template, image)
                walls.append(_sealer_enroll(tpm.tcti, image, work / "state", False)[0])
                timed = work / f"timed-{run}.img"
                shutil.copyfile(template, timed)
                _, report = _sealer_enroll(tpm.tcti, timed, work / "state", True)
                splits.append(json.loads(report.strip().splitlines()[-1]))
                image = work / f"systemd-{run}.img"
                shutil.copyfile(template, image)
                systemd.append(_systemd_enroll(tpm.port, image))
        starts = []
        for _ in range(RUNS):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            starts.append(time.perf_counter() - start)
    figures: dict[str, Any] = {
        "sealer_enroll_wall_s": statistics.median(walls),
        "systemd_cryptenroll_wall_s": statistics.median(systemd),
        "interpreter_start_s": statistics.median(starts),
        **{key: statistics.median(s[key] for s in splits) for key in splits[0]},
    }
    ms = {k: f"{v * 1000:.0f}" for k, v in figures.items() if k.endswith("_s")}
    rows = [
        ("whole command, wall", ms["sealer_enroll_wall_s"]),
        ("interpreter start (`python -c pass`)", ms["interpreter_start_s"]),
        ("importing modules (click, sealer, tpm2-pytss, cryptography)", ms["imports_s"]),
        (f"cryptsetup, {figures['cryptsetup_processes']:.0f} processes", ms["cryptsetup_s"]),
        ("TPM commands (tpm2-pytss ESAPI calls)", ms["tpm_s"]),
        ("the rest (key file, approval signature, policy digests, JSON)", ms["rest_s"]),
        ("`systemd-cryptenroll --tpm2-pcrs=7`, wall", ms["systemd_cryptenroll_wall_s"]),
    ]
    print(f"| `sealer enroll` (a later enrollment, median of {RUNS}) | ms |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
