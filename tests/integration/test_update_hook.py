"""The kernel/initramfs update hook: what it runs, and that it never fails a package install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sealer.install.bootwire import HOOK_FILES, UPDATE_HOOK_SOURCE

HOOK = HOOK_FILES / UPDATE_HOOK_SOURCE


def run_hook(
    tmp_path: Path, *args: str, exit_code: int = 0, conf: str = ""
) -> tuple[int, str, str]:
    """Run the hook with a stand-in Python that records its arguments and exits ``exit_code``."""
    etc, boot = tmp_path / "etc", tmp_path / "boot"
    etc.mkdir(exist_ok=True)
    boot.mkdir(exist_ok=True)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nexit {exit_code}\n')
    python.chmod(0o755)
    (etc / "initramfs.conf").write_text(f"SEALER_PYTHON={python}\n")
    (etc / "update.conf").write_text(conf)
    env = {**os.environ, "SEALER_HOOK_ETC": str(etc), "SEALER_HOOK_BOOT": str(boot)}
    result = subprocess.run(["sh", str(HOOK), *args], env=env, capture_output=True, text=True)
    calls = tmp_path / "calls"
    return result.returncode, calls.read_text() if calls.exists() else "", result.stderr


def test_a_kernel_and_its_initrd_are_approved(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for name in ("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"):
        (tmp_path / "boot" / name).write_bytes(b"x")
    code, calls, _ = run_hook(tmp_path, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")
    boot = tmp_path / "boot"
    assert code == 0
    assert calls == (
        f"-m sealer reseal --quiet --kernel {boot}/vmlinuz-6.1.0-9-amd64 "
        f"--initrd {boot}/initrd.img-6.1.0-9-amd64\n"
    )


def test_on_a_grub_machine_the_hook_names_grubs_config(tmp_path: Path) -> None:
    # Debian's shim + GRUB chain: GRUB's config decides what boots, and how it is measured.
    boot = tmp_path / "boot"
    (boot / "grub").mkdir(parents=True)
    (boot / "grub" / "grub.cfg").write_text("menuentry 'Debian GNU/Linux' {\n}\n")
    for name in ("vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64"):
        (boot / name).write_bytes(b"x")
    code, calls, _ = run_hook(tmp_path, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64")
    assert code == 0
    assert calls == (
        f"-m sealer reseal --quiet --kernel {boot}/vmlinuz-6.1.0-9-amd64 "
        f"--initrd {boot}/initrd.img-6.1.0-9-amd64 --grub-cfg {boot}/grub/grub.cfg\n"
    )


def test_before_the_initrd_exists_nothing_runs(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "vmlinuz-6.1.0-9-amd64").write_bytes(b"x")
    assert run_hook(tmp_path, "6.1.0-9-amd64") == (0, "", "")


def test_a_uki_machine_approves_the_uki_of_that_version(tmp_path: Path) -> None:
    uki = tmp_path / "debian-6.1.0-9-amd64.efi"
    uki.write_bytes(b"x")
    conf = f"SEALER_BOOT=uki\nSEALER_UKI={tmp_path}/debian-%v.efi\n"
    code, calls, _ = run_hook(tmp_path, "6.1.0-9-amd64", conf=conf)
    assert (code, calls) == (0, f"-m sealer reseal --quiet --uki {uki}\n")


def test_a_vendor_approval_next_to_the_uki_is_installed_first(tmp_path: Path) -> None:
    uki = tmp_path / "acme-7.efi"
    uki.write_bytes(b"x")
    (tmp_path / "acme-7.approval").write_text("{}")
    conf = f"SEALER_BOOT=uki\nSEALER_UKI={tmp_path}/acme-%v.efi\n"
    code, calls, _ = run_hook(tmp_path, "7", conf=conf)
    assert (code, calls.splitlines()) == (0, [
        f"-m sealer policy install {tmp_path}/acme-7.approval",
        f"-m sealer reseal --quiet --uki {uki}",
    ])


@pytest.mark.parametrize("exit_code", [5, 14])
def test_a_failed_reseal_warns_loudly_and_never_fails_the_install(
    tmp_path: Path, exit_code: int
) -> None:
    (tmp_path / "boot").mkdir()
    for name in ("vmlinuz-7", "initrd.img-7"):
        (tmp_path / "boot" / name).write_bytes(b"x")
    code, calls, stderr = run_hook(tmp_path, "7", exit_code=exit_code)
    assert code == 0 and calls
    assert "WARNING: the boot of kernel 7 was NOT approved" in stderr
    assert "sealer reseal --kernel" in stderr
