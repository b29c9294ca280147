from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# swtpm-fixtures/, tests/e2e/, fuzz/ and ansible/ are on sys.path through pytest's `pythonpath`
# option (pyproject.toml), before this file is imported.
from clirun import run_with_pipes
from luks_image import make_luks_image
from simboot import SimulatedMachine
from swtpm import Swtpm

pytest_plugins = ["e2e_fixtures"]

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
PASSPHRASE = b"correct horse battery staple"

# The tiers are the folders: a test's marker comes from where it lives, never from a line in
# the file, so `-m "not integration and not e2e"` is exactly tests/unit/.
TIERS = {
    TESTS / "integration": pytest.mark.integration,
    TESTS / "e2e": pytest.mark.e2e,
    TESTS / "lifecycle": pytest.mark.lifecycle,
    TESTS / "package": pytest.mark.package,
}
UNIT = TESTS / "unit"
# Tiers too slow for every run, run only when `-m` names them (the README's commands): the
# package tier builds the .deb (apt, PyPI, about two minutes) and installs it into a fresh
# Debian root; the lifecycle tier boots that installed system through kernel updates.
OPT_IN_TIERS = ("package", "lifecycle")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for folder, mark in TIERS.items():
            if item.path.is_relative_to(folder):
                item.add_marker(mark)
    asked = config.getoption("markexpr") or ""
    left_out = [
        item for item in items
        if any(item.get_closest_marker(tier) and tier not in asked for tier in OPT_IN_TIERS)
    ]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        dropped = set(map(id, left_out))
        items[:] = [item for item in items if id(item) not in dropped]


# The unit tier runs no real component. Under tests/unit/ these programs cannot be started: in
# this process, looking one up with shutil.which or starting it with subprocess fails the test;
# in child processes (`python -m sealer ...`), PATH first finds a stub that logs the attempt and
# exits 127, and the test fails at teardown. The unit tier must pass with none of them installed.
def forbidden_in_unit_tests(program: str) -> bool:
    name = os.path.basename(program)
    return name.startswith(("swtpm", "qemu-")) or name == "cryptsetup"


STUBBED = ("swtpm", "swtpm_setup", "swtpm_ioctl", "cryptsetup", "qemu-system-x86_64")


@dataclass
class UnitTierGuard:
    """What the unit-tier guard saw a test try to start (a test of the guard may clear it)."""

    log: Path
    offset: int
    violations: list[str]

    def refuse(self, program: str, how: str) -> None:
        message = f"a unit test must not {how} {program}: move the test to tests/integration/"
        self.violations.append(message)
        pytest.fail(message, pytrace=True)

    def from_children(self) -> list[str]:
        with self.log.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode(errors="replace").splitlines()


@pytest.fixture(scope="session")
def _unit_tier_stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    stubs = tmp_path_factory.mktemp("unit-tier-stubs")
    for name in STUBBED:
        stub = stubs / name
        stub.write_text(
            "#!/bin/sh\n"
            f'echo "{name} $*" >>"$SEALER_UNIT_TIER_LOG"\n'
            f'echo "tests/unit must not run {name}: move the test to tests/integration/" >&2\n'
            "exit 127\n"
        )
        stub.chmod(0o755)
    (stubs / "started").touch()
    return stubs


@pytest.fixture(autouse=True)
def unit_tier_guard(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[UnitTierGuard | None]:
    if not request.node.path.is_relative_to(UNIT):
        yield None
        return
    stubs: Path = request.getfixturevalue("_unit_tier_stubs")
    log = stubs / "started"
    guard = UnitTierGuard(log, log.stat().st_size, [])
    which = shutil.which
    popen_init = subprocess.Popen.__init__

    # Refused only when the lookup would find the program (the real one or the stub): a test of
    # the "not installed" path, with an empty PATH, still runs.
    def guarded_which(cmd: Any, *args: Any, **kwargs: Any) -> Any:
        found = which(cmd, *args, **kwargs)
        if found is not None and forbidden_in_unit_tests(os.fspath(cmd)):
            guard.refuse(os.fspath(cmd), "look up")
        return found

    def guarded_popen_init(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        if isinstance(args, str | bytes | os.PathLike):
            text = os.fsdecode(args)
            argv = shlex.split(text) if kwargs.get("shell") else [text]
        else:
            argv = [os.fsdecode(a) for a in args]
        env = kwargs.get("env")
        search = (os.environ if env is None else env).get("PATH", os.defpath)
        for program in (kwargs.get("executable"), argv[0] if argv else None):
            if program is None or not forbidden_in_unit_tests(os.fsdecode(program)):
                continue
            if which(os.fsdecode(program), path=search) is not None:
                guard.refuse(os.fsdecode(program), "start")
        popen_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(shutil, "which", guarded_which)
    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_popen_init)
    monkeypatch.setenv("PATH", f"{stubs}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("SEALER_UNIT_TIER_LOG", str(guard.log))
    yield guard
    started = guard.from_children()
    if started or guard.violations:
        pytest.fail(
            "a unit test started a real component (move it to tests/integration/): "
            + "; ".join([*guard.violations, *(f"a child process ran {s}" for s in started)])
        )


def _require(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run the README's test command, which installs it")


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    _require("swtpm")
    with Swtpm(tmp_path / "tpm") as tpm:
        yield tpm


@pytest.fixture
def luks_image(tmp_path: Path) -> Path:
    _require("cryptsetup")
    return make_luks_image(tmp_path / "volume.img", PASSPHRASE)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class SealerCli:
    """Runs the real ``sealer`` command in a child process, as a user would."""

    tcti: str
    state_dir: Path

    def __call__(
        self,
        *args: str,
        stdin: bytes = b"",
        fds: Sequence[bytes] = (),
        tcti: str | None = None,
    ) -> Result:
        """Run sealer; each of ``fds`` is handed over in a pipe, named by "{fd0}", "{fd1}"."""
        argv = [sys.executable, "-m", "sealer", "--tcti", tcti or self.tcti]
        proc = run_with_pipes(argv, args, stdin=stdin, fds=fds)
        return Result(
            proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode()
        )

    def enroll(
        self, device: Path, *extra: str, passphrase: bytes = PASSPHRASE, pin: bytes = b""
    ) -> Result:
        """Enroll with the passphrase on stdin and, if given, the PIN through a pipe."""
        pin_args = ("--pin-file", "{fd0}") if pin else ()
        return self(
            "enroll", "--unlock-key-file", "-", "--state-dir", str(self.state_dir),
            "--quiet", *pin_args, *extra, str(device), stdin=passphrase, fds=[pin] if pin else [],
        )


class SealerMachine(SimulatedMachine):
    """A machine simulated on swtpm (simboot), and the sealer command that talks to its TPM."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.sealer = SealerCli(tcti=self.tcti, state_dir=directory / "state")

    def boot(self, extended: list[tuple[int, bytes]]) -> None:
        super().boot(extended)
        self.sealer.tcti = self.tcti  # swtpm takes new ports at every boot


@pytest.fixture
def sealer(swtpm: Swtpm, tmp_path: Path) -> SealerCli:
    return SealerCli(tcti=swtpm.tcti, state_dir=tmp_path / "state")
