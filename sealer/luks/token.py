"""The ``sealer-tpm2`` LUKS2 token: everything needed to unseal, kept in the volume header.

The token is versioned JSON. Readers refuse versions they do not know instead of guessing,
and every field is validated on the way in so that a corrupted header ends in one clear
TokenError, never in a KeyError deep inside the unseal path.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sealer.errors import TokenError

TOKEN_TYPE = "sealer-tpm2"
ENROLLMENT_ID_BYTES = 16
TOKEN_VERSION = 2  # 2: the enrollment id that binds approvals (sealer.policy.binding)
LEGACY_VERSION = 1  # read, still unlocks, and 'sealer status' asks to enroll again


@dataclass(frozen=True)
class PolicyKeyRef:
    """A public key whose signed approvals the sealed object accepts."""

    role: str  # "machine" (this machine's key) or "vendor"
    public_pem: str
    name: bytes  # the key's TPM name, bound into the sealed object's authPolicy


@dataclass(frozen=True)
class RevocationRef:
    """The TPM NV bit field every approval of this enrollment checks (sealer.policy.revocation)."""

    nv_index: int
    nv_name: bytes
    authority: str  # "machine" or "vendor": whose signed statements may revoke

    @property
    def locator(self) -> tuple[int, bytes]:
        """(index, name): where the field is, and what the approvals check it is."""
        return self.nv_index, self.nv_name


@dataclass(frozen=True)
class RetirementRef:
    """The TPM NV counter whose value retires the machine's older approvals
    (sealer.policy.retirement)."""

    nv_index: int
    nv_name: bytes


@dataclass(frozen=True)
class RecoveryRef:
    """The keyslot of the volume's recovery key, and the keyslots of a rotation under way.

    A recovery keyslot is claimed by no LUKS2 token (cryptsetup must offer it at the
    passphrase prompt), so this record is the only thing that tells it from a passphrase.
    """

    keyslot: int | None  # the recovery key the owner holds (None: none yet)
    pending: int | None = None  # a new key added but not yet handed over: a rerun drops it
    retired: int | None = None  # the old key, handed over and replaced: a rerun removes it

    def slots(self) -> tuple[int, ...]:
        return tuple(s for s in (self.keyslot, self.pending, self.retired) if s is not None)

    @property
    def unfinished(self) -> bool:
        """A rotation was interrupted: a key is pending or retired."""
        return self.pending is not None or self.retired is not None


@dataclass(frozen=True)
class SealerToken:
    """A sealer token, parsed: the sealed secret, what its policy binds, and its approvals."""

    keyslot: int
    srk_handle: int
    srk_name: bytes
    pcr_bank: str
    pcrs: tuple[int, ...]  # the PCRs the user chose, without the capping PCR
    cap_pcr: int
    sealed_public: bytes
    sealed_private: bytes
    pin_salt: bytes | None  # set when the object needs a PIN (PolicyAuthValue)
    policy_keys: tuple[PolicyKeyRef, ...]
    approvals: tuple[Mapping[str, Any], ...]  # signed approvals, parsed by sealer.policy
    created: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    revocation: RevocationRef | None = None  # None: enrolled before revocation existed
    # False while an enrollment is being written: the token names its keyslot but does not
    # claim it yet (LUKS2 lets a token claim only an existing keyslot). Never used to unlock.
    complete: bool = True
    recovery: RecoveryRef | None = None
    # Random, bound into the sealed object's policy (policyRef); None in a version 1 token.
    enrollment_id: bytes | None = None
    retirement: RetirementRef | None = None  # None: enrolled before approvals were retired
    # The SRK's marshalled TPM2B_PUBLIC, whose name is srk_name: the unlock salts its session
    # to it without asking the TPM (one ReadPublic less). None: enrolled before it was kept.
    srk_public: bytes | None = None

    @property
    def has_pin(self) -> bool:
        return self.pin_salt is not None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,  # fields a newer sealer added survive a rewrite by this one
            "type": TOKEN_TYPE,
            "keyslots": [str(self.keyslot)] if self.complete else [],
            "version": LEGACY_VERSION if self.enrollment_id is None else TOKEN_VERSION,
            **({} if self.enrollment_id is None else {"enrollment_id": self.enrollment_id.hex()}),
            "srk_handle": f"0x{self.srk_handle:08x}",
            "srk_name": self.srk_name.hex(),
            **({} if self.srk_public is None else {"srk_public": _b64(self.srk_public)}),
            "pcr_bank": self.pcr_bank,
            "pcrs": list(self.pcrs),
            "cap_pcr": self.cap_pcr,
            "sealed_public": _b64(self.sealed_public),
            "sealed_private": _b64(self.sealed_private),
            "pin_salt": None if self.pin_salt is None else _b64(self.pin_salt),
            "policy_keys": [
                {"role": k.role, "public_pem": k.public_pem, "name": k.name.hex()}
                for k in self.policy_keys
            ],
            "approvals": [dict(a) for a in self.approvals],
            "created": self.created,
            **self._revocation_json(),
            **({} if self.complete else {"enrolling": {"keyslot": self.keyslot}}),
            **self._recovery_json(),
            **self._retirement_json(),
        }

    def _retirement_json(self) -> dict[str, Any]:
        if self.retirement is None:
            return {}
        r = self.retirement
        return {"retirement": {"nv_index": f"0x{r.nv_index:08x}", "nv_name": r.nv_name.hex()}}

    def _recovery_json(self) -> dict[str, Any]:
        if self.recovery is None:
            return {}
        fields = {"keyslot": self.recovery.keyslot, "pending": self.recovery.pending,
                  "retired": self.recovery.retired}
        return {"recovery": {k: v for k, v in fields.items() if v is not None}}

    def _revocation_json(self) -> dict[str, Any]:
        if self.revocation is None:
            return {}
        r = self.revocation
        return {
            "revocation": {
                "nv_index": f"0x{r.nv_index:08x}", "nv_name": r.nv_name.hex(),
                "authority": r.authority,
            }
        }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Reader:
    """Typed field access that turns every malformation into a TokenError."""

    def __init__(self, doc: Mapping[str, Any], where: str) -> None:
        self.doc = doc
        self.where = where

    def fail(self, what: str) -> TokenError:
        return TokenError(
            f"{self.where} is corrupted ({what})",
            "unlock with the passphrase or recovery key, then 'sealer remove' and enroll again",
        )

    def get(self, key: str, kind: type) -> Any:
        value = self.doc.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"field {key!r} is missing or not a {kind.__name__}")
        return value

    def b64(self, key: str) -> bytes:
        try:
            return base64.b64decode(self.get(key, str), validate=True)
        except ValueError as exc:  # binascii.Error, and non-ASCII text
            raise self.fail(f"field {key!r} is not base64") from exc

    def hexbytes(self, key: str, doc: Mapping[str, Any] | None = None) -> bytes:
        value = (doc if doc is not None else self.doc).get(key)
        if not isinstance(value, str):
            raise self.fail(f"field {key!r} is missing")
        try:
            return bytes.fromhex(value)
        except ValueError as exc:
            raise self.fail(f"field {key!r} is not hex") from exc


def parse_token(token_id: int, doc: Mapping[str, Any]) -> SealerToken:
    """Parse and check a sealer token's JSON; TokenError when it is corrupted or of an unknown
    version.
    """
    where = f"sealer token {token_id}"
    r = _Reader(doc, where)
    if doc.get("type") != TOKEN_TYPE:
        raise r.fail(f"type is {doc.get('type')!r}")
    version = doc.get("version")
    if type(version) is not int or version not in (LEGACY_VERSION, TOKEN_VERSION):
        raise TokenError(  # (type() is int: True == 1.0 == 1 in Python)
            f"{where} has version {version!r}, this sealer reads versions "
            f"{LEGACY_VERSION} and {TOKEN_VERSION}",
            "upgrade sealer, or unlock with the passphrase or recovery key",
        )
    keyslots = r.get("keyslots", list)
    enrolling = doc.get("enrolling")
    if not keyslots and isinstance(enrolling, dict):  # an enrollment still being written
        keyslots = [enrolling.get("keyslot")]
    elif not keyslots:  # cryptsetup unclaims a keyslot when it is removed
        raise TokenError(
            f"{where} claims no keyslot: its keyslot was removed (an interrupted "
            "'sealer remove', or by hand)",
            f"run 'sealer remove --token {token_id}' to clear the rest",
        )
    # At most two digits (LUKS2 keyslots are 0-31): int() below would raise ValueError, not
    # TokenError, on a string of more than 4300 digits.
    slot = str(keyslots[0]) if len(keyslots) == 1 else ""
    if not (slot.isascii() and slot.isdigit() and len(slot) <= 2):
        raise r.fail(f"it must name exactly one keyslot, not {keyslots!r}")
    try:
        srk_handle = int(r.get("srk_handle", str), 16)
    except ValueError as exc:
        raise r.fail("srk_handle is not a hex handle") from exc
    if not 0 <= srk_handle <= 0xFFFFFFFF:  # int() takes "-1"; to_json could not write it back
        raise r.fail("srk_handle is not a 32-bit TPM handle")
    pcrs = r.get("pcrs", list)
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < 24 for p in pcrs):
        raise r.fail("pcrs must be PCR indices 0-23")
    cap_pcr = r.get("cap_pcr", int)
    if not 0 <= cap_pcr < 24:
        raise r.fail("cap_pcr must be a PCR index 0-23")
    pin_salt = None if doc.get("pin_salt") is None else r.b64("pin_salt")
    keys = []
    for entry in r.get("policy_keys", list):
        if not isinstance(entry, dict):
            raise r.fail("a policy key entry is not an object")
        sub = _Reader(entry, where)
        keys.append(
            PolicyKeyRef(
                role=sub.get("role", str),
                public_pem=sub.get("public_pem", str),
                name=sub.hexbytes("name"),
            )
        )
    if not keys:
        raise r.fail("it trusts no policy key")
    approvals = r.get("approvals", list)
    if not all(isinstance(a, dict) for a in approvals):
        raise r.fail("an approval is not an object")
    known = {
        "type", "keyslots", "version", "srk_handle", "srk_name", "pcr_bank", "pcrs", "cap_pcr",
        "sealed_public", "sealed_private", "pin_salt", "policy_keys", "approvals", "created",
        "revocation", "enrolling", "recovery", "enrollment_id", "retirement", "srk_public",
    }
    enrollment_id = None
    if version == TOKEN_VERSION:
        enrollment_id = r.hexbytes("enrollment_id")
        if len(enrollment_id) != ENROLLMENT_ID_BYTES:
            raise r.fail(f"enrollment_id is not {ENROLLMENT_ID_BYTES} bytes")
    srk_name = r.hexbytes("srk_name")
    return SealerToken(
        keyslot=int(keyslots[0]),
        srk_handle=srk_handle,
        srk_name=srk_name,
        pcr_bank=r.get("pcr_bank", str),
        pcrs=tuple(pcrs),
        cap_pcr=cap_pcr,
        sealed_public=r.b64("sealed_public"),
        sealed_private=r.b64("sealed_private"),
        pin_salt=pin_salt,
        policy_keys=tuple(keys),
        approvals=tuple(approvals),
        created=str(doc.get("created", "")),
        extra={k: v for k, v in doc.items() if k not in known},
        revocation=_revocation(r, doc.get("revocation")),
        complete=bool(r.get("keyslots", list)),
        recovery=_recovery(r, doc.get("recovery")),
        enrollment_id=enrollment_id,
        retirement=_retirement(r, doc.get("retirement")),
        srk_public=_srk_public(r, srk_name) if "srk_public" in doc else None,
    )


def _srk_public(r: _Reader, srk_name: bytes) -> bytes:
    """The SRK's public area, refused unless it is the one srk_name names (SHA-256 names)."""
    public = r.b64("srk_public")
    if len(public) < 4 or int.from_bytes(public[:2], "big") != len(public) - 2:
        raise r.fail("srk_public is not a TPM2B_PUBLIC")
    area = public[2:]
    if area[2:4] != b"\x00\x0b" or srk_name != area[2:4] + hashlib.sha256(area).digest():
        raise r.fail("srk_public is not the public area of the key srk_name names")
    return public


def _nv_ref(r: _Reader, raw: Any, what: str) -> tuple[_Reader, int, bytes]:
    """(reader, index, name) of an object naming an NV index: {"nv_index", "nv_name"}."""
    if not isinstance(raw, dict):
        raise r.fail(f"{what} is not an object")
    sub = _Reader(raw, r.where)
    try:
        index = int(sub.get("nv_index", str), 16)
    except ValueError as exc:
        raise r.fail(f"{what}.nv_index is not a hex handle") from exc
    if not 0 <= index <= 0xFFFFFFFF:  # int() takes "-1"; to_json could not write it back
        raise r.fail(f"{what}.nv_index is not a 32-bit TPM handle")
    return sub, index, sub.hexbytes("nv_name")


def _retirement(r: _Reader, raw: Any) -> RetirementRef | None:
    if raw is None:
        return None
    _, index, name = _nv_ref(r, raw, "retirement")
    return RetirementRef(nv_index=index, nv_name=name)


def _recovery(r: _Reader, raw: Any) -> RecoveryRef | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise r.fail("recovery is not an object")
    slots: dict[str, int | None] = {}
    for key in ("keyslot", "pending", "retired"):
        value = raw.get(key)
        if value is not None and (type(value) is not int or not 0 <= value < 32):
            raise r.fail(f"recovery.{key} is not a keyslot number")
        slots[key] = value
    return RecoveryRef(**slots)


def _revocation(r: _Reader, raw: Any) -> RevocationRef | None:
    if raw is None:
        return None
    sub, index, name = _nv_ref(r, raw, "revocation")
    authority = sub.get("authority", str)
    if authority not in ("machine", "vendor"):
        raise r.fail(f"revocation.authority is {authority!r}")
    return RevocationRef(nv_index=index, nv_name=name, authority=authority)
