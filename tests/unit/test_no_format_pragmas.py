"""No formatter pragmas: no formatter runs in CI, so a "fmt" skip comment guards nothing and
only hides that the hand layout is the layout (issue 16 removed 253 of them)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRAGMA = re.compile(r"#\s*fmt:\s*(skip|off|on)\b")


def test_no_python_file_carries_a_formatter_pragma() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    found = [
        f"{name}:{number}"
        for name in listed
        if (REPO / name).is_file()
        for number, line in enumerate((REPO / name).read_text().splitlines(), start=1)
        if PRAGMA.search(line)
    ]
    assert found == []
