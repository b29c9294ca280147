"""Unlock at boot, by Debian's own initramfs (initramfs-tools + cryptroot + sealer's hook)."""

from __future__ import annotations

from pathlib import Path

from bootkit import (
    PROMPT,
    TPM_UNLOCKED,
    BootKit,
    Provisioned,
    assert_unlocked_by_tpm,
    type_passphrase,
)
from qemu import Boot, Machine

from sealer.boot.pcrcap import capped_value

ROOT_UP = "SEALER-E2E: root file system is up"


def reason_lines(boot: Boot) -> list[str]:
    return boot.lines_with("sealer: cryptroot:")


def assert_fell_back_to_passphrase(boot: Boot, reason: str) -> None:
    """No TPM unlock, the reason on the console, and the passphrase still opened the root."""
    assert TPM_UNLOCKED not in boot.transcript
    lines = reason_lines(boot)
    assert any(reason in line for line in lines), lines or boot.transcript[-3000:]
    assert PROMPT in boot.transcript
    assert ROOT_UP in boot.transcript, boot.transcript[-3000:]
    # The unlocker caps PCR 15 on this path too: nothing later in this boot may unseal.
    assert boot.pcrs()[15] == capped_value()


def test_first_boot_asks_for_the_passphrase(provisioned: Provisioned) -> None:
    first = provisioned.first_boot
    assert any("has no sealer TPM enrollment" in line for line in reason_lines(first))
    assert PROMPT in first.transcript
    assert set(first.pcrs()) >= {4, 7, 15}


def test_enrolled_root_unlocks_with_no_passphrase(provisioned: Provisioned) -> None:
    boot = provisioned.machine.boot(stop_at=PROMPT)
    assert_unlocked_by_tpm(boot, provisioned.first_boot, PROMPT, "cryptroot")


def test_other_command_line_same_signer_falls_back(
    provisioned: Provisioned, boot_kit: BootKit, tmp_path: Path
) -> None:
    esp = boot_kit.esp(keys=boot_kit.owner, cmdline=boot_kit.cmdline("init=/sbin/init"))
    machine = provisioned.copy(tmp_path / "m", esp=esp)
    boot = machine.boot(answers=type_passphrase())
    assert_fell_back_to_passphrase(boot, "PCR 4 differs from every approved boot state")


def test_changed_secure_boot_keys_fall_back(
    provisioned: Provisioned, boot_kit: BootKit, tmp_path: Path
) -> None:
    esp = boot_kit.esp(keys=boot_kit.other_owner)
    machine = provisioned.copy(
        tmp_path / "m", esp=esp, vars_template=boot_kit.other_owner.vars_template
    )
    boot = machine.boot(answers=type_passphrase())
    # The UKI's Authenticode hash leaves its signature out: only PCR 7 moves.
    assert_fell_back_to_passphrase(boot, "PCR 7 differs from every approved boot state")


def test_another_tpm_falls_back(
    provisioned: Provisioned, boot_kit: BootKit, tmp_path: Path
) -> None:
    machine = provisioned.copy(
        tmp_path / "m", esp=boot_kit.esp(keys=boot_kit.owner), keep_tpm=False
    )
    boot = machine.boot(answers=type_passphrase())
    assert_fell_back_to_passphrase(boot, "storage root key")


def test_unsigned_uki_is_refused_by_the_firmware(boot_kit: BootKit, tmp_path: Path) -> None:
    disk = boot_kit.new_root(tmp_path)
    machine = Machine(tmp_path, boot_kit.owner.vars_template, [boot_kit.esp(keys=None), disk])
    boot = machine.boot(stop_at="Access Denied", timeout=120)
    assert "Access Denied" in boot.transcript
    assert "Linux version" not in boot.transcript
