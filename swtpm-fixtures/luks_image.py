"""Real LUKS2 (and LUKS1) image files made by cryptsetup, for tests and the demo."""

from __future__ import annotations

import hashlib
import struct
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


def rewrite_header_uuid(path: Path, uuid: bytes) -> None:
    """Put ``uuid`` (any bytes, up to 40) in both LUKS2 binary headers, with valid checksums.

    What an attacker with the disk can do: ``cryptsetup luksUUID --uuid`` refuses a value that
    is not a UUID, so the bytes are written here. Each header copy (binary header + JSON area,
    ``hdr_size`` bytes) carries a SHA-256 over itself with its checksum field zeroed
    (cryptsetup's docs/on-disk-format-luks2.pdf); both copies are rewritten and re-summed, so
    cryptsetup reads the result as a sound header.
    """
    if len(uuid) > 40:
        raise ValueError("a LUKS2 UUID field holds 40 bytes")
    with open(path, "r+b") as handle:
        first = handle.read(512)
        (hdr_size,) = struct.unpack_from(">Q", first, 8)
        for offset in (0, hdr_size):
            handle.seek(offset)
            area = bytearray(handle.read(hdr_size))
            if bytes(area[:6]) not in (b"LUKS\xba\xbe", b"SKUL\xba\xbe"):
                raise ValueError(f"no LUKS2 header copy at offset {offset} of {path}")
            if area[72:80] != b"sha256\0\0":
                raise ValueError("only sha256 header checksums are rewritten here")
            area[168:208] = uuid.ljust(40, b"\0")
            area[448:512] = bytes(64)
            area[448:480] = hashlib.sha256(area).digest()
            handle.seek(offset)
            handle.write(area)
