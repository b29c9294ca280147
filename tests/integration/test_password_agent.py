"""The systemd password agent run on the host against swtpm and an image file.

A test plays systemd-cryptsetup: it binds the datagram socket and writes the ask file, as
systemd 252 does, then runs ``python -m sealer.boot.agent --once``. The real boot in
tests/e2e/test_dracut_unlock.py proves the same program inside a dracut initramfs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from luks_image import opens_with
from swtpm import Swtpm


class Request:
    def __init__(self, ask_dir: Path, device: Path) -> None:
        ask_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = ask_dir / "sck.5ea1e2"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.settimeout(0)
        (ask_dir / "ask.Xy12Ab").write_text(
            f"[Ask]\nPID={os.getpid()}\nSocket={self.socket_path}\nAcceptCached=1\nEcho=0\n"
            f"NotAfter=0\nSilent=0\nMessage=Please enter passphrase for disk data:\n"
            f"Icon=drive-harddisk\nId=cryptsetup:{device}\n"
        )

    def answer(self) -> bytes | None:
        try:
            return self.sock.recv(4096)
        except BlockingIOError:
            return None


@pytest.fixture
def request_for(tmp_path: Path, luks_image: Path) -> Iterator[Request]:
    request = Request(tmp_path / "ask-password", luks_image)
    yield request
    request.sock.close()


def run_agent(swtpm: Swtpm, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "console").touch()
    env = dict(
        os.environ,
        SEALER_TCTI=swtpm.tcti,
        SEALER_CAP_RECORD=str(tmp_path / "run" / "cap-pcrs"),
        SEALER_AGENT_RECORD=str(tmp_path / "run" / "agent-tried"),
    )
    argv = [
        sys.executable, "-m", "sealer.boot.agent", "--once",
        "--ask-dir", str(tmp_path / "ask-password"), "--console", str(tmp_path / "console"),
    ]
    return subprocess.run(argv, env=env, capture_output=True, timeout=60)


def console(tmp_path: Path) -> list[str]:
    return (tmp_path / "console").read_text().splitlines()


def test_agent_answers_with_the_key_that_opens_the_volume(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, request_for: Request, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    result = run_agent(swtpm, tmp_path)
    assert result.returncode == 0, result.stderr
    answer = request_for.answer()
    assert answer is not None and answer.startswith(b"+"), console(tmp_path)
    assert opens_with(luks_image, answer[1:])
    (line,) = console(tmp_path)
    assert line.startswith(f"sealer: {luks_image}: key released by the TPM in ")
    assert (tmp_path / "run" / "cap-pcrs").read_text() == "15\n"
    # Once per device and boot: a second request (cryptsetup refused the key) is left alone.
    again = run_agent(swtpm, tmp_path)
    assert again.returncode == 0
    assert request_for.answer() is None
    assert len(console(tmp_path)) == 1


def test_agent_refusal_leaves_the_request_with_one_reason(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, request_for: Request, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    subprocess.run(["tpm2_pcrextend", "-T", swtpm.tcti, "7:sha256=" + "11" * 32], check=True)
    result = run_agent(swtpm, tmp_path)
    assert result.returncode == 0, result.stderr
    assert request_for.answer() is None
    assert console(tmp_path) == [
        f"sealer: {luks_image}: PCR 7 differs from every approved boot state "
        "(see 'sealer explain'); asking for the passphrase instead"
    ]
    assert opens_with(luks_image, PASSPHRASE)


def test_agent_on_a_volume_without_enrollment_says_so(
    swtpm: Swtpm, request_for: Request, tmp_path: Path
) -> None:
    result = run_agent(swtpm, tmp_path)
    assert result.returncode == 0, result.stderr
    assert request_for.answer() is None
    (line,) = console(tmp_path)
    assert "has no sealer TPM enrollment; asking for the passphrase instead" in line
