"""The unit tier runs no real component: tests/conftest.py's guard refuses swtpm, cryptsetup and
QEMU under tests/unit/, in this process and in child processes, whether they are installed or
not (PATH finds the guard's stubs first); and the tiers' markers come from the folders."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import UnitTierGuard
from luks_image import make_luks_image
from swtpm import Swtpm

Failed = pytest.fail.Exception


@pytest.fixture
def guard(unit_tier_guard: UnitTierGuard | None) -> UnitTierGuard:
    assert unit_tier_guard is not None, "the guard is not active under tests/unit/"
    return unit_tier_guard


def _refused(guard: UnitTierGuard) -> str:
    """The guard's message for what the test just tried; cleared, so this test itself passes."""
    assert len(guard.violations) == 1, guard.violations
    message = guard.violations.pop()
    assert "move the test to tests/integration/" in message
    return message


@pytest.mark.parametrize(
    "program", ["swtpm", "swtpm_setup", "swtpm_ioctl", "cryptsetup", "qemu-system-x86_64"]
)
def test_looking_up_a_real_component_fails_the_test(guard: UnitTierGuard, program: str) -> None:
    with pytest.raises(Failed):
        shutil.which(program)
    assert program in _refused(guard)


@pytest.mark.parametrize("argv", [["swtpm", "--version"], ["cryptsetup", "--version"]])
def test_starting_a_real_component_fails_the_test(guard: UnitTierGuard, argv: list[str]) -> None:
    with pytest.raises(Failed):
        subprocess.run(argv, capture_output=True)
    assert argv[0] in _refused(guard)


def test_the_fixtures_that_start_swtpm_and_cryptsetup_are_refused(
    guard: UnitTierGuard, tmp_path: Path
) -> None:
    with pytest.raises(Failed), Swtpm(tmp_path / "tpm"):
        pass
    assert "swtpm" in _refused(guard)
    with pytest.raises(Failed):
        make_luks_image(tmp_path / "volume.img", b"passphrase")
    assert "cryptsetup" in _refused(guard)


def test_a_child_process_finds_only_a_stub_that_reports_it(guard: UnitTierGuard) -> None:
    """`python -m sealer` in a child: its cryptsetup is a stub, logged for the teardown check."""
    code = "import subprocess; print(subprocess.run(['cryptsetup', 'luksDump', 'x']).returncode)"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert child.stdout.strip() == "127"
    assert "tests/unit must not run cryptsetup" in child.stderr
    assert guard.from_children() == ["cryptsetup luksDump x"]
    guard.offset = guard.log.stat().st_size  # this test expected it: the teardown check passes


def test_a_program_that_cannot_be_found_is_not_refused(
    guard: UnitTierGuard, tmp_path: Path
) -> None:
    """The "not installed" path stays testable: with an empty PATH, nothing real can start."""
    assert shutil.which("cryptsetup", path=str(tmp_path)) is None
    with pytest.raises(FileNotFoundError):
        subprocess.run(["cryptsetup", "--version"], env={"PATH": str(tmp_path)})
    assert guard.violations == []


def test_other_programs_still_run(guard: UnitTierGuard) -> None:
    assert shutil.which("sh") is not None
    assert subprocess.run(["true"]).returncode == 0
    assert guard.violations == [] and guard.from_children() == []


def test_tiers_come_from_the_folder(request: pytest.FixtureRequest) -> None:
    items = request.session.items
    for item in items:
        tier = Path(item.path).relative_to(Path(__file__).parents[1]).parts[0]
        marks = {m.name for m in item.iter_markers()} & {"integration", "e2e"}
        assert marks == ({tier} - {"unit"}), item.nodeid
