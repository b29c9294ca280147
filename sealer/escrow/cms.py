"""CMS envelopes to an organisation's RSA certificate: the only envelope crypto in sealer.

Encryption makes an RFC 5083 AuthEnvelopedData: RSAES-OAEP key transport (SHA-256, MGF1 with
SHA-256; RFC 4055) to the certificate and AES-256-GCM content encryption (RFC 5084), which
OpenSSL 3's ``openssl cms -decrypt -inkey org.key`` opens with no other tool. cryptography
has no builder for it (its ``PKCS7EnvelopeBuilder`` only does PKCS#1 v1.5 and CBC), so the few
DER fields are written here; every cipher operation is still cryptography's.

Decryption reads both that and the RFC 5652 EnvelopedData (RSA PKCS#1 v1.5, AES-CBC) that
version 1 records hold. It is done here rather than by ``pkcs7_decrypt_der``, because that
function also wants the recipient's certificate, and the help desk may hold only the private
key.
"""

from __future__ import annotations

import base64
import binascii
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.padding import PKCS7 as PKCS7Padding

from sealer.errors import AuthError, TokenError, UsageError

PasswordReader = Callable[[], bytes]
MIN_RSA_BITS = 2048
PEM_LABEL = "CMS"  # what openssl cms writes and reads (it also reads "PKCS7")
_CERT_HINT = "give the organisation's escrow certificate (PEM or DER) with --escrow-cert"
_RSA_HINT = f"ask for an RSA certificate ({MIN_RSA_BITS} bits or more) that allows keyEncipherment"

# DER contents of the object identifiers written or read.
_ENVELOPED_DATA = bytes.fromhex("2a864886f70d010703")  # 1.2.840.113549.1.7.3
_AUTH_ENVELOPED_DATA = bytes.fromhex("2a864886f70d0109100117")  # 1.2.840.113549.1.9.16.1.23
_DATA = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1
_RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1 (PKCS#1 v1.5)
_RSAES_OAEP = bytes.fromhex("2a864886f70d010107")  # 1.2.840.113549.1.1.7
_MGF1 = bytes.fromhex("2a864886f70d010108")  # 1.2.840.113549.1.1.8
_SHA256 = bytes.fromhex("608648016503040201")  # 2.16.840.1.101.3.4.2.1
_AES256_GCM = bytes.fromhex("60864801650304012e")  # 2.16.840.1.101.3.4.1.46
_AES_GCM = {  # 2.16.840.1.101.3.4.1.{6,26,46}: key length in bytes
    bytes.fromhex("608648016503040106"): 16,
    bytes.fromhex("60864801650304011a"): 24,
    _AES256_GCM: 32,
}
_GCM_NONCE, _GCM_TAG = 12, 16
_AES_CBC = {  # 2.16.840.1.101.3.4.1.{2,22,42}: key length in bytes
    bytes.fromhex("608648016503040102"): 16,
    bytes.fromhex("608648016503040116"): 24,
    bytes.fromhex("60864801650304012a"): 32,
}
_SEQUENCE, _SET, _OID, _OCTETS, _CONTEXT0, _CONTEXT0_PRIMITIVE = 0x30, 0x31, 0x06, 0x04, 0xA0, 0x80
_INTEGER, _CONTEXT1 = 0x02, 0xA1
# RSAES-OAEP-params with SHA-256 and MGF1-SHA-256 and the default (empty) label, RFC 4055; the
# hash AlgorithmIdentifiers without parameters, as OpenSSL writes them.
_SHA256_ID = bytes([_SEQUENCE, 11, _OID, 9]) + _SHA256
_OAEP_PARAMS = (
    bytes([_SEQUENCE, 43, _CONTEXT0, 13]) + _SHA256_ID
    + bytes([_CONTEXT1, 26, _SEQUENCE, 24, _OID, 9]) + _MGF1 + _SHA256_ID
)


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
             dsa.DSAPublicKey: "a DSA key"}
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
                         _CERT_HINT) from exc
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
                         "escrow needs an RSA certificate", _RSA_HINT) from exc
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
    ]
    return ", ".join(names) or "nothing"


def encrypt(certificate: EscrowCertificate, data: bytes) -> str:
    """``data`` as a PEM "CMS" AuthEnvelopedData that only the certificate's private key opens.

    RSAES-OAEP (SHA-256) wraps a fresh AES-256 key; AES-256-GCM encrypts and authenticates
    ``data`` as it is (no S/MIME line-ending changes).
    """
    public_key = certificate.certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):  # load_certificate lets only RSA through
        raise UsageError("escrow needs an RSA certificate", _RSA_HINT)
    content_key, nonce = AESGCM.generate_key(256), os.urandom(_GCM_NONCE)
    sealed = AESGCM(content_key).encrypt(nonce, data, None)  # ciphertext + 16-byte tag
    ciphertext, tag = sealed[:-_GCM_TAG], sealed[-_GCM_TAG:]
    wrapped = public_key.encrypt(content_key, _OAEP)
    issuer, serial = _issuer_and_serial(certificate.certificate)
    recipient = _der(_SEQUENCE, _der(_INTEGER, b"\0") + _der(_SEQUENCE, issuer + serial)
                     + _der(_SEQUENCE, _der(_OID, _RSAES_OAEP) + _OAEP_PARAMS)
                     + _der(_OCTETS, wrapped))
    gcm = _der(_SEQUENCE, _der(_OID, _AES256_GCM)
               + _der(_SEQUENCE, _der(_OCTETS, nonce) + _der(_INTEGER, bytes([_GCM_TAG]))))
    content_info = _der(_SEQUENCE, _der(_OID, _DATA) + gcm
                        + _der(_CONTEXT0_PRIMITIVE, ciphertext))
    auth_enveloped = _der(_SEQUENCE, _der(_INTEGER, b"\0") + _der(_SET, recipient)
                          + content_info + _der(_OCTETS, tag))
    der = _der(_SEQUENCE, _der(_OID, _AUTH_ENVELOPED_DATA) + _der(_CONTEXT0, auth_enveloped))
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode("ascii"), 64))
    return f"-----BEGIN {PEM_LABEL}-----\n{body}\n-----END {PEM_LABEL}-----\n"


_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _der(tag: int, value: bytes) -> bytes:
    """One DER element (definite, minimal length)."""
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + value


def _issuer_and_serial(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    """The certificate's issuer Name and serial INTEGER, as the DER bytes it holds them in."""
    try:
        tbs, _ = _read(certificate.tbs_certificate_bytes, 0)
        fields = _children(tbs.value)
        if fields and fields[0].tag == _CONTEXT0:
            fields = fields[1:]  # the version
        if len(fields) < 3 or fields[0].tag != _INTEGER or fields[2].tag != _SEQUENCE:
            raise _Malformed("unexpected TBSCertificate")
    except _Malformed as exc:
        raise UsageError(f"the escrow certificate {certificate.subject.rfc4514_string()} "
                         "cannot be read", _CERT_HINT) from exc
    return _der(_SEQUENCE, fields[2].value), _der(_INTEGER, fields[0].value)


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
                            "give the right one with --key-password-file") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError(f"{source} is not a PEM or DER private key",
                         "give the organisation's escrow private key with --key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError(f"the private key {source} is not an RSA key",
                         "escrow envelopes are made to RSA certificates: give that "
                         "certificate's private key with --key")
    return key


def decrypt(pem_text: str, key: rsa.RSAPrivateKey) -> bytes:
    """The content of a PEM CMS AuthEnvelopedData (or a version-1 EnvelopedData), decrypted
    with ``key``.

    TokenError: the envelope is malformed or uses what sealer never writes. AuthError: no
    RSA recipient in it opens with this key.
    """
    der = pem_to_der(pem_text)
    try:
        content_type, content = _content_info(der)
        if content_type == _AUTH_ENVELOPED_DATA:
            found = _open_authenticated(_auth_enveloped_fields(content), key)
        else:
            found = _open_legacy(_enveloped_fields(content), key)
    except _Malformed as exc:
        raise TokenError(f"the envelope is not a CMS envelope sealer can read: {exc}") from exc
    if found is None:
        raise AuthError("the private key does not open this envelope")
    return found


def is_authenticated(pem_text: str) -> bool:
    """Is this a PEM AuthEnvelopedData (what version 2 records hold)? TokenError if no CMS."""
    try:
        return _content_info(pem_to_der(pem_text))[0] == _AUTH_ENVELOPED_DATA
    except _Malformed as exc:
        raise TokenError(f"the envelope is not a CMS envelope sealer can read: {exc}") from exc


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class _Envelope:
    key_length: int  # the AES content key's length in bytes
    iv: bytes  # CBC IV or GCM nonce
    ciphertext: bytes
    wrapped_keys: list[bytes]  # the content key, encrypted to each RSA recipient
    tag: bytes = b""  # GCM only


def _open_authenticated(envelope: _Envelope, key: rsa.RSAPrivateKey) -> bytes | None:
    for wrapped in envelope.wrapped_keys:
        try:
            content_key = key.decrypt(wrapped, _OAEP)
        except ValueError:
            continue
        if len(content_key) != envelope.key_length:
            continue
        try:
            decryptor = Cipher(
                algorithms.AES(content_key),
                modes.GCM(envelope.iv, envelope.tag, min_tag_length=len(envelope.tag)),
            ).decryptor()
            return decryptor.update(envelope.ciphertext) + decryptor.finalize()
        except InvalidTag:
            # OAEP checks its own padding, so a wrong private key fails above, not here:
            # the key was right and the content or its tag was changed.
            raise _Malformed("its content was changed (the AES-GCM tag does not match)") from None
    return None


def _open_legacy(envelope: _Envelope, key: rsa.RSAPrivateKey) -> bytes | None:
    """Version 1 records: PKCS#1 v1.5 key transport, AES-CBC (unauthenticated)."""
    for wrapped in envelope.wrapped_keys:
        # A wrong key fails here, or (OpenSSL's implicit rejection of PKCS#1 v1.5 returns a
        # random key instead of failing) at the length or the CBC padding check below; the
        # caller also checks what the content is.
        try:
            content_key = key.decrypt(wrapped, padding.PKCS1v15())
        except ValueError:
            continue
        if len(content_key) != envelope.key_length:
            continue
        decryptor = Cipher(algorithms.AES(content_key), modes.CBC(envelope.iv)).decryptor()
        padded = decryptor.update(envelope.ciphertext) + decryptor.finalize()
        unpadder = PKCS7Padding(128).unpadder()
        try:
            return unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            continue
    return None


def _content_info(der: bytes) -> tuple[bytes, _Tlv]:
    """(content type OID, the content) of a DER ContentInfo."""
    content_info, rest = _read(der, 0)
    if rest != len(der) or content_info.tag != _SEQUENCE:
        raise _Malformed("not one DER SEQUENCE")
    content_type, explicit = _fields(content_info, 2, "ContentInfo")
    if content_type.tag != _OID or explicit.tag != _CONTEXT0:
        raise _Malformed("it is not a ContentInfo")
    if content_type.value not in (_ENVELOPED_DATA, _AUTH_ENVELOPED_DATA):
        raise _Malformed("its content type is not envelopedData or authEnvelopedData")
    [content] = _fields(explicit, 1, "content")
    if content.tag != _SEQUENCE:
        raise _Malformed("its content is not a SEQUENCE")
    return content_type.value, content


def _recipients_and_content(parts: list[_Tlv]) -> tuple[list[_Tlv], list[_Tlv], list[_Tlv]]:
    """RecipientInfos, the EncryptedContentInfo's fields and what follows it, after version
    and (optional) originatorInfo."""
    if len(parts) > 1 and parts[1].tag == _CONTEXT0:
        parts = [parts[0], *parts[2:]]  # originatorInfo: certificates, nothing to decrypt
    if len(parts) < 3 or parts[1].tag != _SET or parts[2].tag != _SEQUENCE:
        raise _Malformed("it lacks recipientInfos or encryptedContentInfo")
    eci = _children(parts[2].value)
    if len(eci) != 3 or eci[1].tag != _SEQUENCE:
        raise _Malformed("encryptedContentInfo has no (attached) encrypted content")
    return _children(parts[1].value), eci, parts[3:]


def _encrypted_content(element: _Tlv) -> bytes:
    if element.tag == _CONTEXT0_PRIMITIVE:
        return element.value
    if element.tag == _CONTEXT0:  # constructed: the octets in pieces
        return b"".join(piece.value for piece in _children(element.value))
    raise _Malformed("encryptedContent has an unexpected tag")


def _auth_enveloped_fields(content: _Tlv) -> _Envelope:
    recipients, eci, tail = _recipients_and_content(_children(content.value))
    if tail and tail[0].tag == _CONTEXT1:
        raise _Malformed("it has authenticated attributes, which sealer never writes")
    if not tail or tail[0].tag != _OCTETS:
        raise _Malformed("it has no MAC")
    wrapped = [k for k in (_wrapped_key(r, _RSAES_OAEP) for r in recipients) if k is not None]
    if not wrapped:
        raise _Malformed("no recipient uses RSA-OAEP (SHA-256) key transport")
    algorithm = _children(eci[1].value)
    if len(algorithm) != 2 or algorithm[0].tag != _OID or algorithm[0].value not in _AES_GCM:
        raise _Malformed("the content is not encrypted with AES-GCM")
    if algorithm[1].tag != _SEQUENCE:
        raise _Malformed("the AES-GCM parameters are malformed")
    params = _children(algorithm[1].value)
    tag_length = 12  # GCMParameters' aes-ICVlen DEFAULT
    if len(params) == 2 and params[1].tag == _INTEGER and len(params[1].value) == 1:
        tag_length = params[1].value[0]
    elif len(params) != 1:
        raise _Malformed("the AES-GCM parameters are malformed")
    if params[0].tag != _OCTETS or len(params[0].value) != _GCM_NONCE:
        raise _Malformed(f"the AES-GCM nonce is not {_GCM_NONCE} bytes")
    mac = tail[0].value
    if not 12 <= tag_length <= 16 or len(mac) != tag_length:
        raise _Malformed("the MAC's length is not the one the GCM parameters give")
    ciphertext = _encrypted_content(eci[2])
    return _Envelope(_AES_GCM[algorithm[0].value], params[0].value, ciphertext, wrapped, mac)


def _enveloped_fields(content: _Tlv) -> _Envelope:
    recipients, eci, _ = _recipients_and_content(_children(content.value))
    wrapped = [k for k in (_wrapped_key(r, _RSA_ENCRYPTION) for r in recipients) if k is not None]
    if not wrapped:
        raise _Malformed("no recipient uses RSA key transport")
    algorithm = _children(eci[1].value)
    if len(algorithm) != 2 or algorithm[0].tag != _OID or algorithm[0].value not in _AES_CBC:
        raise _Malformed("the content is not encrypted with AES-CBC")
    iv = algorithm[1]
    if iv.tag != _OCTETS or len(iv.value) != 16:
        raise _Malformed("the AES-CBC IV is not 16 bytes")
    ciphertext = _encrypted_content(eci[2])
    if not ciphertext or len(ciphertext) % 16:
        raise _Malformed("the encrypted content is not whole AES blocks")
    return _Envelope(_AES_CBC[algorithm[0].value], iv.value, ciphertext, wrapped)


def _wrapped_key(recipient: _Tlv, algorithm_oid: bytes) -> bytes | None:
    """The encrypted content key of a KeyTransRecipientInfo whose key encryption algorithm
    is ``algorithm_oid`` (for RSAES-OAEP: with SHA-256 and MGF1-SHA-256 only), else None."""
    if recipient.tag != _SEQUENCE:  # key agreement, KEK, password: other [n] choices
        return None
    fields = _children(recipient.value)
    if len(fields) != 4 or fields[2].tag != _SEQUENCE or fields[3].tag != _OCTETS:
        raise _Malformed("a KeyTransRecipientInfo is malformed")
    algorithm = _children(fields[2].value)
    if not algorithm or algorithm[0].value != algorithm_oid:
        return None
    if algorithm_oid == _RSAES_OAEP and (
        len(algorithm) != 2 or _der(algorithm[1].tag, algorithm[1].value) != _OAEP_PARAMS
    ):
        return None  # OAEP with SHA-1 (its defaults) or other parameters: not sealer's
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
