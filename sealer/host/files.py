"""Files only root may read (policy keys, escrow records), written all or nothing.

A crash, a power cut or a full disk leaves the old file or the new one, never a part of one:
the data goes to a 0600 temporary file in the same directory, which is fsynced, renamed
over the target, and the directory fsynced after it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from sealer.errors import StateError
from sealer.host.checkpoint import before_write


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (its directory made 0700 if absent); OSError on failure."""
    directory = path.parent
    temp = directory / f".{path.name}.tmp"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # a nearly full file system may take part of it per call
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError:
        with contextlib.suppress(OSError):  # no partial file for the next run to trust
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def rename_durably(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (same directory) so the rename survives a power
    loss: the directory is fsynced after it. OSError on failure."""
    os.rename(source, target)
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
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
