"""Secrets that come from or go to a person: passphrases, PINs, recovery keys.

They are read from a terminal prompt, a file or standard input, never from argv or the
environment, and they are kept in memory only as long as an operation needs them.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

from sealer.errors import AuthError, UsageError

# Crockford's base32: no I, L, O or U, so nothing is confused when copied by hand.
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_GROUPS = 6
RECOVERY_GROUP_LENGTH = 5  # 6 x 5 characters x 5 bits = 150 bits of entropy
MAX_SECRET_FILE = 8192


def read_secret(source: str | None, prompt: str, *, confirm: bool = False) -> bytes:
    """Read a secret from ``source`` ('-' for stdin, a path), or prompt on the terminal.

    A file is taken byte for byte, like cryptsetup's --key-file. From a pipe on stdin one
    trailing newline is dropped, since ``echo secret |`` is how people use it.
    """
    if source == "-":
        data = sys.stdin.buffer.read(MAX_SECRET_FILE + 2)  # room for the newline dropped below
        if len(data) > MAX_SECRET_FILE + 1:
            raise UsageError(f"the secret on standard input is longer than {MAX_SECRET_FILE} bytes")
        data = data[:-1] if data.endswith(b"\n") else data
    elif source is not None:
        try:
            with open(Path(source), "rb") as handle:
                data = handle.read(MAX_SECRET_FILE + 1)
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror}") from exc
    else:
        data = _prompt(prompt, confirm)
    if len(data) > MAX_SECRET_FILE:
        raise UsageError(f"the secret from {source} is longer than {MAX_SECRET_FILE} bytes")
    if not data:
        raise AuthError(f"empty secret from {source or 'the prompt'}")
    return data


def _has_terminal() -> bool:
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        return False
    return True


def _prompt(prompt: str, confirm: bool) -> bytes:
    # getpass would fall back to reading standard input with a warning; a missing terminal
    # is the caller's mistake to hear about instead.
    if not _has_terminal():
        raise UsageError(
            "no terminal to ask for the secret",
            "give it with a file option ('-' reads standard input)",
        )
    try:
        first = getpass.getpass(f"{prompt}: ")
        if confirm and getpass.getpass(f"{prompt} (again): ") != first:
            raise UsageError("the two entries differ")
    except (EOFError, KeyboardInterrupt, OSError):
        raise UsageError("no secret entered") from None
    return first.encode("utf-8")


def reader(source: str | None, prompt: str, *, confirm: bool = False) -> Callable[[], bytes]:
    """A deferred read, so a PIN is asked for only when it will be used."""
    return lambda: read_secret(source, prompt, confirm=confirm)


def pin_auth_value(pin: bytes, salt: bytes) -> bytes:
    """The TPM authValue for a PIN: salted, so equal PINs give different authValues."""
    return hmac.new(salt, pin, hashlib.sha256).digest()


def new_recovery_key() -> str:
    """A fresh random recovery key, as dash-separated groups meant to be typed by a person."""
    groups = (
        "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(RECOVERY_GROUP_LENGTH))
        for _ in range(RECOVERY_GROUPS)
    )
    return "-".join(groups)


def is_recovery_key(data: bytes) -> bool:
    """Is ``data`` exactly a key ``new_recovery_key`` could have made?"""
    groups = data.split(b"-")
    return len(groups) == RECOVERY_GROUPS and all(
        len(group) == RECOVERY_GROUP_LENGTH
        and all(chr(c) in _RECOVERY_ALPHABET for c in group)
        for group in groups
    )
