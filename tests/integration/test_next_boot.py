"""``sealer status --next-boot``: will the next boot unlock by TPM? Checked by booting it.

The machine is the one of test_reseal.py: swtpm replaying a captured UKI boot
(swtpm-fixtures/simboot.py), whose new boots are built by hand, not by sealer's predictor.
So when status says the next boot unlocks, booting it and asking the TPM tells whether
that was true.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import eventlogs
import pytest
from bootimage import STUB
from conftest import SealerCli
from conftest import SealerMachine as Machine
from simboot import boot_of, captured_boot, make_uki

LOG = str(eventlogs.UKI_BOOT_LOG)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    machine = Machine(tmp_path)
    machine.boot(captured_boot())
    yield machine
    machine.stop()


@pytest.fixture
def enrolled(machine: Machine, luks_image: Path) -> SealerCli:
    """The volume enrolled to PCRs 4 and 11 in the captured boot."""
    result = machine.sealer.enroll(luks_image, "--pcrs", "4,11", "--eventlog", LOG)
    assert result.returncode == 0, result.stderr
    return machine.sealer


def next_boot(sealer: SealerCli, device: Path, *args: str) -> dict[str, Any]:
    """The next_boot entry of the device's only enrollment (status must exit 0)."""
    result = sealer("status", "--next-boot", "--json", *args, str(device))
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)["enrollments"]
    found = entry["next_boot"]
    assert isinstance(found, dict)
    return found


def status_line(sealer: SealerCli, device: Path, *args: str) -> str:
    result = sealer("status", "--next-boot", *args, str(device))
    assert result.returncode == 0, result.stderr
    [line] = [ln.strip() for ln in result.stdout.splitlines() if "next boot" in ln]
    return line


def reseal(sealer: SealerCli, device: Path, *images: str) -> None:
    result = sealer(
        "reseal", "--eventlog", LOG, "--state-dir", str(sealer.state_dir), "--quiet",
        *images, str(device),
    )
    assert result.returncode == 0, result.stderr


def boot_tree(tmp_path: Path, conf: str | None, images: dict[str, Path]) -> tuple[Path, Path]:
    """An /etc/sealer and a /boot: kernel version -> the image installed as vmlinuz-V."""
    etc, boot = tmp_path / "etc", tmp_path / "boot"
    etc.mkdir()
    boot.mkdir()
    if conf is not None:
        (etc / "update.conf").write_text(conf)
    for version, image in images.items():
        shutil.copy(image, boot / f"vmlinuz-{version}")
        (boot / f"initrd.img-{version}").write_bytes(f"initramfs of {version}".encode())
    return etc, boot


def test_an_update_is_reported_unapproved_then_approved_and_its_boot_agrees(
    machine: Machine, enrolled: SealerCli, luks_image: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sealer = enrolled
    uki, contents = make_uki(tmp_path / "v2", initrd=b"new initramfs " * 99, cmdline=b"quiet")
    before = next_boot(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG)
    assert before == {
        "image": f"UKI {uki}", "initrd": None, "unlocks": False, "approval": None,
        "reason": f"PCRs 4,11 differ from every approval (run 'sealer reseal --uki {uki} "
                  f"--eventlog {LOG} {luks_image}')",
        "unpredictable": {},
    }
    assert status_line(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG) == (
        f"next boot (UKI {uki}): will ask for the passphrase: {before['reason']}"
    )

    reseal(sealer, luks_image, "--uki", str(uki))
    after = next_boot(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG)
    assert (after["unlocks"], after["approval"]) == (True, 0)
    assert after["reason"] == "approval 0 (reseal) holds the predicted PCR values"
    assert status_line(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG) == (
        f"next boot (UKI {uki}): unlocks by TPM (approval 0)"
    )
    offline = next_boot(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG, "--offline")
    assert offline["unlocks"] is True and offline["reason"].endswith("not checked)")

    # Found the way the update hook finds it: the UKI of the newest kernel in /boot.
    efi = tmp_path / "efi"
    efi.mkdir()
    shutil.copy(uki, efi / "debian-6.1.0-10-amd64.efi")
    etc, boot = boot_tree(
        tmp_path, f"SEALER_BOOT=uki\nSEALER_UKI={efi}/debian-%v.efi\n",
        {"6.1.0-9-amd64": uki, "6.1.0-10-amd64": uki},
    )
    monkeypatch.setenv("SEALER_HOOK_ETC", str(etc))
    monkeypatch.setenv("SEALER_HOOK_BOOT", str(boot))
    found = next_boot(sealer, luks_image, "--eventlog", LOG)
    assert found["image"] == f"UKI {efi}/debian-6.1.0-10-amd64.efi"
    assert (found["unlocks"], found["approval"]) == (True, 0)

    machine.boot(boot_of(uki, contents))  # and the TPM agrees at that boot
    unlocked = sealer("unlock", "--test", str(luks_image))
    assert unlocked.returncode == 0, unlocked.stderr
    assert "(approval 0)" in unlocked.stdout

    # Once its release is revoked, the same image no longer unlocks, and status says why.
    machine.boot(captured_boot())
    revoked = sealer("revoke", "--below", "1", "--state-dir", str(sealer.state_dir),
                     str(luks_image))
    assert revoked.returncode == 0, revoked.stderr
    gone = next_boot(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG)
    assert (gone["unlocks"], gone["approval"]) == (False, 0)
    assert gone["reason"] == (
        "approval 0 holds the predicted PCR values, but it is for release 0 and releases "
        "below 1 are revoked"
    )


def test_pcr_7_of_a_uki_signed_by_nobody_is_unknown(
    machine: Machine, luks_image: Path, tmp_path: Path
) -> None:
    sealer = machine.sealer
    assert sealer.enroll(luks_image, "--pcrs", "4,7", "--eventlog", LOG).returncode == 0
    uki, _ = make_uki(tmp_path / "v2", initrd=b"x", cmdline=b"y")
    found = next_boot(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG)
    assert found["unlocks"] is None and found["approval"] is None
    assert list(found["unpredictable"]) == ["7"]
    assert found["unpredictable"]["7"].startswith("the new UKI is not signed")
    assert found["reason"] == f"PCR 7 cannot be predicted: {found['unpredictable']['7']}"
    assert status_line(sealer, luks_image, "--uki", str(uki), "--eventlog", LOG) == (
        f"next boot (UKI {uki}): unknown: {found['reason']}"
    )


def test_the_newest_kernel_in_boot_is_found_and_the_hinted_reseal_approves_it(
    enrolled: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    sealer = enrolled
    old, _ = make_uki(tmp_path / "old", initrd=b"old", cmdline=b"old")
    new, _ = make_uki(tmp_path / "new", initrd=b"new", cmdline=b"new")
    etc, boot = boot_tree(tmp_path, None, {"6.1.0-9-amd64": old, "6.1.0-10-amd64": new})
    where = ("--etc-dir", str(etc), "--boot-dir", str(boot), "--eventlog", LOG)
    found = next_boot(sealer, luks_image, *where)
    kernel, initrd = boot / "vmlinuz-6.1.0-10-amd64", boot / "initrd.img-6.1.0-10-amd64"
    assert (found["image"], found["initrd"]) == (f"kernel {kernel}", str(initrd))
    assert found["unlocks"] is False
    hint = f"sealer reseal --kernel {kernel} --initrd {initrd} --eventlog {LOG} {luks_image}"
    assert found["reason"] == f"PCR 4 differs from every approval (run '{hint}')"

    hinted = sealer(*hint.split()[1:], "--state-dir", str(sealer.state_dir))
    assert hinted.returncode == 0, hinted.stderr
    assert next_boot(sealer, luks_image, *where)["unlocks"] is True


def test_what_cannot_be_predicted_is_the_reason_and_status_still_succeeds(
    enrolled: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    sealer = enrolled
    missing = tmp_path / "missing.efi"
    found = next_boot(sealer, luks_image, "--uki", str(missing), "--eventlog", LOG)
    assert (found["image"], found["unlocks"], found["approval"]) == (f"UKI {missing}", None, None)
    assert found["reason"] == f"cannot read the boot image {missing}: No such file or directory"
    assert status_line(sealer, luks_image, "--uki", str(missing), "--eventlog", LOG) == (
        f"next boot (UKI {missing}): unknown: {found['reason']}"
    )

    etc, boot = boot_tree(tmp_path, None, {})
    nothing = next_boot(sealer, luks_image, "--etc-dir", str(etc), "--boot-dir", str(boot))
    assert (nothing["image"], nothing["unlocks"]) == (None, None)
    assert nothing["reason"].startswith(f"no kernel is installed in {boot}")

    no_log = next_boot(sealer, luks_image, "--uki", str(missing), "--eventlog", str(missing))
    assert no_log["unlocks"] is None
    assert no_log["reason"] == f"cannot read the event log {missing}: no such file"

    plain = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert "next_boot" not in plain["enrollments"][0]  # only when asked for


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--uki", "a.efi"], "--uki, --kernel, --initrd, --eventlog and --offline go with "
                             "--next-boot"),
        (["--next-boot", "--uki", "a.efi", "--kernel", "k"], "give either --uki or --kernel"),
        (["--next-boot", "--initrd", "i"], "--initrd goes with --kernel"),
    ],
)
def test_bad_combinations_are_usage_errors(
    luks_image: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    sealer = SealerCli(tcti="swtpm:port=1", state_dir=tmp_path)  # never reached
    result = sealer("status", *args, str(luks_image))
    assert result.returncode == 2
    assert result.stderr.startswith(f"sealer: {message}") and len(result.stderr.splitlines()) == 1
