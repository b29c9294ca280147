"""``sealer recovery rotate`` against swtpm and a real LUKS2 header.

Interruptions at each of its writes are in test_interruptions.py; here: who may authorise the
new keyslot, and what a refusal leaves.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import PASSPHRASE, SealerCli
from luks_image import opens_with

from sealer.luks import cryptsetup

EXIT_USAGE, EXIT_POLICY, EXIT_AUTH = 2, 5, 6


def _enroll_with_recovery(sealer: SealerCli, image: Path, pin: bytes = b"") -> bytes:
    result = sealer.enroll(image, "--recovery-key", "--json", pin=pin)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["recovery_key"]).encode()


def _rotate(sealer: SealerCli, image: Path, *extra: str, stdin: bytes = b"") -> dict[str, object]:
    result = sealer("recovery", "rotate", "--json", *extra, str(image), stdin=stdin)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def test_the_tpm_authorises_a_rotation_and_only_the_new_key_opens(
    sealer: SealerCli, luks_image: Path
) -> None:
    old = _enroll_with_recovery(sealer, luks_image)
    rotated = _rotate(sealer, luks_image)
    new = str(rotated["recovery_key"]).encode()
    assert rotated["replaces_keyslot"] == 2 and rotated["recovery_keyslot"] == 3
    assert cryptsetup.test_key(str(luks_image), new, 3)
    assert not opens_with(luks_image, old)
    assert opens_with(luks_image, PASSPHRASE)
    status = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert status["enrollments"][0]["recovery"]["keyslot"] == 3
    assert [s["used_by"] for s in status["keyslots"]] == [
        "passphrase or recovery key", "token 0 (sealer-tpm2)", "recovery key (token 0)",
    ]


def test_a_pin_enrollment_rotates_with_the_passphrase_and_a_wrong_one_changes_nothing(
    sealer: SealerCli, luks_image: Path
) -> None:
    old = _enroll_with_recovery(sealer, luks_image, pin=b"2468")
    before = cryptsetup.read_header(str(luks_image))
    refused = sealer("recovery", "rotate", str(luks_image))
    assert refused.returncode == EXIT_USAGE
    assert "needs a PIN" in refused.stderr and "--unlock-key-file" in refused.stderr
    wrong = sealer("recovery", "rotate", "--unlock-key-file", "-", str(luks_image), stdin=b"no")
    assert wrong.returncode == EXIT_AUTH, wrong.stderr
    assert "Traceback" not in wrong.stderr and wrong.stdout == ""
    assert cryptsetup.read_header(str(luks_image)) == before  # the token is as it was, too
    rotated = _rotate(sealer, luks_image, "--unlock-key-file", "-", stdin=old)
    assert opens_with(luks_image, str(rotated["recovery_key"]).encode())
    assert not opens_with(luks_image, old)


def test_an_unapproved_boot_needs_a_key_and_says_so(sealer: SealerCli, luks_image: Path) -> None:
    _enroll_with_recovery(sealer, luks_image)
    subprocess.run(
        ["tpm2_pcrextend", "-T", sealer.tcti, "7:sha256=" + "ab" * 32],
        check=True, capture_output=True,
    )
    refused = sealer("recovery", "rotate", str(luks_image))
    assert refused.returncode == EXIT_POLICY
    assert refused.stderr.startswith("sealer: the TPM did not release the key to authorise")
    assert "--unlock-key-file" in refused.stderr
    _rotate(sealer, luks_image, "--unlock-key-file", "-", stdin=PASSPHRASE)


def test_a_volume_without_a_recorded_recovery_key_gets_one(
    sealer: SealerCli, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    result = sealer("recovery", "rotate", str(luks_image))
    assert result.returncode == 0, result.stderr
    assert "No earlier recovery key was recorded" in result.stdout
    key = result.stdout.split("\n\n    ", 1)[1].split("\n", 1)[0]
    assert cryptsetup.test_key(str(luks_image), key.encode(), 2)


def test_rotation_needs_an_enrollment(sealer: SealerCli, luks_image: Path) -> None:
    result = sealer("recovery", "rotate", str(luks_image))
    assert result.returncode == 9
    assert result.stderr == (
        f"sealer: {luks_image} has no sealer TPM enrollment: enroll it first with "
        "'sealer enroll'\n"
    )
