"""Unit tests for sealer.escrow.cms: certificate checks and the CMS envelope both ways."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from escrow_certs import (
    SUBJECT,
    OrgKeys,
    bad_certificates,
    legacy_envelope,
    make_certificate,
    org_pair,
)

from sealer.errors import AuthError, TokenError, UsageError
from sealer.escrow import cms

KEY = b"rwmqg-ejy2p-yj8q8-mja8s-99zkx-30t4m"


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgKeys:
    return org_pair(tmp_path_factory.mktemp("org"))


def no_password() -> bytes:
    raise AssertionError("the password was asked for an unencrypted key")


def test_a_good_certificate_pem_or_der(org: OrgKeys, tmp_path: Path) -> None:
    checked = cms.load_certificate(org.cert)
    assert checked.subject == SUBJECT
    assert len(checked.sha256) == 64 and checked.sha256 == checked.sha256.lower()
    der = tmp_path / "org.der"
    der.write_bytes(org.certificate.public_bytes(serialization.Encoding.DER))
    assert cms.load_certificate(der).sha256 == checked.sha256
    # No KeyUsage extension at all allows every use.
    plain = tmp_path / "plain.pem"
    plain.write_bytes(make_certificate(org.private_key, key_encipherment=None).public_bytes(
        serialization.Encoding.PEM))
    cms.load_certificate(plain)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("missing", "the escrow certificate {path} does not exist"),
        ("not-a-certificate", "{path} is not a PEM or DER X.509 certificate"),
        ("expired", "the escrow certificate {path} expired on "),
        ("not-yet-valid", "the escrow certificate {path} is not valid yet (valid from "),
        ("no-key-encipherment", "the escrow certificate {path} does not allow keyEncipherment"),
        ("ec", "the escrow certificate {path} holds an EC (secp256r1) key: escrow needs an RSA "
               "certificate"),
    ],
)
def test_each_bad_certificate_is_one_usage_line(fault: str, message: str, tmp_path: Path) -> None:
    path = bad_certificates(tmp_path)[fault]
    with pytest.raises(UsageError) as raised:
        cms.load_certificate(path)
    assert raised.value.message.startswith(message.format(path=path)), raised.value.message
    assert raised.value.hint and "\n" not in raised.value.one_line()


def test_a_small_rsa_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "small.pem"
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    path.write_bytes(make_certificate(small).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UsageError, match="1024-bit RSA key: escrow needs 2048 bits"):
        cms.load_certificate(path)


def test_validity_is_judged_at_the_given_moment(org: OrgKeys) -> None:
    later = datetime(2999, 1, 1, tzinfo=UTC)
    with pytest.raises(UsageError, match="expired on"):
        cms.load_certificate(org.cert, now=later)


def test_round_trip_is_rsa_oaep_and_aes_gcm(org: OrgKeys, tmp_path: Path) -> None:
    checked = cms.load_certificate(org.cert)
    pem = cms.encrypt(checked, KEY)
    assert pem.startswith("-----BEGIN CMS-----\n") and pem.endswith("-----END CMS-----\n")
    assert all(len(line) <= 64 for line in pem.splitlines())
    assert cms.decrypt(pem, org.private_key) == KEY and cms.is_authenticated(pem)
    # What OpenSSL's own parser sees (issue 15: no PKCS#1 v1.5, no unauthenticated CBC).
    printed = openssl_print(pem)
    assert "contentType: id-smime-ct-authEnvelopedData" in printed
    assert "algorithm: rsaesOaep" in printed and "rsaEncryption" not in printed
    assert printed.count(":sha256") == 2 and ":mgf1" in printed  # OAEP hash and MGF1 hash
    assert "algorithm: aes-256-gcm" in printed and "cbc" not in printed.lower()
    assert "prim:  INTEGER           :10\n" in printed  # the 16-byte GCM tag
    # The content is byte for byte (no S/MIME CRLF), and openssl decrypts it.
    (tmp_path / "e.pem").write_text(pem)
    assert openssl_decrypt(tmp_path / "e.pem", org) == KEY


def openssl_print(pem: str) -> str:
    return subprocess.run(["openssl", "cms", "-cmsout", "-print", "-inform", "PEM"],
                          input=pem.encode(), capture_output=True, check=True).stdout.decode()


def openssl_decrypt(path: Path, org: OrgKeys) -> bytes:
    result = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "PEM", "-in", str(path),
                             "-inkey", str(org.key)], capture_output=True)
    return result.stdout if result.returncode == 0 else b"openssl refused"


def test_a_changed_byte_anywhere_in_the_content_or_tag_is_refused(
    org: OrgKeys, tmp_path: Path
) -> None:
    """GCM authenticates: no byte of the ciphertext or the tag changes unnoticed (CBC let a
    changed byte through as different content)."""
    der = bytearray(cms.pem_to_der(cms.encrypt(cms.load_certificate(org.cert), KEY)))
    # The encrypted content ([0], primitive) is the KEY's length, right before the 16-byte MAC.
    tail = len(der) - (2 + 16) - len(KEY)
    assert der[tail - 2 : tail] == bytes([0x80, len(KEY)])
    for pos in [*range(tail, tail + len(KEY)), *range(len(der) - 16, len(der))]:
        changed = bytearray(der)
        changed[pos] ^= 0x01
        pem = "-----BEGIN CMS-----\n" + base64.b64encode(changed).decode() + "\n-----END CMS-----\n"
        with pytest.raises(TokenError, match="its content was changed"):
            cms.decrypt(pem, org.private_key)
        if pos in (tail, len(der) - 1):  # openssl agrees (two runs are enough)
            (tmp_path / "t.pem").write_text(pem)
            assert openssl_decrypt(tmp_path / "t.pem", org) == b"openssl refused"


def test_oaep_with_sha1_made_by_openssl_is_not_sealers(org: OrgKeys, tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(KEY)
    made = subprocess.run(
        ["openssl", "cms", "-encrypt", "-binary", "-aes-256-gcm", "-recip", str(org.cert),
         "-keyopt", "rsa_padding_mode:oaep", "-outform", "PEM", "-in", str(tmp_path / "k")],
        capture_output=True, check=True,
    ).stdout.decode()
    with pytest.raises(TokenError, match="no recipient uses RSA-OAEP"):
        cms.decrypt(made.replace("PKCS7", "CMS"), org.private_key)


def test_oaep_sha256_and_gcm_made_by_openssl_opens(org: OrgKeys, tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(KEY)
    made = subprocess.run(
        ["openssl", "cms", "-encrypt", "-binary", "-aes-256-gcm", "-recip", str(org.cert),
         "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
         "-keyopt", "rsa_mgf1_md:sha256", "-outform", "PEM", "-in", str(tmp_path / "k")],
        capture_output=True, check=True,
    ).stdout.decode()
    assert cms.decrypt(made, org.private_key) == KEY


def test_version_1_envelopes_still_open(org: OrgKeys) -> None:
    pem = legacy_envelope(org, KEY)  # what sealer wrote before issue 15
    assert cms.decrypt(pem, org.private_key) == KEY and not cms.is_authenticated(pem)


def test_aes128_envelopes_made_elsewhere_open_too(org: OrgKeys) -> None:
    der = pkcs7.PKCS7EnvelopeBuilder().set_data(KEY).add_recipient(org.certificate).encrypt(
        serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    pem = "-----BEGIN PKCS7-----\n" + base64.b64encode(der).decode() + "\n-----END PKCS7-----\n"
    assert cms.decrypt(pem, org.private_key) == KEY


def test_a_wrong_key_is_an_auth_error(org: OrgKeys) -> None:
    pem = cms.encrypt(cms.load_certificate(org.cert), KEY)
    for bits in (2048, 3072):
        other = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        with pytest.raises(AuthError):
            cms.decrypt(pem, other)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "MIIB",
        "-----BEGIN CMS-----\n!!!!\n-----END CMS-----\n",
        "-----BEGIN CMS-----\nMIIB\n-----END PKCS7-----\n",
        "-----BEGIN CMS-----\n" + base64.b64encode(b"\x30\x03\x02\x01\x00").decode()
        + "\n-----END CMS-----\n",
        "-----BEGIN CMS-----\n" + base64.b64encode(b"\x30\x80\x00\x00").decode()
        + "\n-----END CMS-----\n",
    ],
)
def test_a_malformed_envelope_is_a_token_error(text: str, org: OrgKeys) -> None:
    with pytest.raises(TokenError):
        cms.decrypt(text, org.private_key)


def test_every_truncation_of_an_envelope_is_a_token_error(org: OrgKeys) -> None:
    der = cms.pem_to_der(cms.encrypt(cms.load_certificate(org.cert), KEY))
    for cut in range(0, len(der), 7):
        pem = "-----BEGIN CMS-----\n" + base64.b64encode(der[:cut]).decode() + "\n-----END CMS-----"
        with pytest.raises((TokenError, AuthError)):
            cms.decrypt(pem, org.private_key)


def test_private_keys_plain_encrypted_and_wrong(org: OrgKeys) -> None:
    pem = org.key.read_bytes()
    assert cms.load_private_key(pem, "org.key", no_password).key_size == 2048
    der = org.private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
    assert cms.load_private_key(der, "org.der", no_password).key_size == 2048
    locked = org.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"sesame"),
    )
    assert cms.load_private_key(locked, "org.key", lambda: b"sesame").key_size == 2048
    with pytest.raises(AuthError, match=r"wrong password for the private key org\.key"):
        cms.load_private_key(locked, "org.key", lambda: b"open up")
    with pytest.raises(UsageError, match="is not a PEM or DER private key"):
        cms.load_private_key(org.cert.read_bytes(), "org.pem", no_password)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(UsageError, match="is not an RSA key"):
        cms.load_private_key(ec_key, "ec.key", no_password)
