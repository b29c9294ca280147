"""Unlock at boot, by a systemd initramfs that dracut builds with sealer's dracut module.

systemd-cryptsetup opens the root named by rd.luks.uuid= and asks for its passphrase through
systemd's password agents; sealer's agent answers with the key the TPM releases, or says why
not and leaves the request to the console agent, whose prompt the test answers on the serial
console. The Secure Boot chain, TPM and machine are the same as in test_boot_unlock.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bootkit import (
    DRACUT_PROMPT,
    ROOT_PASSPHRASE,
    BootKit,
    DracutKit,
    Provisioned,
    assert_unlocked_by_tpm,
    enroll_on_host,
)
from qemu import Answer, Boot, Machine
from rootdisk import ROOT_UP

from sealer.boot.pcrcap import capped_value

PROMPT = DRACUT_PROMPT


@pytest.fixture(scope="module")
def provisioned(
    boot_kit: BootKit, dracut_kit: DracutKit, tmp_path_factory: pytest.TempPathFactory
) -> Provisioned:
    directory = tmp_path_factory.mktemp("dracut-provisioned")
    disk = boot_kit.new_root(directory)
    machine = Machine(directory, boot_kit.owner.vars_template, [dracut_kit.esp(boot_kit), disk])
    first = machine.boot(answers=type_passphrase())
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    enroll_on_host(machine, disk, first.pcrs(), directory / "state")
    return Provisioned(directory, machine, disk, first)


def type_passphrase() -> list[Answer]:
    return [Answer(PROMPT, ROOT_PASSPHRASE + "\n")]


def sealer_lines(boot: Boot, kit: DracutKit) -> list[str]:
    return boot.lines_with(f"sealer: {kit.volume}:")


def test_first_boot_asks_at_the_systemd_prompt(
    provisioned: Provisioned, dracut_kit: DracutKit
) -> None:
    first = provisioned.first_boot
    lines = sealer_lines(first, dracut_kit)
    assert any(
        "has no sealer TPM enrollment; asking for the passphrase instead" in line for line in lines
    ), lines or first.transcript[-3000:]
    assert PROMPT in first.transcript
    assert set(first.pcrs()) >= {4, 7, 15}
    # Opened by passphrase, capped all the same: nothing later in this boot may unseal.
    assert first.pcrs()[15] == capped_value()


def test_enrolled_root_unlocks_with_no_passphrase(
    provisioned: Provisioned, dracut_kit: DracutKit
) -> None:
    boot = provisioned.machine.boot(stop_at=PROMPT)
    # The console agent starts after sealer's agent has answered: no prompt, not even briefly.
    assert_unlocked_by_tpm(boot, provisioned.first_boot, PROMPT, dracut_kit.volume)


def test_another_tpm_falls_back_to_the_systemd_prompt(
    provisioned: Provisioned, boot_kit: BootKit, dracut_kit: DracutKit, tmp_path: Path
) -> None:
    machine = provisioned.copy(tmp_path / "m", esp=dracut_kit.esp(boot_kit), keep_tpm=False)
    boot = machine.boot(answers=type_passphrase())
    lines = sealer_lines(boot, dracut_kit)
    # One reason, once: the agent does not try again when systemd-cryptsetup asks again.
    assert len(lines) == 1, lines or boot.transcript[-3000:]
    assert "storage root key" in lines[0]
    assert lines[0].endswith("; asking for the passphrase instead")
    assert PROMPT in boot.transcript
    assert ROOT_UP in boot.transcript, boot.transcript[-3000:]
    assert boot.pcrs()[15] == capped_value()
