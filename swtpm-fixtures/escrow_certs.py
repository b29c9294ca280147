"""An organisation's escrow certificates for tests, made with ``cryptography``.

``org_pair`` is the good one (RSA 2048, self-signed, KeyUsage keyEncipherment); the others
each have exactly one fault that sealer must refuse before it changes anything.
"""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

SUBJECT = "CN=Example Org recovery-key escrow,O=Example Org"
DAY = timedelta(days=1)


@dataclass(frozen=True)
class OrgKeys:
    cert: Path
    key: Path
    certificate: x509.Certificate
    private_key: rsa.RSAPrivateKey


def _usage(*, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not key_encipherment, content_commitment=False,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
    )


def make_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_encipherment: bool | None = True,  # None: no KeyUsage extension at all
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name.from_rfc4514_string(SUBJECT)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - DAY)
        .not_valid_after(not_after or now + 365 * DAY)
    )
    if key_encipherment is not None:
        builder = builder.add_extension(_usage(key_encipherment=key_encipherment), critical=True)
    return builder.sign(key, hashes.SHA256())


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    """One 2048-bit key per test process: generating one costs tens of milliseconds."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _good_certificate() -> x509.Certificate:
    return make_certificate(_rsa_key())


def org_pair(directory: Path) -> OrgKeys:
    """The organisation's good certificate (PEM) and private key (PEM, PKCS#8) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "org.pem", directory / "org.key"
    certificate = _good_certificate()
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(_rsa_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key.chmod(0o600)
    return OrgKeys(cert, key, certificate, _rsa_key())


def bad_certificates(directory: Path) -> dict[str, Path]:
    """One file per fault: name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    certificates = {
        "expired": make_certificate(_rsa_key(), not_before=now - 30 * DAY, not_after=now - DAY),
        "not-yet-valid": make_certificate(
            _rsa_key(), not_before=now + DAY, not_after=now + 30 * DAY
        ),
        "no-key-encipherment": make_certificate(_rsa_key(), key_encipherment=False),
        "ec": make_certificate(ec.generate_private_key(ec.SECP256R1()), key_encipherment=None),
    }
    paths = {}
    for name, certificate in certificates.items():
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths["missing"] = directory / "missing.pem"
    paths["not-a-certificate"] = directory / "key-not-cert.pem"
    paths["not-a-certificate"].write_bytes(
        _rsa_key().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths


def decrypt_record(record: Path, org: OrgKeys) -> bytes:
    """The key in an escrow record, opened by OpenSSL's own CMS code (not sealer's).

    cryptography's ``pkcs7_decrypt_der`` did this for version 1 records; it cannot read the
    AuthEnvelopedData (RSA-OAEP, AES-GCM) of version 2, which ``openssl cms`` does.
    """
    pem = str(json.loads(record.read_text())["cms"])
    return subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "PEM", "-inkey", str(org.key)],
        input=pem.encode(), capture_output=True, check=True,
    ).stdout


def legacy_envelope(org: OrgKeys, content: bytes) -> str:
    """A version 1 envelope, made as sealer made it before issue 15: cryptography's
    EnvelopedData, RSA PKCS#1 v1.5 key transport, AES-256-CBC."""
    der = (
        pkcs7.PKCS7EnvelopeBuilder().set_data(content).add_recipient(org.certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN CMS-----\n{body}\n-----END CMS-----\n"
