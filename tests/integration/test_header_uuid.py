"""A LUKS2 UUID is 40 header bytes an attacker chooses: sealer must never let it name a path.

The image's UUID is rewritten in both binary header copies with valid SHA-256 checksums
(``luks_image.rewrite_header_uuid``), so cryptsetup itself reads the header as sound and prints
the hostile UUID; only sealer's own check stands between it and the escrow record's file name
(and the default ``luks-UUID`` device-mapper name).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import PASSPHRASE, Result, SealerCli
from escrow_certs import OrgKeys, org_pair
from luks_image import opens_with, rewrite_header_uuid

MACHINE = "0123456789abcdef0123456789abcdef"
EXIT_DEVICE = 3
# From STATE/escrow/MACHINE-<uuid>-keyslot2.json this climbs to the test's tmp_path:
# escrow/"MACHINE-"/.. -> escrow, /.. -> STATE, /.. -> tmp_path.
HOSTILE = b"/../../../escaped"


@pytest.fixture
def org(tmp_path: Path) -> OrgKeys:
    return org_pair(tmp_path / "org")


def files_outside(root: Path, inside: Path) -> list[Path]:
    """Every escrow-record-like file under ``root`` that is not directly in ``inside``."""
    return [p for p in root.rglob("*keyslot*.json") if p.parent != inside]


def refused(result: Result) -> str:
    assert result.returncode == EXIT_DEVICE, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sealer: "), result.stderr
    assert "is not a UUID" in lines[0] and "luksUUID" in lines[0]
    return lines[0]


def test_cryptsetup_reads_the_rewritten_header_as_sound(luks_image: Path) -> None:
    rewrite_header_uuid(luks_image, HOSTILE)
    dump = subprocess.run(["cryptsetup", "luksDump", str(luks_image)],
                          capture_output=True, text=True, check=True).stdout
    assert "UUID:          \t/../../../escaped\n" in dump
    assert opens_with(luks_image, PASSPHRASE)


def test_enroll_escrow_refuses_a_uuid_that_is_a_path(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    rewrite_header_uuid(luks_image, HOSTILE)
    before = luks_image.read_bytes()
    result = sealer.enroll(luks_image, "--recovery-key", "--escrow-cert", str(org.cert),
                           "--machine-id", MACHINE)
    escrow_dir = sealer.state_dir / "escrow"
    assert files_outside(tmp_path, escrow_dir) == []  # nothing written outside the directory
    refused(result)
    assert luks_image.read_bytes() == before and opens_with(luks_image, PASSPHRASE)


def test_rotate_escrow_refuses_a_uuid_rewritten_after_enrollment(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    escrow_dir = sealer.state_dir / "escrow"
    enrolled = sealer.enroll(luks_image, "--recovery-key", "--escrow-cert", str(org.cert),
                             "--machine-id", MACHINE)
    assert enrolled.returncode == 0, enrolled.stderr
    rewrite_header_uuid(luks_image, HOSTILE)
    rotated = sealer("recovery", "rotate", "--escrow-cert", str(org.cert), "--escrow-dir",
                     str(escrow_dir), "--machine-id", MACHINE, str(luks_image))
    assert files_outside(tmp_path, escrow_dir) == []
    refused(rotated)
    # Unlock (whose default mapping name is luks-UUID) and status refuse it the same way.
    refused(sealer("unlock", "--test", str(luks_image)))
    refused(sealer("status", str(luks_image)))
    assert opens_with(luks_image, PASSPHRASE)
