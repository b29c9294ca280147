"""CMS EnvelopedData to an organisation's RSA certificate: the only envelope crypto in sealer.

Encryption is cryptography's ``PKCS7EnvelopeBuilder``: RSA PKCS#1 v1.5 key transport to the
certificate and AES-256-CBC content encryption, as RFC 5652 EnvelopedData that
``openssl cms -decrypt -inkey org.key`` opens with no other tool.

Decryption is done here rather than by ``pkcs7_decrypt_der``, because that function also
wants the recipient's certificate, and the help desk may hold only the private key. It reads
the few DER fields it needs, and every cipher operation is still cryptography's.
"""

from __future__ import annotations

import base64
import binascii
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.padding import PKCS7 as PKCS7Padding
from cryptography.hazmat.primitives.serialization import pkcs7

from sealer.errors import AuthError, TokenError, UsageError

PasswordReader = Callable[[], bytes]
MIN_RSA_BITS = 2048
PEM_LABEL = "CMS"  # what openssl cms writes and reads (it also reads "PKCS7")
_CERT_HINT = "give the organisation's escrow certificate (PEM or DER) with --escrow-cert"
_RSA_HINT = f"ask for an RSA certificate ({MIN_RSA_BITS} bits or more) that allows keyEncipherment"

# DER contents of the object identifiers read when decrypting.
_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1
_AES_CBC = {  # 2.16.840.1.101.3.4.1.{2,22,42}: key length in bytes
    bytes.fromhex("608648016503040102"): 16,
    bytes.fromhex("608648016503040116"): 24,
    bytes.fromhex("60864801650304012a"): 32,
}
_SEQUENCE, _SET, _OID, _OCTETS, _CONTEXT0, _CONTEXT0_PRIMITIVE = 0x30, 0x31, 0x06, 0x04, 0xA0, 0x80


@dataclass(frozen=True)
class EscrowCertificate:
    """A certificate that passed every check: the escrow envelope can be made to it."""

    path: Path
    certificate: x509.Certificate

    @property
    def sha256(self) -> str:
        """The fingerprint of the DER certificate, as ``openssl x509 -fingerprint -sha256``."""
        return self.certificate.fingerprint(hashes.SHA256()).hex()

    @property
    def subject(self) -> str:
        return self.certificate.subject.rfc4514_string()


def _when(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _key_kind(key: object) -> str:
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"an EC ({key.curve.name}) key"
    kinds = {ed25519.Ed25519PublicKey: "an Ed25519 key", ed448.Ed448PublicKey: "an Ed448 key",
             dsa.DSAPublicKey: "a DSA key"}  # fmt: skip
    return next((text for kind, text in kinds.items() if isinstance(key, kind)), "a non-RSA key")


def load_certificate(path: Path, now: datetime | None = None) -> EscrowCertificate:
    """Read and check the organisation's certificate; UsageError says what is wrong with it.

    Every check runs before the caller changes anything, so a bad certificate costs nothing.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"the escrow certificate {path} does not exist", _CERT_HINT) from None
    except OSError as exc:
        raise UsageError(f"cannot read the escrow certificate {path}: {exc.strerror}",
                         _CERT_HINT) from exc  # fmt: skip
    try:
        if b"-----BEGIN" in data:
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise UsageError(f"{path} is not a PEM or DER X.509 certificate", _CERT_HINT) from exc
    now = now or datetime.now(UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        raise UsageError(
            f"the escrow certificate {path} is not valid yet (valid from {_when(start)} to "
            f"{_when(end)})",
            "check this machine's clock, or give a certificate that is valid now",
        )
    if now > end:
        raise UsageError(
            f"the escrow certificate {path} expired on {_when(end)} (valid from {_when(start)})",
            "ask the organisation for its current escrow certificate",
        )
    try:
        key = certificate.public_key()
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise UsageError(f"the escrow certificate {path} holds a key sealer cannot read: "
                         "escrow needs an RSA certificate", _RSA_HINT) from exc  # fmt: skip
    if not isinstance(key, rsa.RSAPublicKey):
        # CMS key agreement (EC) is not something cryptography can envelope to.
        raise UsageError(
            f"the escrow certificate {path} holds {_key_kind(key)}: escrow needs an RSA "
            "certificate",
            _RSA_HINT,
        )
    if key.key_size < MIN_RSA_BITS:
        raise UsageError(
            f"the escrow certificate {path} holds a {key.key_size}-bit RSA key: escrow needs "
            f"{MIN_RSA_BITS} bits or more",
            _RSA_HINT,
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None  # no KeyUsage extension: every use is allowed (RFC 5280, 4.2.1.3)
    if usage is not None and not usage.key_encipherment:
        raise UsageError(
            f"the escrow certificate {path} does not allow keyEncipherment (its KeyUsage "
            f"extension allows {_usages(usage)})",
            "escrow needs a certificate whose KeyUsage includes keyEncipherment",
        )
    return EscrowCertificate(path, certificate)


def _usages(usage: x509.KeyUsage) -> str:
    names = [
        name for name, on in (
            ("digitalSignature", usage.digital_signature),
            ("nonRepudiation", usage.content_commitment),
            ("dataEncipherment", usage.data_encipherment),
            ("keyAgreement", usage.key_agreement),
            ("keyCertSign", usage.key_cert_sign),
            ("cRLSign", usage.crl_sign),
        ) if on
    ]  # fmt: skip
    return ", ".join(names) or "nothing"


def encrypt(certificate: EscrowCertificate, data: bytes) -> str:
    """``data`` as a PEM "CMS" EnvelopedData that only the certificate's private key opens."""
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(data).add_recipient(certificate.certificate)
    # AES-256 where cryptography lets us choose (45 and later); its default is AES-128-CBC.
    if hasattr(builder, "set_content_encryption_algorithm"):
        builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    # Binary: the content as it is. Without it the builder turns "\n" into "\r\n" (S/MIME).
    der = builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {PEM_LABEL}-----\n{body}\n-----END {PEM_LABEL}-----\n"


def pem_to_der(text: str) -> bytes:
    """The DER inside a PEM "CMS" (or "PKCS7") block; TokenError if it is not one."""
    lines = text.strip().splitlines()
    labels = {f"-----BEGIN {label}-----" for label in (PEM_LABEL, "PKCS7")}
    if len(lines) < 3 or lines[0].strip() not in labels:
        raise TokenError("the envelope is not a PEM CMS block ('-----BEGIN CMS-----')")
    if lines[-1].strip() != lines[0].strip().replace("BEGIN", "END"):
        raise TokenError("the envelope's PEM block has no matching END line")
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TokenError("the envelope's PEM block is not valid base64") from exc


def load_private_key(
    data: bytes, source: str, read_password: PasswordReader
) -> rsa.RSAPrivateKey:
    """The organisation's RSA private key (PEM or DER, PKCS#1 or PKCS#8, maybe encrypted).

    ``read_password`` is called only when the key is encrypted.
    """
    pem = b"-----BEGIN" in data
    load = serialization.load_pem_private_key if pem else serialization.load_der_private_key
    try:
        key = load(data, password=None)
    except TypeError:  # encrypted: now, and only now, its password is needed
        password = read_password()
        try:
            key = load(data, password=password)
        except (ValueError, TypeError) as exc:
            raise AuthError(f"wrong password for the private key {source}",
                            "give the right one with --key-password-file") from exc  # fmt: skip
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{source} is not a PEM or DER private key",
                         "give the organisation's escrow private key with --key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"the private key {source} is not an RSA key",
                         "escrow envelopes are made to RSA certificates: give that "
                         "certificate's private key with --key")  # fmt: skip
    return key


def decrypt(pem_text: str, key: rsa.RSAPrivateKey) -> bytes:
    """The content of a PEM CMS EnvelopedData, decrypted with ``key``.

    TokenError: the envelope is malformed or uses what sealer never writes. AuthError: no
    RSA recipient in it opens with this key.
    """
    cipher_len, iv, ciphertext, wrapped_keys = _parse_enveloped(pem_to_der(pem_text))
    for wrapped in wrapped_keys:
        # A wrong key fails here, or (OpenSSL's implicit rejection of PKCS#1 v1.5 returns a
        # random key instead of failing) at the length or the CBC padding check below; the
        # caller also checks what the content is.
        try:
            content_key = key.decrypt(wrapped, padding.PKCS1v15())
        except ValueError:
            continue
        if len(content_key) != cipher_len:
            continue
        decryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = PKCS7Padding(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            continue
    raise AuthError("the private key does not open this envelope")


class _Malformed(Exception):
    pass


def _parse_enveloped(der: bytes) -> tuple[int, bytes, bytes, list[bytes]]:
    """(content key length, IV, ciphertext, RSA-wrapped content keys) of a DER EnvelopedData."""
    try:
        return _enveloped_fields(der)
    except _Malformed as exc:
        raise TokenError(f"the envelope is not a CMS EnvelopedData sealer can read: {exc}") from exc


def _enveloped_fields(der: bytes) -> tuple[int, bytes, bytes, list[bytes]]:
    content_info, rest = _read(der, 0)
    if rest != len(der) or content_info.tag != _SEQUENCE:
        raise _Malformed("not one DER SEQUENCE")
    content_type, explicit = _fields(content_info, 2, "ContentInfo")
    if content_type.value != _ENVELOPED_DATA or explicit.tag != _CONTEXT0:
        raise _Malformed("its content type is not envelopedData")
    [enveloped] = _fields(explicit, 1, "content")
    parts = _children(enveloped.value)
    if len(parts) > 1 and parts[1].tag == _CONTEXT0:
        parts = [parts[0], *parts[2:]]  # originatorInfo: certificates, nothing to decrypt
    if len(parts) < 3 or parts[1].tag != _SET or parts[2].tag != _SEQUENCE:
        raise _Malformed("EnvelopedData lacks recipientInfos or encryptedContentInfo")
    wrapped = [k for k in map(_rsa_wrapped_key, _children(parts[1].value)) if k is not None]
    if not wrapped:
        raise _Malformed("no recipient uses RSA key transport")
    eci = _children(parts[2].value)
    if len(eci) != 3 or eci[1].tag != _SEQUENCE:
        raise _Malformed("encryptedContentInfo has no (attached) encrypted content")
    algorithm = _children(eci[1].value)
    if len(algorithm) != 2 or algorithm[0].tag != _OID or algorithm[0].value not in _AES_CBC:
        raise _Malformed("the content is not encrypted with AES-CBC")
    iv = algorithm[1]
    if iv.tag != _OCTETS or len(iv.value) != 16:
        raise _Malformed("the AES-CBC IV is not 16 bytes")
    if eci[2].tag == _CONTEXT0_PRIMITIVE:
        ciphertext = eci[2].value
    elif eci[2].tag == _CONTEXT0:  # constructed: the octets in pieces
        ciphertext = b"".join(piece.value for piece in _children(eci[2].value))
    else:
        raise _Malformed("encryptedContent has an unexpected tag")
    if not ciphertext or len(ciphertext) % 16:
        raise _Malformed("the encrypted content is not whole AES blocks")
    return _AES_CBC[algorithm[0].value], iv.value, ciphertext, wrapped


def _rsa_wrapped_key(recipient: _Tlv) -> bytes | None:
    """The encrypted content key of a KeyTransRecipientInfo to an RSA key, else None."""
    if recipient.tag != _SEQUENCE:  # key agreement, KEK, password: other [n] choices
        return None
    fields = _children(recipient.value)
    if len(fields) != 4 or fields[2].tag != _SEQUENCE or fields[3].tag != _OCTETS:
        raise _Malformed("a KeyTransRecipientInfo is malformed")
    algorithm = _children(fields[2].value)
    if not algorithm or algorithm[0].value != _RSA_ENCRYPTION:
        return None  # e.g. RSAES-OAEP, which sealer never writes
    return fields[3].value


@dataclass(frozen=True)
class _Tlv:
    tag: int
    value: bytes


def _read(data: bytes, pos: int) -> tuple[_Tlv, int]:
    """One DER element at ``pos``, and the position after it."""
    if pos + 2 > len(data):
        raise _Malformed("truncated")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise _Malformed("a multi-byte tag")
    if length == 0x80:
        raise _Malformed("an indefinite length (BER, not DER)")
    if length & 0x80:
        count = length & 0x7F
        if count > 4 or pos + count > len(data):
            raise _Malformed("a bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise _Malformed("truncated")
    return _Tlv(tag, data[pos : pos + length]), pos + length


def _children(value: bytes) -> list[_Tlv]:
    items, pos = [], 0
    while pos < len(value):
        item, pos = _read(value, pos)
        items.append(item)
    return items


def _fields(parent: _Tlv, count: int, what: str) -> list[_Tlv]:
    items = _children(parent.value)
    if len(items) != count:
        raise _Malformed(f"{what} has {len(items)} fields, not {count}")
    return items
