"""Benchmark: sealer side by side with systemd-cryptenroll and clevis, on one swtpm.

One run, the real tools, one swtpm with its level-20 wire log, LUKS2 images with the same
PBKDF2 passphrase keyslot. For each tool and PCR 7 on sha256:

- enroll: wall time (median of RUNS, each on a fresh image) and TPM commands, on the first
  enrollment on this TPM and on a later one (sealer creates its SRK and revocation field once);
- unlock: wall time (median of RUNS) and TPM commands of one unlock, as each tool does it:
  ``sealer unlock --test``; ``clevis luks pass``; systemd's token plugin for cryptsetup only
  reaches /dev/tpmrm0, not swtpm's socket, so systemd's own unlock cannot run here and
  sealer's reader of the systemd-tpm2 token stands in (marked so);
- whether the secret that opens the volume crosses the TPM wire in clear during that unlock;
- the initramfs size each tool's hook adds: sealer's from `make bench-boot` (bench/boot_unlock.json
  when present), the others as recorded in DESIGN.md (clevis-initramfs) or not measured.

Run: .venv/bin/python bench/peers.py [--json FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from luks_image import make_luks_image
from swtpm import Swtpm, WireLog, log_size

from sealer.interop.bindings import tool_bindings
from sealer.luks import cryptsetup

ROOT = Path(__file__).resolve().parent.parent

PASSPHRASE = b"bench passphrase"
RUNS = 5


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> bytes:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


class Tool:
    name = ""

    def __init__(self, tpm: Swtpm, work: Path) -> None:
        self.tpm = tpm
        self.work = work

    @property
    def port(self) -> int:
        return self.tpm.port

    def enroll(self, image: Path) -> None:
        raise NotImplementedError

    def unlock(self, image: Path) -> bytes:
        """Run the tool's unlock; return the keyslot passphrase it produced."""
        raise NotImplementedError

    unlock_note = ""


class Sealer(Tool):
    name = "sealer"

    def _sealer(self, *args: str, stdin: bytes = b"") -> bytes:
        return run([sys.executable, "-m", "sealer", "--tcti", self.tpm.tcti, *args], stdin)

    def enroll(self, image: Path) -> None:
        self._sealer(
            "enroll", "--quiet", "--unlock-key-file", "-", "--state-dir",
            str(self.work / "state"), "--pcrs", "7", str(image), stdin=PASSPHRASE,
        )

    def unlock(self, image: Path) -> bytes:
        self._sealer("unlock", "--test", str(image))
        return b""  # the key is checked below through the service, not printed


class SystemdCryptenroll(Tool):
    name = "systemd-cryptenroll"
    unlock_note = (
        "systemd's own unlock (its cryptsetup token plugin) finds only /dev/tpmrm0, not swtpm: "
        "this is `sealer unlock --test` reading the systemd-tpm2 token, as systemd would"
    )

    def enroll(self, image: Path) -> None:
        run(["systemd-cryptenroll", f"--tpm2-device=swtpm:host=127.0.0.1,port={self.port}",
             "--tpm2-pcrs=7", str(image)], env={"PASSWORD": PASSPHRASE.decode()})

    def unlock(self, image: Path) -> bytes:
        run([sys.executable, "-m", "sealer", "--tcti", self.tpm.tcti, "unlock", "--test",
             str(image)])
        return b""

    def key(self, image: Path) -> bytes:
        bindings, errors = tool_bindings(cryptsetup.read_header(str(image)))
        if errors or not bindings:
            raise RuntimeError(f"no systemd-tpm2 binding readable: {errors}")
        return bindings[0].unlock(self.tpm.tcti, lambda: b"")


class Clevis(Tool):
    name = "clevis"

    def _env(self) -> dict[str, str]:
        return {"TPM2TOOLS_TCTI": f"swtpm:host=127.0.0.1,port={self.port}"}

    def enroll(self, image: Path) -> None:
        run(["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2",
             '{"pcr_bank":"sha256","pcr_ids":"7"}'], PASSPHRASE, self._env())

    def unlock(self, image: Path) -> bytes:
        slot = _token_keyslot(image, "clevis")
        return run(["clevis", "luks", "pass", "-d", str(image), "-s", str(slot)],
                   env=self._env())


def _token_keyslot(image: Path, kind: str) -> int:
    header = cryptsetup.read_header(str(image))
    return header.tokens_of_type(kind)[0].keyslots[0]


def _secret_candidates(tool: Tool, key: bytes, image: Path) -> list[bytes]:
    """The bytes that must never be on the wire for this tool's unlock."""
    if isinstance(tool, SystemdCryptenroll):
        key = tool.key(image)
    if isinstance(tool, Sealer):
        from sealer.services.unlock import release_key

        unsealed = release_key(str(image), token_id=None, tcti=tool.tpm.tcti,
                               read_pin=lambda: b"")
        return [unsealed.key, base64.b64decode(unsealed.key)]
    candidates = [key.strip()]
    with contextlib.suppress(ValueError):  # not every tool's passphrase is base64
        candidates.append(base64.b64decode(key.strip(), validate=True))
    if isinstance(tool, Clevis):
        candidates.append(b'"kty"')  # the JWK clevis unseals holds the key that decrypts it
    return [c for c in candidates if len(c) >= 5]


def flush_sessions(tpm: Swtpm) -> None:
    """Both peers leave a session loaded per run (swtpm, unlike /dev/tpmrm0, has no resource
    manager to clean up after a process); without this the third run fails with 0x903."""
    run(["tpm2_flushcontext", "-T", tpm.tcti, "--loaded-session"])


def measure(tool: Tool, template: Path, log: Path) -> dict[str, Any]:
    enroll_counts: list[int] = []
    enroll_times: list[float] = []
    images = []
    for index in range(RUNS):
        image = tool.work / f"{tool.name}-{index}.img"
        shutil.copyfile(template, image)
        start = log_size(log)
        enroll_times.append(timed(lambda image=image: tool.enroll(image)))  # type: ignore[misc]
        enroll_counts.append(sum(WireLog.read(log, start).counts().values()))
        flush_sessions(tool.tpm)
        images.append(image)
    unlock_times = []
    for image in images:
        unlock_times.append(timed(lambda image=image: tool.unlock(image)))  # type: ignore[misc]
        flush_sessions(tool.tpm)
    start = log_size(log)
    key = tool.unlock(images[0])
    wire = WireLog.read(log, start)
    flush_sessions(tool.tpm)
    counts = wire.counts()
    secrets = _secret_candidates(tool, key, images[0])
    return {
        "enroll_seconds_median": statistics.median(enroll_times),
        "enroll_tpm_commands_first": enroll_counts[0],
        "enroll_tpm_commands_later": enroll_counts[-1],
        "unlock_seconds_median": statistics.median(unlock_times),
        "unlock_tpm_commands": sum(counts.values()),
        "unlock_commands": dict(sorted(counts.items())),
        "secret_in_clear_on_wire": any(wire.contains(s) for s in secrets),
        "unlock_note": tool.unlock_note,
    }


def initramfs_added() -> dict[str, str]:
    recorded = ROOT / "bench" / "boot_unlock.json"
    sealer = "+8.3 MiB (last `make bench-boot`, in README)"
    if recorded.exists():
        doc = json.loads(recorded.read_text())
        with_, without = doc.get("initramfs_with_sealer_bytes"), doc.get(
            "initramfs_without_sealer_bytes"
        )
        if with_ and without:
            sealer = f"+{(with_ - without) / 2**20:.1f} MiB (make bench-boot)"
    return {
        "sealer": sealer,
        "systemd-cryptenroll": "not measured (dracut + systemd-cryptsetup's TPM2 plugin)",
        "clevis": "+5.9 MiB (clevis-initramfs; recorded in DESIGN.md, not measured here)",
    }


def markdown(results: dict[str, dict[str, Any]], added: dict[str, str]) -> str:
    tools = list(results)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("enroll: wall time, median of 5", lambda r: f"{r['enroll_seconds_median']:.3f} s"),
        ("enroll: TPM commands, first on this TPM / later",
         lambda r: f"{r['enroll_tpm_commands_first']} / {r['enroll_tpm_commands_later']}"),
        ("unlock: wall time, median of 5", lambda r: f"{r['unlock_seconds_median']:.3f} s"
         + (" *" if r["unlock_note"] else "")),
        ("unlock: TPM commands", lambda r: f"{r['unlock_tpm_commands']}"
         + (" *" if r["unlock_note"] else "")),
        ("secret in clear on the TPM wire during unlock",
         lambda r: "yes" if r["secret_in_clear_on_wire"] else "no"),
    ]
    lines = [f"| | {' | '.join(tools)} |", f"| --- |{' --- |' * len(tools)}"]
    for label, cell in rows:
        lines.append(f"| {label} | {' | '.join(cell(results[t]) for t in tools)} |")
    lines.append(f"| initramfs added by its hook | {' | '.join(added[t] for t in tools)} |")
    notes = [f"\\* {t}: {results[t]['unlock_note']}" for t in tools if results[t]["unlock_note"]]
    return "\n".join(lines + (["", *notes] if notes else [])) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--markdown", type=Path, help="write the table to this file")
    args = parser.parse_args()
    missing = [t for t in ("systemd-cryptenroll", "clevis") if shutil.which(t) is None]
    if missing:
        print(f"bench: {', '.join(missing)} not installed: run scripts/setup.sh --boot-chain")
        return 1
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        template = make_luks_image(work / "template.img", PASSPHRASE)
        log = work / "wire.log"
        with Swtpm(work / "tpm", log_file=log) as tpm:
            for kind in (Sealer, SystemdCryptenroll, Clevis):
                tool = kind(tpm, work)
                print(f"bench: {tool.name}...", file=sys.stderr)
                results[tool.name] = measure(tool, template, log)
    table = markdown(results, initramfs_added())
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
