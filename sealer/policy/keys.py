"""The machine's policy key: an ECC P-256 key pair that signs this machine's approvals.

It lives in the state directory (on the encrypted root, mode 0600), so an offline attacker
holding only the disk cannot sign an approval for a boot chain of their own.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealer.errors import StateError, UsageError
from sealer.host.files import directory_hint, rename_state_file, write_state_file

MACHINE_KEY_FILE = "policy-key.pem"
_KEY_HINT = "make one with 'sealer policy keygen' (ECC P-256, PEM, as openssl writes it)"


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The public half of ``key`` as PEM (SubjectPublicKeyInfo)."""
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
    return directory_hint(state_dir, "--state-dir", error)


def load_machine_key(
    state_dir: Path, name: str = MACHINE_KEY_FILE
) -> ec.EllipticCurvePrivateKey | None:
    """The policy key ``name`` in ``state_dir``, or None when there is none; StateError when it
    cannot be read or used.
    """
    path = state_dir / name
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


def load_or_create_machine_key(
    state_dir: Path, name: str = MACHINE_KEY_FILE
) -> ec.EllipticCurvePrivateKey:
    """The policy key ``name`` in ``state_dir``, created (P-256, a private file) when there is
    none yet.
    """
    key = load_machine_key(state_dir, name)
    if key is not None:
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_state_file(state_dir, name, data)
    return key


def promote_machine_key(state_dir: Path, name: str) -> None:
    """Make ``state_dir/name`` the machine key, replacing the current one in one rename."""
    rename_state_file(state_dir, name, MACHINE_KEY_FILE)
