"""Recovery-key escrow to the organisation's certificate, against swtpm and real LUKS2.

The organisation's side is played by real ``openssl cms -decrypt`` and by cryptography's own
CMS code, never only by sealer's, so the records are proven readable without sealer.
Interruptions at each write of an escrowed enroll and rotate are in test_interruptions.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE, Result, SealerCli
from escrow_certs import (
    SUBJECT,
    OrgKeys,
    bad_certificates,
    decrypt_record,
    legacy_envelope,
    org_pair,
)
from luks_image import opens_with

from sealer.luks import cryptsetup

MACHINE = "0123456789abcdef0123456789abcdef"
RECOVERY_KEY = re.compile(r"[0-9a-hjkmnp-tv-z]{5}(-[0-9a-hjkmnp-tv-z]{5}){5}")
EXIT_USAGE, EXIT_AUTH, EXIT_TOKEN, EXIT_STATE = 2, 6, 9, 11


@pytest.fixture
def org(tmp_path: Path) -> OrgKeys:
    return org_pair(tmp_path / "org")


def escrowed_enroll(sealer: SealerCli, image: Path, org: OrgKeys, *extra: str) -> Result:
    return sealer.enroll(image, "--recovery-key", "--escrow-cert", str(org.cert),
                         "--machine-id", MACHINE, *extra)


def status(sealer: SealerCli, image: Path, escrow_dir: Path) -> dict[str, Any]:
    result = sealer("status", "--json", "--escrow-dir", str(escrow_dir), str(image))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict)
    return doc


def openssl_decrypt(cms_pem: str, org: OrgKeys) -> bytes:
    """What the help desk runs: openssl alone, with the organisation's private key."""
    return subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "PEM", "-inkey", str(org.key)],
        input=cms_pem.encode(), capture_output=True, check=True,
    ).stdout


def one_line(result: Result) -> str:
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sealer: "), result.stderr
    return lines[0]


def image_digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


def test_enroll_escrows_the_key_which_openssl_alone_recovers(
    sealer: SealerCli, luks_image: Path, org: OrgKeys
) -> None:
    enrolled = escrowed_enroll(sealer, luks_image, org, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    uuid = cryptsetup.read_header(str(luks_image)).uuid
    path = sealer.state_dir / "escrow" / f"{MACHINE}-{uuid}-keyslot2.json"
    assert doc["recovery_key"] is None and doc["escrow_record"] == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    record = json.loads(path.read_text())
    created = datetime.strptime(record.pop("created"), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    fingerprint = subprocess.run(
        ["openssl", "x509", "-in", str(org.cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout.strip().split("=", 1)[1].replace(":", "").lower()
    cms_pem = record.pop("cms")
    assert cms_pem.startswith("-----BEGIN CMS-----\n")
    assert record == {
        "type": "sealer-escrow", "version": 2, "machine_id": MACHINE,
        "hostname": socket.gethostname(), "device": str(luks_image), "volume_uuid": uuid,
        "token": 0, "keyslot": 2, "certificate_sha256": fingerprint,
        "certificate_subject": SUBJECT,
        "keyslot_salt": cryptsetup.read_header(str(luks_image)).keyslots[2].salt,
    }

    key = openssl_decrypt(cms_pem, org)
    assert RECOVERY_KEY.fullmatch(key.decode()), key
    assert cryptsetup.test_key(str(luks_image), key, 2) and opens_with(luks_image, key)
    assert decrypt_record(path, org) == key  # cryptography's CMS code agrees
    assert key.decode() not in enrolled.stdout + enrolled.stderr
    # The README's help-desk command, exactly as written there.
    readme = subprocess.run(
        ["bash", "-c", 'jq -r .cms "$0" | openssl cms -decrypt -inform PEM -inkey "$1"; echo',
         str(path), str(org.key)],
        capture_output=True, check=True,
    )
    assert readme.stdout == key + b"\n"

    shown = sealer("recovery", "show", "--key", str(org.key), str(path))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == key.decode()
    assert str(luks_image) in shown.stdout and uuid in shown.stdout and "keyslot 2" in shown.stdout
    as_json = sealer("recovery", "show", "--key", str(org.key), "--json", str(path))
    assert as_json.returncode == 0, as_json.stderr
    expected = {**json.loads(path.read_text()), "recovery_key": key.decode()}
    assert json.loads(as_json.stdout) == expected

    report = status(sealer, luks_image, sealer.state_dir / "escrow")
    assert report["enrollments"][0]["recovery"]["escrowed"] is True
    text = sealer("status", "--escrow-dir", str(sealer.state_dir / "escrow"), str(luks_image))
    assert "    recovery key: keyslot 2 (escrowed)\n" in text.stdout


def test_rotate_escrows_the_new_key_and_keeps_the_old_record(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0
    escrow_dir = sealer.state_dir / "escrow"
    [old_record] = escrow_dir.glob("*.json")  # (and the TPM lockout auth's .cms)
    old_key = decrypt_record(old_record, org)
    rotated = sealer("recovery", "rotate", "--json", "--escrow-cert", str(org.cert),
                     "--escrow-dir", str(escrow_dir), "--machine-id", MACHINE, str(luks_image))
    assert rotated.returncode == 0, rotated.stderr
    doc = json.loads(rotated.stdout)
    assert doc["recovery_key"] is None and doc["recovery_keyslot"] == 3
    new_record = Path(doc["escrow_record"])
    assert new_record.name.endswith("-keyslot3.json") and old_record.exists()
    new_key = openssl_decrypt(json.loads(new_record.read_text())["cms"], org)
    assert opens_with(luks_image, new_key) and not opens_with(luks_image, old_key)
    assert new_key.decode() not in rotated.stdout + rotated.stderr
    recovery = status(sealer, luks_image, escrow_dir)["enrollments"][0]["recovery"]
    assert recovery == {"keyslot": 3, "pending": None, "retired": None, "escrowed": True}
    # No escrow directory: unknown; one without a record for keyslot 3: not escrowed.
    unknown = status(sealer, luks_image, tmp_path / "absent")
    assert unknown["enrollments"][0]["recovery"]["escrowed"] is None
    new_record.unlink()
    text = sealer("status", "--escrow-dir", str(escrow_dir), str(luks_image)).stdout
    assert "    recovery key: keyslot 3 (not escrowed)\n" in text


def test_a_record_of_an_earlier_key_in_the_same_keyslot_number_does_not_count(
    sealer: SealerCli, luks_image: Path, org: OrgKeys
) -> None:
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0  # recovery key: keyslot 2
    escrow_dir = sealer.state_dir / "escrow"
    for _ in range(2):  # rotations without escrow: keyslot 3, then keyslot 2 again
        assert sealer("recovery", "rotate", "--quiet", str(luks_image)).returncode == 0
    recovery = status(sealer, luks_image, escrow_dir)["enrollments"][0]["recovery"]
    assert recovery["keyslot"] == 2 and [r.name[-13:] for r in escrow_dir.glob("*.json")] == [
        "keyslot2.json"
    ]
    assert recovery["escrowed"] is False  # the record is of the first key, long removed


def test_text_output_hides_the_key_unless_asked(
    sealer: SealerCli, luks_image: Path, org: OrgKeys
) -> None:
    enrolled = escrowed_enroll(sealer, luks_image, org)
    assert enrolled.returncode == 0, enrolled.stderr
    [record] = (sealer.state_dir / "escrow").glob("*.json")
    key = decrypt_record(record, org).decode()
    assert key not in enrolled.stdout + enrolled.stderr
    assert f"escrowed to {record}" in enrolled.stdout and "not shown" in enrolled.stdout
    rotated = sealer("recovery", "rotate", "--escrow-cert", str(org.cert), "--escrow-dir",
                     str(record.parent), "--machine-id", MACHINE, "--print-recovery-key",
                     str(luks_image))
    assert rotated.returncode == 0, rotated.stderr
    new_key = decrypt_record(record.parent / record.name.replace("keyslot2", "keyslot3"), org)
    assert f"\n    {new_key.decode()}\n" in rotated.stdout
    assert opens_with(luks_image, new_key)


def test_bad_certificates_change_nothing(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    bad = bad_certificates(tmp_path / "bad")
    expected = {
        "missing": f"sealer: the escrow certificate {bad['missing']} does not exist: give the "
        "organisation's escrow certificate (PEM or DER) with --escrow-cert",
        "not-a-certificate": f"sealer: {bad['not-a-certificate']} is not a PEM or DER X.509 "
        "certificate: give the organisation's escrow certificate (PEM or DER) with --escrow-cert",
        "expired": f"sealer: the escrow certificate {bad['expired']} expired on ",
        "not-yet-valid": f"sealer: the escrow certificate {bad['not-yet-valid']} is not valid "
        "yet (valid from ",
        "no-key-encipherment": f"sealer: the escrow certificate {bad['no-key-encipherment']} "
        "does not allow keyEncipherment (its KeyUsage extension allows digitalSignature): "
        "escrow needs a certificate whose KeyUsage includes keyEncipherment",
        "ec": f"sealer: the escrow certificate {bad['ec']} holds an EC (secp256r1) key: escrow "
        "needs an RSA certificate: ask for an RSA certificate (2048 bits or more) that allows "
        "keyEncipherment",
    }
    escrow_dir = sealer.state_dir / "escrow"

    def refused(name: str, args: list[str], stdin: bytes = b"") -> None:
        before, digest = cryptsetup.read_header(str(luks_image)), image_digest(luks_image)
        result = sealer(*args, stdin=stdin)
        assert result.returncode == EXIT_USAGE, (args, result.stderr)
        assert one_line(result).startswith(expected[name]), result.stderr
        assert result.stdout == ""
        assert cryptsetup.read_header(str(luks_image)) == before
        assert image_digest(luks_image) == digest
        assert not escrow_dir.exists() or not any(escrow_dir.iterdir())

    for name, cert in bad.items():
        refused(name, ["enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir),
                 "--recovery-key", "--escrow-cert", str(cert), str(luks_image)], PASSPHRASE)
    enrolled = sealer.enroll(luks_image, "--recovery-key")
    assert enrolled.returncode == 0, enrolled.stderr
    for name in ("expired", "ec"):  # the same checks as enroll's, run before anything too
        cert = bad[name]
        refused(name, ["recovery", "rotate", "--escrow-cert", str(cert), "--escrow-dir",
                 str(escrow_dir), str(luks_image)])
    assert opens_with(luks_image, PASSPHRASE)

    # Misused options, and an escrow directory that cannot be made: refused before any change.
    before = image_digest(luks_image)
    for args, code, message in [
        (["--escrow-cert", str(org.cert)], EXIT_USAGE,
         "--escrow-cert escrows the recovery key, and there is none: add --recovery-key"),
        (["--recovery-key", "--escrow-dir", str(escrow_dir)], EXIT_USAGE,
         "--escrow-dir goes with --escrow-cert only"),
        (["--recovery-key", "--escrow-cert", str(org.cert), "--machine-id", "a/b"], EXIT_USAGE,
         "--machine-id 'a/b' is not a machine id"),
        (["--recovery-key", "--escrow-cert", str(org.cert), "--escrow-dir",
          str(org.cert / "escrow")], EXIT_STATE, "cannot be made"),
    ]:
        result = sealer.enroll(luks_image, *args)
        assert result.returncode == code, result.stderr
        assert message in one_line(result)
    assert image_digest(luks_image) == before


def test_recovery_show_refuses_wrong_keys_and_bad_records(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0
    [record] = (sealer.state_dir / "escrow").glob("*.json")
    wrong = tmp_path / "wrong.key"
    subprocess.run(["openssl", "genrsa", "-out", str(wrong), "2048"], check=True,
                   capture_output=True)
    result = sealer("recovery", "show", "--key", str(wrong), str(record))
    assert result.returncode == EXIT_AUTH
    assert one_line(result).startswith(f"sealer: the private key {wrong} does not decrypt {record}")
    assert result.stdout == ""

    locked = tmp_path / "locked.key"  # the organisation's key, under a password
    subprocess.run(["openssl", "pkey", "-in", str(org.key), "-aes256", "-passout",
                    "pass:sesame", "-out", str(locked)], check=True)
    good = sealer("recovery", "show", "--key", str(locked), "--key-password-file", "{fd0}",
                  str(record), fds=[b"sesame\n"])
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[-1] == decrypt_record(record, org).decode()
    bad_password = sealer("recovery", "show", "--key", str(locked), "--key-password-file",
                          "{fd0}", str(record), fds=[b"open up"])
    assert bad_password.returncode == EXIT_AUTH
    assert "wrong password for the private key" in one_line(bad_password)

    doc = json.loads(record.read_text())
    damaged = {
        "not-json": "{",
        "wrong-type": json.dumps({**doc, "type": "sealer-tpm2"}),
        "bad-cms": json.dumps({**doc, "cms": "-----BEGIN CMS-----\nMIIB\n-----END CMS-----\n"}),
    }
    for name, text in damaged.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        result = sealer("recovery", "show", "--key", str(org.key), str(path))
        assert result.returncode == EXIT_TOKEN, (name, result.stderr)
        assert one_line(result).startswith(f"sealer: {path} is not a sealer escrow record: ")
    missing = sealer("recovery", "show", "--key", str(org.key), str(tmp_path / "none.json"))
    assert missing.returncode == EXIT_USAGE and "does not exist" in one_line(missing)


def test_a_record_that_cannot_be_written_leaves_no_unescrowed_key(
    sealer: SealerCli, luks_image: Path, org: OrgKeys
) -> None:
    """The directory check passes, the write itself fails: what was added is taken back."""
    escrow_dir = sealer.state_dir / "escrow"
    uuid = cryptsetup.read_header(str(luks_image)).uuid
    blocker = escrow_dir / f"{MACHINE}-{uuid}-keyslot2.json"
    blocker.mkdir(parents=True)  # a directory where the record goes: the rename fails
    result = escrowed_enroll(sealer, luks_image, org)
    assert result.returncode == EXIT_STATE
    assert one_line(result).startswith(f"sealer: cannot write the escrow record {blocker}: ")
    assert sorted(cryptsetup.read_header(str(luks_image)).keyslots) == [0]
    assert cryptsetup.read_header(str(luks_image)).tokens == {}
    blocker.rmdir()
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0
    before = cryptsetup.read_header(str(luks_image))
    (escrow_dir / f"{MACHINE}-{uuid}-keyslot3.json").mkdir()
    rotated = sealer("recovery", "rotate", "--escrow-cert", str(org.cert), "--escrow-dir",
                     str(escrow_dir), "--machine-id", MACHINE, str(luks_image))
    assert rotated.returncode == EXIT_STATE and rotated.stdout == ""
    assert cryptsetup.read_header(str(luks_image)) == before
    assert [p.name for p in escrow_dir.glob("*.json") if p.is_file()] == [blocker.name]


README_HELP_DESK = 'jq -r .cms "$0" | openssl cms -decrypt -inform PEM -inkey "$1"; echo'


def readme_help_desk_line() -> str:
    """The help desk's openssl command as the README's escrow section prints it."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [line] = [x for x in readme.splitlines() if x.startswith("jq -r .cms RECORD.json | openssl")]
    return line


def test_the_envelope_is_rsa_oaep_and_aes_gcm_and_openssl_still_opens_it(
    sealer: SealerCli, luks_image: Path, org: OrgKeys
) -> None:
    """Issue 15: no PKCS#1 v1.5 key transport, no unauthenticated CBC; the help desk's
    openssl command (the README's, word for word) keeps working."""
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0
    [record] = (sealer.state_dir / "escrow").glob("*.json")
    doc = json.loads(record.read_text())
    assert doc["version"] == 2
    printed = subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "PEM"],
                             input=doc["cms"].encode(), capture_output=True,
                             check=True).stdout.decode()
    assert "contentType: id-smime-ct-authEnvelopedData" in printed
    assert "algorithm: rsaesOaep" in printed and "rsaEncryption" not in printed
    assert "algorithm: aes-256-gcm" in printed and "cbc" not in printed.lower()
    assert readme_help_desk_line() == README_HELP_DESK.replace('"$0"', "RECORD.json").replace(
        '"$1"', "org.key"
    )
    readme = subprocess.run(["bash", "-c", README_HELP_DESK, str(record), str(org.key)],
                            capture_output=True, check=True)
    key = readme.stdout.rstrip(b"\n")
    assert RECOVERY_KEY.fullmatch(key.decode()) and opens_with(luks_image, key)
    shown = sealer("recovery", "show", "--key", str(org.key), str(record))
    assert shown.returncode == 0 and shown.stdout.splitlines()[-1] == key.decode()

    # One changed byte of the encrypted content: openssl and sealer both refuse it.
    der = bytearray(base64.b64decode("".join(doc["cms"].strip().splitlines()[1:-1])))
    der[-(16 + 2 + 1)] ^= 1  # the last byte of the encrypted content, before the MAC
    pem = f"-----BEGIN CMS-----\n{base64.b64encode(bytes(der)).decode()}\n-----END CMS-----\n"
    changed = record.with_name("changed.json")
    changed.write_text(json.dumps({**doc, "cms": pem}))
    tampered = subprocess.run(["bash", "-c", README_HELP_DESK, str(changed), str(org.key)],
                              capture_output=True)
    assert tampered.stdout == b"\n" and b"rror" in tampered.stderr
    refused = sealer("recovery", "show", "--key", str(org.key), str(changed))
    assert refused.returncode == EXIT_TOKEN and refused.stdout == ""
    assert "its content was changed" in one_line(refused)


def test_a_version_1_record_still_opens_and_a_downgraded_version_2_does_not(
    sealer: SealerCli, luks_image: Path, org: OrgKeys, tmp_path: Path
) -> None:
    assert escrowed_enroll(sealer, luks_image, org).returncode == 0
    [record] = (sealer.state_dir / "escrow").glob("*.json")
    doc = json.loads(record.read_text())
    key = decrypt_record(record, org)
    # A record as sealer wrote it before issue 15: version 1, PKCS#1 v1.5 and AES-256-CBC.
    old = tmp_path / "v1.json"
    old.write_text(json.dumps({**doc, "version": 1, "cms": legacy_envelope(org, key)}))
    shown = sealer("recovery", "show", "--key", str(org.key), str(old))
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == key.decode()
    readme = subprocess.run(["bash", "-c", README_HELP_DESK, str(old), str(org.key)],
                            capture_output=True, check=True)
    assert readme.stdout == key + b"\n"
    # Version 2 promises OAEP and GCM: the old envelope under it is refused as a downgrade.
    downgraded = tmp_path / "downgraded.json"
    downgraded.write_text(json.dumps({**doc, "cms": legacy_envelope(org, key)}))
    refused = sealer("recovery", "show", "--key", str(org.key), str(downgraded))
    assert refused.returncode == EXIT_TOKEN and refused.stdout == ""
    assert "its version is 2 but its envelope is not an AuthEnvelopedData" in one_line(refused)
