"""A real installed Debian 12 system in QEMU: built by mmdebstrap, booted by shim and GRUB.

This is the machine of issue 18's life-cycle test, as close to an installed machine as the
sandbox allows:

- the root is ``mmdebstrap --variant=apt bookworm`` from this host's apt sources, with
  systemd, udev, a Debian-signed kernel (the older of the two ABIs the archive has, so that
  the newer one can come as an update), shim-signed, grub-efi-amd64(-signed),
  cryptsetup-initramfs and, when given, sealer's own ``.deb`` built from the tree (the
  ``generator="dracut"`` variant has Debian's dracut and cryptsetup instead of
  cryptsetup-initramfs, and names the root on the kernel command line: rd.luks.uuid=);
- disk 0 is the ESP (FAT, no partition table) with the root's own ``shimx64.efi.signed``
  as ``EFI/BOOT/BOOTX64.EFI``, its ``grubx64.efi.signed`` and the ``EFI/debian/grub.cfg``
  stub grub-install writes; disk 1 is ``/boot`` (ext4, mounted from /etc/fstab, so that
  kernel updates in the guest write there); disk 2 is the LUKS2 root, encrypted in place on
  the host (``cryptsetup reencrypt --encrypt``) with the UUID the root's /etc/crypttab names;
- the first grub.cfg is written by the real grub-mkconfig on the host (grubchain.py's
  namespace); every later one by ``update-grub`` inside the guest;
- root logs in on the serial console with no password (a getty drop-in): the tests type
  commands there, as a person at the console would.

The second kernel's package is downloaded on the host (``apt-get download``) and put in
``/var/local/updates`` of the root: the guest installs it with ``dpkg -i`` from there.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from grubchain import (
    DEFAULT_CACHE,
    OVMF_MS_CODE,
    OVMF_MS_VARS,
    REAL_GRUB_PROBE,
    GuestDisks,
    esp_stub_cfg,
    grub_install_files,
    run_grub_mkconfig,
)
from qemu import Machine

SUITE = "bookworm"
# The two ABIs of the cloud kernel the archive has (bookworm and bookworm-security): the
# guest is installed with the first and updated to the second.
FIRST_KERNEL = "linux-image-6.1.0-50-cloud-amd64"
UPDATE_KERNEL = "linux-image-6.1.0-57-cloud-amd64"
PACKAGES = (
    "systemd-sysv", "udev", "kmod", "e2fsprogs", "dosfstools", "cryptsetup-initramfs",
    "shim-signed", "grub-efi-amd64", "grub-efi-amd64-signed", "procps", "less",
    "zstd",  # initramfs-tools' compressor (a Recommends, so an installed system has it)
)
# The dracut variant: Debian's dracut package (it conflicts with initramfs-tools, so with
# cryptsetup-initramfs) and plain cryptsetup; systemd-cryptsetup opens the root in the initrd.
GENERATORS = ("initramfs-tools", "dracut")
DRACUT_PACKAGES = (
    *(p for p in PACKAGES if p != "cryptsetup-initramfs"), "dracut", "cryptsetup",
)
PASSPHRASE = "hunter2 correct horse"
UPDATES_DIR = "/var/local/updates"
# The kernel command line: the serial console; no panic=, as a user has it.
CMDLINE = "console=ttyS0,115200"


def packages(generator: str) -> tuple[str, ...]:
    """What mmdebstrap installs (besides the kernel) for the initramfs generator."""
    return DRACUT_PACKAGES if generator == "dracut" else PACKAGES


def kernel_cmdline(generator: str, luks_uuid: str) -> str:
    """GRUB_CMDLINE_LINUX for the generator. Debian's dracut builds generic images, which
    hold no /etc/crypttab: the command line names the LUKS root (rd.luks.uuid=), and
    rd.luks.name= gives its mapping the name /etc/fstab and /etc/crypttab use (otherwise
    systemd-cryptsetup-generator calls it luks-UUID, and the real root's crypttab would ask
    again for 'cryptroot'). initramfs-tools reads its crypttab copy: the plain CMDLINE."""
    if generator == "dracut":
        return f"{CMDLINE} rd.luks.uuid={luks_uuid} rd.luks.name={luks_uuid}=cryptroot"
    return CMDLINE


_ROOT_SLACK_MIB = 700  # room for the second kernel, its modules and initrds
# /boot as the Debian installer makes a separate one (about 500 MB): two kernels with their
# initrds (about 30 MB each with sealer's runtime) and update-initramfs' temporary copies.
_BOOT_SLACK_MIB = 400
_LUKS_ROOM_MIB = 32
_AUTOLOGIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud 115200 %I vt100
"""


def missing_debian_system_parts() -> str | None:
    """Why this machine cannot be built here, or None."""
    for tool in ("mmdebstrap", "qemu-system-x86_64", "swtpm", "mkfs.ext4", "mkfs.vfat",
                 "mcopy", "cryptsetup", "grub-mkconfig", "apt-get", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    for path in (OVMF_MS_CODE, OVMF_MS_VARS, REAL_GRUB_PROBE):
        if not path.exists():
            return f"{path} is missing"
    return None


@dataclass
class DebianSystem:
    """The installed machine: its disks, UUIDs and the persistent QEMU machine."""

    work: Path
    disks: GuestDisks
    first_kernel: str  # kernel version strings (uname -r)
    update_kernel: str
    update_deb: str  # path of the update's .deb inside the guest
    machine: Machine


def download_kernel_update(cache: Path) -> Path:
    """The update kernel's package, downloaded once into the fixture cache."""
    debs = cache / "debian-system-debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{UPDATE_KERNEL}_*.deb"))
    if not found:
        subprocess.run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", UPDATE_KERNEL],
            cwd=debs, check=True, capture_output=True,
        )
        found = sorted(debs.glob(f"{UPDATE_KERNEL}_*.deb"))
    return found[-1]


def _write(root: Path, path: str, text: str, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(mode)


def configure_root(
    root: Path, luks_uuid: str, boot_uuid: str, esp_uuid: str,
    generator: str = "initramfs-tools",
) -> None:
    """What the Debian installer would have written: fstab, crypttab, hostname, GRUB's
    defaults; plus the serial console's root autologin (the test's keyboard)."""
    _write(root, "/etc/fstab",
           "/dev/mapper/cryptroot / ext4 errors=remount-ro 0 1\n"
           f"UUID={boot_uuid} /boot ext4 defaults 0 2\n"
           f"UUID={esp_uuid} /boot/efi vfat umask=0077 0 1\n")
    # "initramfs": the initrd built on the host (in a chroot, where the root's device cannot
    # be found) includes this entry; the guest's own rebuilds would find it anyway.
    # (dracut's systemd-cryptsetup does not know "initramfs": plain luks there.)
    options = "luks" if generator == "dracut" else "luks,initramfs"
    _write(root, "/etc/crypttab", f"cryptroot UUID={luks_uuid} none {options}\n")
    _write(root, "/etc/hostname", "sealer-guest\n")
    _write(root, "/etc/hosts", "127.0.0.1 localhost\n127.0.1.1 sealer-guest\n")
    _write(root, "/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf", _AUTOLOGIN)
    grub = (root / "etc/default/grub").read_text()
    cmdline = kernel_cmdline(generator, luks_uuid)
    grub = grub.replace('GRUB_CMDLINE_LINUX=""', f'GRUB_CMDLINE_LINUX="{cmdline}"')
    grub = grub.replace("GRUB_TIMEOUT=5", "GRUB_TIMEOUT=1")
    _write(root, "/etc/default/grub", grub)
    for mount_point in ("boot", "boot/efi"):
        (root / mount_point).mkdir(parents=True, exist_ok=True)


def mmdebstrap(
    root: Path, sealer_deb: Path | None, update_deb: Path, log: Path,
    generator: str = "initramfs-tools",
) -> None:
    """Install the Debian root (and sealer's .deb) into the directory ``root``."""
    argv = [
        "mmdebstrap", "--variant=apt", "--mode=root",
        "--aptopt=APT::Install-Recommends \"false\"",
        f"--include={','.join((*packages(generator), FIRST_KERNEL))}",
        f"--customize-hook=mkdir -p \"$1{UPDATES_DIR}\"",
        f"--customize-hook=copy-in {update_deb} {UPDATES_DIR}",
    ]
    if sealer_deb is not None:
        # As a user installs it: 'apt install ./sealer_VERSION_ARCH.deb' (apt fetches its
        # Debian dependencies; nothing comes from PyPI).
        argv += [
            f"--customize-hook=copy-in {sealer_deb.resolve()} /root",
            f"--customize-hook=chroot \"$1\" sh -c 'cd /root && apt-get install -y "
            f"./{sealer_deb.name} && rm ./{sealer_deb.name}'",
        ]
    argv += [SUITE, str(root)]
    with open(log, "w") as handle:
        subprocess.run(argv, check=True, stdout=handle, stderr=subprocess.STDOUT)


def chroot_run(root: Path, *command: str, log: Path) -> None:
    """Run a command in ``root`` with /proc, /sys and /dev mounted, in a private namespace."""
    script = (
        f"set -e; mount -t proc proc {root}/proc; mount -t sysfs sys {root}/sys; "
        f"mount --rbind /dev {root}/dev; exec chroot {root} " + " ".join(command)
    )
    with open(log, "a") as handle:
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            check=True, stdout=handle, stderr=subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
        )


def make_ext4(path: Path, tree: Path, fs_uuid: str, label: str, slack_mib: int) -> Path:
    size = sum(p.lstat().st_size for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    mib = int(size * 1.15) // (1024 * 1024) + slack_mib
    path.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(mib * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-d", str(tree), str(path)],
        check=True, capture_output=True,
    )
    return path


def encrypt_root(path: Path, luks_uuid: str, passphrase: bytes) -> None:
    """LUKS2 in place, with the UUID the root's crypttab already names."""
    with open(path, "ab") as handle:
        handle.truncate(path.stat().st_size + _LUKS_ROOM_MIB * 1024 * 1024)
    subprocess.run(
        [
            "cryptsetup", "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2",
            "--uuid", luks_uuid, "--reduce-device-size", f"{_LUKS_ROOM_MIB}M",
            "--key-file=-", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            str(path),
        ],
        input=passphrase, check=True, capture_output=True,
    )


def build_esp(path: Path, root: Path, stub_cfg: str, volume_id: str) -> Path:
    """The ESP from the root's own signed shim and GRUB, as the removable-media path."""
    with open(path, "wb") as handle:
        handle.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-F", "32", "-i", volume_id, str(path)],
                   check=True, capture_output=True)
    for directory in ("::/EFI", "::/EFI/BOOT", "::/EFI/debian"):
        subprocess.run(["mmd", "-i", str(path), directory], check=True, capture_output=True)
    stub = path.with_name("esp-grub.cfg")
    stub.write_text(stub_cfg)
    for source, target in (
        (root / "usr/lib/shim/shimx64.efi.signed", "::/EFI/BOOT/BOOTX64.EFI"),
        (root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed", "::/EFI/BOOT/grubx64.efi"),
        (stub, "::/EFI/debian/grub.cfg"),
    ):
        subprocess.run(["mcopy", "-i", str(path), str(source), target],
                       check=True, capture_output=True)
    return path


def _kernel_version(package: str) -> str:
    return package.removeprefix("linux-image-")


def build_debian_system(
    work: Path, sealer_deb: Path | None, cache: Path = DEFAULT_CACHE,
    generator: str = "initramfs-tools",
) -> DebianSystem:
    """Build the installed machine in ``work`` (about two minutes here); ``generator``
    (initramfs-tools or dracut) is the package that builds its initramfs."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown initramfs generator {generator!r}")
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    update_deb = download_kernel_update(cache)
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    mmdebstrap(root, sealer_deb, update_deb, log, generator)

    luks_uuid, boot_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    volume_id = hashlib.sha256(boot_uuid.encode()).hexdigest()[:8].upper()
    esp_uuid = f"{volume_id[:4]}-{volume_id[4:]}"
    configure_root(root, luks_uuid, boot_uuid, esp_uuid, generator)
    if generator == "dracut":
        # The kernel's postinst already ran dracut; its generic image does not depend on
        # anything configure_root wrote (no crypttab in it): no rebuild.
        initrd = root / "boot" / f"initrd.img-{_kernel_version(FIRST_KERNEL)}"
        if not initrd.is_file():
            raise RuntimeError(f"dracut made no {initrd.name} in the chroot (see {log})")
    else:
        chroot_run(root, "update-initramfs", "-u", "-k", "all", log=log)

    # /boot moves to its own file system; the root keeps the empty mount point.
    boot_tree = work / "boot-tree"
    if boot_tree.exists():
        shutil.rmtree(boot_tree)
    shutil.copytree(root / "boot", boot_tree, symlinks=True)
    for entry in (root / "boot").iterdir():
        if entry.name != "efi":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    (boot_tree / "efi").rmdir()
    grub_install_files(boot_tree)

    root_image = make_ext4(work / "root.img", root, str(uuid.uuid4()), "root", _ROOT_SLACK_MIB)
    root_fs_uuid = subprocess.run(
        ["blkid", "-o", "value", "-s", "UUID", str(root_image)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    encrypt_root(root_image, luks_uuid, PASSPHRASE.encode())
    boot_image = make_ext4(work / "boot.img", boot_tree, boot_uuid, "boot", _BOOT_SLACK_MIB)
    esp_image = work / "esp.img"
    disks = GuestDisks(esp_image, boot_image, boot_uuid, root_image, root_fs_uuid, luks_uuid)
    device_map = work / "device.map"
    device_map.write_text(f"(hd0)\t{esp_image}\n(hd1)\t{boot_image}\n(hd2)\t{root_image}\n")
    hint = subprocess.run(
        [str(REAL_GRUB_PROBE), f"--device-map={device_map}", "--target=compatibility_hint",
         "--device", str(boot_image)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    build_esp(esp_image, root, esp_stub_cfg(boot_uuid, hint), volume_id)
    # The first grub.cfg: the stock scripts on the host, with the guest's cmdline and the
    # cryptopts the initrd built in the chroot needs to find the root.
    run_grub_mkconfig(boot_tree, disks, kernel_cmdline(generator, luks_uuid),
                      work / "mkconfig")
    make_ext4(boot_image, boot_tree, boot_uuid, "boot", _BOOT_SLACK_MIB)
    shutil.rmtree(root)  # 500 MB; everything is in the images now

    machine = Machine(
        work / "machine", OVMF_MS_VARS, [esp_image, boot_image, root_image],
        memory_mib=2048, firmware=OVMF_MS_CODE,
    )
    return DebianSystem(
        work, disks, _kernel_version(FIRST_KERNEL), _kernel_version(UPDATE_KERNEL),
        f"{UPDATES_DIR}/{update_deb.name}", machine,
    )
