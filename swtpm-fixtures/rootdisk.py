"""A LUKS2 root disk whose tiny static root reports to the serial console, then powers off.

The host has no device-mapper, so the disk is made the way an installer without dm-crypt
could: an ext4 file system filled from a directory, then encrypted in place by
``cryptsetup reencrypt --encrypt`` into the room left at the end of the file.

The root's /sbin/init (busybox-static) prints one line per PCR the test may want, a line
saying the root is up, and powers the machine off; QEMU then exits on its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # busybox-static's binary: no libraries needed in the root
REPORT_PCRS = tuple(range(16))
ROOT_UP = "SEALER-E2E: root file system is up"
EVENT_LOG_BEGIN = "SEALER-E2E: event log begin"
EVENT_LOG_END = "SEALER-E2E: event log end"

INIT_SCRIPT = f"""#!/bin/busybox sh
# Runs as PID 1 on the unlocked root: report the TPM's PCRs, then power off.
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
for n in {" ".join(str(p) for p in REPORT_PCRS)}; do
    v=$(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$n 2>/dev/null || echo missing)
    echo "SEALER-E2E: pcr sha256 $n $v"
done
echo "SEALER-E2E: cmdline $(/bin/busybox cat /proc/cmdline)"
# The firmware's event log, for the tests that predict and explain PCRs (about 7 KiB).
echo "{EVENT_LOG_BEGIN}"
/bin/busybox base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo "{EVENT_LOG_END}"
echo "{ROOT_UP}"
/bin/busybox sync
/bin/busybox poweroff -f
"""

_FS_MIB = 16
_LUKS_ROOM_MIB = 32  # reencrypt moves the data to make room for the LUKS2 header here


# A systemd initramfs (dracut) moves /run into the new root and fails when there is no
# directory to move it to; os-release makes the tree an "OS tree", which its switch-root
# checks. initramfs-tools' run-init needs neither and minds neither.
_OS_RELEASE = 'ID=debian\nPRETTY_NAME="sealer e2e root"\n'


def make_root_tree(tree: Path) -> Path:
    for sub in ("bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "os-release").write_text(_OS_RELEASE)
    (tree / "bin" / "busybox").write_bytes(BUSYBOX.read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    init = tree / "sbin" / "init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    return tree


def make_file_system(path: Path, tree: Path) -> Path:
    """The root's ext4 file system, filled from ``tree``, in a new file at ``path``."""
    with open(path, "wb") as handle:
        handle.truncate(_FS_MIB * 1024 * 1024)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "sealer-root", "-d", str(tree), str(path)],
        check=True, capture_output=True,
    )
    return path


def make_luks_root(path: Path, passphrase: bytes, work: Path) -> str:
    """Build the encrypted root disk at ``path``; return its LUKS UUID."""
    make_file_system(path, make_root_tree(work / "root-tree"))
    return encrypt_in_place(path, passphrase)


def file_system_uuid(path: Path) -> str:
    """The UUID of the (unencrypted) file system in the image at ``path``."""
    return subprocess.run(
        ["blkid", "-o", "value", "-s", "UUID", str(path)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()


def encrypt_in_place(path: Path, passphrase: bytes) -> str:
    """Encrypt the file system image at ``path`` into LUKS2; return the LUKS UUID."""
    with open(path, "ab") as handle:
        handle.truncate((_FS_MIB + _LUKS_ROOM_MIB) * 1024 * 1024)
    subprocess.run(
        [
            "cryptsetup", "reencrypt", "--encrypt", "--batch-mode", "--type", "luks2",
            "--reduce-device-size", f"{_LUKS_ROOM_MIB}M", "--key-file=-",
            # The test passphrase keyslot needs no strong KDF, and a fast one keeps each
            # fallback boot quick under software emulation.
            "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
            str(path),
        ],
        input=passphrase, check=True, capture_output=True,
    )
    uuid = subprocess.run(
        ["cryptsetup", "luksUUID", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return uuid
