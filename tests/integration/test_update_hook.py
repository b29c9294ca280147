"""The kernel/initramfs update hook: what it runs, and that it never fails a package install."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sealer.install.bootwire import HOOK_FILES, UPDATE_HOOK_SOURCE

HOOK = HOOK_FILES / UPDATE_HOOK_SOURCE


def run_hook(
    tmp_path: Path, *args: str, exit_code: int = 0, conf: str = "", installed_as: str = ""
) -> tuple[int, str, str]:
    """Run the hook with a stand-in Python that records its arguments and exits ``exit_code``;
    ``installed_as``: the path it runs from, as 'sealer boot enable' installs it (relative)."""
    etc, boot = tmp_path / "etc", tmp_path / "boot"
    etc.mkdir(exist_ok=True)
    boot.mkdir(exist_ok=True)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nexit {exit_code}\n')
    python.chmod(0o755)
    (etc / "initramfs.conf").write_text(f"SEALER_PYTHON={python}\n")
    (etc / "update.conf").write_text(conf)
    env = {**os.environ, "SEALER_HOOK_ETC": str(etc), "SEALER_HOOK_BOOT": str(boot)}
    hook = HOOK
    if installed_as:
        hook = tmp_path / installed_as
        hook.parent.mkdir(parents=True, exist_ok=True)
        hook.write_bytes(HOOK.read_bytes())
    result = subprocess.run(["sh", str(hook), *args], env=env, capture_output=True, text=True)
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
    assert "WARNING: the next boot (kernel 7) was NOT approved" in stderr
    assert "sealer reseal --kernel" in stderr


def _grub_machine(tmp_path: Path, versions: tuple[str, ...], listed: tuple[str, ...]) -> Path:
    """A /boot with these kernels and initrds, and a grub.cfg that lists ``listed``."""
    boot = tmp_path / "boot"
    (boot / "grub").mkdir(parents=True)
    entries = "".join(
        f"menuentry 'Debian, with Linux {v}' {{\n\tlinux\t/vmlinuz-{v} root=/dev/vda1 ro\n"
        f"\tinitrd\t/initrd.img-{v}\n}}\n"
        for v in listed
    )
    (boot / "grub" / "grub.cfg").write_text(entries)
    for version in versions:
        for name in (f"vmlinuz-{version}", f"initrd.img-{version}"):
            (boot / name).write_bytes(b"x")
    return boot


def test_a_new_kernels_initrd_waits_for_update_grub(tmp_path: Path) -> None:
    # dpkg -i linux-image-V: update-initramfs runs the post-update hook before zz-update-grub
    # lists V in grub.cfg. Approving then would fail (GRUB's default entry is the old kernel)
    # and print a false alarm in apt's output; the kernel hook after update-grub approves it.
    _grub_machine(tmp_path, ("6.1.0-9-amd64", "6.1.0-10-amd64"), ("6.1.0-9-amd64",))
    found = run_hook(tmp_path, "6.1.0-10-amd64", "/boot/initrd.img-6.1.0-10-amd64",
                     installed_as="etc/initramfs/post-update.d/sealer")
    assert found == (0, "", "")


def test_a_rebuilt_initrd_of_a_listed_kernel_is_approved(tmp_path: Path) -> None:
    boot = _grub_machine(tmp_path, ("6.1.0-9-amd64",), ("6.1.0-9-amd64",))
    code, calls, _ = run_hook(tmp_path, "6.1.0-9-amd64", "/boot/initrd.img-6.1.0-9-amd64",
                              installed_as="etc/initramfs/post-update.d/sealer")
    assert (code, calls) == (0, (
        f"-m sealer reseal --quiet --kernel {boot}/vmlinuz-6.1.0-9-amd64 "
        f"--initrd {boot}/initrd.img-6.1.0-9-amd64 --grub-cfg {boot}/grub/grub.cfg\n"
    ))


def test_a_kernel_removal_on_a_grub_machine_approves_the_newest_left(tmp_path: Path) -> None:
    # apt autoremove of an old kernel: zz-update-grub drops its entries from grub.cfg, which
    # GRUB measures (PCR 8 each menu entry, PCR 9 the file): the next boot must be approved.
    boot = _grub_machine(tmp_path, ("6.1.0-9-amd64", "6.1.0-10-amd64"), ("6.1.0-10-amd64",))
    code, calls, _ = run_hook(tmp_path, "6.1.0-8-amd64", "/boot/vmlinuz-6.1.0-8-amd64",
                              installed_as="etc/kernel/postrm.d/zzz-sealer")
    assert (code, calls) == (0, (
        f"-m sealer reseal --quiet --kernel {boot}/vmlinuz-6.1.0-10-amd64 "
        f"--initrd {boot}/initrd.img-6.1.0-10-amd64 --grub-cfg {boot}/grub/grub.cfg\n"
    ))


def test_a_kernel_removal_without_grub_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "boot").mkdir()
    for name in ("vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64"):
        (tmp_path / "boot" / name).write_bytes(b"x")
    found = run_hook(tmp_path, "6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-9-amd64",
                     installed_as="etc/kernel/postrm.d/zzz-sealer")
    assert found == (0, "", "")
