"""Real Debian boot images: an initramfs from mkinitramfs, a signed UKI, an ESP disk image.

Everything comes from Debian packages on the host: the kernel (linux-image-cloud-amd64),
initramfs-tools with cryptsetup-initramfs, systemd-boot-efi's stub, binutils' objcopy,
sbsigntool and mtools. The initramfs is built by mkinitramfs with a private configuration
directory, so the host's own /etc/initramfs-tools is neither read nor changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pefile
from secureboot import SecureBootKeys, sign

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
REPO = Path(__file__).resolve().parent.parent
SEALER_INITRAMFS_TOOLS = REPO / "sealer" / "install" / "hookfiles" / "initramfs-tools"
# Section addresses for objcopy: far enough apart for a cloud kernel and a large initramfs.
_SECTION_VMAS = {".osrel": 0x20000, ".cmdline": 0x30000, ".linux": 0x2000000, ".initrd": 0x3000000}
GUEST_MODULES = ("virtio_pci", "virtio_blk", "ext4")


@dataclass(frozen=True)
class Kernel:
    version: str
    image: Path


def installed_kernel() -> Kernel:
    """The newest Debian kernel on the host whose modules are installed too."""
    candidates = sorted(Path("/boot").glob("vmlinuz-*"))
    for image in reversed(candidates):
        version = image.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", version).is_dir():
            return Kernel(version, image)
    raise FileNotFoundError("no Debian kernel in /boot (apt-get install linux-image-cloud-amd64)")


def initramfs_confdir(work: Path, files: dict[str, str]) -> Path:
    """A private initramfs-tools configuration: listed modules only, plus the given hooks and
    boot scripts (by path relative to the configuration directory)."""
    confdir = work / "initramfs-tools"
    if confdir.exists():
        shutil.rmtree(confdir)
    (confdir / "hooks").mkdir(parents=True)
    (confdir / "scripts").mkdir()
    (confdir / "conf.d").mkdir()
    (confdir / "initramfs.conf").write_text(
        "MODULES=list\nBUSYBOX=auto\nKEYMAP=n\nCOMPRESS=zstd\nDEVICE=\nNFSROOT=auto\n"
        "RUNSIZE=10%\nFSTYPE=ext4\n"
    )
    (confdir / "modules").write_text("\n".join(GUEST_MODULES) + "\n")
    for relative, text in files.items():
        path = confdir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return confdir


def build_initramfs(
    output: Path, kernel: Kernel, work: Path, *, with_sealer: bool, extra_hooks: dict[str, str]
) -> Path:
    """Run Debian's mkinitramfs; with_sealer adds sealer's own initramfs-tools hook."""
    files = {f"hooks/{name}": text for name, text in extra_hooks.items()}
    if with_sealer:
        for relative in ("hooks/sealer", "scripts/init-bottom/sealer", "scripts/panic/sealer"):
            files[relative] = (SEALER_INITRAMFS_TOOLS / relative).read_text()
    confdir = initramfs_confdir(work, files)
    conf = work / "sealer-initramfs.conf"
    conf.write_text(f"SEALER_PYTHON={sys.executable}\n")
    env = dict(os.environ, SEALER_INITRAMFS_CONF=str(conf))
    subprocess.run(
        ["mkinitramfs", "-d", str(confdir), "-o", str(output), kernel.version],
        check=True, capture_output=True, env=env,
    )
    return output


def assemble_uki(output: Path, sections: Mapping[str, Path]) -> Path:
    """An unsigned UKI: systemd's stub with ``sections`` added (name -> file), the way
    ukify and the Arch/Debian wiki recipes do it; its PE time stamp is the stub's."""
    argv = ["objcopy"]
    for name, path in sections.items():
        argv += [
            "--add-section", f"{name}={path}",
            "--change-section-vma", f"{name}={_SECTION_VMAS[name]:#x}",
        ]
    subprocess.run([*argv, str(STUB), str(output)], check=True, capture_output=True)
    pin_pe_timestamp(output, STUB)
    return output


def build_uki(
    output: Path, kernel: Kernel, initrd: Path, cmdline: str, keys: SecureBootKeys | None
) -> Path:
    """A unified kernel image from systemd's stub; signed by ``keys``' db key unless None."""
    work = output.parent
    osrel = work / f"{output.stem}.osrel"
    osrel.write_text('ID=debian\nPRETTY_NAME="sealer e2e guest"\n')
    cmdline_file = work / f"{output.stem}.cmdline"
    cmdline_file.write_text(cmdline)
    sections = {
        ".osrel": osrel,
        ".cmdline": cmdline_file,
        ".linux": kernel.image,
        ".initrd": initrd,
    }
    unsigned = assemble_uki(work / f"{output.stem}.unsigned.efi", sections)
    if keys is None:
        unsigned.replace(output)
        return output
    sign(unsigned, keys, output)
    unsigned.unlink()
    return output


def pin_pe_timestamp(image: Path, like: Path) -> None:
    """Give ``image`` the PE time stamp of ``like``, and a matching checksum.

    objcopy writes the current time into the PE header, which the Authenticode hash covers:
    two builds of the same UKI a second apart would measure differently into PCR 4.
    """
    with pefile.PE(str(like), fast_load=True) as reference:
        stamp = reference.FILE_HEADER.TimeDateStamp
    pe = pefile.PE(str(image), fast_load=True)
    pe.FILE_HEADER.TimeDateStamp = stamp
    pe.OPTIONAL_HEADER.CheckSum = 0
    data = bytearray(pe.write())
    pe.close()
    pe = pefile.PE(data=bytes(data), fast_load=True)
    pe.OPTIONAL_HEADER.CheckSum = pe.generate_checksum()
    image.write_bytes(pe.write())
    pe.close()


def build_esp(output: Path, uki: Path) -> Path:
    """A FAT disk image holding the UKI at the removable-media path the firmware boots."""
    size_mib = uki.stat().st_size // (1024 * 1024) + 40
    with open(output, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    subprocess.run(["mkfs.vfat", "-F", "32", str(output)], check=True, capture_output=True)
    for directory in ("::/EFI", "::/EFI/BOOT"):
        subprocess.run(["mmd", "-i", str(output), directory], check=True, capture_output=True)
    subprocess.run(
        ["mcopy", "-i", str(output), str(uki), "::/EFI/BOOT/BOOTX64.EFI"],
        check=True, capture_output=True,
    )
    return output


def extended_initramfs(output: Path, initrd: Path, files: Mapping[str, bytes]) -> Path:
    """``initrd`` with an uncompressed cpio archive of ``files`` appended: the kernel unpacks
    concatenated archives in order, so this is another initramfs in a few milliseconds
    (mkinitramfs takes half a minute)."""
    tree = output.parent / f"{output.name}.tree"
    for name, data in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    listing = "\n".join(sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))) + "\n"
    archive = subprocess.run(
        ["cpio", "--quiet", "-o", "-H", "newc", "--owner", "0:0"],
        input=listing.encode(), cwd=tree, check=True, capture_output=True,
    ).stdout
    base = initrd.read_bytes()
    padding = b"\0" * (-len(base) % 4)  # each archive starts 4-byte aligned
    output.write_bytes(base + padding + archive)
    shutil.rmtree(tree)
    return output
