"""The boot-time unlocker's own programs, run on the host against swtpm and an image file.

The real boots in tests/e2e prove the same programs inside an initramfs; these tests pin
down their contract with cryptroot quickly: key on stdout and nothing else, one reason line
and a non-zero status otherwise, and the cap that moves PCR 15 away from every approval.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import PASSPHRASE, SealerCli
from luks_image import opens_with
from swtpm import Swtpm

from sealer.boot.capping import capped_value


def run_module(
    module: str, swtpm: Swtpm, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[bytes]:
    environment = dict(
        os.environ,
        SEALER_TCTI=swtpm.tcti,
        SEALER_CAP_RECORD=str(tmp_path / "run" / "cap-pcrs"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", module], env=environment, capture_output=True, timeout=60
    )


def pcr(swtpm: Swtpm, index: int) -> bytes:
    out = subprocess.run(
        ["tpm2_pcrread", "-T", swtpm.tcti, f"sha256:{index}", "-o", "/dev/stdout"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return out[-32:]


def test_keyscript_prints_exactly_the_key_and_records_the_cap(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    result = run_module(
        "sealer.boot.keyscript", swtpm, tmp_path,
        CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="cryptroot",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    key = result.stdout
    assert key and not key.endswith(b"\n")  # cryptroot hands it to cryptsetup as it is
    assert opens_with(luks_image, key)
    assert b"cryptroot: key released by the TPM in" in result.stderr
    assert (tmp_path / "run" / "cap-pcrs").read_text() == "15\n"


def test_keyscript_refusal_prints_one_reason_and_no_key(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    subprocess.run(["tpm2_pcrextend", "-T", swtpm.tcti, "7:sha256=" + "11" * 32], check=True)
    result = run_module(
        "sealer.boot.keyscript", swtpm, tmp_path,
        CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="cryptroot",
    )  # fmt: skip
    assert result.returncode == 5
    assert result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "sealer: cryptroot: PCR 7 differs from every approved boot state (see 'sealer explain'); "
        "asking for the passphrase instead"
    ]
    assert opens_with(luks_image, PASSPHRASE)


def test_keyscript_on_a_volume_without_enrollment_says_so(
    swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    result = run_module(
        "sealer.boot.keyscript", swtpm, tmp_path,
        CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="data",
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stdout == b""
    assert "has no sealer TPM enrollment" in result.stderr.decode()


def test_cap_moves_pcr15_so_the_key_is_no_longer_released(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    capped = run_module("sealer.boot.cap", swtpm, tmp_path)
    assert capped.returncode == 0, capped.stderr
    assert pcr(swtpm, 15) == capped_value()
    again = sealer("unlock", "--test", str(luks_image))
    assert again.returncode == 5
    assert "PCR 15 differs" in again.stderr
