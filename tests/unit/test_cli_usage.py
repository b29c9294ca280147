"""Usage mistakes on the real command line exit 2 (a bad command line), not 1 (a bug).

Each mistake here is found before sealer opens the volume or the TPM, so neither exists:
the device path is missing and the TPM address answers nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NO_TPM = "swtpm:host=127.0.0.1,port=1"  # nothing listens: a mistake must be found first


def sealer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealer", "--tcti", NO_TPM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--unlock-key-file", "-", "--pin-file", "-"], "only one secret can come from standard"),
        (["--pcrs", "7", "--pcr", f"7=sha1:{'00' * 20}"], "bank sha1 is not --pcr-bank"),
        (["--escrow-cert", "org.pem"], "escrows the recovery key, and there is none"),
        (["--escrow-dir", "escrow"], "--escrow-dir goes with --escrow-cert only"),
        (["--machine-id", "0" * 32], "--machine-id goes with --escrow-cert only"),
        (["--cap-pcr", "16"], "PCR 16 cannot be the capping PCR"),
    ],
)
def test_enroll_usage_mistakes_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = sealer("enroll", *args, str(tmp_path / "missing.img"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sealer: ") and message in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


def test_enroll_usage_mistake_with_json_prints_the_error_document(tmp_path: Path) -> None:
    result = sealer(
        "enroll", "--json", "--escrow-dir", "escrow", str(tmp_path / "missing.img"), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert list(json.loads(result.stdout)) == ["error", "hint", "exit_code"]
    assert json.loads(result.stdout)["exit_code"] == 2
    assert result.stdout == json.dumps(json.loads(result.stdout), indent=2) + "\n"
