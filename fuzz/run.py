"""Run the atheris/libFuzzer targets and report executions, coverage and crashes.

    .venv/bin/python fuzz/run.py --target eventlog --seconds 120
    .venv/bin/python fuzz/run.py --target all --seconds 10 --json

Each target runs in its own process (worker.py), one after the other, seeded from
fuzz/corpus/TARGET/ (read only: new inputs go to a scratch corpus, kept with --keep), with
the dictionary fuzz/dicts/TARGET.dict; the input of a finding is saved in fuzz/findings/.
libFuzzer's limits make the three kinds of finding: an exception that is not a SealerError
(crash), an input that runs longer than --timeout seconds (hang), and resident memory above
--rss-limit-mb (huge allocation). A target stops at its first finding; the report names the
input libFuzzer saved for it. Exit status: 0 when no target found anything, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
TARGET_NAMES = ("eventlog", "token", "approval", "luks_header")  # worker.py checks them too
SCRATCH_ENV = "SEALER_FUZZ_SCRATCH"  # as in targets.py, which this process does not import
# libFuzzer's progress lines: "#4096 pulse cov: 131 ft: 380 corp: 66/376Kb ... exec/s: 2993"
_PROGRESS = re.compile(r"#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_FINDING = re.compile(r"ERROR: libFuzzer: ([\w -]+)|=== Uncaught Python exception: ===")
_KNOWN = re.compile(r"sealer-fuzz: known unfixed bug: (.*)")


@dataclass(frozen=True)
class Limits:
    rss_limit_mb: int
    timeout: int  # seconds for one input
    findings: Path  # where libFuzzer saves the input of a finding


@dataclass
class Report:
    target: str
    seconds: int
    seeds: int
    executions: int = 0
    exec_per_sec: int = 0
    cov: int = 0  # coverage counters (Python edges, via atheris' instrumentation)
    ft: int = 0  # libFuzzer "features": edges plus hit-count buckets and comparisons
    initial_cov: int = 0  # after loading the seeds, before any mutation
    initial_ft: int = 0
    corpus: int = 0  # inputs in the corpus at the end (seeds + new ones, minimised)
    new_units: int = 0
    peak_rss_mb: int = 0
    findings: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    known_unfixed: list[str] = field(default_factory=list)
    returncode: int = 0
    excerpt: str = ""  # the end of libFuzzer's output when something was found

    @property
    def ok(self) -> bool:
        return not self.findings and self.returncode == 0


def libfuzzer_argv(target: str, seconds: int, work: Path, limits: Limits) -> list[str]:
    argv = [
        sys.executable, str(FUZZ / "worker.py"), target,
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={limits.rss_limit_mb}",
        f"-timeout={limits.timeout}",
        "-print_final_stats=1",
        f"-artifact_prefix={limits.findings}/{target}-",
    ]
    dictionary = FUZZ / "dicts" / f"{target}.dict"
    if dictionary.exists():
        argv.append(f"-dict={dictionary}")
    # The first folder receives new inputs; the committed seeds are only read.
    return [*argv, str(work / "corpus"), str(FUZZ / "corpus" / target)]


def parse_output(report: Report, output: str) -> None:
    progress = _PROGRESS.findall(output)
    for _, kind, cov, ft, _ in progress:
        if kind == "INITED":
            report.initial_cov, report.initial_ft = int(cov), int(ft)
    if progress:
        last = progress[-1]
        report.cov, report.ft, report.corpus = int(last[2]), int(last[3]), int(last[4])
    stats = {name: int(value) for name, value in _STAT.findall(output)}
    report.executions = stats.get("number_of_executed_units", 0)
    report.exec_per_sec = stats.get("average_exec_per_sec", 0)
    report.new_units = stats.get("new_units_added", 0)
    report.peak_rss_mb = stats.get("peak_rss_mb", 0)
    report.artifacts = _ARTIFACT.findall(output)
    report.known_unfixed = sorted(set(_KNOWN.findall(output)))
    for match in _FINDING.finditer(output):
        finding = match.group(1) or "uncaught Python exception"
        if finding not in report.findings:
            report.findings.append(finding.strip())


def run_target(target: str, seconds: int, work: Path, limits: Limits) -> Report:
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    seeds = len(list((FUZZ / "corpus" / target).iterdir()))
    report = Report(target=target, seconds=seconds, seeds=seeds)
    argv = libfuzzer_argv(target, seconds, work, limits)
    try:
        # libFuzzer stops itself after max_total_time (plus the input running then); the
        # wall-clock limit here only guards against a worker that never starts fuzzing.
        result = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            timeout=seconds * 2 + 120, env={**os.environ, SCRATCH_ENV: str(work)},
        )
    except subprocess.TimeoutExpired as exc:
        report.findings.append("the worker did not stop")
        report.returncode = -1
        report.excerpt = str(exc.stdout or "")[-3000:]
        return report
    parse_output(report, result.stdout)
    report.returncode = result.returncode
    if not report.ok:
        report.excerpt = excerpt(result.stdout)
    return report


def excerpt(output: str) -> str:
    """The Python traceback of a crash, else the end of libFuzzer's output."""
    start = output.find("=== Uncaught Python exception: ===")
    if start >= 0:
        end = output.find("ERROR: libFuzzer", start)
        return output[start : end if end >= 0 else None].strip()[-6000:]
    return output[-3000:]


def human(report: Report) -> str:
    lines = [
        f"{report.target}: {report.executions} executions in {report.seconds} s "
        f"({report.exec_per_sec}/s), cov {report.initial_cov} -> {report.cov}, "
        f"ft {report.initial_ft} -> {report.ft}, corpus {report.seeds} seeds -> "
        f"{report.corpus} ({report.new_units} new), peak RSS {report.peak_rss_mb} MB: "
        + ("no finding" if report.ok else f"FOUND {', '.join(report.findings) or 'an error'}")
    ]
    lines += [f"  known unfixed bug hit: {k}" for k in report.known_unfixed]
    lines += [f"  input saved as {a}" for a in report.artifacts]
    if report.excerpt:
        lines.append(report.excerpt)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, choices=[*TARGET_NAMES, "all"])
    parser.add_argument("--seconds", type=int, default=60, help="per target")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    parser.add_argument("--rss-limit-mb", type=int, default=512)
    parser.add_argument("--timeout", type=int, default=5, help="seconds for one input")
    parser.add_argument("--keep", type=Path, help="keep the new corpus inputs here")
    parser.add_argument(
        "--findings",
        type=Path,
        default=FUZZ / "findings",
        help="where the inputs of findings are saved (default: %(default)s)",
    )
    args = parser.parse_args()
    names = TARGET_NAMES if args.target == "all" else (args.target,)
    args.findings.mkdir(parents=True, exist_ok=True)
    limits = Limits(args.rss_limit_mb, args.timeout, args.findings.resolve())
    scratch = Path(tempfile.mkdtemp(prefix="sealer-fuzz-"))
    reports = []
    try:
        for name in names:
            report = run_target(name, args.seconds, (args.keep or scratch) / name, limits)
            reports.append(report)
            if not args.json:
                print(human(report), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps([{**asdict(r), "ok": r.ok} for r in reports], indent=2))
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
