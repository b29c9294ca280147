"""scripts/manpage.py: sealer(1) is generated from the click command tree (the Debian package
builds it; tests/package checks the page it ships)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from sealer import __version__
from sealer.cli import main as sealer_main

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "manpage.py"


def command_paths(group: click.Group, prefix: str) -> Iterator[str]:
    for name, command in group.commands.items():
        if not command.hidden:
            yield f"{prefix} {name}"
            if isinstance(command, click.Group):
                yield from command_paths(command, f"{prefix} {name}")


def manpage(tmp_path: Path) -> str:
    out = tmp_path / "sealer.1"
    subprocess.run(
        [sys.executable, SCRIPT, "--output", out],
        check=True,
        env={"SOURCE_DATE_EPOCH": "1767225600", "PATH": "/usr/bin:/bin"},
    )
    return out.read_text()


def test_every_command_has_a_section_with_its_usage(tmp_path: Path) -> None:
    page = manpage(tmp_path)
    assert page.splitlines()[0] == (
        f'.TH SEALER 1 "2026-01-01" "sealer {__version__}" "User Commands"'
    )
    for path in command_paths(sealer_main, "sealer"):
        roff = path.replace("-", "\\-")
        assert f'.SS "{roff}"\n.PP\n.B {roff}' in page, path
    assert ".SH EXIT STATUS\n.TP\n.B 0\nsuccess\n.TP\n.B 1\n" in page
    assert "\\-\\-hook\\-source DIR" in page


def test_no_line_starts_a_roff_request_by_accident(tmp_path: Path) -> None:
    requests = {"TH", "SH", "SS", "PP", "TP", "B", "I", "nf", "fi"}
    for line in manpage(tmp_path).splitlines():
        if line.startswith((".", "'")):
            assert line[1:].split(" ")[0] in requests, line
