"""Debian's stock boot chain in QEMU: Microsoft-keyed OVMF -> shim -> GRUB -> Debian kernel.

The machine, as an encrypted Debian install has it:

- firmware ``OVMF_CODE_4M.ms.fd`` with a copy of ``OVMF_VARS_4M.ms.fd`` (Microsoft's keys
  enrolled, Secure Boot on);
- disk 0, the ESP (FAT, no partition table): ``EFI/BOOT/BOOTX64.EFI`` is
  ``shimx64.efi.signed`` from ``shim-signed``, ``EFI/BOOT/grubx64.efi`` is
  ``grubx64.efi.signed`` from ``grub-efi-amd64-signed`` (both fetched with ``apt-get
  download`` and unpacked with ``dpkg -x`` into a cache, never installed on the host), and
  ``EFI/debian/grub.cfg``, the stub ``grub-install`` writes there. The signed GRUB's
  built-in config sources ``$prefix/grub.cfg`` with its built-in prefix ``/EFI/debian``,
  whichever path the firmware started shim from;
- disk 1, ``/boot`` (ext4 made with ``mkfs.ext4 -d``, unencrypted): the Debian-signed kernel
  from the host's ``/boot`` (linux-image-cloud-amd64) with its config and System.map, an
  initrd made by initramfs-tools with sealer's hook (the e2e way, bootimage.build_initramfs),
  ``grub/grub.cfg`` written by the real ``grub-mkconfig``, ``grub/grubenv`` made by
  ``grub-editenv`` and ``grub/fonts/unicode.pf2`` (``grub-install`` copies both there);
- disk 2, the LUKS2 root (rootdisk.py: a tiny static root that prints the PCRs, the kernel
  command line and the event log, then powers off).

How grub-mkconfig runs, and why that way
----------------------------------------
``grub-mkconfig`` (Debian's grub-common, with /etc/grub.d and grub-mkconfig_lib from the
same package) asks ``grub-probe`` which devices hold ``/`` and ``/boot``, lists
``/boot/vmlinuz-*``, reads ``/etc/default/grub`` and checks ``/sys/firmware/efi``. Run on
this host as it is, it would probe the host's overlay root (and fail), list the host's
kernels and see a non-UEFI host. So it runs in a private mount namespace (``unshare
--mount``, nothing leaks to the host) in which:

- a tmpfs on ``/boot`` holds a copy of the guest's ``/boot`` tree (a mount of its own, so
  that grub-mkrelpath writes ``/vmlinuz-V`` as on a separate /boot; a bind mount of a host
  directory would make it write the host path);
- ``/etc/default`` holds Debian's stock ``/etc/default/grub`` (the template grub2-common
  ships in /usr/share/grub/default) with the guest's ``GRUB_CMDLINE_LINUX`` and
  ``GRUB_DISABLE_LINUX_UUID=true`` (the initramfs opens the root from ``cryptopts=``, so
  ``root=`` names the mapped device, as LVM-on-LUKS installs have it);
- ``/sys/firmware/efi/efivars`` holds ``OsIndicationsSupported`` with boot-to-firmware-UI
  set, as OVMF has it, so 30_uefi-firmware writes the entry it writes on a UEFI machine;
- ``/usr/sbin/grub-probe`` is a stand-in that knows only the guest's device names: a path
  under ``/boot`` is on ``/dev/vdb``, any other on ``/dev/mapper/cryptroot``. Every question
  about ``/dev/vdb`` goes to the REAL grub-probe, on the /boot image file, with a device map
  that names the QEMU disks in order (so fs, fs_uuid, partmap, abstraction and hints are
  grub-probe's own answers); for the mapped root it answers what the encrypted root is
  (ext2 driver, the ext4 UUID made before encryption, cryptodisk abstraction).

Everything grub-mkconfig writes is therefore the stock scripts' own output for this
machine's devices: the default entry has ``load_video``, ``insmod gzio``, ``insmod ext2``,
``search --no-floppy --fs-uuid --set=root`` with grub-probe's hints and the /boot UUID,
``linux /vmlinuz-V root=/dev/mapper/cryptroot ro <GRUB_CMDLINE_LINUX> quiet``,
``initrd /initrd.img-V``, and 00_header's ``load_env``/``saved_entry``/``next_entry`` logic.
(Running ``update-grub`` in the guest would need a full Debian root with grub installed and
a minute or more per boot under TCG; a chroot of an mmdebstrap root would still need the
same device answers. The namespace runs the same stock scripts with the same answers.)

Where this machine differs from an installed one, on purpose or of necessity:

- the disks hold file systems without partition tables, so grub-probe says ``hd1`` where an
  installed machine has ``hd0,gpt2`` (``set root='hd1'``, ``--hint='hd1'``, no ``insmod
  part_gpt``, ``search.fs_uuid UUID root hd1`` in the ESP stub);
- grub-probe cannot open the LUKS2 mapping here, so the root's answers (``ext2``, its UUID,
  ``luks2 cryptodisk``) are the stand-in's; they decide only that the font on / is not
  readable by GRUB, so 00_header writes ``if loadfont unicode`` as it does on encrypted
  installs; with ``GRUB_DISABLE_LINUX_UUID=true`` the root's UUID appears nowhere;
- ``LANG=en_US.UTF-8`` (``set lang=en_US``); /boot/grub has the font but no ``locale/`` and
  no ``x86_64-efi/`` (the signed GRUB has its modules built in); QEMU has no display, so
  ``terminal_output gfxterm`` fails ("error: no suitable video mode found.") and GRUB goes
  on on the serial console, where the tests read its menu and type into its editor.

Captured fixtures (eventlogs/debian-shim-grub-*.bin and .json)
--------------------------------------------------------------
``.venv/bin/python swtpm-fixtures/grubchain.py capture OUT WORK`` builds the machine and
boots it four times with one swtpm state (one machine across reboots); the passphrase is
typed each time (nothing is enrolled), so PCR 15 is capped:

- ``boot1``: as installed (kernel V, its initrd, grub-mkconfig's grub.cfg);
- ``boot2``: after a kernel update: the same signed kernel bytes installed as V' (the ABI
  number plus one) with config and System.map, a rebuilt initrd for V', and a new grub.cfg
  from grub-mkconfig, which lists V' first (the default entry);
- ``boot2-menu-break``: boot2's machine, the default entry edited at GRUB's menu (``e``,
  keys on the serial console, Ctrl-X) to add ``break=bottom`` to its ``linux`` line;
  grub.cfg is unchanged. initramfs-tools' shell (after sealer's panic hook capped PCR 15)
  was left with ``exit``;
- ``boot2-cfg-break``: boot2's machine with ``break=bottom`` added to the default entry's
  ``linux`` line in /boot/grub/grub.cfg (grub.cfg is not signed); shell left with ``exit``.

Each ``.bin`` is the guest's ``binary_bios_measurements``; each ``.json`` holds the sha256
PCRs 0-15 the guest read (``sha256``), the kernel command line it got (``kernel_cmdline``),
the texts of ``esp_grub_cfg``, ``boot_grub_cfg`` and ``grubenv``, ``grub_cmdline_linux``,
the default entry's kernel version, the UUIDs, the package versions, and under ``files``
the size, sha256 (and for PE files the Authenticode sha256) of every file on the ESP and
/boot. No kernel, initrd or loader is committed: their digests are what PCRs 4, 7, 8 and 9
need. tests/unit/test_grub_fixtures.py checks that the files say what they claim.

What these logs show (shim 16.1, GRUB 2.06-13+deb12u2)
------------------------------------------------------
- PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION): shim (with its ESP path), grubx64.efi (path),
  then the kernel's Authenticode hash twice with no device path.
- PCR 7: SecureBoot, PK, KEK, db, dbx, separator, the db authority (EV_EFI_VARIABLE_AUTHORITY)
  that verified shim, then shim's SbatLevel and MokListRT (EV_EFI_VARIABLE_AUTHORITY). shim
  logs NO authority event for GRUB or the kernel (both verified by its built-in Debian
  certificate): PCR 7 is the same before and after a kernel update. PCR 14 holds shim's
  MokList, MokListX, MokListTrusted (EV_IPL).
- PCR 8 (EV_IPL): one event per GRUB command, data ``grub_cmd: <command>\0`` or
  ``kernel_cmdline: <path> <args>\0``; the digest is the sha256 of the text AFTER the
  prefix, without the NUL. The embedded config's 4 commands come first, then the ESP stub's
  3, then grub.cfg's; a ``menuentry``/``submenu`` definition is one event holding its whole
  source text (``{...}`` body, ``$menuentry_id_option`` expanded to ``--id``); running the
  default entry logs ``setparams TITLE`` then each command in it as GRUB expands it
  (quotes gone, variables substituted). ``kernel_cmdline`` has no ``BOOT_IMAGE=``.
  Editing the entry at the menu changes only the ``linux`` and ``kernel_cmdline`` events
  (the definition event still has the text from grub.cfg); editing grub.cfg changes the
  definition event too, and PCR 9.
- PCR 9 (EV_IPL): data is GRUB's path of the file with a NUL (``(hd0)/EFI/debian/grub.cfg``,
  ``(hd1)/grub/grub.cfg``, ``(hd1)/grub/grubenv`` twice: ``[ -s ]`` and ``load_env`` both
  read it, ``/vmlinuz-V``, ``/initrd.img-V``); the digest is the sha256 of the file. grub.cfg
  is read once.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bootimage import Kernel, build_initramfs, installed_kernel
from qemu import Answer, Boot, Machine
from rootdisk import encrypt_in_place, file_system_uuid, make_file_system, make_root_tree

OVMF_MS_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
DEFAULT_CACHE = Path("/var/cache/sealer-fixtures")
PACKAGES = ("shim-signed", "grub-efi-amd64-signed")
SHIM_IN_PACKAGE = "usr/lib/shim/shimx64.efi.signed"
GRUB_IN_PACKAGE = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
GRUB_DEFAULT_TEMPLATE = Path("/usr/share/grub/default/grub")
GRUB_FONT = Path("/usr/share/grub/unicode.pf2")
REAL_GRUB_PROBE = Path("/usr/sbin/grub-probe")

PASSPHRASE = "hunter2 correct horse"
PROMPT = "Please unlock disk cryptroot"
KEYSCRIPT = "/usr/lib/sealer/keyscript"
INITRAMFS_SHELL = "(initramfs)"
# The QEMU disks in order (virtio): the ESP, /boot, the encrypted root.
ESP_DEVICE, BOOT_DEVICE, ROOT_PART = "/dev/vda", "/dev/vdb", "/dev/vdc"
ROOT_DEVICE = "/dev/mapper/cryptroot"
# OsIndicationsSupported as OVMF sets it: attributes (BS|RT), then a UINT64 whose bit 0 is
# EFI_OS_INDICATIONS_BOOT_TO_FW_UI.
_OS_INDICATIONS = "OsIndicationsSupported-8be4df61-93ca-11d2-aa0d-00e098032b8c"
_OS_INDICATIONS_DATA = bytes([6, 0, 0, 0]) + (0x1).to_bytes(8, "little")


def missing_grub_chain_parts() -> str | None:
    """Why this chain cannot be built here, or None."""
    tools = (
        "qemu-system-x86_64", "swtpm", "mkinitramfs", "grub-mkconfig", "grub-editenv",
        "apt-get", "dpkg", "unshare", "mkfs.vfat", "mcopy", "mkfs.ext4", "cryptsetup",
    )
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for path in (OVMF_MS_CODE, OVMF_MS_VARS, GRUB_DEFAULT_TEMPLATE, GRUB_FONT, REAL_GRUB_PROBE):
        if not path.exists():
            return f"{path} is missing"
    try:
        installed_kernel()
    except FileNotFoundError as error:
        return str(error)
    return None


# ---------------------------------------------------------------------------------------
# Debian's signed shim and GRUB


@dataclass(frozen=True)
class SignedLoaders:
    shim: Path
    grub: Path
    versions: dict[str, str]  # package -> version


def signed_loaders(cache: Path = DEFAULT_CACHE) -> SignedLoaders:
    """shimx64.efi.signed and grubx64.efi.signed from Debian's packages (downloaded once)."""
    debs = cache / "debs"
    unpacked = cache / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    if not all(any(debs.glob(f"{name}_*.deb")) for name in PACKAGES):
        subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *PACKAGES],
            cwd=debs, check=True, capture_output=True,
        )
    versions: dict[str, str] = {}
    for name in PACKAGES:
        deb = sorted(debs.glob(f"{name}_*.deb"))[-1]
        versions[name] = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True, text=True
        ).stdout.strip()
        target = unpacked / name
        if not target.exists():
            partial = unpacked / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            subprocess.run(["dpkg", "-x", str(deb), str(partial)], check=True)
            partial.rename(target)
    return SignedLoaders(
        unpacked / "shim-signed" / SHIM_IN_PACKAGE,
        unpacked / "grub-efi-amd64-signed" / GRUB_IN_PACKAGE,
        versions,
    )


def esp_stub_cfg(boot_uuid: str, hint: str) -> str:
    """EFI/debian/grub.cfg as grub-install writes it for a separate /boot file system."""
    return (
        f"search.fs_uuid {boot_uuid} root {hint} \n"
        "set prefix=($root)'/grub'\nconfigfile $prefix/grub.cfg\n"
    )


def build_grub_esp(output: Path, loaders: SignedLoaders, stub_cfg: str) -> Path:
    with open(output, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-F", "32", str(output)], check=True, capture_output=True)
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/debian"):
        subprocess.run(["mmd", "-i", str(output), directory], check=True, capture_output=True)
    stub = output.with_name(output.name + ".grub.cfg")
    stub.write_text(stub_cfg)
    for source, target in (
        (loaders.shim, "::/EFI/BOOT/BOOTX64.EFI"),
        (loaders.grub, "::/EFI/BOOT/grubx64.efi"),
        (stub, "::/EFI/debian/grub.cfg"),
    ):
        subprocess.run(
            ["mcopy", "-i", str(output), str(source), target], check=True, capture_output=True
        )
    return output


# ---------------------------------------------------------------------------------------
# /boot and grub-mkconfig


def bumped_version(version: str) -> str:
    """The next ABI's version string: 6.1.0-57-cloud-amd64 -> 6.1.0-58-cloud-amd64."""
    bumped, count = re.subn(r"-(\d+)-", lambda m: f"-{int(m.group(1)) + 1}-", version, count=1)
    return bumped if count else version + "+1"


def install_kernel(tree: Path, kernel: Kernel, version: str, initrd: Path) -> None:
    """What installing a Debian kernel package puts in /boot, under ``version``."""
    tree.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel.image, tree / f"vmlinuz-{version}")
    for stem in ("config", "System.map"):
        source = kernel.image.with_name(f"{stem}-{kernel.version}")
        if source.exists():
            shutil.copyfile(source, tree / f"{stem}-{version}")
    shutil.copyfile(initrd, tree / f"initrd.img-{version}")


def grub_install_files(tree: Path) -> None:
    """What grub-install leaves in /boot/grub that GRUB reads at boot: the font, grubenv."""
    (tree / "grub" / "fonts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GRUB_FONT, tree / "grub" / "fonts" / "unicode.pf2")
    grubenv = tree / "grub" / "grubenv"
    if not grubenv.exists():
        subprocess.run(["grub-editenv", str(grubenv), "create"], check=True)


def make_boot_fs(path: Path, tree: Path, fs_uuid: str) -> Path:
    """The /boot ext4 image filled from ``tree``; the same UUID each time it is remade."""
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())
    mib = size // (1024 * 1024) + 48
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(mib * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "boot", "-U", fs_uuid, "-d", str(tree), str(path)],
        check=True, capture_output=True,
    )
    return path


_STANDIN = """#!/bin/sh
# grub-probe for the sealer test guest's disks (swtpm-fixtures/grubchain.py): device names
# from the guest's layout, every answer about /boot from the real grub-probe on its image.
target=fs devices=no args=
while [ $# -gt 0 ]; do
    case "$1" in
        --target=*) target=${{1#--target=}} ;;
        -t|--target) target=$2; shift ;;
        -d|--device) devices=yes ;;
        -*) ;;
        *) args="$args $1" ;;
    esac
    shift
done
set -- $args
for arg in "$@"; do
    if [ "$devices" = yes ]; then
        device=$arg
    else
        case "$arg" in
            /boot|/boot/*) device={boot_device} ;;
            *) device={root_device} ;;
        esac
        if [ "$target" = device ]; then echo "$device"; continue; fi
    fi
    case "$device" in
        {boot_device})
            exec {real} --device-map={device_map} --target="$target" --device {boot_image} ;;
        {root_device})
            case "$target" in
                fs) echo ext2 ;;
                fs_uuid) echo {root_fs_uuid} ;;
                abstraction) echo "luks2 cryptodisk" ;;
                cryptodisk_uuid) echo {root_luks_uuid_plain} ;;
                *) echo "grub-probe: error: no $target for $device in this guest" >&2; exit 1 ;;
            esac ;;
        *) echo "grub-probe: error: unknown device $device" >&2; exit 1 ;;
    esac
done
"""


@dataclass(frozen=True)
class GuestDisks:
    """What grub-probe would find on the guest: device names, images, UUIDs."""

    esp_image: Path
    boot_image: Path
    boot_fs_uuid: str
    root_image: Path
    root_fs_uuid: str  # the ext4 inside the LUKS2 volume
    root_luks_uuid: str


def grub_default(cmdline: str) -> str:
    """Debian's stock /etc/default/grub with the guest's command line."""
    text = GRUB_DEFAULT_TEMPLATE.read_text()
    text = text.replace('GRUB_CMDLINE_LINUX=""', f'GRUB_CMDLINE_LINUX="{cmdline}"')
    if f'GRUB_CMDLINE_LINUX="{cmdline}"' not in text:
        raise RuntimeError(f"{GRUB_DEFAULT_TEMPLATE} has no empty GRUB_CMDLINE_LINUX line")
    return text + "\n# The initramfs opens the root from cryptopts=: root= names its device.\n" \
        "GRUB_DISABLE_LINUX_UUID=true\n"


def run_grub_mkconfig(tree: Path, disks: GuestDisks, cmdline: str, work: Path) -> str:
    """Write ``tree``/grub/grub.cfg with the real grub-mkconfig (see the module docstring);
    return its text. ``disks.boot_image`` must hold a file system with the final UUID."""
    work.mkdir(parents=True, exist_ok=True)
    device_map = work / "device.map"
    device_map.write_text(
        f"(hd0)\t{disks.esp_image}\n(hd1)\t{disks.boot_image}\n(hd2)\t{disks.root_image}\n"
    )
    real = work / "grub-probe.real"
    shutil.copyfile(REAL_GRUB_PROBE, real)
    real.chmod(0o755)
    standin = work / "grub-probe"
    standin.write_text(
        _STANDIN.format(
            boot_device=BOOT_DEVICE, root_device=ROOT_DEVICE, real=real,
            device_map=device_map, boot_image=disks.boot_image,
            root_fs_uuid=disks.root_fs_uuid,
            root_luks_uuid_plain=disks.root_luks_uuid.replace("-", ""),
        )
    )
    standin.chmod(0o755)
    etc_default = work / "etc-default"
    shutil.rmtree(etc_default, ignore_errors=True)
    shutil.copytree("/etc/default", etc_default, symlinks=True)
    (etc_default / "grub").write_text(grub_default(cmdline))
    shutil.rmtree(etc_default / "grub.d", ignore_errors=True)
    efivar = work / "efivar"
    efivar.write_bytes(_OS_INDICATIONS_DATA)
    (tree / "grub").mkdir(parents=True, exist_ok=True)
    # /boot must be a mount of its own whose root is the tree: grub-mkrelpath makes the paths
    # in grub.cfg relative to the root of the file system that holds them (a bind mount of a
    # host directory would give host paths), as on the guest, where /boot is its own ext4.
    script = f"""set -e
mount -t tmpfs sealer-fixture-boot /boot
cp -a {tree}/. /boot/
mount --bind {etc_default} /etc/default
mount --bind {standin} /usr/sbin/grub-probe
mount -t tmpfs sealer-fixture /sys/firmware
mkdir -p /sys/firmware/efi/efivars
cp {efivar} /sys/firmware/efi/efivars/{_OS_INDICATIONS}
grub-mkconfig -o /boot/grub/grub.cfg
cp /boot/grub/grub.cfg {tree}/grub/grub.cfg
"""
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True, text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "en_US.UTF-8"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"grub-mkconfig failed:\n{result.stderr}")
    return (tree / "grub" / "grub.cfg").read_text()


def add_to_default_linux_line(grub_cfg: str, extra: str) -> str:
    """grub.cfg with ``extra`` added to the first ``linux`` line (the default entry's)."""
    lines = grub_cfg.split("\n")
    for index, line in enumerate(lines):
        if line.strip().startswith("linux\t") or line.strip().startswith("linux "):
            lines[index] = f"{line} {extra}"
            return "\n".join(lines)
    raise ValueError("grub.cfg has no linux line")


def default_entry_lines(grub_cfg: str) -> list[str]:
    """The body of grub.cfg's first top-level menuentry (the default entry), line by line."""
    lines = grub_cfg.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("menuentry "))
    end = lines.index("}", start)
    return lines[start + 1 : end]


MENU_COUNTDOWN = "The highlighted entry will be executed automatically"
MENU_EDITOR = "Minimum Emacs-like screen editing is supported"


def menu_edit_answers(grub_cfg: str, extra: str) -> list[Answer]:
    """Keys that edit the default entry at GRUB's menu, on the serial console: ``e``, then
    Ctrl-N down to its ``linux`` line (the editor's first line is ``setparams 'TITLE'``),
    Ctrl-E to the end of it, `` EXTRA``, and Ctrl-X to boot the edited entry."""
    body = default_entry_lines(grub_cfg)
    linux = next(i for i, line in enumerate(body) if line.strip().startswith("linux"))
    # The body's line N is the editor's line N + 1, and over this serial console it takes
    # N + 2 Ctrl-N (or down-arrow) keys to reach it: one is always spent (seen in every boot
    # here). capture() checks that the kernel got ``extra``.
    keys = "\x0e" * (linux + 2) + "\x05" + f" {extra}" + "\x18"
    return [Answer(MENU_COUNTDOWN, "e"), Answer(MENU_EDITOR, keys)]


# ---------------------------------------------------------------------------------------
# The machine


@dataclass
class GrubChainMachine:
    """One Debian machine with the stock chain; its disks and TPM persist across boots."""

    work: Path
    kernel: Kernel
    loaders: SignedLoaders
    disks: GuestDisks
    tree: Path  # the /boot file system's contents
    cmdline: str  # GRUB_CMDLINE_LINUX
    esp_cfg: str
    version: str  # the newest kernel version in /boot (the default entry's)
    machine: Machine
    boots: list[tuple[str, Boot]] = field(default_factory=list)

    @property
    def grub_cfg(self) -> str:
        return (self.tree / "grub" / "grub.cfg").read_text()

    def remake_boot_fs(self) -> None:
        make_boot_fs(self.disks.boot_image, self.tree, self.disks.boot_fs_uuid)

    def update_grub(self) -> str:
        text = run_grub_mkconfig(self.tree, self.disks, self.cmdline, self.work / "mkconfig")
        self.remake_boot_fs()
        return text

    def kernel_update(self) -> str:
        """The same signed kernel as the next ABI version, a new initrd, update-grub."""
        version = bumped_version(self.version)
        initrd = build_initramfs(
            self.work / f"initrd.img-{version}", self.kernel, self.work / "initramfs-new",
            with_sealer=True, extra_hooks={"zz-fixture-version": _version_hook(version)},
        )
        install_kernel(self.tree, self.kernel, version, initrd)
        self.version = version
        self.update_grub()
        return version

    def edit_grub_cfg(self, extra: str) -> None:
        path = self.tree / "grub" / "grub.cfg"
        path.write_text(add_to_default_linux_line(path.read_text(), extra))
        self.remake_boot_fs()

    def boot(
        self,
        name: str,
        *,
        answers: list[Answer] | None = None,
        stop_at: str | None = None,
        timeout: float = 300,
    ) -> Boot:
        """Boot until power-off; ``answers`` default to typing the passphrase. ``stop_at``
        ends the boot when that text appears (e.g. the prompt of a boot that should not
        ask), instead of waiting for the time limit."""
        boot = self.machine.boot(
            answers=answers if answers is not None else [Answer(PROMPT, PASSPHRASE + "\n")],
            stop_at=stop_at,
            timeout=timeout,
        )
        self.boots.append((name, boot))
        return boot


def _version_hook(version: str) -> str:
    """An initramfs-tools hook that records the version name the initrd was made for (a
    rebuilt initrd differs from the old one, as update-initramfs' does)."""
    return (
        "#!/bin/sh\nPREREQ=\"\"\nprereqs() { echo \"$PREREQ\"; }\n"
        "case \"$1\" in prereqs) prereqs; exit 0 ;; esac\n"
        f"mkdir -p \"$DESTDIR/etc\" && echo {version} > \"$DESTDIR/etc/sealer-fixture-kernel\"\n"
    )


def guest_cmdline(root_luks_uuid: str) -> str:
    """GRUB_CMDLINE_LINUX of the guest: the serial console and the encrypted root. No
    ``panic=``, as a user has it: break= and a failed root give initramfs-tools' shell."""
    return (
        "console=ttyS0 rootfstype=ext4 "
        f"cryptopts=target=cryptroot,source=UUID={root_luks_uuid},luks,keyscript={KEYSCRIPT}"
    )


def make_grub_chain_machine(work: Path, cache: Path = DEFAULT_CACHE) -> GrubChainMachine:
    """Build the installed machine (first kernel, first grub.cfg) in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    kernel = installed_kernel()
    loaders = signed_loaders(cache)
    # The root: ext4 (its UUID read before encryption), then LUKS2 in place.
    root_image = make_file_system(work / "root.img", make_root_tree(work / "root-tree"))
    root_fs_uuid = file_system_uuid(root_image)
    root_luks_uuid = encrypt_in_place(root_image, PASSPHRASE.encode())
    cmdline = guest_cmdline(root_luks_uuid)
    # /boot: the kernel, its initrd, what grub-install leaves; an image with its final UUID
    # first, so that grub-probe answers about the very file system GRUB will search for.
    tree = work / "boot-tree"
    initrd = build_initramfs(
        work / f"initrd.img-{kernel.version}", kernel, work / "initramfs",
        with_sealer=True, extra_hooks={"zz-fixture-version": _version_hook(kernel.version)},
    )
    install_kernel(tree, kernel, kernel.version, initrd)
    grub_install_files(tree)
    boot_fs_uuid = str(uuid.uuid4())
    boot_image = make_boot_fs(work / "boot.img", tree, boot_fs_uuid)
    esp_image = work / "esp.img"
    disks = GuestDisks(esp_image, boot_image, boot_fs_uuid, root_image, root_fs_uuid,
                       root_luks_uuid)
    hint = subprocess.run(
        [str(REAL_GRUB_PROBE), f"--device-map={_write_device_map(work, disks)}",
         "--target=compatibility_hint", "--device", str(boot_image)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    esp_cfg = esp_stub_cfg(boot_fs_uuid, hint)
    build_grub_esp(esp_image, loaders, esp_cfg)
    machine = Machine(
        work / "machine", OVMF_MS_VARS, [esp_image, boot_image, root_image],
        firmware=OVMF_MS_CODE,
    )
    chain = GrubChainMachine(
        work, kernel, loaders, disks, tree, cmdline, esp_cfg, kernel.version, machine
    )
    chain.update_grub()
    return chain


def _write_device_map(work: Path, disks: GuestDisks) -> Path:
    path = work / "device.map"
    path.write_text(
        f"(hd0)\t{disks.esp_image}\n(hd1)\t{disks.boot_image}\n(hd2)\t{disks.root_image}\n"
    )
    return path


# ---------------------------------------------------------------------------------------
# Captured data


def file_facts(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    facts: dict[str, object] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if data[:2] == b"MZ":
        from sealer.measure.pe import authenticode_digest
        from sealer.pcrs import BANKS

        facts["authenticode_sha256"] = authenticode_digest(data, BANKS["sha256"]).hex()
    return facts


def boot_record(chain: GrubChainMachine, name: str, boot: Boot, what: str) -> dict[str, object]:
    """The JSON fixture of one boot (see the module docstring)."""
    cmdlines = boot.lines_with("SEALER-E2E: cmdline ")
    tree = chain.tree
    files: dict[str, object] = {
        "esp:/EFI/BOOT/BOOTX64.EFI": file_facts(chain.loaders.shim),
        "esp:/EFI/BOOT/grubx64.efi": file_facts(chain.loaders.grub),
        "esp:/EFI/debian/grub.cfg": {
            "size": len(chain.esp_cfg.encode()),
            "sha256": hashlib.sha256(chain.esp_cfg.encode()).hexdigest(),
        },
    }
    for path in sorted(tree.rglob("*")):
        if path.is_file() and path.name != "unicode.pf2":
            files[f"boot:/{path.relative_to(tree)}"] = file_facts(path)
    files["boot:/grub/fonts/unicode.pf2"] = file_facts(tree / "grub" / "fonts" / "unicode.pf2")
    return {
        "what": what,
        "boot": name,
        "seconds": round(boot.seconds, 1),
        "sha256": {str(k): v.hex() for k, v in sorted(boot.pcrs().items())},
        "kernel_cmdline": cmdlines[0].split("SEALER-E2E: cmdline ", 1)[1] if cmdlines else None,
        "default_kernel_version": chain.version,
        "kernel_versions_in_boot": sorted(
            p.name.removeprefix("vmlinuz-") for p in tree.glob("vmlinuz-*")
        ),
        "grub_cmdline_linux": chain.cmdline,
        "esp_grub_cfg": chain.esp_cfg,
        "boot_grub_cfg": chain.grub_cfg,
        "grubenv": (tree / "grub" / "grubenv").read_text(),
        "boot_fs_uuid": chain.disks.boot_fs_uuid,
        "root_luks_uuid": chain.disks.root_luks_uuid,
        "root_fs_uuid": chain.disks.root_fs_uuid,
        "packages": chain.loaders.versions,
        "host_kernel": chain.kernel.version,
        "files": files,
    }


def capture(out: Path, work: Path) -> None:
    """Build the machine, boot it four times, write the fixtures into ``out``."""
    chain = make_grub_chain_machine(work)
    base = (
        "OVMF 4M with Microsoft's keys (Debian bookworm ovmf), Secure Boot on, swtpm; "
        f"shim-signed {chain.loaders.versions['shim-signed']} -> grub-efi-amd64-signed "
        f"{chain.loaders.versions['grub-efi-amd64-signed']} -> Debian's signed "
        f"linux-image-cloud-amd64 ({chain.kernel.version}) with an initramfs-tools initrd "
        "with sealer's hook, /boot on its own ext4, LUKS2 root; passphrase typed "
        "(no enrollment), so PCR 15 is capped"
    )
    shell = [Answer(INITRAMFS_SHELL, "exit\n")]  # break=bottom's shell: go on booting
    # (name, what, the change before the boot, keys at GRUB's menu, answers after unlock)
    plans: list[tuple[str, str, Callable[[], object], Callable[[], list[Answer]], list[Answer]]]
    plans = [
        ("boot1", "as installed", lambda: None, list, []),
        ("boot2", "after a kernel update (same signed kernel as the next ABI version, new "
         "initrd, new grub.cfg from grub-mkconfig)", chain.kernel_update, list, []),
        ("boot2-menu-break", "boot2's machine, its default entry edited at GRUB's menu to "
         "add break=bottom to the linux line (grub.cfg unchanged); the initramfs shell was "
         "left with exit", lambda: None,
         lambda: menu_edit_answers(chain.grub_cfg, "break=bottom"), shell),
        ("boot2-cfg-break", "boot2's machine with break=bottom added to the default entry's "
         "linux line in /boot/grub/grub.cfg; the initramfs shell was left with exit",
         lambda: chain.edit_grub_cfg("break=bottom"), list, shell),
    ]
    out.mkdir(parents=True, exist_ok=True)
    for name, what, change, at_menu, after_unlock in plans:
        change()
        answers = [*at_menu(), Answer(PROMPT, PASSPHRASE + "\n"), *after_unlock]
        boot = chain.boot(name, answers=answers)
        (work / f"{name}.console.txt").write_text(boot.transcript)
        if "SEALER-E2E: root file system is up" not in boot.transcript:
            raise RuntimeError(f"{name} did not reach the root; see {work}/{name}.console.txt")
        got = boot.lines_with("SEALER-E2E: cmdline ")
        if "break" in name and not (got and got[0].endswith(" break=bottom")):
            raise RuntimeError(f"{name}: the kernel did not get break=bottom: {got}")
        stem = f"debian-shim-grub-{name}"
        (out / f"{stem}.bin").write_bytes(boot.event_log())
        record = boot_record(chain, name, boot, f"{base}; {what}")
        (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"{name}: {boot.seconds:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "capture":
        sys.exit("usage: grubchain.py capture OUT_DIR WORK_DIR")
    capture(Path(sys.argv[2]), Path(sys.argv[3]))
