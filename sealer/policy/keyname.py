"""A policy key as the TPM sees it: its public area and its name, computed without a TPM.

Pure (no TPM library, no ``cryptography``): the boot path loads the key for VerifySignature
and names it in PolicyAuthorize. Keys are ECC P-256, stored as SubjectPublicKeyInfo PEM
(sealer.policy.keys.normalized_public_pem).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from sealer.errors import TokenError

# DER of SubjectPublicKeyInfo { id-ecPublicKey, prime256v1 } up to the uncompressed point's 04.
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d03010703420004")
_COORDINATE = 32
# TPMT_PUBLIC up to the point: TPM_ALG_ECC, nameAlg SHA-256, objectAttributes sign |
# userWithAuth, empty authPolicy, symmetric NULL, scheme NULL, curve NIST P-256, kdf NULL.
# The same area tpm2-pytss's TPM2B_PUBLIC.from_pem makes: the names bound into every sealed
# object's policy since the first enrollment depend on it.
_TEMPLATE = bytes.fromhex("0023000b00040040" "0000" "0010" "0010" "0003" "0010")


def _point(pem: str) -> tuple[bytes, bytes]:
    body = "".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TokenError("a policy key is not a PEM public key") from exc
    if len(der) != len(_P256_SPKI_PREFIX) + 2 * _COORDINATE or not der.startswith(
        _P256_SPKI_PREFIX
    ):
        raise TokenError("a policy key is not an uncompressed ECC P-256 public key")
    point = der[len(_P256_SPKI_PREFIX):]
    return point[:_COORDINATE], point[_COORDINATE:]


def _sized(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def public_area(pem: str) -> bytes:
    """The key's marshalled TPMT_PUBLIC."""
    x, y = _point(pem)
    return _TEMPLATE + _sized(x) + _sized(y)


def policy_key_public(pem: str) -> bytes:
    """The key's marshalled TPM2B_PUBLIC, as LoadExternal takes it."""
    return _sized(public_area(pem))


def policy_key_name(pem: str) -> bytes:
    """The key's TPM name: nameAlg (SHA-256) || SHA-256(TPMT_PUBLIC)."""
    return bytes.fromhex("000b") + hashlib.sha256(public_area(pem)).digest()
