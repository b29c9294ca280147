"""A vendor's files: its signing key, release approval files, revocation statements.

These are what a release pipeline hands to a fleet (see sealer.services.vendor for the
workflow). This module owns their formats and their signatures; it needs no TPM. Where a
check needs the TPM name of a public key, the caller passes the function that computes it
(sealer.tpm.policykey.policy_key_name), which keeps the TPM library out of this layer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from sealer.errors import PolicyMismatchError, TokenError, UsageError
from sealer.host.files import create_new_file, write_public_file
from sealer.policy import digest, keys, revocation
from sealer.policy.approval import Approval, parse_approval, verify_approval
from sealer.policy.revocation import REVOCATION_INDEX, REVOKE_REF, RevocationIndex

APPROVAL_FILE_TYPE = "sealer-approval"
REVOCATION_FILE_TYPE = "sealer-revocation"
FILE_VERSION = 1
_PREHASHED = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

# The TPM name of a PEM public key (sealer.tpm.policykey.policy_key_name).
KeyNamer = Callable[[str], bytes]


# ---------------------------------------------------------------------------------------------
# Keys


def keygen(private_path: Path) -> Path:
    """Write a new ECC P-256 key (PKCS#8 PEM, mode 0600) and its public half; never overwrite."""
    public_path = private_path.with_name(private_path.stem + ".pub.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for path, data, mode in (
        (private_path, private, 0o600),
        (public_path, keys.public_pem(key).encode(), 0o644),
    ):
        try:
            create_new_file(path, data, mode)
        except FileExistsError:
            raise UsageError(f"{path} exists already", "choose another --out") from None
        except OSError as exc:
            raise UsageError(f"cannot create {path}: {exc.strerror}") from exc
    return public_path


def load_private_key(path: Path) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """The vendor's private key and its public half (PEM); UsageError for anything else."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{path} is not an ECC P-256 key")
    return key, keys.public_pem(key)


def read_public_key(path: Path) -> str:
    """A vendor's public key file, as normalized PEM."""
    try:
        text = path.read_bytes().decode("ascii")
    except OSError as exc:
        raise UsageError(f"cannot read the key {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a PEM public key (not text)") from None
    return keys.normalized_public_pem(text, str(path))


# ---------------------------------------------------------------------------------------------
# Files


def _read_json(path: Path, kind: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: nested a thousand deep
        raise TokenError(f"{path} is not a sealer {kind} file (not JSON)") from exc
    if not isinstance(doc, dict) or doc.get("type") != f"sealer-{kind}":
        raise TokenError(f"{path} is not a sealer {kind} file")
    if doc.get("version") != FILE_VERSION or type(doc.get("version")) is not int:
        raise TokenError(f"{path} has unknown version {doc.get('version')!r}")
    return doc


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    """Write an approval file or a revocation statement (they are public: mode 0644)."""
    data = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    try:
        write_public_file(path, data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc


@dataclass(frozen=True)
class ApprovalFile:
    """A release's approval, signed by the vendor, with the vendor's public key."""

    approval: Approval
    vendor_pem: str

    def to_json(self) -> dict[str, Any]:
        return {
            "type": APPROVAL_FILE_TYPE,
            "version": FILE_VERSION,
            "vendor_key": self.vendor_pem,
            "approval": self.approval.to_json(),
        }


def read_approval_file(path: Path, key_name: KeyNamer) -> ApprovalFile:
    """An approval file whose signature and key check out; TokenError otherwise."""
    doc = _read_json(path, "approval")
    if not isinstance(doc.get("approval"), dict) or not isinstance(doc.get("vendor_key"), str):
        raise TokenError(f"{path} is corrupted (no approval or no vendor key)")
    approval = parse_approval(doc["approval"], str(path))
    pem = keys.normalized_public_pem(doc["vendor_key"], f"the vendor key in {path}")
    if approval.key_name != key_name(pem):
        raise TokenError(f"{path} is corrupted (its approval names another key than it carries)")
    verify_approval(approval, pem)
    if approval.release is None:
        raise TokenError(f"{path} approves no release number")
    return ApprovalFile(approval, pem)


# ---------------------------------------------------------------------------------------------
# Revocation statements


@dataclass(frozen=True)
class Statement:
    """A signed permission to set ``bits`` in the revocation field named ``nv_name``."""

    nv_index: int
    nv_name: bytes
    bits: int
    signer_pem: str
    signature: bytes  # DER ECDSA over H(PolicyCpHash(NV_SetBits(bits)) || REVOKE_REF)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": REVOCATION_FILE_TYPE,
            "version": FILE_VERSION,
            "nv_index": f"0x{self.nv_index:08x}",
            "nv_name": self.nv_name.hex(),
            "bits": f"0x{self.bits:016x}",
            "below": revocation.level_of(self.bits),
            "key": self.signer_pem,
            "signature": base64.b64encode(self.signature).decode(),
        }

    @property
    def signature_rs(self) -> tuple[int, int]:
        """The signature as (r, s), the form the TPM verifies."""
        r, s = utils.decode_dss_signature(self.signature)
        return r, s


def sign_statement(
    key: ec.EllipticCurvePrivateKey, pem: str, key_name: bytes, below: int
) -> Statement:
    """Permission, signed with ``key`` (whose TPM name is ``key_name``), to revoke every
    release below ``below`` in the revocation field that key is the authority of."""
    field = RevocationIndex(REVOCATION_INDEX, key_name)
    bits = revocation.bits_below(below)
    policy = revocation.revocation_statement_policy(field.name, bits)
    signature = key.sign(digest.approval_digest(policy, REVOKE_REF), _PREHASHED)
    return Statement(field.index, field.name, bits, pem, signature)


def read_statement(path: Path) -> Statement:
    """A revocation statement file, parsed (its signature is checked by verify_statement)."""
    doc = _read_json(path, "revocation")
    try:
        return Statement(
            nv_index=int(str(doc["nv_index"]), 16),
            nv_name=bytes.fromhex(str(doc["nv_name"])),
            bits=int(str(doc["bits"]), 16),
            signer_pem=keys.normalized_public_pem(str(doc["key"]), f"the key in {path}"),
            signature=base64.b64decode(str(doc["signature"]), validate=True),
        )
    except (KeyError, ValueError) as exc:
        raise TokenError(f"{path} is corrupted ({exc})") from exc


def verify_statement(statement: Statement) -> None:
    """PolicyMismatchError unless the statement's signer signed exactly these bits."""
    public = serialization.load_pem_public_key(statement.signer_pem.encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)  # normalized_public_pem checked it
    policy = revocation.revocation_statement_policy(statement.nv_name, statement.bits)
    try:
        public.verify(statement.signature, digest.approval_digest(policy, REVOKE_REF), _PREHASHED)
    except InvalidSignature:
        raise PolicyMismatchError(
            "the revocation statement's signature does not match its content (tampered or "
            "corrupted)",
            "get the statement again from the vendor",
        ) from None
