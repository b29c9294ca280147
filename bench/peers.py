"""Benchmark: sealer side by side with systemd-cryptenroll and clevis, on swtpm and on a modelled
slow discrete TPM.

One run, the real tools, LUKS2 images with the same PBKDF2 passphrase keyslot, PCR 7 on sha256.
Everything is measured twice, each time on a fresh swtpm with its level-20 wire log: once with
the tools talking to swtpm directly (about a millisecond per command), once through
swtpm-fixtures/latency_proxy.py, which holds each response back for as long as a slow discrete
TPM takes for that command (the table and its sources are in latency_proxy.py). For each tool:

- enroll: wall time (median, min and max of RUNS, each on a fresh image) and TPM commands, on
  the first enrollment on this TPM and on a later one (sealer creates its SRK and revocation
  field once);
- unlock: wall time (of RUNS) and TPM commands of one unlock, as each tool does it:
  ``sealer unlock --test``; ``clevis luks pass`` (what clevis's initramfs runs); systemd's
  token plugin for cryptsetup only reaches /dev/tpmrm0, not swtpm's socket, so systemd's own
  unlock cannot run here and sealer's reader of the systemd-tpm2 token stands in (marked so);
- sealer's boot-time unlocker exactly as the initramfs runs it: the bundle sealer's hook lays
  out (swtpm-fixtures/bundle_tree.py), ``python3 -I -S -m sealer.boot.keyscript``, with
  cryptroot's environment;
- with the proxy: the TPM time the model adds to one unlock (the sum of its delays);
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle_tree import lay_out_bundle
from latency_proxy import PROFILES, SLOW_DISCRETE, LatencyProfile, LatencyProxy
from luks_image import make_luks_image
from swtpm import COMMAND_NAMES, Swtpm, WireLog, log_size

from sealer.interop.bindings import tool_bindings
from sealer.luks import cryptsetup

ROOT = Path(__file__).resolve().parent.parent

PASSPHRASE = b"bench passphrase"
RUNS = 5
DIRECT = "swtpm"  # the name of the column without modelled latency


@dataclass(frozen=True)
class Endpoint:
    """Where the tools send their TPM commands in one column of the table."""

    name: str
    tcti: str  # what the tools are given: swtpm itself, or the proxy in front of it
    tpm: Swtpm  # swtpm itself, for the bench's own housekeeping (never timed)
    proxy: LatencyProxy | None


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def spread(times: list[float]) -> dict[str, float]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> bytes:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def keyscript_argv(work: Path) -> list[str]:
    """The boot-time unlocker exactly as the initramfs runs it: the bundle sealer's hook lays
    out (its interpreter, its standard library, the compiled ESAPI binding), with -I -S."""
    python = lay_out_bundle(work / "initramfs")
    return [str(python), "-I", "-S", "-m", "sealer.boot.keyscript"]


class Tool:
    name = ""
    unlock_note = ""
    boot_note = ""  # what the boot-time rows say for a tool with no boot_unlock() of its own

    def __init__(self, endpoint: Endpoint, work: Path) -> None:
        self.endpoint = endpoint
        self.work = work

    @property
    def tcti(self) -> str:
        return self.endpoint.tcti

    def enroll(self, image: Path) -> None:
        raise NotImplementedError

    def unlock(self, image: Path) -> bytes:
        """Run the tool's unlock; return the keyslot passphrase it produced."""
        raise NotImplementedError

    def boot_unlock(self, image: Path) -> bytes | None:
        """The unlock the tool's initramfs runs, when it differs from unlock(); else None."""
        return None


class Sealer(Tool):
    name = "sealer"

    def __init__(self, endpoint: Endpoint, work: Path, boot_argv: list[str]) -> None:
        super().__init__(endpoint, work)
        self.boot_argv = boot_argv

    def _sealer(self, *args: str, stdin: bytes = b"") -> bytes:
        return run([sys.executable, "-m", "sealer", "--tcti", self.tcti, *args], stdin)

    def enroll(self, image: Path) -> None:
        self._sealer(
            "enroll", "--quiet", "--unlock-key-file", "-", "--state-dir",
            str(self.work / "state"), "--pcrs", "7", str(image), stdin=PASSPHRASE,
        )

    def unlock(self, image: Path) -> bytes:
        self._sealer("unlock", "--test", str(image))
        return b""  # the key is checked below through the service, not printed

    def boot_unlock(self, image: Path) -> bytes:
        # cryptroot's environment; the PCR-cap record goes to the work directory, not /run.
        env = {
            "CRYPTTAB_SOURCE": str(image), "CRYPTTAB_NAME": "bench", "SEALER_TCTI": self.tcti,
            "SEALER_CAP_RECORD": str(self.work / "cap-pcrs"),
        }
        key = run(self.boot_argv, env=env)
        if not key:
            raise RuntimeError("the boot-time unlocker printed no key")
        return key


class SystemdCryptenroll(Tool):
    name = "systemd-cryptenroll"
    boot_note = "not runnable here *"
    unlock_note = (
        "systemd's own unlock (its cryptsetup token plugin) finds only /dev/tpmrm0, not swtpm: "
        "this is `sealer unlock --test` reading the systemd-tpm2 token, as systemd would"
    )

    def enroll(self, image: Path) -> None:
        run(["systemd-cryptenroll", f"--tpm2-device={self.tcti}", "--tpm2-pcrs=7", str(image)],
            env={"PASSWORD": PASSPHRASE.decode()})

    def unlock(self, image: Path) -> bytes:
        run([sys.executable, "-m", "sealer", "--tcti", self.tcti, "unlock", "--test",
             str(image)])
        return b""

    def key(self, image: Path) -> bytes:
        bindings, errors = tool_bindings(cryptsetup.read_header(str(image)))
        if errors or not bindings:
            raise RuntimeError(f"no systemd-tpm2 binding readable: {errors}")
        return bindings[0].unlock(self.endpoint.tpm.tcti, lambda: b"")


class Clevis(Tool):
    name = "clevis"
    boot_note = "as unlock (its initramfs runs `clevis luks pass`)"

    def _env(self) -> dict[str, str]:
        return {"TPM2TOOLS_TCTI": self.tcti}

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
        unsealed = _sealer_key(tool, image)
        return [unsealed, base64.b64decode(unsealed)]
    candidates = [key.strip()]
    with contextlib.suppress(ValueError):  # not every tool's passphrase is base64
        candidates.append(base64.b64decode(key.strip(), validate=True))
    if isinstance(tool, Clevis):
        candidates.append(b'"kty"')  # the JWK clevis unseals holds the key that decrypts it
    return [c for c in candidates if len(c) >= 5]


def _sealer_key(tool: Tool, image: Path) -> bytes:
    from sealer.services.unlock import release_key

    return release_key(str(image), token_id=None, tcti=tool.endpoint.tpm.tcti,
                       read_pin=lambda: b"").key


def flush_sessions(endpoint: Endpoint) -> None:
    """Both peers leave a session loaded per run (swtpm, unlike /dev/tpmrm0, has no resource
    manager to clean up after a process); without this the third run fails with 0x903.
    Sent to swtpm directly: housekeeping, not part of any tool's time."""
    run(["tpm2_flushcontext", "-T", endpoint.tpm.tcti, "--loaded-session"])


@dataclass(frozen=True)
class Observed:
    """One unlock run with its wire log and the delay the model added to it."""

    key: bytes
    wire: WireLog
    modelled_seconds: float | None


def observe(tool: Tool, unlock: Callable[[Path], bytes | None], image: Path,
            log: Path) -> Observed:
    proxy = tool.endpoint.proxy
    start, delayed = log_size(log), proxy.delayed_seconds if proxy else 0.0
    key = unlock(image) or b""
    wire = WireLog.read(log, start)
    flush_sessions(tool.endpoint)
    modelled = proxy.delayed_seconds - delayed if proxy else None
    return Observed(key, wire, modelled)


def _time_unlocks(tool: Tool, unlock: Callable[[Path], bytes | None],
                  images: list[Path]) -> list[float]:
    times = []
    for image in images:
        times.append(timed(lambda image=image: unlock(image)))  # type: ignore[misc]
        flush_sessions(tool.endpoint)
    return times


def _enroll_all(tool: Tool, template: Path, log: Path) -> tuple[list[Path], list[float],
                                                                   list[int]]:
    images, times, counts = [], [], []
    for index in range(RUNS):
        image = tool.work / f"{tool.name}-{index}.img"
        shutil.copyfile(template, image)
        start = log_size(log)
        times.append(timed(lambda image=image: tool.enroll(image)))  # type: ignore[misc]
        counts.append(sum(WireLog.read(log, start).counts().values()))
        flush_sessions(tool.endpoint)
        images.append(image)
    return images, times, counts


def _unlock_figures(prefix: str, times: list[float], seen: Observed) -> dict[str, Any]:
    counts = seen.wire.counts()
    return {
        f"{prefix}_seconds": spread(times),
        f"{prefix}_tpm_commands": sum(counts.values()),
        f"{prefix}_commands": dict(sorted(counts.items())),
        f"{prefix}_modelled_tpm_seconds": seen.modelled_seconds,
    }


def measure(tool: Tool, template: Path, log: Path) -> dict[str, Any]:
    images, enroll_times, enroll_counts = _enroll_all(tool, template, log)
    figures: dict[str, Any] = {
        "enroll_seconds": spread(enroll_times),
        "enroll_tpm_commands_first": enroll_counts[0],
        "enroll_tpm_commands_later": enroll_counts[-1],
        "unlock_note": tool.unlock_note,
        "boot_note": tool.boot_note,
    }
    seen = observe(tool, tool.unlock, images[0], log)
    figures.update(_unlock_figures("unlock", _time_unlocks(tool, tool.unlock, images), seen))
    secrets = _secret_candidates(tool, seen.key, images[0])
    figures["secret_in_clear_on_wire"] = any(seen.wire.contains(s) for s in secrets)
    boot = observe(tool, tool.boot_unlock, images[0], log)
    if boot.key:
        if isinstance(tool, Sealer) and boot.key != _sealer_key(tool, images[0]):
            raise RuntimeError("the boot-time unlocker printed another key than sealer's")
        times = _time_unlocks(tool, tool.boot_unlock, images)
        figures.update(_unlock_figures("boot_unlock", times, boot))
        figures["boot_secret_in_clear_on_wire"] = any(boot.wire.contains(s) for s in secrets)
    return figures


@contextlib.contextmanager
def endpoint(name: str, work: Path, log: Path) -> Iterator[Endpoint]:
    """A fresh swtpm (so 'first enrollment on this TPM' means it), behind the proxy if modelled."""
    with Swtpm(work / "tpm", log_file=log) as tpm:
        if name == DIRECT:
            yield Endpoint(name, tpm.tcti, tpm, None)
            return
        with LatencyProxy(tpm.port, PROFILES[name]) as proxy:
            yield Endpoint(name, proxy.tcti, tpm, proxy)
            if proxy.errors:
                raise RuntimeError(f"latency proxy: {proxy.errors}")


def measure_endpoint(name: str, work: Path, template: Path,
                     boot_argv: list[str]) -> dict[str, dict[str, Any]]:
    work.mkdir()
    log = work / "wire.log"
    results: dict[str, dict[str, Any]] = {}
    with endpoint(name, work, log) as target:
        tools: list[Tool] = [Sealer(target, work, boot_argv), SystemdCryptenroll(target, work),
                             Clevis(target, work)]
        for tool in tools:
            print(f"bench: {tool.name} on {name}...", file=sys.stderr)
            results[tool.name] = measure(tool, template, log)
    return results


def boot_over_clevis(results: dict[str, dict[str, Any]]) -> float:
    """sealer's boot-time unlocker against clevis's boot path, median wall times."""
    sealer_boot = results["sealer"]["boot_unlock_seconds"]["median"]
    return float(sealer_boot / results["clevis"]["unlock_seconds"]["median"])


def initramfs_added() -> dict[str, str]:
    """Each tool's initramfs growth over its floor, from the last `make bench-boot` (one run,
    all three measured side by side there)."""
    recorded = ROOT / "bench" / "boot_unlock.json"
    keys = {"sealer": "sealer", "systemd-cryptenroll": "systemd", "clevis": "clevis"}
    if not recorded.exists():
        return dict.fromkeys(keys, "not measured: run make bench-boot")
    doc = json.loads(recorded.read_text())
    day = str(doc.get("date", ""))[:10]
    added = {}
    for tool, key in keys.items():
        row = doc.get("variants", {}).get(key, {})
        growth = row.get("growth_bytes")
        added[tool] = (
            "not measured" if growth is None
            else f"+{growth / 2**20:.1f} MiB compressed (make bench-boot, {day})"
        )
    return added


def profile_document(profile: LatencyProfile) -> dict[str, Any]:
    return {
        "description": profile.description,
        "default_ms": profile.default_ms,
        "per_command_ms": {COMMAND_NAMES.get(c, f"0x{c:x}"): ms
                           for c, ms in profile.per_command_ms.items()},
        "rsa_primary_ms": profile.rsa_primary_ms,
        "sources": "swtpm-fixtures/latency_proxy.py",
    }


Cell = Callable[[dict[str, Any]], str]


def _seconds(figures: dict[str, Any], key: str) -> str:
    if key not in figures:
        return ""
    s = figures[key]
    return f"{s['median']:.3f} s ({s['min']:.2f}-{s['max']:.2f})"


def _modelled(figures: dict[str, Any], key: str) -> str:
    value = figures.get(key)
    return "—" if value is None else f"{value:.2f} s"


def _rows() -> list[tuple[str, Cell]]:
    def marked(r: dict[str, Any], text: str) -> str:
        return text + (" *" if r["unlock_note"] else "")

    return [
        (f"enroll: wall time, median (min-max) of {RUNS}",
         lambda r: _seconds(r, "enroll_seconds")),
        ("enroll: TPM commands, first on this TPM / later",
         lambda r: f"{r['enroll_tpm_commands_first']} / {r['enroll_tpm_commands_later']}"),
        (f"unlock (`sealer unlock --test`, `clevis luks pass`): wall time, of {RUNS}",
         lambda r: marked(r, _seconds(r, "unlock_seconds"))),
        ("unlock: TPM commands", lambda r: marked(r, f"{r['unlock_tpm_commands']}")),
        ("unlock: modelled TPM time (sum of the table's delays)",
         lambda r: _modelled(r, "unlock_modelled_tpm_seconds")),
        (f"boot-time unlocker (the initramfs' bundle, `-I -S`): wall time, of {RUNS}",
         lambda r: _seconds(r, "boot_unlock_seconds") or r["boot_note"]),
        ("boot-time unlocker: TPM commands",
         lambda r: str(r.get("boot_unlock_tpm_commands", r["boot_note"]))),
        ("boot-time unlocker: modelled TPM time",
         lambda r: _modelled(r, "boot_unlock_modelled_tpm_seconds")
         if "boot_unlock_seconds" in r else r["boot_note"]),
        ("secret in clear on the TPM wire during unlock",
         lambda r: "yes" if r["secret_in_clear_on_wire"] else "no"),
    ]


def markdown(runs: dict[str, dict[str, dict[str, Any]]], added: dict[str, str]) -> str:
    profiles = list(runs)
    tools = list(runs[profiles[0]])
    columns = [(tool, profile) for tool in tools for profile in profiles]
    lines = [f"| | {' | '.join(f'{t} · {p}' for t, p in columns)} |",
             f"| --- |{' --- |' * len(columns)}"]
    for label, cell in _rows():
        lines.append(f"| {label} | {' | '.join(cell(runs[p][t]) for t, p in columns)} |")
    ratios = [f"{boot_over_clevis(runs[p]):.2f}" if t == "sealer" else "" for t, p in columns]
    lines.append(f"| sealer boot unlocker / clevis, wall-time ratio | {' | '.join(ratios)} |")
    lines += ["", "| initramfs added by its hook | " + " | ".join(tools) + " |",
              f"| --- |{' --- |' * len(tools)}",
              "| | " + " | ".join(added[t] for t in tools) + " |", ""]
    for name in profiles:
        if name in PROFILES:
            lines.append(f"{name}: swtpm behind swtpm-fixtures/latency_proxy.py, "
                         f"{PROFILES[name].description}.")
    first = runs[profiles[0]]
    lines += [f"\\* {t}: {first[t]['unlock_note']}" for t in tools if first[t]["unlock_note"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--markdown", type=Path, help="write the table to this file")
    args = parser.parse_args()
    missing = [t for t in ("systemd-cryptenroll", "clevis") if shutil.which(t) is None]
    if missing:
        print(f"bench: {', '.join(missing)} not installed: run scripts/setup.sh --boot-chain")
        return 1
    runs: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        boot_argv = keyscript_argv(work)
        template = make_luks_image(work / "template.img", PASSPHRASE)
        for name in (DIRECT, SLOW_DISCRETE.name):
            runs[name] = measure_endpoint(name, work / name, template, boot_argv)
    table = markdown(runs, initramfs_added())
    print(table)
    if args.json:
        document = {
            "runs": runs,
            "latency_profiles": {name: profile_document(p) for name, p in PROFILES.items()},
            "sealer_boot_unlocker_over_clevis": {n: boot_over_clevis(r) for n, r in runs.items()},
            "boot_unlocker_argv": boot_argv[:3] + (["..."] if len(boot_argv) > 3 else []),
            "runs_per_figure": RUNS,
        }
        args.json.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
