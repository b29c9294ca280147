from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "swtpm-fixtures"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
pytest_plugins = ["e2e_fixtures"]

from clirun import run_with_pipes  # noqa: E402
from luks_image import make_luks_image  # noqa: E402
from simboot import SimulatedMachine  # noqa: E402
from swtpm import Swtpm  # noqa: E402

PASSPHRASE = b"correct horse battery staple"


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
        )  # fmt: skip


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
