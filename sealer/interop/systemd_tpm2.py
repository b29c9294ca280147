"""Opening volumes that systemd-cryptenroll 252 bound to the TPM (``systemd-tpm2`` tokens).

The token, as systemd 252 writes it (src/shared/tpm2-util.c, tpm2_make_luks2_json)::

    {"type": "systemd-tpm2", "keyslots": ["1"],
     "tpm2-blob": base64(TPM2B_PRIVATE || TPM2B_PUBLIC, both marshalled),
     "tpm2-pcrs": [7], "tpm2-pcr-bank": "sha256", "tpm2-primary-alg": "ecc",
     "tpm2-policy-hash": hex(the sealed object's authPolicy), "tpm2-pin": false}

plus ``tpm2_pubkey_pcrs`` and ``tpm2_pubkey`` (PEM, base64) for a signed PCR policy
(``--tpm2-public-key``). The keyslot's passphrase is the base64 of the 32-byte unsealed
secret (cryptenroll-tpm2.c, base64mem), with padding and without a newline.

Fields a later systemd added (``tpm2_salt``, ``tpm2_srk``, ``tpm2_pcrlock``) change how the
secret is sealed; such tokens are refused with a message that says so, not misread.
"""

from __future__ import annotations

import base64
import binascii
import reprlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sealer.errors import PolicyMismatchError, TokenError
from sealer.pcrs import BANKS, PCR_COUNT, Bank
from sealer.policy import digest
from sealer.tpm.connection import connect
from sealer.tpm.pcr import read_pcrs
from sealer.tpm.systemd_tpm2 import PRIMARY_ALGS, SystemdSealedObject, unseal

TOKEN_TYPE = "systemd-tpm2"
LUKS2_KEYSLOTS = 32
_TPM_ALG_KEYEDHASH = 0x0008
_TPM_ALG_SHA256 = 0x000B
# Fields of systemd 253 and later, each of which changes what it takes to unseal.
_NEWER_FIELDS = {
    "tpm2_salt": "a salted PIN (systemd 253)",
    "tpm2_srk": "a persistent storage root key (systemd 254)",
    "tpm2_pcrlock": "a pcrlock policy (systemd 255)",
}
_HINT = "unlock with the passphrase or recovery key"


@dataclass(frozen=True)
class SystemdTpm2Token:
    """A ``systemd-tpm2`` token of systemd-cryptenroll, parsed as systemd 252 writes it."""

    token_id: int
    keyslots: tuple[int, ...]
    pcr_bank: str  # "sha1", "sha256", "sha384" or "sha512"
    pcrs: tuple[int, ...]  # ascending, no duplicates; may be empty (no PCR policy)
    primary_alg: str  # "ecc" or "rsa"
    blob: bytes  # marshalled TPM2B_PRIVATE then TPM2B_PUBLIC, exactly as in the token
    policy_hash: bytes  # SHA-256 policy digest, equal to the sealed object's authPolicy
    needs_pin: bool
    pubkey: bytes | None = None  # PEM of a signed PCR policy's key (tpm2_pubkey)
    pubkey_pcrs: tuple[int, ...] = ()  # PCRs under that signed policy (tpm2_pubkey_pcrs)
    newer_fields: tuple[str, ...] = ()  # fields of a later systemd that 252 does not write

    # parse() checked that the blob splits into exactly these two parts.
    @property
    def sealed_private(self) -> bytes:
        return _split_blob(self.blob)[0]

    @property
    def sealed_public(self) -> bytes:
        return _split_blob(self.blob)[1]

    def unsupported(self) -> str | None:
        """Why sealer cannot unseal this token, or None when it can."""
        if self.newer_fields:
            what = ", ".join(f"{f} ({_NEWER_FIELDS[f]})" for f in self.newer_fields)
            return f"it was written by a newer systemd: {what}; sealer reads systemd 252's format"
        if self.pubkey_pcrs or self.pubkey is not None:
            return (
                "it uses a signed PCR policy (systemd-cryptenroll --tpm2-public-key), "
                "which sealer does not support"
            )
        return None


def _split_blob(blob: bytes) -> tuple[bytes, bytes]:
    """The two TPM2B structures of ``tpm2-blob``; ValueError when they do not fill it."""
    halves = []
    rest = blob
    for _ in range(2):
        if len(rest) < 2:
            raise ValueError("it ends inside a size field")
        end = 2 + int.from_bytes(rest[:2], "big")
        if len(rest) < end:
            raise ValueError("a part is shorter than its size field says")
        halves.append(rest[:end])
        rest = rest[end:]
    if rest:
        raise ValueError(f"{len(rest)} bytes follow the public area")
    return halves[0], halves[1]


class _Reader:
    """Typed access to the token's fields; every malformation becomes one TokenError."""

    def __init__(self, token_id: int, doc: Mapping[str, Any]) -> None:
        self.doc = doc
        self.where = f"systemd-tpm2 token {token_id}"

    def fail(self, what: str) -> TokenError:
        return TokenError(f"{self.where} is corrupted ({what})", _HINT)

    def field(self, key: str, kind: type, default: Any = None) -> Any:
        if key not in self.doc and default is not None:
            return default
        value = self.doc.get(key)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(f"field {key!r} is missing or not a {kind.__name__}")
        return value

    def b64(self, key: str) -> bytes:
        try:
            data = base64.b64decode(self.field(key, str), validate=True)
        except (ValueError, binascii.Error) as exc:  # also non-ASCII text
            raise self.fail(f"field {key!r} is not base64") from exc
        if not data:
            raise self.fail(f"field {key!r} is empty")
        return data

    def hexbytes(self, key: str) -> bytes:
        text = self.field(key, str)
        # bytes.fromhex() would also accept spaces; systemd writes bare hex digits.
        if len(text) % 2 or not all(c in string.hexdigits for c in text):
            raise self.fail(f"field {key!r} is not hex")
        return bytes.fromhex(text)

    def pcr_list(self, key: str) -> tuple[int, ...]:
        value = self.field(key, list)
        if not all(type(p) is int and 0 <= p < PCR_COUNT for p in value):
            raise self.fail(f"field {key!r} must list PCR indices 0-{PCR_COUNT - 1}")
        return tuple(sorted(set(value)))  # systemd keeps a bit mask: order and repeats vanish

    def choice(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.field(key, str, default).lower()  # systemd compares case-insensitively
        if value not in allowed:
            raise self.fail(
                f"field {key!r} is {reprlib.repr(value)}, not one of {', '.join(allowed)}"
            )
        return str(value)


def _keyslots(r: _Reader) -> tuple[int, ...]:
    raw = r.field("keyslots", list)
    if not raw or not all(
        isinstance(k, str)
        and 0 < len(k) <= 2
        and k.isascii()
        and k.isdigit()
        and int(k) < LUKS2_KEYSLOTS
        for k in raw
    ):
        raise r.fail(
            f"keyslots must name LUKS2 keyslots 0-{LUKS2_KEYSLOTS - 1}, not {reprlib.repr(raw)}"
        )
    return tuple(int(k) for k in raw)


def _check_blob(r: _Reader, blob: bytes, policy_hash: bytes) -> None:
    """The sealed object must be systemd's: a SHA-256 keyedhash whose policy is the token's."""
    try:
        _, public = _split_blob(blob)
    except ValueError as exc:
        raise r.fail(f"tpm2-blob is not a TPM2B_PRIVATE and a TPM2B_PUBLIC: {exc}") from exc
    area = public[2:]
    if len(area) < 10:
        raise r.fail("tpm2-blob's public area is truncated")
    kind, name_alg = int.from_bytes(area[0:2], "big"), int.from_bytes(area[2:4], "big")
    policy_size = int.from_bytes(area[8:10], "big")
    if kind != _TPM_ALG_KEYEDHASH or name_alg != _TPM_ALG_SHA256:
        raise r.fail("tpm2-blob does not hold a SHA-256 sealed data object")
    if area[10 : 10 + policy_size] != policy_hash:
        raise r.fail("tpm2-policy-hash differs from the sealed object's policy")


def parse(token_id: int, doc: Mapping[str, Any]) -> SystemdTpm2Token:
    """Read a systemd-tpm2 token (the JSON of ``cryptsetup token export``), strictly."""
    if not isinstance(doc, Mapping):
        raise TokenError(f"systemd-tpm2 token {token_id} is corrupted (not a JSON object)", _HINT)
    r = _Reader(token_id, doc)
    if doc.get("type") != TOKEN_TYPE:
        raise r.fail(f"type is {reprlib.repr(doc.get('type'))}, not {TOKEN_TYPE!r}")
    policy_hash = r.hexbytes("tpm2-policy-hash")
    if len(policy_hash) != digest.DIGEST_SIZE:
        raise r.fail(f"tpm2-policy-hash has {len(policy_hash)} bytes, not {digest.DIGEST_SIZE}")
    blob = r.b64("tpm2-blob")
    _check_blob(r, blob, policy_hash)
    pubkey_pcrs = r.pcr_list("tpm2_pubkey_pcrs") if "tpm2_pubkey_pcrs" in doc else ()
    pubkey = r.b64("tpm2_pubkey") if "tpm2_pubkey" in doc else None
    if pubkey_pcrs and pubkey is None:
        raise r.fail("tpm2_pubkey_pcrs is set but tpm2_pubkey is missing")
    return SystemdTpm2Token(
        token_id=token_id,
        keyslots=_keyslots(r),
        # Before systemd 250 the bank was always SHA-256 and the primary key always ECC;
        # systemd 252 reads a token without these fields the same way.
        pcr_bank=r.choice("tpm2-pcr-bank", tuple(BANKS), "sha256"),
        pcrs=r.pcr_list("tpm2-pcrs"),
        primary_alg=r.choice("tpm2-primary-alg", PRIMARY_ALGS, "ecc"),
        blob=blob,
        policy_hash=policy_hash,
        needs_pin=bool(r.field("tpm2-pin", bool, False)),
        pubkey=pubkey,
        pubkey_pcrs=pubkey_pcrs,
        newer_fields=tuple(
            f for f in _NEWER_FIELDS if f in doc and doc[f] not in (None, False, "", [])
        ),
    )


def expected_policy(bank: Bank, pcr_values: Mapping[int, bytes], with_pin: bool) -> bytes:
    """The policy digest systemd 252 seals to: PolicyPCR (when PCRs were chosen), then
    PolicyAuthValue (with a PIN), starting from the all-zero digest."""
    policy = digest.policy_pcr(digest.ZERO, bank, pcr_values) if pcr_values else digest.ZERO
    return digest.policy_auth_value(policy) if with_pin else policy


def _mismatch(token: SystemdTpm2Token) -> PolicyMismatchError:
    bank = token.pcr_bank
    if len(token.pcrs) == 1:
        what = f"PCR {token.pcrs[0]} ({bank}) differs from the value systemd-cryptenroll bound"
    else:
        listed = "+".join(str(p) for p in token.pcrs)
        what = (
            f"PCRs {listed} ({bank}): at least one differs from the values "
            "systemd-cryptenroll bound"
        )
    return PolicyMismatchError(
        f"the TPM will not release the key of systemd-tpm2 token {token.token_id}: {what}",
        f"{_HINT}; after an intended change, enroll the TPM again",
    )


def passphrase(token: SystemdTpm2Token, tcti: str | None, read_pin: Callable[[], bytes]) -> bytes:
    """The passphrase of the token's keyslot: base64 of the secret the TPM unseals.

    The PCRs are read and the policy checked first, so a changed boot state is reported by
    PCR without creating a key or asking for the PIN; the TPM enforces the policy anyway.
    """
    reason = token.unsupported()
    if reason is not None:
        raise TokenError(f"cannot use systemd-tpm2 token {token.token_id}: {reason}", _HINT)
    bank = BANKS[token.pcr_bank]
    sealed = SystemdSealedObject(
        primary_alg=token.primary_alg,
        private=token.sealed_private,
        public=token.sealed_public,
        bank=bank,
        pcrs=token.pcrs,
        with_pin=token.needs_pin,
    )
    with connect(tcti) as ctx:
        current = read_pcrs(ctx, bank, token.pcrs) if token.pcrs else {}
        if expected_policy(bank, current, token.needs_pin) != token.policy_hash:
            # parse() checked that the hash is the sealed object's policy: when the PCRs cannot
            # explain the difference (none bound, or the PIN flag does), the token is lying.
            if expected_policy(bank, current, not token.needs_pin) == token.policy_hash:
                lie = "its tpm2-pin flag contradicts its policy hash"
            elif not token.pcrs:
                lie = "its policy hash is not the one systemd 252 computes for it"
            else:
                raise _mismatch(token)
            raise TokenError(f"systemd-tpm2 token {token.token_id} is corrupted ({lie})", _HINT)
        pin = read_pin() if token.needs_pin else None
        secret = unseal(ctx, sealed, pin)
    return base64.b64encode(secret)
