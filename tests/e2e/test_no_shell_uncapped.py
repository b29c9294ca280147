"""Issue 15: once the TPM has released a key, no shell of the initramfs runs uncapped.

The command lines here are the ones a user has: no ``panic=`` (initramfs-tools then offers its
``(initramfs)`` shell when the root does not mount), and dracut's defaults (``rd.shell`` on,
no ``rd.emergency=``: the emergency shell). The root is enrolled, then 8 KiB of its file
system's ciphertext are overwritten: the TPM still releases the key, the volume opens, and
the initramfs gives up on the root and offers a shell. The test types into that shell on the
serial console: PCR 15 must read capped, and the unlocker run by hand must release nothing.
A TPM that stops answering after the release (swtpm killed) must power the machine off
before the root runs. And a machine with two volumes in the initramfs still unlocks both.

The unlocker is run as ``python -m sealer.boot.keyscript``, the program that
``/usr/lib/sealer/keyscript`` runs: on a refusal that shell wrapper hands over to askpass,
whose prompt would wait on the console.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bootkit import (
    DRACUT_PROMPT,
    KEYSCRIPT,
    PROMPT,
    ROOT_PASSPHRASE,
    BootKit,
    DracutKit,
    Provisioned,
    corrupt_file_system,
    enroll_on_host,
    inode_table_offset,
)
from qemu import Answer, Boot, Machine
from rootdisk import ROOT_UP, make_luks_root

from sealer.boot.pcrcap import CAP_EVENT, capped_value
from sealer.pcrs import BANKS

PYTHON = "/usr/lib/sealer/python/bin/python3 -I -S"
ROOT_DEVICE = "/dev/vdb"  # the ESP is the first disk
# Each probe prints a marker that the typed command itself does not contain (the console
# echoes what is typed): "SEALER-PROBE"" x" is typed, "SEALER-PROBE x" is printed.
PCR15_PROBE = "SEALER-PROBE pcr15="
KEY_PROBE = "SEALER-PROBE key bytes="
COUNT_BYTES = (
    f"{PYTHON} -c 'import sys; "
    f'print("SEALER-PROBE" + " key bytes=%d" % len(sys.stdin.buffer.read()))\''
)


def probe_shell(shell_prompt: str) -> list[Answer]:
    """At the shell: print PCR 15, run the unlocker by hand (count what it prints), power off.

    Shell built-ins and the bundled Python only: a dracut initramfs has no busybox."""
    return [
        Answer(
            shell_prompt,
            'read v </sys/class/tpm/tpm0/pcr-sha256/15; echo "SEALER-PROBE"" pcr15=$v"\n',
        ),
        Answer(
            PCR15_PROBE,
            f"CRYPTTAB_SOURCE={ROOT_DEVICE} {PYTHON} -m sealer.boot.keyscript | {COUNT_BYTES}\n",
        ),
        Answer(KEY_PROBE, "poweroff -f\n"),
    ]


def capped_values(most: int) -> list[bytes]:
    """PCR 15 (sha256) after 1, 2, ... ``most`` caps on a fresh boot, and nothing else."""
    bank = BANKS["sha256"]
    values = [capped_value()]
    while len(values) < most:
        values.append(bank.extend(values[-1], bank.hash(CAP_EVENT)))
    return values


def kept(boot: Boot, directory: Path) -> Boot:
    """The boot, its console kept next to the machine for a post-mortem."""
    (directory / "console.log").write_text(boot.transcript)
    return boot


def probed(boot: Boot) -> tuple[bytes, int]:
    """PCR 15 as the shell read it, and how many bytes the hand-run unlocker printed."""
    text = boot.transcript
    pcr = re.search(re.escape(PCR15_PROBE) + r"([0-9A-Fa-f]{64})", text)
    key = re.search(re.escape(KEY_PROBE) + r"(\d+)", text)
    assert pcr is not None and key is not None, (
        "the shell was not reached, or did not answer:\n" + text[-4000:]
    )
    return bytes.fromhex(pcr.group(1)), int(key.group(1))


def provision(directory: Path, boot_kit: BootKit, esp: Path, prompt: str) -> Provisioned:
    """First boot by passphrase on ``esp``'s chain, then enrolled against its PCR 4 and 7."""
    disk = boot_kit.new_root(directory)
    machine = Machine(directory, boot_kit.owner.vars_template, [esp, disk])
    first = machine.boot(answers=[Answer(prompt, ROOT_PASSPHRASE + "\n")])
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    enroll_on_host(machine, disk, first.pcrs(), directory / "state")
    return Provisioned(directory, machine, disk, first)


@pytest.fixture(scope="module")
def user_esp(boot_kit: BootKit) -> Path:
    return boot_kit.esp(keys=boot_kit.owner, cmdline=boot_kit.cmdline(panic=False))


@pytest.fixture(scope="module")
def provisioned_user(
    boot_kit: BootKit, user_esp: Path, tmp_path_factory: pytest.TempPathFactory
) -> Provisioned:
    return provision(tmp_path_factory.mktemp("user-cmdline"), boot_kit, user_esp, PROMPT)


def test_initramfs_tools_shell_after_a_release_finds_pcr15_capped(
    provisioned_user: Provisioned, user_esp: Path, tmp_path: Path
) -> None:
    machine = provisioned_user.copy(tmp_path / "m", esp=user_esp)
    corrupt_file_system(machine.disks[1])
    boot = kept(machine.boot(answers=probe_shell("(initramfs) ")), tmp_path)
    assert "sealer: cryptroot: key released by the TPM" in boot.transcript, boot.transcript[-4000:]
    assert "Dropping to a shell" in boot.transcript, boot.transcript[-4000:]
    pcr15, key_bytes = probed(boot)
    assert pcr15 == capped_value(), "PCR 15 is not capped at the shell"
    assert key_bytes == 0, "the unlocker released the key at the shell"
    assert any("PCR 15" in line for line in boot.lines_with(f"sealer: {ROOT_DEVICE}:"))
    assert ROOT_UP not in boot.transcript


def test_initramfs_tools_tpm_dying_before_the_cap_powers_off(
    provisioned_user: Provisioned, user_esp: Path, tmp_path: Path
) -> None:
    machine = provisioned_user.copy(tmp_path / "m", esp=user_esp)
    boot = kept(machine.boot(tpm_dies_at="sealer: cryptroot: key released by the TPM"), tmp_path)
    assert "sealer: cannot cap PCR 15" in boot.transcript, boot.transcript[-4000:]
    assert "powering off" in boot.transcript, boot.transcript[-4000:]
    assert boot.powered_off, boot.transcript[-4000:]
    # Neither the real root nor a shell ran.
    assert ROOT_UP not in boot.transcript, "the boot went on with PCR 15 uncapped"
    assert "(initramfs)" not in boot.transcript


@pytest.fixture(scope="module")
def dracut_user_esp(boot_kit: BootKit, dracut_kit: DracutKit) -> Path:
    return dracut_kit.esp(boot_kit, user=True)


@pytest.fixture(scope="module")
def provisioned_dracut_user(
    boot_kit: BootKit, dracut_user_esp: Path, tmp_path_factory: pytest.TempPathFactory
) -> Provisioned:
    directory = tmp_path_factory.mktemp("dracut-user-cmdline")
    return provision(directory, boot_kit, dracut_user_esp, DRACUT_PROMPT)


def test_dracut_emergency_shell_after_a_release_finds_pcr15_capped(
    provisioned_dracut_user: Provisioned,
    dracut_user_esp: Path,
    dracut_kit: DracutKit,
    tmp_path: Path,
) -> None:
    machine = provisioned_dracut_user.copy(tmp_path / "m", esp=dracut_user_esp)
    # Not the superblock: a dm-crypt volume with no recognisable content is "not ready" for
    # systemd (99-systemd.rules), and dracut waits for the root device without a limit (no
    # rd.timeout): that boot hangs, and offers no shell. A damaged root inode is found by
    # fsck (or by the mount), and the boot fails into dracut's emergency shell.
    corrupt_file_system(machine.disks[1], at=inode_table_offset(tmp_path))
    answers = [DRACUT_SHELL_ENTRY, *probe_shell(DRACUT_SHELL_PROMPT)]
    boot = kept(machine.boot(answers=answers), tmp_path)
    released = f"sealer: {dracut_kit.volume}: key released by the TPM"
    assert released in boot.transcript, boot.transcript[-4000:]
    pcr15, key_bytes = probed(boot)
    # Capped twice here: sealer-cap.service (ordered after sysroot.mount, which failed, and
    # no longer conflicting with emergency.target) and the emergency shell's own drop-in
    # (ExecStartPre); only sealer's event ever moved PCR 15.
    assert pcr15 in capped_values(3), "PCR 15 is not capped at the emergency shell"
    assert pcr15 == capped_values(2)[1], "one of the two caps did not run"
    assert key_bytes == 0, "the unlocker released the key at the emergency shell"
    assert ROOT_UP not in boot.transcript


# sulogin -e (dracut-emergency) on a root account without a password asks for Enter first.
DRACUT_SHELL_ENTRY = Answer("maintenance", "\n")
DRACUT_SHELL_PROMPT = "# "


def test_dracut_tpm_dying_before_the_cap_powers_off(
    provisioned_dracut_user: Provisioned,
    dracut_user_esp: Path,
    dracut_kit: DracutKit,
    tmp_path: Path,
) -> None:
    machine = provisioned_dracut_user.copy(tmp_path / "m", esp=dracut_user_esp)
    released = f"sealer: {dracut_kit.volume}: key released by the TPM"
    boot = kept(machine.boot(tpm_dies_at=released), tmp_path)
    assert released in boot.transcript, boot.transcript[-4000:]
    assert "sealer: cannot cap PCR 15" in boot.transcript, boot.transcript[-4000:]
    assert "powering off" in boot.transcript, boot.transcript[-4000:]
    assert boot.powered_off, boot.transcript[-4000:]
    assert ROOT_UP not in boot.transcript, "the boot went on with PCR 15 uncapped"
    assert "Entering emergency mode" not in boot.transcript


@pytest.fixture(scope="module")
def two_volumes(boot_kit: BootKit, tmp_path_factory: pytest.TempPathFactory) -> Provisioned:
    """A machine with the root and a second LUKS2 volume, both opened in the initramfs
    (cryptopts= for each) and both enrolled; user command line (no panic=)."""
    directory = tmp_path_factory.mktemp("two-volumes")
    data_uuid = make_luks_root(directory / "data.img", ROOT_PASSPHRASE.encode(), directory)
    extra = f"cryptopts=target=data,source=UUID={data_uuid},luks,keyscript={KEYSCRIPT}"
    esp = boot_kit.esp(keys=boot_kit.owner, cmdline=boot_kit.cmdline(extra, panic=False))
    disk = boot_kit.new_root(directory)
    machine = Machine(directory, boot_kit.owner.vars_template, [esp, disk, directory / "data.img"])
    first = machine.boot(
        answers=[
            Answer(PROMPT, ROOT_PASSPHRASE + "\n"),
            Answer("Please unlock disk data", ROOT_PASSPHRASE + "\n"),
        ]
    )
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    for volume in (disk, directory / "data.img"):  # one machine: one policy key, one state
        enroll_on_host(machine, volume, first.pcrs(), directory / "state")
    return Provisioned(directory, machine, disk, first)


def test_two_volumes_still_unlock_by_tpm_and_are_capped_once(
    two_volumes: Provisioned, tmp_path: Path
) -> None:
    # A guard, not a reproduction: capping before shells must not cap between two unlocks.
    boot = kept(two_volumes.machine.boot(stop_at="Please unlock disk"), tmp_path)
    for volume in ("cryptroot", "data"):
        assert f"sealer: {volume}: key released by the TPM" in boot.transcript, boot.transcript[
            -4000:
        ]
    assert "Please unlock disk" not in boot.transcript
    assert ROOT_UP in boot.transcript, boot.transcript[-4000:]
    assert boot.pcrs()[15] == capped_value()  # capped once: in init-bottom, after both
