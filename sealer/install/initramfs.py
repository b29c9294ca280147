"""Which initramfs generator a Debian system uses, and what dracut needs to know: pure reads.

Debian has two: initramfs-tools (the default) and dracut. The ``dracut`` package conflicts
with initramfs-tools and ships the kernel hook that builds the initramfs
(/etc/kernel/postinst.d/dracut); ``dracut-core`` only ships the tools and can sit beside
initramfs-tools without building anything at a kernel install. So dracut-core alone, or a
/usr/bin/dracut, says nothing: dpkg's record of the ``dracut`` and ``initramfs-tools``
packages does. Without a dpkg database (an image tree), the kernel hooks say which generator
a kernel install runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sealer.errors import UsageError

Generator = Literal["initramfs-tools", "dracut"]
GENERATORS: tuple[Generator, ...] = ("initramfs-tools", "dracut")

DPKG_STATUS_PATH = "/var/lib/dpkg/status"
# dpkg states in which a package's files are in place and configured (triggers aside).
_INSTALLED_STATES = frozenset({"installed", "triggers-pending", "triggers-awaited"})
# The kernel hooks each generator's package ships, and the program each of them runs.
KERNEL_HOOKS: dict[Generator, tuple[str, str]] = {
    "initramfs-tools": ("/etc/kernel/postinst.d/initramfs-tools", "/usr/sbin/update-initramfs"),
    "dracut": ("/etc/kernel/postinst.d/dracut", "/usr/bin/dracut"),
}

# dracut reads modules from its base directory only (dracutbasedir, /usr/lib/dracut), never
# from /etc: the module is installed there, as a package would.
DRACUT_MODULES_PATH = "/usr/lib/dracut/modules.d"
DRACUT_MODULE_NAME = "90sealer"
DRACUT_MODULE_PATH = f"{DRACUT_MODULES_PATH}/{DRACUT_MODULE_NAME}"
# Every file of hookfiles/dracut/90sealer, with its mode: disable removes exactly these.
DRACUT_MODULE_FILES: tuple[tuple[str, int], ...] = (
    ("module-setup.sh", 0o755),  # dracut sources it, but its own modules are executable
    ("sealer-ask-password.path", 0o644),
    ("sealer-ask-password.service", 0o644),
    ("sealer-cap.service", 0o644),
    ("sealer-cap-before-shell.conf", 0o644),
)
# The module's check() never includes it by itself: this file asks for it.
DRACUT_CONF_PATH = "/etc/dracut.conf.d/90-sealer.conf"
# dracut's configuration, in the order it reads it (a later assignment wins).
_DRACUT_CONF = "/etc/dracut.conf"
_DRACUT_CONF_DIRS = ("/usr/lib/dracut/dracut.conf.d", "/etc/dracut.conf.d")
_HOSTONLY = re.compile(r"""^\s*hostonly\s*=\s*(["']?)(\w*)\1\s*(?:#.*)?$""")


@dataclass(frozen=True)
class InitramfsChoice:
    """The generator to wire, and why (shown in the plan, its --dry-run and its JSON)."""

    generator: Generator
    reason: str


DEFAULT_CHOICE = InitramfsChoice("initramfs-tools", "sealer's default")


def _under(root: Path | None, path: str) -> Path:
    return root / path.lstrip("/") if root is not None else Path(path)


def dpkg_installed(status: str, packages: tuple[str, ...]) -> set[str]:
    """Which of ``packages`` dpkg's status file (its text) records as installed."""
    found: set[str] = set()
    for paragraph in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line[:1].isspace():
                fields[key.strip().lower()] = value.strip()
        name = fields.get("package")
        state = fields.get("status", "").split()
        if name in packages and state and state[-1] in _INSTALLED_STATES:
            found.add(name)
    return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise UsageError(
            f"cannot read {path} to tell which initramfs generator is used: {exc.strerror}",
            "choose one with --initramfs initramfs-tools or --initramfs dracut",
        ) from exc


def detect(root: Path | None, asked: str = "auto") -> InitramfsChoice:
    """The generator this system (or the tree at ``root``) builds its initramfs with."""
    if asked in GENERATORS:
        generator: Generator = "dracut" if asked == "dracut" else "initramfs-tools"
        return InitramfsChoice(generator, "chosen with --initramfs")
    status_path = _under(root, DPKG_STATUS_PATH)
    status = _read_text(status_path)
    if status is not None:
        installed = dpkg_installed(status, ("dracut", "initramfs-tools", "dracut-core"))
        if "dracut" in installed:
            return InitramfsChoice(
                "dracut",
                f"{status_path} records the dracut package as installed: it replaces "
                "initramfs-tools, and its kernel hook runs dracut",
            )
        if "initramfs-tools" in installed:
            beside = (
                "; dracut-core is installed too, but without the dracut package a kernel "
                "install does not run it"
                if "dracut-core" in installed
                else ""
            )
            return InitramfsChoice(
                "initramfs-tools",
                f"{status_path} records the initramfs-tools package as installed{beside}",
            )
    # No dpkg record of either: the kernel hooks that a kernel install would run.
    hooked = [
        generator
        for generator, (hook, program) in KERNEL_HOOKS.items()
        if _under(root, hook).is_file() and _under(root, program).is_file()
    ]
    if len(hooked) == 1:
        hook, program = KERNEL_HOOKS[hooked[0]]
        return InitramfsChoice(
            hooked[0],
            f"no dpkg record of either package; {_under(root, hook)} runs {program} after "
            "a kernel install",
        )
    if hooked:
        raise UsageError(
            f"cannot tell whether {_under(root, '/')} builds its initramfs with "
            "initramfs-tools or dracut: dpkg records neither package and both kernel hooks "
            "are installed",
            "choose one with --initramfs initramfs-tools or --initramfs dracut",
        )
    return InitramfsChoice(
        "initramfs-tools",
        "no dpkg record of dracut or initramfs-tools and no kernel hook of either: "
        "initramfs-tools, sealer's default (choose with --initramfs)",
    )


def dracut_module_source(initramfs_tools_source: Path) -> Path:
    """Sealer's dracut module beside the initramfs-tools directory find_hook_source gives."""
    module = initramfs_tools_source.parent / "dracut" / DRACUT_MODULE_NAME
    missing = [name for name, _ in DRACUT_MODULE_FILES if not (module / name).is_file()]
    if missing:
        raise UsageError(
            f"the dracut module {module} is incomplete (missing {', '.join(missing)})",
            "give a directory laid out like sealer/install/hookfiles with --hook-source",
        )
    return module


def dracut_conf() -> bytes:
    """/etc/dracut.conf.d/90-sealer.conf: adds sealer's module to every initramfs dracut builds."""
    return (
        b"# Written by 'sealer boot enable'; removed by 'sealer boot disable'.\n"
        b"# Adds sealer's module (/usr/lib/dracut/modules.d/90sealer): the TPM answers\n"
        b"# the passphrase request of every volume enrolled with 'sealer enroll'.\n"
        b'add_dracutmodules+=" sealer "\n'
    )


def dracut_hostonly(root: Path | None) -> bool:
    """Whether dracut builds host-only images; Debian's default (no setting) is generic."""
    files = [_under(root, _DRACUT_CONF)]
    # Same-named files in /etc override those in /usr/lib; all are read in name order.
    by_name: dict[str, Path] = {}
    for directory in _DRACUT_CONF_DIRS:
        try:
            for path in _under(root, directory).glob("*.conf"):
                by_name[path.name] = path
        except OSError:
            continue
    files += [by_name[name] for name in sorted(by_name)]
    hostonly = False
    for path in files:
        text = _read_text(path) if path.is_file() else None
        for line in (text or "").splitlines():
            match = _HOSTONLY.match(line)
            if match:
                hostonly = match.group(2) == "yes"
    return hostonly


def _version_key(version: str) -> list[tuple[int, int | str]]:
    # 6.1.0-10 after 6.1.0-9: numbers compare as numbers.
    return [(0, int(part)) if part.isdigit() else (1, part)
            for part in re.split(r"(\d+)", version) if part]


def newest_kernel(root: Path | None) -> str | None:
    """The newest kernel version with a /boot/vmlinuz-VERSION, as update-initramfs -u picks."""
    try:
        versions = [
            path.name.removeprefix("vmlinuz-")
            for path in _under(root, "/boot").glob("vmlinuz-*")
            if path.is_file()
        ]
    except OSError:
        return None
    return max(versions, key=_version_key) if versions else None
