"""A systemd initramfs built by dracut (Debian's dracut-core), with sealer's dracut module.

dracut 059 reads modules from ``$dracutbasedir/modules.d`` only, and takes that directory from
the environment. So the module is not installed on the host: each build gets a private base
directory of symlinks (to every file of /usr/lib/dracut, and to each of its modules) plus
``90sealer`` from the source tree. ``--conf /dev/null`` and an empty ``--confdir`` keep the
host's dracut configuration out, and ``--no-hostonly`` keeps the host's disks out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bootimage import GUEST_MODULES, REPO, Kernel

DRACUT = "dracut"
DRACUT_BASE = Path("/usr/lib/dracut")
SEALER_DRACUT_MODULE = REPO / "sealer" / "install" / "hookfiles" / "dracut" / "90sealer"
# The smallest systemd initramfs that opens a LUKS root named on the kernel command line
# (rd.luks.uuid=): everything else dracut would add without host-only mode (network, LVM,
# RAID, i18n, ...) only costs build and boot time here.
DRACUT_MODULES = (
    "systemd", "systemd-initrd", "dracut-systemd", "crypt", "dm", "rootfs-block",
    "kernel-modules", "udev-rules", "base", "fs-lib",
)


def missing_dracut() -> str | None:
    """Why a dracut initramfs cannot be built here, or None."""
    if shutil.which(DRACUT) is None:
        return "dracut is not installed (apt-get install dracut-core)"
    if not (DRACUT_BASE / "modules.d").is_dir():
        return f"{DRACUT_BASE}/modules.d is missing"
    return None


def private_dracut_base(work: Path, *, with_sealer: bool) -> Path:
    """A dracutbasedir that is the system's, plus sealer's module when asked."""
    base = work / ("dracut-base-sealer" if with_sealer else "dracut-base")
    if base.exists():
        shutil.rmtree(base)
    (base / "modules.d").mkdir(parents=True)
    for entry in DRACUT_BASE.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for module in (DRACUT_BASE / "modules.d").iterdir():
        (base / "modules.d" / module.name).symlink_to(module)
    if with_sealer:
        (base / "modules.d" / SEALER_DRACUT_MODULE.name).symlink_to(SEALER_DRACUT_MODULE)
    return base


def build_dracut_initramfs(
    output: Path, kernel: Kernel, work: Path, *, with_sealer: bool
) -> Path:
    """Run dracut for ``kernel``; with_sealer adds sealer's module (``--add sealer``)."""
    work.mkdir(parents=True, exist_ok=True)
    base = private_dracut_base(work, with_sealer=with_sealer)
    confdir = work / "dracut.conf.d"
    confdir.mkdir(exist_ok=True)
    conf = work / "sealer-initramfs.conf"
    conf.write_text(f"SEALER_PYTHON={sys.executable}\n")
    env = dict(os.environ, dracutbasedir=str(base), SEALER_INITRAMFS_CONF=str(conf))
    argv = [
        DRACUT, "--force", "--quiet", "--conf", "/dev/null", "--confdir", str(confdir),
        "--no-hostonly", "--no-hostonly-cmdline", "--compress", "zstd",
        "--modules", " ".join(DRACUT_MODULES), "--add-drivers", " ".join(GUEST_MODULES),
        "--kver", kernel.version,
    ]
    if with_sealer:
        argv += ["--add", "sealer"]
    result = subprocess.run([*argv, str(output)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"dracut failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return output
