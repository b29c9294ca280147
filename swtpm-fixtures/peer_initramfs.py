"""Initramfs images of sealer's peers for the boot benchmark (bench/boot_unlock.py).

- clevis: Debian's ``clevis-initramfs`` (tpm2 pin) with initramfs-tools. Its hook would go
  into every initramfs the host builds, so it is never installed on the host: an
  ``mmdebstrap --variant=apt`` root with the host's kernel package (same ABI, same modules)
  builds two images with the same private initramfs-tools configuration the host's images
  use (bootimage.initramfs_confdir): first the floor (cryptsetup-initramfs and a keyscript
  that prints the passphrase), then, after ``apt-get install clevis-initramfs``, clevis's.
  The floor built in the root is clevis's own baseline: growth is measured against the same
  build environment.
- systemd: systemd-cryptsetup's tpm2 token in a dracut (systemd) initramfs built on the host
  (Debian's dracut-core, as dracut_image.py), plus dracut's ``tpm2-tss`` module, which brings
  libtss2 and cryptsetup's token plugin libcryptsetup-token-systemd-tpm2.so. Its floor is the
  same image without the TPM module, with the passphrase as a key file in the image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bootimage import GUEST_MODULES, Kernel, initramfs_confdir
from dracut_image import DRACUT, DRACUT_MODULES, private_dracut_base

SUITE = "bookworm"
# What the host has for its own images (the e2e kit), so that the root's floor image holds
# what the host's does: busybox-static (not busybox), e2fsprogs (fsck.ext4: the boot checks
# the root with it), systemd (udev rules and modprobe.d files initramfs-tools copies).
CHROOT_BASE_PACKAGES = ("cryptsetup-initramfs", "busybox-static", "zstd", "e2fsprogs", "systemd")
CLEVIS_PACKAGES = ("clevis-initramfs", "clevis-tpm2", "clevis-luks")
# Where the dracut floor's key file lives inside its initramfs.
DRACUT_KEY_FILE = "/etc/bench-root.key"


@dataclass(frozen=True)
class ClevisImages:
    floor: Path  # the root's initramfs before clevis: keyscript printing the passphrase
    clevis: Path
    versions: dict[str, str]  # package -> version, as installed in the root


def build_clevis_images(
    work: Path, kernel: Kernel, floor_hooks: dict[str, str], log: Path
) -> ClevisImages:
    """Build the floor and clevis images in an mmdebstrap root (a minute or two)."""
    work.mkdir(parents=True, exist_ok=True)
    hooks = {f"hooks/{name}": text for name, text in floor_hooks.items()}
    floor_conf = initramfs_confdir(work / "floor-conf", hooks)
    clevis_conf = initramfs_confdir(work / "clevis-conf", {})
    out = work / "out"
    out.mkdir(exist_ok=True)
    package = f"linux-image-{kernel.version}"
    mkinitramfs = (
        'chroot "$1" mkinitramfs -d /root/{0}/initramfs-tools -o /root/initrd-{0}.img '
        + kernel.version
    )
    argv = [
        "mmdebstrap", "--variant=apt", "--mode=root",
        "--aptopt=APT::Install-Recommends \"false\"",
        f"--include={','.join((package, *CHROOT_BASE_PACKAGES))}",
        '--customize-hook=mkdir -p "$1/root/floor" "$1/root/clevis"',
        f"--customize-hook=copy-in {floor_conf} /root/floor",
        f"--customize-hook=copy-in {clevis_conf} /root/clevis",
        "--customize-hook=" + mkinitramfs.format("floor"),
        # clevis's postinst triggers update-initramfs for /boot's image: wasted but harmless.
        '--customize-hook=chroot "$1" apt-get install -y --no-install-recommends '
        + " ".join(CLEVIS_PACKAGES),
        "--customize-hook=" + mkinitramfs.format("clevis"),
        '--customize-hook=chroot "$1" dpkg-query -W -f \'${Package} ${Version}\\n\' '
        f'{package} clevis clevis-initramfs initramfs-tools > "$1/root/versions"',
        f"--customize-hook=copy-out /root/initrd-floor.img /root/initrd-clevis.img "
        f"/root/versions {out}",
        SUITE, str(work / "root"),
    ]
    with open(log, "w") as handle:
        subprocess.run(argv, check=True, stdout=handle, stderr=subprocess.STDOUT)
    shutil.rmtree(work / "root")  # about 400 MB; only the images are kept
    versions = dict(
        line.split(" ", 1) for line in (out / "versions").read_text().splitlines() if line
    )
    return ClevisImages(out / "initrd-floor.img", out / "initrd-clevis.img", versions)


def build_systemd_initramfs(
    output: Path, kernel: Kernel, work: Path, *, key: bytes | None
) -> Path:
    """dracut's systemd initramfs: ``key=None`` adds the tpm2-tss module (systemd-cryptsetup's
    tpm2 token); else no TPM module, and ``key`` as the key file DRACUT_KEY_FILE."""
    work.mkdir(parents=True, exist_ok=True)
    base = private_dracut_base(work, with_sealer=False)
    confdir = work / "dracut.conf.d"
    confdir.mkdir(exist_ok=True)
    modules = (*DRACUT_MODULES, "tpm2-tss") if key is None else DRACUT_MODULES
    argv = [
        DRACUT, "--force", "--quiet", "--conf", "/dev/null", "--confdir", str(confdir),
        "--no-hostonly", "--no-hostonly-cmdline", "--compress", "zstd",
        "--modules", " ".join(modules), "--add-drivers", " ".join(GUEST_MODULES),
        "--kver", kernel.version,
    ]
    if key is not None:
        key_file = work / "root.key"
        key_file.write_bytes(key)
        key_file.chmod(0o600)
        argv += ["--include", str(key_file), DRACUT_KEY_FILE]
    env = dict(os.environ, dracutbasedir=str(base))
    result = subprocess.run([*argv, str(output)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"dracut failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return output
