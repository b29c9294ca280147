"""The machine's policy key: an ECC P-256 key pair that signs this machine's approvals.

It lives in the state directory (on the encrypted root, mode 0600), so an offline attacker
holding only the disk cannot sign an approval for a boot chain of their own.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealer.checkpoint import before_write
from sealer.errors import StateError, UsageError

MACHINE_KEY_FILE = "policy-key.pem"
_KEY_HINT = "make one with 'sealer policy keygen' (ECC P-256, PEM, as openssl writes it)"


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )


def normalized_public_pem(text: str, what: str) -> str:
    """``text`` (a PEM public key, or a private key whose public half is wanted) as the
    SubjectPublicKeyInfo PEM sealer stores; only ECC P-256 keys are accepted."""
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate, which JSON can carry ("\ud800")
        raise UsageError(f"{what} is not a PEM public key", _KEY_HINT) from exc
    try:
        key: object = serialization.load_pem_public_key(data)
    except UnsupportedAlgorithm as exc:  # e.g. a curve OpenSSL does not know
        raise UsageError(f"{what} is not an ECC P-256 key", _KEY_HINT) from exc
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except UnsupportedAlgorithm as exc:
            raise UsageError(f"{what} is not an ECC P-256 key", _KEY_HINT) from exc
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{what} is not a PEM public key", _KEY_HINT) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{what} is not an ECC P-256 key", _KEY_HINT)
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _state_hint(state_dir: Path, error: int | None = None) -> str:
    elsewhere = f"pick a writable directory with --state-dir (now {state_dir})"
    # "Run as root" helps only with permissions: root meets full and read-only disks too.
    if error == errno.ENOSPC:
        return f"free some space on its file system, or {elsewhere}"
    if error == errno.EROFS:
        return f"its file system is mounted read-only: remount it read-write, or {elsewhere}"
    return f"run as root, or {elsewhere}"


def load_machine_key(state_dir: Path) -> ec.EllipticCurvePrivateKey | None:
    path = state_dir / MACHINE_KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the policy key {path}: {exc.strerror}",
                         _state_hint(state_dir)) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise StateError(f"the policy key {path} is unreadable or corrupted") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise StateError(f"the policy key {path} is not an ECC P-256 key")
    return key


def load_or_create_machine_key(state_dir: Path) -> ec.EllipticCurvePrivateKey:
    key = load_machine_key(state_dir)
    if key is not None:
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private_file(state_dir, MACHINE_KEY_FILE, data)
    return key


def _write_private_file(state_dir: Path, name: str, data: bytes) -> None:
    """Create ``state_dir/name`` with mode 0600, atomically: a crash leaves old or new."""
    path = state_dir / name
    temp = state_dir / f".{name}.tmp"
    before_write(f"state: write {name}")
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:  # a nearly full file system may take part of it per call
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            # A disk full (or any failure) must not leave a partial key behind to trip up
            # the next run; the old file, if any, is untouched.
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        os.rename(temp, path)
        dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror}", _state_hint(state_dir, exc.errno)
        ) from exc
