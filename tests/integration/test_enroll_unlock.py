"""Enroll, unlock, status and remove against a real swtpm and real LUKS2 images."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from luks_image import opens_with
from swtpm import Swtpm

from sealer.install.bootopts import cmdline_findings
from sealer.pcrs import BANKS
from sealer.tpm.connection import connect
from sealer.tpm.lockout import read_lockout
from sealer.tpm.pcr import extend_pcr, read_pcrs
from sealer.tpm.srk import SRK_HANDLE, read_srk

SHA256 = BANKS["sha256"]


def extend(tpm: Swtpm, pcr: int, data: bytes = b"tampered") -> None:
    with connect(tpm.tcti) as ctx:
        extend_pcr(ctx, SHA256, pcr, SHA256.hash(data))


def test_enroll_then_unlock_test_releases_the_key(sealer: SealerCli, luks_image: Path) -> None:
    enrolled = sealer.enroll(luks_image, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    assert doc["keyslot"] == 1 and doc["token"] == 0
    assert sorted(doc["approved_pcrs"]) == ["15", "4", "7"]
    assert doc["approved_pcrs"]["15"] == "00" * 32

    unlocked = sealer("unlock", "--test", "--json", str(luks_image))
    assert unlocked.returncode == 0, unlocked.stderr
    assert json.loads(unlocked.stdout)["keyslot"] == 1
    assert opens_with(luks_image, PASSPHRASE)


def test_the_srk_is_created_once_persisted_and_pinned(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    with connect(swtpm.tcti) as ctx:
        srk = read_srk(ctx, SRK_HANDLE)
    assert srk is not None
    report = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert report["enrollments"][0]["srk_name"] == srk.name.hex()
    # A second enrollment reuses the persisted SRK instead of making another.
    from luks_image import make_luks_image

    second = make_luks_image(tmp_path / "second.img", PASSPHRASE)
    assert sealer.enroll(second).returncode == 0
    report2 = json.loads(sealer("status", "--json", str(second)).stdout)
    assert report2["enrollments"][0]["srk_name"] == srk.name.hex()


def test_status_tells_whether_this_boot_would_unlock(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, "--pcrs", "7").returncode == 0
    text = sealer("status", str(luks_image))
    assert text.returncode == 0
    assert "keyslot 0: pbkdf2, passphrase or recovery key" in text.stdout
    assert "would release the key in this boot state: yes" in text.stdout

    # This machine's own command line, judged as sealer boot enable judges it.
    expected = [f.to_json() for f in cmdline_findings()]
    for finding in expected:
        assert f"  boot option {finding['option']}: {finding['text']}" in text.stdout

    extend(swtpm, 7)
    report = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert report["boot_options"] == expected
    entry = report["enrollments"][0]
    assert entry["unlocks_now"] is False
    assert entry["approvals"][0]["differing_pcrs"] == [7]


def test_a_changed_pcr_is_refused_with_a_clear_reason(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    extend(swtpm, 7)
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == 5
    assert refused.stderr.startswith("sealer: PCR 7 differs from every approved boot state")
    assert "Traceback" not in refused.stderr
    assert opens_with(luks_image, PASSPHRASE)


def test_the_capping_pcr_must_be_at_its_initial_value(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    extend(swtpm, 15, b"sealer: unlocked")
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == 5
    assert "PCR 15 differs" in refused.stderr


def test_explicit_expected_values_provision_a_future_boot_state(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    event = SHA256.hash(b"next boot loader")
    future = SHA256.extend(SHA256.initial_value(4), event)
    enrolled = sealer.enroll(luks_image, "--pcrs", "4", "--pcr", f"4=sha256:{future.hex()}")
    assert enrolled.returncode == 0, enrolled.stderr
    assert sealer("unlock", "--test", str(luks_image)).returncode == 5
    with connect(swtpm.tcti) as ctx:
        extend_pcr(ctx, SHA256, 4, event)
        assert read_pcrs(ctx, SHA256, [4])[4] == future
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0


def test_recovery_key_is_printed_once_and_opens_the_volume(
    sealer: SealerCli, luks_image: Path
) -> None:
    enrolled = sealer.enroll(luks_image, "--recovery-key")
    assert enrolled.returncode == 0, enrolled.stderr
    found = re.search(r"^\s+([0-9a-z]{5}(?:-[0-9a-z]{5}){5})$", enrolled.stdout, re.M)
    assert found, enrolled.stdout
    recovery = found.group(1).encode()
    assert opens_with(luks_image, recovery)
    # The recovery key is a full unlock key: it can authorise a second enrollment.
    assert sealer.enroll(luks_image, "--pcrs", "7", passphrase=recovery).returncode == 0
    report = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert [e["keyslot"] for e in report["enrollments"]] == [1, 3]


def test_pin_is_required_and_checked_by_the_tpm(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    enrolled = sealer.enroll(luks_image, pin=b"2468")
    assert enrolled.returncode == 0, enrolled.stderr
    ok = sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=b"2468\n")
    assert ok.returncode == 0, ok.stderr
    wrong = sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=b"1111")
    assert wrong.returncode == 6
    assert "the TPM rejected the PIN" in wrong.stderr
    assert opens_with(luks_image, PASSPHRASE)


def test_a_changed_pcr_does_not_cost_a_pin_attempt(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    enrolled = sealer.enroll(luks_image, pin=b"2468")
    assert enrolled.returncode == 0
    extend(swtpm, 7)
    # No PIN source and no terminal: had sealer asked for the PIN it would fail with exit 2.
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == 5, refused.stderr
    # Nor does a wrong PIN given with it: more refusals than swtpm's 3 tries, none counted.
    for _ in range(4):
        wrong = sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=b"1111")
        assert wrong.returncode == 5, wrong.stderr
    with connect(swtpm.tcti) as ctx:
        assert read_lockout(ctx).failed_tries == 0


def test_remove_takes_the_keyslot_and_token_away(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    removed = sealer("remove", "--json", str(luks_image))
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout) == {
        "device": str(luks_image), "token": 0, "keyslots": [1], "retirement_counter": "freed"
    }
    report = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert report["enrollments"] == []
    assert [k["slot"] for k in report["keyslots"]] == [0]
    assert sealer("unlock", "--test", str(luks_image)).returncode == 9
    assert opens_with(luks_image, PASSPHRASE)


def test_unlock_opens_the_volume_or_says_why_it_cannot(
    sealer: SealerCli, luks_image: Path
) -> None:
    """Where device-mapper works the volume opens; where it does not (these CI machines),
    the failure is one line with a pointer to --test, and nothing changes."""
    assert sealer.enroll(luks_image).returncode == 0
    name = f"sealer-test-{luks_image.parent.name[-12:]}"
    result = sealer("unlock", "--name", name, str(luks_image))
    if result.returncode == 0:
        subprocess.run(["cryptsetup", "close", name], check=True)
    else:
        assert result.returncode == 3, result.stderr
        assert result.stderr.startswith(f"sealer: cannot open {luks_image} as /dev/mapper/{name}")
        assert "Traceback" not in result.stderr
    assert opens_with(luks_image, PASSPHRASE)


def test_enroll_without_a_terminal_or_key_file_is_a_usage_error(
    sealer: SealerCli, luks_image: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sealer", "--tcti", sealer.tcti, "enroll", str(luks_image)],
        stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True,
    )
    assert result.returncode == 2
    assert b"no terminal to ask for the secret" in result.stderr


def _scalar_with_short_coordinate(coordinate: str) -> int:
    """A P-256 private scalar whose public x (or y) has a leading zero byte: 1 key in 128."""
    for scalar in range(1, 100_000):
        numbers = ec.derive_private_key(scalar, ec.SECP256R1()).public_key().public_numbers()
        if getattr(numbers, coordinate) < 2**248:
            return scalar
    raise AssertionError("no such scalar below 100000")


@pytest.mark.parametrize("coordinate", ["x", "y"])
def test_a_policy_key_with_a_leading_zero_coordinate_still_unlocks(
    sealer: SealerCli, luks_image: Path, coordinate: str
) -> None:
    key = ec.derive_private_key(_scalar_with_short_coordinate(coordinate), ec.SECP256R1())
    sealer.state_dir.mkdir(mode=0o700)
    (sealer.state_dir / "policy-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert sealer.enroll(luks_image).returncode == 0
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 0, result.stderr


def test_the_tpm_keyslot_is_tried_first_and_the_recovery_slot_is_not(
    sealer: SealerCli, luks_image: Path
) -> None:
    # At boot cryptroot names no keyslot: the TPM's must come before the passphrase's,
    # whose slow KDF would otherwise run in vain on every TPM unlock.
    enrolled = sealer.enroll(luks_image, "--recovery-key", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    dump = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(luks_image)],
        capture_output=True, text=True, check=True,
    ).stdout
    keyslots = json.loads(dump)["keyslots"]
    priority = {int(slot): info.get("priority", 1) for slot, info in keyslots.items()}
    assert priority[doc["keyslot"]] == 2  # prefer
    assert priority[doc["recovery_keyslot"]] == 1  # normal
    assert priority[0] == 1
