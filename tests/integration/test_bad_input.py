"""Every failure a user can cause: one clear line, a documented exit code, nothing lost."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm

from sealer.luks import cryptsetup


def assert_one_clear_line(stderr: str, expected: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("sealer: ") and expected in lines[0], stderr


def keyslots(image: Path) -> list[int]:
    return sorted(cryptsetup.read_header(str(image)).keyslots)


def test_missing_device(sealer: SealerCli, tmp_path: Path) -> None:
    result = sealer.enroll(tmp_path / "nope.img")
    assert result.returncode == 3
    assert_one_clear_line(result.stderr, "does not exist")


def test_not_luks(sealer: SealerCli, tmp_path: Path) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    for command in (["status"], ["unlock", "--test"], ["remove"]):
        result = sealer(*command, str(plain))
        assert result.returncode == 3
        assert_one_clear_line(result.stderr, "is not a LUKS volume")
    assert plain.read_bytes() == b"\0" * 4096


def test_luks1_is_refused_with_the_conversion_hint(sealer: SealerCli, tmp_path: Path) -> None:
    image = make_luks_image(tmp_path / "old.img", PASSPHRASE, luks_type="luks1")
    result = sealer.enroll(image)
    assert result.returncode == 3
    assert_one_clear_line(result.stderr, "is LUKS1")
    assert "cryptsetup convert" in result.stderr
    assert opens_with(image, PASSPHRASE)


def test_wrong_passphrase_changes_nothing(sealer: SealerCli, luks_image: Path) -> None:
    result = sealer.enroll(luks_image, passphrase=b"wrong")
    assert result.returncode == 6
    assert_one_clear_line(result.stderr, "did not accept the passphrase")
    assert keyslots(luks_image) == [0]
    assert opens_with(luks_image, PASSPHRASE)


def test_no_tpm_reachable_changes_nothing(sealer: SealerCli, luks_image: Path) -> None:
    with Swtpm(luks_image.parent / "gone") as tpm:
        gone = tpm.tcti  # a port nobody listens on once this swtpm stops
    result = sealer(
        "enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir), "-q",
        str(luks_image), stdin=PASSPHRASE, tcti=gone,
    )
    assert result.returncode == 4
    assert_one_clear_line(result.stderr, "cannot reach the TPM")
    assert keyslots(luks_image) == [0]
    missing_device = sealer("unlock", "--test", str(luks_image), tcti="device:/dev/tpmrm9")
    assert missing_device.returncode in (4, 9)  # 9: not enrolled is found first


def test_unlock_without_tpm_after_enrollment(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    result = sealer("unlock", "--test", str(luks_image), tcti="device:/dev/tpmrm9")
    assert result.returncode == 4
    assert_one_clear_line(result.stderr, "no TPM found: /dev/tpmrm9 does not exist")
    status = sealer("status", str(luks_image), tcti="device:/dev/tpmrm9")
    assert status.returncode == 0
    assert "TPM: no TPM found" in status.stdout
    assert opens_with(luks_image, PASSPHRASE)


def test_another_tpm_is_recognised(sealer: SealerCli, luks_image: Path, tmp_path: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    with Swtpm(tmp_path / "other-machine") as other:
        result = sealer("unlock", "--test", str(luks_image), tcti=other.tcti)
        assert result.returncode == 7
        assert_one_clear_line(result.stderr, "enrolled with another TPM")
        # The other TPM has an SRK of its own (another tool made it): still not ours.
        sealer_on_other = SealerCli(tcti=other.tcti, state_dir=tmp_path / "other-state")
        spare = make_luks_image(tmp_path / "spare.img", PASSPHRASE)
        assert sealer_on_other.enroll(spare).returncode == 0
        result = sealer("unlock", "--test", str(luks_image), tcti=other.tcti)
        assert result.returncode == 7
        assert_one_clear_line(result.stderr, "this volume was enrolled with another TPM")
    assert opens_with(luks_image, PASSPHRASE)


def _replace_token(image: Path, token_id: int, edit: dict[str, object]) -> None:
    header = cryptsetup.read_header(str(image))
    doc = {**header.tokens[token_id].data, **edit}
    subprocess.run(
        ["cryptsetup", "token", "import", "--token-replace", "--token-id", str(token_id),
         "--json-file", "-", str(image)],
        input=json.dumps(doc).encode(), check=True, capture_output=True,
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"version": 99}, "has version 99, this sealer reads versions 1 and 2"),
        ({"sealed_private": "not base64!"}, "is corrupted (field 'sealed_private' is not base64)"),
        ({"pcrs": "4,7"}, "is corrupted (field 'pcrs' is missing or not a list)"),
        ({"policy_keys": []}, "is corrupted (it trusts no policy key)"),
    ],
)
def test_corrupted_or_unknown_token(
    sealer: SealerCli, luks_image: Path, edit: dict[str, object], expected: str
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    _replace_token(luks_image, 0, edit)
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 9
    assert_one_clear_line(result.stderr, expected)
    status = sealer("status", str(luks_image))
    assert status.returncode == 0 and "sealer token unusable" in status.stdout
    assert opens_with(luks_image, PASSPHRASE)


def test_tampered_approval_is_refused(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    approval = dict(cryptsetup.read_header(str(luks_image)).tokens[0].data["approvals"][0])
    branch = dict(approval["branches"][0])
    branch["7"] = "11" * 32  # approve a boot state of the attacker's choosing
    approval["branches"] = [branch]
    _replace_token(luks_image, 0, {"approvals": [approval]})
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 5
    assert_one_clear_line(result.stderr, "signature does not match its content")
    assert opens_with(luks_image, PASSPHRASE)


def test_keyslots_full(sealer: SealerCli, luks_image: Path) -> None:
    for slot in range(1, 32):
        cryptsetup.add_keyslot(
            str(luks_image), unlock_key=PASSPHRASE, new_key=b"filler %d" % slot, slot=slot,
            minimal_kdf=True,
        )
    result = sealer.enroll(luks_image)
    assert result.returncode == 10
    assert_one_clear_line(result.stderr, "has 0 free keyslot(s), enrollment needs 1")
    assert len(keyslots(luks_image)) == 32
    assert opens_with(luks_image, PASSPHRASE)


def test_state_directory_unusable(sealer: SealerCli, luks_image: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = sealer(
        "enroll", "--unlock-key-file", "-", "--state-dir", str(not_a_dir / "state"), "-q",
        str(luks_image), stdin=PASSPHRASE,
    )
    assert result.returncode == 11
    assert_one_clear_line(result.stderr, "pick a writable directory with --state-dir")
    assert keyslots(luks_image) == [0]
    assert opens_with(luks_image, PASSPHRASE)


def test_state_key_file_is_private(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    key = sealer.state_dir / "policy-key.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert sealer.state_dir.stat().st_mode & 0o777 == 0o700


def test_corrupted_policy_key_is_reported(sealer: SealerCli, luks_image: Path) -> None:
    sealer.state_dir.mkdir(mode=0o700)
    (sealer.state_dir / "policy-key.pem").write_text("garbage")
    result = sealer.enroll(luks_image)
    assert result.returncode == 11
    assert_one_clear_line(result.stderr, "is unreadable or corrupted")
    assert keyslots(luks_image) == [0]


def test_remove_refuses_to_take_the_last_way_in(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    cryptsetup.kill_keyslot(str(luks_image), 0)  # the passphrase is gone: only the TPM opens
    result = sealer("remove", str(luks_image))
    assert result.returncode == 12
    assert_one_clear_line(result.stderr, "would leave")
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0


def test_bad_pcr_arguments_are_usage_errors(sealer: SealerCli, luks_image: Path) -> None:
    for extra, expected in [
        (["--pcrs", "4,24"], "'24' is not a PCR index"),
        (["--pcrs", "7,15"], "PCR 15 is the capping PCR"),
        (["--pcr-bank", "md5"], "unknown PCR bank 'md5'"),
        (["--pcr", "7=sha256:abcd"], "a sha256 value has 32 bytes, not 2"),
        (["--pcrs", "7", "--pcr", f"4={'00' * 32}"], "which --pcrs does not select"),
    ]:
        result = sealer.enroll(luks_image, *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert_one_clear_line(result.stderr, expected)
    assert keyslots(luks_image) == [0]
    assert opens_with(luks_image, PASSPHRASE)


def test_unlock_on_an_unenrolled_volume(sealer: SealerCli, luks_image: Path) -> None:
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 9
    assert_one_clear_line(result.stderr, "has no sealer TPM enrollment")


def test_json_errors_are_machine_readable(sealer: SealerCli, tmp_path: Path) -> None:
    result = sealer("status", "--json", str(tmp_path / "missing.img"))
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 3 and "does not exist" in doc["error"]


def _enroll_on_a_terminal(*args: str, tcti: str) -> tuple[int, str]:
    """Run 'sealer enroll' with a terminal as its controlling tty, as a person would; return
    its exit status and everything the terminal showed (within 20 s)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-m", "sealer", "--tcti", tcti, "enroll", *args])
    shown = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk or b"Passphrase" in shown + chunk:
            shown += chunk
            break
        shown += chunk
    if b"Passphrase" in shown:  # it asked: the test has failed, do not leave it waiting
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_enroll_says_not_luks2_before_asking_for_the_passphrase(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4 * 1024 * 1024)
    code, shown = _enroll_on_a_terminal(str(plain), tcti=swtpm.tcti)
    assert "Passphrase" not in shown
    assert code == 3, shown


def test_enroll_says_no_tpm_before_asking_for_the_passphrase(
    luks_image: Path, tmp_path: Path
) -> None:
    # A TCP port nothing listens on: no TPM there.
    code, shown = _enroll_on_a_terminal(
        str(luks_image), tcti="swtpm:host=127.0.0.1,port=9"
    )
    assert "Passphrase" not in shown
    assert code == 4, shown
