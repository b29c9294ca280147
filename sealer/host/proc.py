"""The one place sealer starts other programs.

Secrets never go on a command line: they are handed to the child through a pipe, either as
its standard input or as an inherited descriptor opened by path (``/dev/fd/N``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sealer.errors import SealerError

# The Debian package that brings each program sealer runs, for the "not installed" hint.
DEBIAN_PACKAGES = {
    "cryptsetup": "cryptsetup-bin",
    "update-initramfs": "initramfs-tools",
    "dracut": "dracut",
    "systemd-ask-password": "systemd",
    "systemctl": "systemd",
}

# A pipe holds at least this much without a reader on Linux, so the whole secret can be
# written before the child starts and no thread is needed.
_PIPE_CAPACITY = 65536


@dataclass(frozen=True)
class Completed:
    """A child process that ran to its end: its argv, exit status and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def reason(self) -> str:
        """The child's own last words, for error messages."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


def run(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run a program to completion, capturing its output; never raises on a non-zero exit."""
    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin if stdin is not None else b"",
            capture_output=True,
            pass_fds=tuple(pass_fds),
            env=env,
            check=False,
        )
    except FileNotFoundError as exc:
        raise SealerError(f"{argv[0]} is not installed", not_installed_hint(argv[0])) from exc
    return Completed(
        argv=tuple(argv),
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr.decode("utf-8", "replace"),
    )


def not_installed_hint(program: str) -> str:
    """What to install for ``program``: its Debian package when sealer knows it."""
    package = DEBIAN_PACKAGES.get(os.path.basename(program))
    if package is None:
        return "install the package that provides it and try again"
    return f"install it (Debian: apt-get install {package}) and try again"


@contextmanager
def secret_pipe(secret: bytes) -> Iterator[int]:
    """Yield the read end of a pipe that holds ``secret``; pass it to the child by path."""
    if len(secret) > _PIPE_CAPACITY:
        raise SealerError("internal error: secret too large for a pipe")
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, secret)
        os.close(write_fd)
        write_fd = -1
        yield read_fd
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)


def fd_path(fd: int) -> str:
    """The path under which a child process opens descriptor ``fd`` passed on to it."""
    return f"/dev/fd/{fd}"


def ask(argv: Sequence[str]) -> bytes | None:
    """Run a program that asks the person at the console and prints the answer on stdout.

    The child inherits standard input and error, which is where such programs (Debian's
    askpass, systemd-ask-password) find the console. Returns None if it gave no answer.
    """
    try:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, check=False)
    except OSError:
        return None
    return proc.stdout if proc.returncode == 0 else None
