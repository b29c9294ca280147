"""A short coverage-guided fuzzing run of every parser, on every test run.

Each atheris target (fuzz/targets.py) runs for a fixed budget in its own libFuzzer process,
with the limits of the long run (`make fuzz`): 512 MB resident memory, 5 s per input. Any
finding fails the test with the Python traceback and the saved input; the figures
(executions, coverage) are printed for the record (pytest -s, or -rA).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "fuzz" / "run.py"
TARGETS = ("eventlog", "token", "approval", "luks_header")
BUDGET_SECONDS = 10  # per target: four targets stay well under a minute


@pytest.mark.parametrize("target", TARGETS)
def test_fuzzing_finds_nothing_within_the_budget(target: str, tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        pytest.fail("atheris is not installed: run scripts/setup.sh (it installs .[dev])")
    argv = [sys.executable, str(RUNNER), "--target", target, "--seconds", str(BUDGET_SECONDS),
            "--json", "--findings", str(tmp_path)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=BUDGET_SECONDS + 120)
    assert result.stdout, result.stderr
    [report] = json.loads(result.stdout)
    print(
        f"{target}: {report['executions']} executions ({report['exec_per_sec']}/s), "
        f"cov {report['initial_cov']} -> {report['cov']}, ft {report['initial_ft']} -> "
        f"{report['ft']}, corpus {report['seeds']} -> {report['corpus']}, "
        f"known unfixed: {report['known_unfixed'] or 'none hit'}"
    )
    assert report["ok"], (
        f"{target}: {', '.join(report['findings'])}; input saved as {report['artifacts']}\n"
        f"{report['excerpt']}"
    )
    assert report["executions"] > 0
    assert report["cov"] >= report["initial_cov"] > 0
