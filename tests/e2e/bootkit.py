"""Building blocks of the real-boot tests.

Real boots: OVMF with Secure Boot on test keys, swtpm, a signed UKI, a LUKS2 root.

The artefacts are built once per test run (keys, initramfs, root disk) and shared; each
test gets its own copy of whatever a boot changes (TPM state, UEFI variables, the disk).
Without QEMU, OVMF or a Debian kernel the tests skip with the reason; the README's test
command installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bootimage import STUB, Kernel, build_esp, build_initramfs, build_uki, installed_kernel
from dracut_image import build_dracut_initramfs
from qemu import QEMU, Answer, Boot, Machine
from rootdisk import BUSYBOX, ROOT_UP, make_file_system, make_luks_root, make_root_tree
from secureboot import OVMF_CODE, OVMF_VARS_TEMPLATE, SecureBootKeys, make_keys, virt_fw_vars
from swtpm import Swtpm

from sealer.boot.pcrcap import capped_value

ROOT_PASSPHRASE = "hunter2 correct horse"
PROMPT = "Please unlock disk cryptroot"
KEYSCRIPT = "/usr/lib/sealer/keyscript"
TPM_UNLOCKED = "sealer: cryptroot: key released by the TPM"
# systemd-cryptsetup's prompt, shown by the console agent: "Please enter passphrase for disk
# luks-<uuid>: (press TAB for no echo)".
DRACUT_PROMPT = "Please enter passphrase for disk luks-"


def missing_boot_parts() -> str | None:
    """Why a real boot cannot run here, or None when everything is installed."""
    for tool in (QEMU, "swtpm", "mkinitramfs", "objcopy", "sbsign", "mcopy", "mkfs.vfat"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for path in (OVMF_CODE, OVMF_VARS_TEMPLATE, STUB, BUSYBOX):
        if not path.exists():
            return f"{path} is missing"
    try:
        virt_fw_vars()
        installed_kernel()
    except FileNotFoundError as error:
        return f"{error} is missing"
    return None


@dataclass
class BootKit:
    """Everything a boot test needs, built once per run."""

    work: Path
    kernel: Kernel
    owner: SecureBootKeys
    other_owner: SecureBootKeys
    initrd: Path
    pristine_root: Path
    root_uuid: str
    _ukis: dict[tuple[str, str, str], Path] = field(default_factory=dict)

    def cmdline(self, extra: str = "", *, panic: bool = True) -> str:
        """The guest's command line; ``panic=False`` is what a user has: no ``panic=``, so a
        failed boot offers initramfs-tools' shell instead of rebooting."""
        return (
            "console=ttyS0 root=/dev/mapper/cryptroot rootfstype=ext4 "
            + ("panic=1 " if panic else "")
            + f"cryptopts=target=cryptroot,source=UUID={self.root_uuid},luks,keyscript={KEYSCRIPT}"
            + (f" {extra}" if extra else "")
        )

    def uki(
        self,
        *,
        keys: SecureBootKeys | None,
        cmdline: str | None = None,
        initrd: Path | None = None,
    ) -> Path:
        """A UKI of these parts, signed by ``keys`` (None: unsigned); built once per run."""
        cmdline = cmdline or self.cmdline()
        initrd = initrd or self.initrd
        signer = str(keys.directory) if keys else "unsigned"
        cache_key = (signer, cmdline, str(initrd))
        if cache_key not in self._ukis:
            name = f"uki{len(self._ukis)}"
            self._ukis[cache_key] = build_uki(
                self.work / f"{name}.efi", self.kernel, initrd, cmdline, keys
            )
        return self._ukis[cache_key]

    def esp(
        self,
        *,
        keys: SecureBootKeys | None,
        cmdline: str | None = None,
        initrd: Path | None = None,
    ) -> Path:
        """An ESP image booting the UKI of these parts (see ``uki``)."""
        uki = self.uki(keys=keys, cmdline=cmdline, initrd=initrd)
        esp = uki.with_name(f"{uki.stem}-esp.img")
        if not esp.exists():
            build_esp(esp, uki)
        return esp

    def new_root(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        disk = directory / "root.img"
        shutil.copyfile(self.pristine_root, disk)
        return disk


@dataclass(frozen=True)
class DracutKit:
    """A systemd initramfs built by dracut with sealer's module, for the same root disk."""

    initrd: Path
    root_uuid: str  # the same root disk as test_boot_unlock.py's (BootKit.new_root)

    @property
    def volume(self) -> str:
        return f"luks-{self.root_uuid}"

    def cmdline(self, *, user: bool = False) -> str:
        """``user=True``: the command line a user has, with dracut's defaults (rd.shell on,
        no rd.emergency=, no panic=): a failed boot offers the emergency shell."""
        # init= spares systemd's switch-root its search for a systemd in the tiny root;
        # rd.emergency=poweroff ends a failed boot at once instead of at the time limit.
        common = (
            f"console=ttyS0 rd.luks.uuid={self.root_uuid} root=/dev/mapper/{self.volume} "
            "rootfstype=ext4 init=/sbin/init"
        )
        return common if user else f"{common} rd.shell=0 rd.emergency=poweroff panic=1"

    def esp(self, boot_kit: BootKit, *, user: bool = False) -> Path:
        return boot_kit.esp(
            keys=boot_kit.owner, cmdline=self.cmdline(user=user), initrd=self.initrd
        )


def make_dracut_kit(boot_kit: BootKit, work: Path) -> DracutKit:
    initrd = build_dracut_initramfs(
        work / "initrd-dracut.img", boot_kit.kernel, work, with_sealer=True
    )
    return DracutKit(initrd, boot_kit.root_uuid)


def make_boot_kit(work: Path) -> BootKit:
    kernel = installed_kernel()
    initrd = build_initramfs(work / "initrd.img", kernel, work, with_sealer=True, extra_hooks={})
    uuid = make_luks_root(work / "root.img", ROOT_PASSPHRASE.encode(), work)
    return BootKit(
        work=work,
        kernel=kernel,
        owner=make_keys(work / "owner", "sealer test owner"),
        other_owner=make_keys(work / "other-owner", "another owner"),
        initrd=initrd,
        pristine_root=work / "root.img",
        root_uuid=uuid,
    )


def type_passphrase() -> list[Answer]:
    return [Answer(PROMPT, ROOT_PASSPHRASE + "\n")]


def enroll_on_host(
    machine: Machine,
    disk: Path,
    pcrs: dict[int, bytes],
    state_dir: Path,
    bind: Sequence[int] = (4, 7),
    extra: Sequence[str] = (),
) -> None:
    """Enroll the disk against the machine's TPM state, expecting ``pcrs``' values of the
    PCRs in ``bind`` (the host's swtpm has none of the guest's PCR values)."""
    expected = [arg for p in bind for arg in ("--pcr", f"{p}=sha256:{pcrs[p].hex()}")]
    with Swtpm(machine.tpm_state) as tpm:
        result = subprocess.run(
            [
                sys.executable, "-m", "sealer", "--tcti", tpm.tcti, "enroll", "--quiet",
                "--unlock-key-file", "-", "--state-dir", str(state_dir),
                "--pcrs", ",".join(str(p) for p in bind), *expected, *extra, str(disk),
            ],
            input=ROOT_PASSPHRASE.encode(), capture_output=True, timeout=120,
        )
    assert result.returncode == 0, result.stderr.decode()


@dataclass
class Provisioned:
    """One machine after its provisioning: first boot by passphrase, then enrolled."""

    directory: Path
    machine: Machine
    disk: Path
    first_boot: Boot

    def copy(self, directory: Path, *, esp: Path, vars_template: Path | None = None,
             keep_tpm: bool = True) -> Machine:
        """The same disk (a copy) and TPM (unless keep_tpm is False) in another machine."""
        directory.mkdir(parents=True, exist_ok=True)
        if keep_tpm:
            shutil.copytree(self.machine.tpm_state, directory / "tpm")
        disk = directory / "root.img"
        shutil.copyfile(self.disk, disk)
        return Machine(directory, vars_template or self.machine.vars_template, [esp, disk])


def assert_unlocked_by_tpm(boot: Boot, first_boot: Boot, prompt: str, volume: str) -> None:
    """The root came up with nothing typed, on the first boot's chain, and PCR 15 capped."""
    assert boot.powered_off, (
        "the boot stopped at the passphrase prompt:\n" + boot.transcript[-3000:]
    )
    released = f"sealer: {volume}: key released by the TPM in"
    assert released in boot.transcript, boot.transcript[-3000:]
    assert ROOT_UP in boot.transcript
    assert prompt not in boot.transcript  # not even briefly
    pcrs = boot.pcrs()
    assert pcrs[4] == first_boot.pcrs()[4]
    assert pcrs[7] == first_boot.pcrs()[7]
    assert pcrs[15] == capped_value()


def corrupt_file_system(disk: Path, *, at: int = 0, length: int = 8192) -> None:
    """Overwrite ``length`` bytes of ciphertext ``at`` bytes into the LUKS2 data segment (by
    default its start: the ext4 superblock). The TPM still releases the key and the volume
    opens, but the file system on it is damaged and the initramfs gives up on the root."""
    dump = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(disk)],
        check=True, capture_output=True, text=True,
    ).stdout
    offset = int(json.loads(dump)["segments"]["0"]["offset"])
    with open(disk, "r+b") as handle:
        handle.seek(offset + at)
        handle.write(os.urandom(length))


def inode_table_offset(work: Path) -> int:
    """Where the root file system's first inode table starts, in bytes.

    The host cannot open the encrypted root, so the same mkfs runs again on a scratch file:
    the layout depends only on the size and the options, not on the random UUIDs."""
    replica = make_file_system(work / "layout.img", make_root_tree(work / "layout-tree"))
    dump = subprocess.run(
        ["dumpe2fs", str(replica)], check=True, capture_output=True, text=True
    ).stdout
    replica.unlink()
    block_size = int(re.search(r"^Block size:\s+(\d+)", dump, re.M).group(1))  # type: ignore[union-attr]
    first_table = int(re.search(r"Inode table at (\d+)", dump).group(1))  # type: ignore[union-attr]
    return first_table * block_size
