"""The one way sealer writes a file: all or nothing, with the mode it must have.

A crash, a power cut or a full disk leaves the old file or the new one, never a part of one:
the data goes to a new temporary file in the same directory (O_EXCL, so nothing planted
there is followed), which is fsynced, renamed over the target, and the directory fsynced
after it. Private files (policy keys, escrow records, the lockout authorization) are 0600
in a 0700 directory; system files (crypttab, hooks) and published files (approvals) carry
the mode and owner their readers expect.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

from sealer.errors import StateError
from sealer.host.checkpoint import before_write


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int,
    owner: tuple[int, int] | None = None,
    parent_mode: int | None = None,
) -> None:
    """Replace ``path`` with ``data`` (mode ``mode``, owner ``owner`` if given) so that a
    reader, or a crash, sees the old file or the new one. With ``parent_mode``, a missing
    directory is made with that mode. OSError on failure; no temporary file is left."""
    if parent_mode is not None:
        path.parent.mkdir(mode=parent_mode, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            os.fchmod(fd, mode)  # mkstemp makes 0600; set the mode explicitly
            stat = os.fstat(fd)
            if owner is not None and owner != (stat.st_uid, stat.st_gid):
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:  # a nearly full file system may take part of it per call
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # no partial file for the next run to trust
            os.unlink(temp)
        raise
    fsync_directory(path.parent)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, mode 0600 (its directory made 0700 if absent); OSError."""
    write_atomically(path, data, mode=0o600, parent_mode=0o700)


def write_public_file(path: Path, data: bytes) -> None:
    """Write a file anyone may read (mode 0644) into an existing directory; OSError."""
    write_atomically(path, data, mode=0o644)


def create_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``; FileExistsError if it exists (never overwrites a key).

    Not atomic by rename (that would replace a file made meanwhile): a crash may leave it
    short, which the reader of a key file notices."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def remove_durably(path: Path) -> None:
    """Remove ``path`` (absent is fine) so that the removal survives a power loss; OSError."""
    path.unlink(missing_ok=True)
    fsync_directory(path.parent)


def rename_durably(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (same directory) so the rename survives a power
    loss: the directory is fsynced after it. OSError on failure."""
    os.rename(source, target)
    fsync_directory(target.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` survive a power cut."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_state_file(state_dir: Path, name: str, data: bytes) -> None:
    """``write_private_file`` of ``state_dir/name``, announced as a durable write; a failure
    is a StateError (exit 11) that says what to do."""
    path = state_dir / name
    before_write(f"state: write {name}")
    try:
        write_private_file(path, data)
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror}",
            directory_hint(state_dir, "--state-dir", exc.errno),
        ) from exc


def rename_state_file(state_dir: Path, source: str, target: str) -> None:
    """``rename_durably`` within ``state_dir``, announced as a durable write; StateError."""
    before_write(f"state: rename {source} to {target}")
    try:
        rename_durably(state_dir / source, state_dir / target)
    except OSError as exc:
        raise StateError(
            f"cannot rename {state_dir / source} to {state_dir / target}: {exc.strerror}",
            directory_hint(state_dir, "--state-dir", exc.errno),
        ) from exc


def directory_hint(directory: Path, option: str, error: int | None = None) -> str:
    """What to do about a directory sealer cannot write; ``option`` names another one."""
    elsewhere = f"pick a writable directory with {option} (now {directory})"
    # "Run as root" helps only with permissions: root meets full and read-only disks too.
    if error == errno.ENOSPC:
        return f"free some space on its file system, or {elsewhere}"
    if error == errno.EROFS:
        return f"its file system is mounted read-only: remount it read-write, or {elsewhere}"
    return f"run as root, or {elsewhere}"
