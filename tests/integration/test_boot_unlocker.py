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

from sealer.boot.pcrcap import capped_value
from sealer.luks.cryptsetup import wipe_open_keys


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
    ).stdout
    return out[-32:]


def test_keyscript_prints_exactly_the_key_and_records_the_cap(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    result = run_module(
        "sealer.boot.keyscript", swtpm, tmp_path,
        CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="cryptroot",
    )
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
    )
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
    )
    assert result.returncode != 0
    assert result.stdout == b""
    assert "has no sealer TPM enrollment" in result.stderr.decode()


def test_cap_moves_pcr15_so_the_key_is_no_longer_released(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    capped = run_module("sealer.boot.cap_or_poweroff", swtpm, tmp_path)
    assert capped.returncode == 0, capped.stderr
    assert pcr(swtpm, 15) == capped_value()
    again = sealer("unlock", "--test", str(luks_image))
    assert again.returncode == 5
    assert "PCR 15 differs" in again.stderr


def test_a_cap_that_cannot_reach_the_tpm_fails_and_says_why(tmp_path: Path) -> None:
    # A TPM that stopped answering (port 1: nothing listens); the e2e test kills swtpm in a
    # real boot and sees the wrapper power the machine off.
    record = tmp_path / "run" / "cap-pcrs"
    record.parent.mkdir()
    record.write_text("15\n")  # a key was released in this boot
    environment = dict(
        os.environ, SEALER_TCTI="swtpm:host=127.0.0.1,port=1", SEALER_CAP_RECORD=str(record)
    )
    result = subprocess.run(
        [sys.executable, "-m", "sealer.boot.cap_or_poweroff"], env=environment, capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert lines[0].startswith("sealer: cannot cap PCR 15: "), lines
    assert lines[-1] == "sealer: the TPM could still release the disk key in this boot"
    assert "Traceback" not in result.stderr.decode()


def test_wiping_the_open_keys_reports_each_crypt_mapping_and_never_raises(tmp_path: Path) -> None:
    sys_block = tmp_path / "block"
    for entry, uuid, name in (
        ("dm-0", "CRYPT-LUKS2-0123456789abcdef-sealer-test-absent", "sealer-test-absent"),
        ("dm-1", "LVM-abc", "vg-root"),  # not dm-crypt: left alone
    ):
        (sys_block / entry / "dm").mkdir(parents=True)
        (sys_block / entry / "dm" / "uuid").write_text(uuid + "\n")
        (sys_block / entry / "dm" / "name").write_text(name + "\n")
    (sys_block / "vda").mkdir()  # not device-mapper at all
    said = wipe_open_keys(str(sys_block))
    assert len(said) == 1 and said[0].startswith(
        "cannot wipe the key of /dev/mapper/sealer-test-absent: "
    ), said
    assert wipe_open_keys(str(tmp_path / "missing")) == [
        "cannot list the device-mapper devices: No such file or directory"
    ]
