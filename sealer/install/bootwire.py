"""``sealer boot enable|disable``: wire the boot-time unlocker into the initramfs generator.

Debian builds its initramfs with initramfs-tools or with dracut (sealer.install.initramfs
tells which). For initramfs-tools, enabling installs the keyscript and the initramfs hook
from the source checkout, records which Python has sealer installed, adds
``keyscript=/usr/lib/sealer/keyscript`` to the chosen /etc/crypttab entries, and rebuilds
the initramfs. For dracut, it installs sealer's dracut module (a systemd password agent:
systemd-cryptsetup runs no keyscripts, so crypttab stays as it is) and a dracut.conf.d file
that adds it. Disabling takes our keyscript option out of crypttab and, once no entry uses
it, removes the files again.

Everything is planned first (pure reads) and applied second, so ``--dry-run`` shows exactly
what applying would do. Files are replaced atomically; the passphrase prompt is untouched, so
a failure at any step leaves a machine that boots as before.
"""

from __future__ import annotations

import difflib
import errno
import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sealer.errors import SealerError, SystemFilesError, UsageError
from sealer.host.files import remove_durably, write_atomically
from sealer.host.proc import DEBIAN_PACKAGES, run
from sealer.install.crypttab import KEYSCRIPT_OPTION, KEYSCRIPT_PATH, Crypttab, Line
from sealer.install.crypttab import disable_line as crypttab_disable_line
from sealer.install.crypttab import enable_line as crypttab_enable_line
from sealer.install.initramfs import (
    DEFAULT_CHOICE,
    DRACUT_CONF_PATH,
    DRACUT_MODULE_FILES,
    DRACUT_MODULE_PATH,
    DRACUT_MODULES_PATH,
    InitramfsChoice,
    detect,
    dracut_conf,
    dracut_hostonly,
    dracut_module_source,
    newest_kernel,
)
from sealer.luks import cryptsetup
from sealer.luks.enrollment import enrollments

CRYPTTAB_PATH = "/etc/crypttab"
HOOK_PATH = "/etc/initramfs-tools/hooks/sealer"
# mkinitramfs runs boot scripts only from its own folders, never from ones a hook adds.
CAP_SCRIPT_PATH = "/etc/initramfs-tools/scripts/init-bottom/sealer"
CAP_SCRIPT_SOURCE = "scripts/init-bottom/sealer"
# panic() runs these before every shell it starts: the PCRs are capped before a shell runs.
PANIC_SCRIPT_PATH = "/etc/initramfs-tools/scripts/panic/sealer"
PANIC_SCRIPT_SOURCE = "scripts/panic/sealer"
CONF_PATH = "/etc/sealer/initramfs.conf"
# After a kernel install or an initramfs rebuild, approve the next boot ('sealer reseal').
# "zzz": after Debian's zz-update-grub, so that on a GRUB machine the hook sees the new
# grub.cfg. Earlier sealers installed it as zz-sealer, which ran before; it is removed.
KERNEL_HOOK_PATH = "/etc/kernel/postinst.d/zzz-sealer"
LEGACY_KERNEL_HOOK_PATH = "/etc/kernel/postinst.d/zz-sealer"
# After a kernel removal: zz-update-grub rewrites grub.cfg without the kernel's menu entries,
# and GRUB measures each entry (PCR 8) and the file (PCR 9), so the next boot needs approving.
KERNEL_REMOVAL_HOOK_PATH = "/etc/kernel/postrm.d/zzz-sealer"
INITRAMFS_UPDATE_HOOK_PATH = "/etc/initramfs/post-update.d/sealer"
# The hook files ship inside the package (package data in pyproject.toml), so a wheel or the
# Debian package wires a machine without a source checkout; --hook-source DIR overrides them.
HOOK_FILES = Path(__file__).resolve().parent / "hookfiles"
UPDATE_HOOK_SOURCE = "update/reseal-hook"  # relative to HOOK_FILES, like the next
# After a boot the TPM unlocked, drop the approvals it made stale ('sealer prune').
PRUNE_UNIT = "sealer-prune.service"
PRUNE_UNIT_PATH = f"/etc/systemd/system/{PRUNE_UNIT}"
# What 'systemctl enable' made: disable removes it with the unit (no link left dangling).
PRUNE_WANTS_PATH = f"/etc/systemd/system/multi-user.target.wants/{PRUNE_UNIT}"
PRUNE_UNIT_SOURCE = f"systemd/{PRUNE_UNIT}"
# Installed by cryptsetup-initramfs; without it no crypttab entry is opened in the initramfs.
CRYPTROOT_HOOK_PATH = "/usr/share/initramfs-tools/hooks/cryptroot"
UPDATE_INITRAMFS = ("update-initramfs", "-u")
ENABLE_PRUNE = ("systemctl", "enable", PRUNE_UNIT)
DEV_DISK = Path("/dev/disk")
# crypttab(5) source specifications and the udev symlink directories that resolve them.
_SOURCE_SPECS = {
    "UUID": "by-uuid",
    "PARTUUID": "by-partuuid",
    "LABEL": "by-label",
    "PARTLABEL": "by-partlabel",
}
_SCRIPT_MODE = 0o755  # initramfs-tools skips hooks that are not executable
_CONF_MODE = 0o644

Change = Literal["create", "update", "remove", "unchanged"]
# Why a crypttab source cannot be unlocked by sealer, or None when it can.
EnrollmentCheck = Callable[[str], str | None]


@dataclass(frozen=True)
class WireRequest:
    """What ``sealer boot enable|disable`` is asked to do: which crypttab entries, where."""

    names: tuple[str, ...] = ()
    root: Path | None = None  # a chroot or image tree; None: this machine
    crypttab: Path | None = None  # None: /etc/crypttab (under root)
    hook_source: Path | None = None  # None: HOOK_FILES, the installed package's own
    update_initramfs: bool = True  # rebuild the initramfs (update-initramfs or dracut)
    python: str = field(default_factory=lambda: sys.executable)
    initramfs: str = "auto"  # "auto", "initramfs-tools" or "dracut" (--initramfs)


@dataclass(frozen=True)
class FileChange:
    """One file the plan creates, updates or removes: its contents and mode before and after."""

    path: Path
    change: Change
    before: bytes | None
    after: bytes | None
    mode: int | None  # the mode written (None when removed)
    old_mode: int | None
    owner: tuple[int, int] | None = None  # uid, gid to keep when replacing
    follow_symlink: bool = False  # write through a symlinked /etc/crypttab, never replace it

    def diff(self) -> str:
        """A unified diff, with git's mode lines, of what applying this change does."""
        if self.change == "unchanged":
            return ""
        header = []
        if self.change == "create":
            header.append(f"new file mode {_git_mode(self.mode)}\n")
        elif self.change == "remove":
            header.append(f"deleted file mode {_git_mode(self.old_mode)}\n")
        elif self.mode != self.old_mode:
            header.append(f"old mode {_git_mode(self.old_mode)}\n")
            header.append(f"new mode {_git_mode(self.mode)}\n")
        body = difflib.unified_diff(
            _diff_lines(self.before),
            _diff_lines(self.after),
            str(self.path) if self.before is not None else "/dev/null",
            str(self.path) if self.after is not None else "/dev/null",
        )
        out = []
        for line in body:
            # difflib leaves a last line without "\n" as is; say so the way diff(1) does.
            out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
        if header and not out:  # a mode change only
            out = [f"--- {self.path}\n", f"+++ {self.path}\n"]
        return "".join(header + out)


@dataclass(frozen=True)
class EntryChange:
    """One crypttab entry's line before and after the plan (the same when it needs no change)."""

    name: str
    line: int
    source: str
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True)
class Plan:
    """Everything ``sealer boot enable|disable`` would do, computed by pure reads.

    Applying it writes the files in order, then runs the commands; ``--dry-run`` prints it
    instead.
    """

    action: Literal["enable", "disable"]
    crypttab: Path
    entries: tuple[EntryChange, ...]
    files: tuple[FileChange, ...]  # in the order they must be applied
    commands: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    initramfs: InitramfsChoice = DEFAULT_CHOICE  # the generator wired, and why
    # Directories removed after the files, when empty (dracut's module directory).
    remove_dirs: tuple[Path, ...] = ()

    @property
    def changed_files(self) -> list[FileChange]:
        return [f for f in self.files if f.change != "unchanged"]


# ---------------------------------------------------------------------------------------------
# Planning: reads only


def host_path(root: Path | None, path: str) -> Path:
    """``path`` on this machine, or inside ``root``."""
    return root / path.lstrip("/") if root is not None else Path(path)


def resolve_source(source: str, dev_disk: Path = DEV_DISK) -> Path | None:
    """The device or image a crypttab source names, or None when it is not here."""
    key, sep, value = source.partition("=")
    if sep and key in _SOURCE_SPECS:
        if not value or "/" in value or value in (".", ".."):
            return None
        candidates = [value]
        if key in ("UUID", "PARTUUID") and value.lower() != value:
            candidates.append(value.lower())  # udev names UUID links in lower case
        for candidate in candidates:
            path = dev_disk / _SOURCE_SPECS[key] / candidate
            if path.exists():
                return path
        return None
    return Path(source) if os.path.exists(source) else None


def enrollment_problem(source: str, dev_disk: Path = DEV_DISK) -> str | None:
    """Why sealer cannot unlock ``source`` (not found, not LUKS2, not enrolled), or None."""
    device = resolve_source(source, dev_disk)
    if device is None:
        return f"{source} was not found"
    try:
        found = enrollments(cryptsetup.read_header(str(device)))
    except SealerError as error:
        return error.message
    return None if found else f"{device} has no sealer enrollment"


def find_hook_source(given: Path | None) -> Path:
    """The initramfs-tools directory to install the hook and keyscript from."""
    if given is not None:
        candidates = [given / "initramfs-tools", given]
    else:
        candidates = [HOOK_FILES / "initramfs-tools"]
    for candidate in candidates:
        needed = (
            candidate / "hooks" / "sealer",
            candidate / "keyscript",
            candidate / CAP_SCRIPT_SOURCE,
            candidate / PANIC_SCRIPT_SOURCE,
            candidate / "cap",
            candidate.parent / UPDATE_HOOK_SOURCE,
            candidate.parent / PRUNE_UNIT_SOURCE,
        )
        if all(path.is_file() for path in needed):
            return candidate
    wanted = (
        "initramfs-tools/hooks/sealer, initramfs-tools/keyscript, initramfs-tools/cap, "
        f"initramfs-tools/{CAP_SCRIPT_SOURCE}, initramfs-tools/{PANIC_SCRIPT_SOURCE}, "
        f"{UPDATE_HOOK_SOURCE} and {PRUNE_UNIT_SOURCE}"
    )
    if given is not None:
        raise UsageError(
            f"--hook-source {given} has no {wanted}",
            "give a directory laid out like sealer/install/hookfiles of a sealer checkout",
        )
    raise UsageError(
        f"the sealer package's hook files are incomplete "
        f"(looked for {wanted} in {candidates[0].parent})",
        "reinstall sealer, or pass a directory laid out like sealer/install/hookfiles with "
        "--hook-source DIR",
    )


def _read(path: Path) -> tuple[bytes, os.stat_result] | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(), os.fstat(handle.fileno())
    except FileNotFoundError:
        return None
    except PermissionError as exc:
        raise SystemFilesError(
            f"cannot read {path}: permission denied", "run sealer as root"
        ) from exc
    except IsADirectoryError as exc:
        raise UsageError(f"{path} is a directory, not a file") from exc
    except OSError as exc:
        raise SystemFilesError(f"cannot read {path}: {exc.strerror}") from exc


def _read_source(path: Path) -> bytes:
    current = _read(path)
    if current is None:  # it was there a moment ago, in find_hook_source
        raise UsageError(f"{path} disappeared while sealer was reading it", "try again")
    return current[0]


def _file_change(path: Path, after: bytes | None, mode: int | None) -> FileChange | None:
    """The change that makes ``path`` hold ``after`` with ``mode`` (None: absent)."""
    if after is None and path.is_symlink() and not path.exists():
        return FileChange(path, "remove", b"", None, None, None)  # a dangling link
    current = _read(path)
    if current is None:
        if after is None:
            return None
        return FileChange(path, "create", None, after, mode, None)
    before, stat = current
    old_mode = stat.st_mode & 0o7777
    owner = (stat.st_uid, stat.st_gid)
    if after is None:
        return FileChange(path, "remove", before, None, None, old_mode, owner)
    change: Change = "unchanged" if (before, old_mode) == (after, mode) else "update"
    return FileChange(path, change, before, after, mode, old_mode, owner)


def _read_crypttab(path: Path) -> tuple[Crypttab, bytes, os.stat_result]:
    current = _read(path)
    if current is None:
        raise UsageError(
            f"{path} does not exist",
            "each volume to unlock at boot needs a crypttab(5) entry; "
            "give another file with --crypttab PATH",
        )
    data, stat = current
    # surrogateescape: any byte that is not UTF-8 goes back out exactly as it came in.
    return Crypttab.parse(data.decode("utf-8", "surrogateescape")), data, stat


def _crypttab_change(
    path: Path, data: bytes, stat: os.stat_result, table: Crypttab, follow: bool
) -> FileChange:
    after = table.render().encode("utf-8", "surrogateescape")
    mode = stat.st_mode & 0o7777  # crypttab may name key files: keep whatever mode it has
    change: Change = "unchanged" if after == data else "update"
    owner = (stat.st_uid, stat.st_gid)
    return FileChange(path, change, data, after, mode, mode, owner, follow_symlink=follow)


def _select(
    table: Crypttab, names: tuple[str, ...], crypttab: Path, keep: Callable[[Line], bool]
) -> list[Line]:
    """Lines named by --name (all of them must exist), else the lines ``keep`` accepts."""
    if not names:
        return [line for line in table.lines if keep(line)]
    chosen: dict[int, Line] = {}
    for name in names:
        found = table.lines_named(name)
        if not found:
            known = ", ".join(dict.fromkeys(table.names()))
            raise UsageError(
                f"{crypttab} has no entry named {name!r}",
                f"its entries are: {known}" if known else "it has no entries",
            )
        chosen.update((line.number, line) for line in found)
    return [chosen[n] for n in sorted(chosen)]


def _edit(
    table: Crypttab, lines: list[Line], edit: Callable[[Line, str], str], crypttab: Path
) -> tuple[Crypttab, tuple[EntryChange, ...]]:
    changes = []
    for line in lines:
        after = edit(line, str(crypttab))
        entry = line.entry
        assert entry is not None  # edit() refuses lines that are not entries
        changes.append(EntryChange(entry.name, line.number, entry.source, line.text, after))
    new_table = table.replace({c.line: c.after for c in changes if c.changed})
    return new_table, tuple(changes)


def _commands(
    request: WireRequest, choice: InitramfsChoice, action: Literal["enable", "disable"]
) -> tuple[tuple[tuple[str, ...], ...], list[str]]:
    """The commands to run after writing, and notes about those left out."""
    if choice.generator == "dracut":
        return _dracut_commands(request, action)
    if not request.update_initramfs:
        return (), [
            "update-initramfs is not run (--no-update-initramfs): the current initramfs "
            "keeps the old setup until 'update-initramfs -u' rebuilds it"
        ]
    if request.root is not None:
        return (), [
            f"update-initramfs is not run under --root: rebuild the initramfs inside that "
            f"root, e.g. 'chroot {shlex.quote(str(request.root))} update-initramfs -u'"
        ]
    return (UPDATE_INITRAMFS,), []


def _dracut_commands(
    request: WireRequest, action: Literal["enable", "disable"]
) -> tuple[tuple[tuple[str, ...], ...], list[str]]:
    """Rebuild the newest kernel's initramfs as Debian's kernel hook (postinst.d/dracut)
    does; after enable, run our kernel hook too: dracut runs no post-update hooks, and
    update-initramfs' run of /etc/initramfs/post-update.d/sealer is what approves the next
    boot on initramfs-tools."""
    version = newest_kernel(request.root)
    shown = version or "VERSION"
    rebuild = ("dracut", "--force", f"/boot/initrd.img-{shown}", shown)
    again = f"'{shlex.join(rebuild)}'"
    if not request.update_initramfs:
        return (), [
            f"dracut is not run (--no-update-initramfs): the current initramfs keeps the old "
            f"setup until {again} rebuilds it"
        ]
    if request.root is not None:
        return (), [
            f"dracut is not run under --root: rebuild the initramfs inside that root, e.g. "
            f"'chroot {shlex.quote(str(request.root))} {shlex.join(rebuild)}'"
        ]
    if version is None:
        return (), [
            "dracut is not run: /boot has no vmlinuz-VERSION; the initramfs gets sealer "
            "when the next kernel is installed"
        ]
    if action == "disable":
        return (rebuild,), []
    return (rebuild, (KERNEL_HOOK_PATH, version, f"/boot/vmlinuz-{version}")), []


def _missing_tools(commands: tuple[tuple[str, ...], ...]) -> list[str]:
    # A command given by its path is a hook the plan itself installs: not there yet.
    return [
        argv[0] for argv in commands if "/" not in argv[0] and shutil.which(argv[0]) is None
    ]


def _crypttab_path(request: WireRequest) -> Path:
    return request.crypttab or host_path(request.root, CRYPTTAB_PATH)


def initramfs_conf(python: str) -> bytes:
    """/etc/sealer/initramfs.conf: tells the hook which interpreter has sealer installed."""
    if not python:
        raise SystemFilesError(
            "cannot tell which Python runs sealer (sys.executable is empty)",
            "run sealer with the interpreter it is installed in, e.g. /path/to/venv/bin/python "
            "-m sealer",
        )
    # abspath, not realpath: a virtualenv's python is a symlink to the base interpreter, and
    # only the venv's own path brings the venv's site-packages (and so sealer) along.
    text = (
        "# Written by 'sealer boot enable'; removed by 'sealer boot disable'.\n"
        f"# {HOOK_PATH} sources this file when it builds the initramfs,\n"
        "# to find the Python interpreter that has sealer installed.\n"
        f"SEALER_PYTHON={shlex.quote(os.path.abspath(python))}\n"
    )
    return text.encode()


def prune_unit_text(template: bytes, python: str) -> bytes:
    """The prune unit, running sealer with the interpreter it is installed in."""
    interpreter = shlex.quote(os.path.abspath(python)) if python else "python3"
    return template.replace(b"@SEALER_PYTHON@", interpreter.encode())


def check_install_is_roots(python: str) -> None:
    """Refuse an interpreter or sealer install that anyone but root could change.

    The initramfs hook bundles what this interpreter imports (sealer, its dependencies, the
    standard library) and the prune unit runs it as root at every boot: whoever can write the
    interpreter, a ``.pth`` file in its site-packages or the sealer package runs code as root,
    in the initramfs too, before the cap. So each of those files and directories, and every
    directory above them, must be owned by root and not writable by group or others (a
    sticky directory such as /tmp is fine: others cannot replace what root put there).
    """
    import importlib.util
    import site
    import stat

    places = [Path(os.path.abspath(python)), Path(os.path.realpath(python)),
              Path(os.__file__).parent, *map(Path, site.getsitepackages())]
    for module in ("sealer", "cryptography", "tpm2_pytss"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            package = Path(spec.origin).resolve().parent
            places += [package, package.parent]
    checked: set[Path] = set()
    for place in places:
        for path in (place, *place.parents):
            if path in checked:
                continue
            checked.add(path)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue  # a site-packages directory that does not exist: nothing in it runs
            except OSError as exc:
                raise SystemFilesError(f"cannot check who owns {path}: {exc.strerror}") from exc
            if stat.S_ISLNK(info.st_mode):
                continue  # its target and the directories above it are checked themselves
            sticky = stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX
            if info.st_uid != 0:
                problem = f"is owned by uid {info.st_uid}, not root"
            elif info.st_mode & 0o022 and not sticky:
                problem = f"is writable by group or others (mode {info.st_mode & 0o7777:o})"
            else:
                continue
            raise SystemFilesError(
                f"{path} {problem}, and the initramfs and the prune unit would run the "
                f"Python or sealer under it as root ({os.path.abspath(python)}; nothing was "
                "changed)",
                "install sealer as root where only root can write (e.g. a venv under "
                "/opt/sealer, 'chown -R root: DIR; chmod -R go-w DIR') and run 'sealer boot "
                "enable' with its python",
            )


def _refuse_names_for_dracut(request: WireRequest, choice: InitramfsChoice) -> None:
    if choice.generator == "dracut" and request.names:
        raise UsageError(
            f"--name chooses crypttab entries for initramfs-tools' keyscript, but this "
            f"system builds its initramfs with dracut ({choice.reason}), where sealer's "
            "password agent answers for every enrolled volume",
            "leave out --name (a volume that is not enrolled still gets the passphrase "
            "prompt), or choose the generator with --initramfs",
        )


def plan_enable(request: WireRequest, check: EnrollmentCheck = enrollment_problem) -> Plan:
    """What ``sealer boot enable`` would change; nothing is written."""
    check_install_is_roots(request.python)
    choice = detect(request.root, request.initramfs)
    _refuse_names_for_dracut(request, choice)
    crypttab = _crypttab_path(request)
    table, data, stat = _read_crypttab(crypttab)
    source = find_hook_source(request.hook_source)
    if choice.generator == "dracut":
        unchanged = _crypttab_change(crypttab, data, stat, table, follow=request.root is None)
        return _plan_enable_dracut(request, choice, source, unchanged, table, check)
    warnings: list[str] = []
    problems: list[str] = []

    def enrolled(line: Line) -> bool:
        if line.entry is None:
            return False
        problem = check(line.entry.source)
        if problem is not None:
            problems.append(f"{line.entry.name}: {problem}")
        return problem is None

    chosen = _select(table, request.names, crypttab, enrolled)
    if not chosen:
        found = "; ".join(problems) if problems else "it has no entries"
        raise UsageError(
            f"no entry of {crypttab} is a LUKS2 volume enrolled with sealer ({found})",
            "enroll the volume first with 'sealer enroll DEVICE', or choose entries with "
            "--name NAME",
        )
    # Entries chosen by --name: do as asked, but say when the keyscript can only fall back.
    for line in chosen if request.names else ():
        entry = line.entry
        problem = check(entry.source) if entry is not None else None
        if entry is not None and problem is not None:
            warnings.append(
                f"entry {entry.name!r}: {problem}; the keyscript unlocks only a volume "
                "enrolled with 'sealer enroll', others get the passphrase prompt"
            )
    new_table, entries = _edit(table, chosen, crypttab_enable_line, crypttab)

    root = request.root
    keyscript = _read_source(source / "keyscript")
    hook = _read_source(source / "hooks" / "sealer")
    cap_script = _read_source(source / CAP_SCRIPT_SOURCE)
    panic_script = _read_source(source / PANIC_SCRIPT_SOURCE)
    update_hook = _read_source(source.parent / UPDATE_HOOK_SOURCE)
    prune_unit = prune_unit_text(_read_source(source.parent / PRUNE_UNIT_SOURCE), request.python)
    # Order matters: Debian's cryptsetup rejects a keyscript= that is not an executable
    # file, so the keyscript and hook are in place before crypttab names them.
    files = [
        _file_change(host_path(root, KEYSCRIPT_PATH), keyscript, _SCRIPT_MODE),
        _file_change(host_path(root, HOOK_PATH), hook, _SCRIPT_MODE),
        _file_change(host_path(root, CAP_SCRIPT_PATH), cap_script, _SCRIPT_MODE),
        _file_change(host_path(root, PANIC_SCRIPT_PATH), panic_script, _SCRIPT_MODE),
        _file_change(host_path(root, CONF_PATH), initramfs_conf(request.python), _CONF_MODE),
        _file_change(host_path(root, KERNEL_HOOK_PATH), update_hook, _SCRIPT_MODE),
        _file_change(host_path(root, KERNEL_REMOVAL_HOOK_PATH), update_hook, _SCRIPT_MODE),
        _file_change(host_path(root, LEGACY_KERNEL_HOOK_PATH), None, None),
        _file_change(host_path(root, INITRAMFS_UPDATE_HOOK_PATH), update_hook, _SCRIPT_MODE),
        _file_change(host_path(root, PRUNE_UNIT_PATH), prune_unit, _CONF_MODE),
        _crypttab_change(crypttab, data, stat, new_table, follow=root is None),
    ]
    commands, command_notes = _commands(request, choice, "enable")
    if commands:
        commands = (*commands, ENABLE_PRUNE)
    else:
        command_notes.append(f"enable pruning in that root: 'systemctl enable {PRUNE_UNIT}'")
    # Say which entries the automatic choice left out, so a missing one is explained.
    notes = [] if request.names else [f"left out {problem}" for problem in problems]
    notes += command_notes
    if not host_path(root, CRYPTROOT_HOOK_PATH).exists():
        warnings.append(
            f"{host_path(root, CRYPTROOT_HOOK_PATH)} is missing: without cryptsetup-initramfs "
            "the initramfs opens no encrypted volume (apt-get install cryptsetup-initramfs)"
        )
    warnings += [f"{tool} is not installed" for tool in _missing_tools(commands)]
    return Plan(
        action="enable",
        crypttab=crypttab,
        entries=entries,
        files=tuple(f for f in files if f is not None),
        commands=commands,
        notes=tuple(notes),
        warnings=tuple(warnings),
        initramfs=choice,
    )


def _plan_enable_dracut(
    request: WireRequest,
    choice: InitramfsChoice,
    source: Path,
    crypttab_file: FileChange,  # as it is: it is not changed
    table: Crypttab,
    check: EnrollmentCheck,
) -> Plan:
    """The dracut half of plan_enable: the module, its dracut.conf.d file, the hooks.

    crypttab is not changed: systemd-cryptsetup runs no keyscript (it ignores the option,
    with a warning) and asks its password agents instead, sealer's among them. So the
    entries are only looked at, to say which volumes the TPM will unlock: none enrolled is
    a warning, not a refusal (under --root the volumes are often not on this machine)."""
    root = request.root
    module_source = dracut_module_source(source)
    update_hook = _read_source(source.parent / UPDATE_HOOK_SOURCE)
    prune_unit = prune_unit_text(_read_source(source.parent / PRUNE_UNIT_SOURCE), request.python)
    module = host_path(root, DRACUT_MODULE_PATH)
    # Order matters: the module needs SEALER_PYTHON, and the dracut.conf.d file, which makes
    # every rebuild include the module, comes last, once everything it needs is in place.
    files = [
        _file_change(host_path(root, CONF_PATH), initramfs_conf(request.python), _CONF_MODE),
        *(
            _file_change(module / name, _read_source(module_source / name), mode)
            for name, mode in DRACUT_MODULE_FILES
        ),
        # After /etc/kernel/postinst.d/dracut, which builds the new kernel's initramfs.
        _file_change(host_path(root, KERNEL_HOOK_PATH), update_hook, _SCRIPT_MODE),
        _file_change(host_path(root, KERNEL_REMOVAL_HOOK_PATH), update_hook, _SCRIPT_MODE),
        _file_change(host_path(root, LEGACY_KERNEL_HOOK_PATH), None, None),
        _file_change(host_path(root, PRUNE_UNIT_PATH), prune_unit, _CONF_MODE),
        _file_change(host_path(root, DRACUT_CONF_PATH), dracut_conf(), _CONF_MODE),
    ]
    crypttab = crypttab_file.path
    entries = []
    problems = []
    for line in table.lines:
        entry = line.entry
        if entry is None:
            continue
        problem = check(entry.source)
        if problem is None:
            entries.append(EntryChange(entry.name, line.number, entry.source, line.text,
                                       line.text))
        else:
            problems.append(f"{entry.name}: {problem}")
    commands, command_notes = _commands(request, choice, "enable")
    if commands:
        commands = (*commands, ENABLE_PRUNE)
    else:
        command_notes.append(f"enable pruning in that root: 'systemctl enable {PRUNE_UNIT}'")
    # With none enrolled, the warning below says it all.
    notes = [f"{p}: it keeps asking for its passphrase" for p in problems] if entries else []
    if not dracut_hostonly(root):
        notes.append(
            "dracut builds a generic initramfs here (hostonly is not 'yes'), which holds no "
            "/etc/crypttab: it opens the volumes the kernel command line names "
            "(rd.luks.uuid=UUID); sealer answers for those that are enrolled"
        )
    stale = [entry.name for _, entry in table.entries() if entry.uses_sealer]
    if stale:
        notes.append(
            f"{', '.join(stale)} still carry {KEYSCRIPT_OPTION} from an initramfs-tools "
            "setup; systemd-cryptsetup ignores it ('Encountered unknown /etc/crypttab "
            "option'); 'sealer boot disable' takes it out with the rest"
        )
    notes += command_notes
    warnings = []
    if not entries:
        found = "; ".join(problems) if problems else "it has no entries"
        warnings.append(
            f"no entry of {crypttab} is a LUKS2 volume enrolled with sealer ({found}): every "
            "volume asks for its passphrase until 'sealer enroll DEVICE'"
        )
    if not host_path(root, DRACUT_MODULES_PATH).is_dir():
        warnings.append(
            f"{host_path(root, DRACUT_MODULES_PATH)} is missing: dracut is not installed "
            "(apt-get install dracut)"
        )
    warnings += [f"{tool} is not installed" for tool in _missing_tools(commands)]
    return Plan(
        action="enable",
        crypttab=crypttab,
        entries=tuple(entries),
        files=(*(f for f in files if f is not None), crypttab_file),
        commands=commands,
        notes=tuple(notes),
        warnings=tuple(warnings),
        initramfs=choice,
    )


def plan_disable(request: WireRequest) -> Plan:
    """What ``sealer boot disable`` would change; nothing is written.

    With dracut every file goes (the agent answers for all enrolled volumes, so there is no
    choice of entries); the keyscript option goes from every entry that still has it."""
    choice = detect(request.root, request.initramfs)
    _refuse_names_for_dracut(request, choice)
    crypttab = _crypttab_path(request)
    table, data, stat = _read_crypttab(crypttab)

    def ours(line: Line) -> bool:
        return line.entry is not None and line.entry.uses_sealer

    chosen = _select(table, request.names, crypttab, ours)
    new_table, entries = _edit(table, chosen, crypttab_disable_line, crypttab)
    root = request.root
    # crypttab first: it must never name a keyscript that is already gone.
    files: list[FileChange | None] = [
        _crypttab_change(crypttab, data, stat, new_table, follow=root is None)
    ]
    notes: list[str] = []
    remove_dirs: tuple[Path, ...] = ()
    still = [entry.name for _, entry in new_table.entries() if entry.uses_sealer]
    if still:
        notes.append(
            f"the keyscript and hook stay installed: {KEYSCRIPT_OPTION} is still used by "
            f"{', '.join(still)}"
        )
    else:
        # Both generators' files: only 'sealer boot enable' makes these paths, and one left
        # by a wiring for the other generator would be stale. The dracut.conf.d file goes
        # before the module it names (a rebuild in between would fail without the module).
        module = host_path(root, DRACUT_MODULE_PATH)
        files += [
            _file_change(host_path(root, path), None, None)
            for path in (
                DRACUT_CONF_PATH,
                HOOK_PATH, CAP_SCRIPT_PATH, PANIC_SCRIPT_PATH, CONF_PATH, KEYSCRIPT_PATH,
                KERNEL_HOOK_PATH, KERNEL_REMOVAL_HOOK_PATH, LEGACY_KERNEL_HOOK_PATH,
                INITRAMFS_UPDATE_HOOK_PATH,
                PRUNE_WANTS_PATH, PRUNE_UNIT_PATH,
            )
        ]
        files += [_file_change(module / name, None, None) for name, _ in DRACUT_MODULE_FILES]
        if module.is_dir():
            remove_dirs = (module,)
    commands, command_notes = _commands(request, choice, "disable")
    warnings = [f"{tool} is not installed" for tool in _missing_tools(commands)]
    return Plan(
        action="disable",
        crypttab=crypttab,
        entries=entries,
        files=tuple(f for f in files if f is not None),
        commands=commands,
        notes=tuple(notes + command_notes),
        warnings=tuple(warnings),
        initramfs=choice,
        remove_dirs=remove_dirs,
    )


# ---------------------------------------------------------------------------------------------
# Applying


def apply(
    plan: Plan, say: Callable[[str], None], relay: Callable[[str], None] | None = None
) -> None:
    """Write the plan's files in order, then run its commands; ``relay`` gets each line a
    successful command wrote to stderr (the update hook's warnings among them)."""
    missing = _missing_tools(plan.commands)
    if missing:
        # Checked before writing anything: a half-applied change is worse than none.
        raise SystemFilesError(
            f"{missing[0]} is not installed, so the initramfs cannot be rebuilt",
            f"install {DEBIAN_PACKAGES.get(missing[0], missing[0])}, or pass --no-update-initramfs "
            "and rebuild it yourself",
        )
    for change in plan.changed_files:
        if change.change == "remove":
            _remove(change.path)
        else:
            assert change.after is not None and change.mode is not None
            target = Path(os.path.realpath(change.path)) if change.follow_symlink else change.path
            _write_atomic(target, change.after, change.mode, change.owner)
    for directory in plan.remove_dirs:
        _remove_empty_dir(directory)
    for argv in plan.commands:
        say(f"running {' '.join(argv)}")
        result = run(argv)
        if result.returncode != 0:
            raise SystemFilesError(
                f"{' '.join(argv)} failed: {result.reason}",
                "the files are already changed and the old initramfs is still in place; "
                f"fix the cause and run '{' '.join(argv)}' (or undo with 'sealer boot disable')",
            )
        if relay is not None:
            for line in result.stderr.splitlines():
                if line.strip():
                    relay(line)


def _os_error(action: str, path: Path, exc: OSError) -> SealerError:
    hint = "run sealer as root" if isinstance(exc, PermissionError) else None
    return SystemFilesError(f"cannot {action} {path}: {exc.strerror or exc}", hint)


def _write_atomic(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    try:
        write_atomically(path, data, mode=mode, owner=owner, parent_mode=0o755)
    except OSError as exc:
        raise _os_error("write", path, exc) from exc


def _remove(path: Path) -> None:
    try:
        remove_durably(path)
    except OSError as exc:
        raise _os_error("remove", path, exc) from exc


def _remove_empty_dir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return  # it holds a file sealer did not put there: leave it
        raise _os_error("remove", path, exc) from exc


def _git_mode(mode: int | None) -> str:
    return f"100{(mode or 0):o}"


def _diff_lines(data: bytes | None) -> list[str]:
    if data is None:
        return []
    # Display only: replace undecodable bytes rather than print lone surrogates.
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out
