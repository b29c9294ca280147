"""Real LUKS2 (and LUKS1) image files made by cryptsetup, for tests and the demo."""

from __future__ import annotations

import subprocess
from pathlib import Path

# Tests use cryptsetup's cheapest KDF so that each image costs milliseconds; the demo uses
# the default (Argon2id), as a real installer would.
FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def make_luks_image(
    path: Path,
    passphrase: bytes,
    *,
    size_mib: int = 20,
    luks_type: str = "luks2",
    fast_kdf: bool = True,
) -> Path:
    with open(path, "wb") as handle:
        handle.truncate(size_mib * 1024 * 1024)
    argv = ["cryptsetup", "luksFormat", "--batch-mode", "--type", luks_type, "--key-file=-"]
    if fast_kdf:
        argv += FAST_KDF if luks_type == "luks2" else ["--iter-time", "1"]
    subprocess.run([*argv, str(path)], input=passphrase, check=True, capture_output=True)
    return path


def opens_with(path: Path, key: bytes) -> bool:
    """Does ``key`` open any keyslot of the image? Asked of cryptsetup itself."""
    result = subprocess.run(
        ["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(path)],
        input=key,
        capture_output=True,
    )
    return result.returncode == 0
