"""The LUKS2 header as sealer sees it: plain data parsed from cryptsetup's JSON dump.

Pure functions only; running cryptsetup is ``cryptsetup.py``'s job.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sealer.errors import DeviceError

LUKS_MAGIC = b"LUKS\xba\xbe"
# Both LUKS1 and LUKS2 keep the version right after the magic and the UUID at byte 168.
_VERSION = struct.Struct(">H")
_UUID_OFFSET = 168
_UUID_LENGTH = 40
PROBE_LENGTH = _UUID_OFFSET + _UUID_LENGTH

# RFC 4122's textual form, the only one cryptsetup writes (it parses others, then prints this).
# The UUID is 40 header bytes an attacker may choose, and it becomes part of file names (escrow
# records) and device-mapper names (luks-UUID): nothing else may pass.
_UUID_TEXT = re.compile("-".join(f"[0-9a-fA-F]{{{n}}}" for n in (8, 4, 4, 4, 12)))

MAX_KEYSLOTS = 32
MAX_TOKENS = 32
# cryptsetup's minimum PBKDF2 iteration count: sealer gives its own keyslots (TPM-sealed and
# recovery secrets, high-entropy already) exactly this, and a person's passphrase never gets it.
MINIMAL_PBKDF2_ITERATIONS = 1000


@dataclass(frozen=True)
class Probe:
    """What the first bytes of the device say, before cryptsetup reads it: LUKS version and UUID."""

    version: int
    uuid: str


def probe(device: str, first_bytes: bytes) -> Probe:
    """Tell LUKS2 from LUKS1 from anything else by the binary header's first bytes."""
    if len(first_bytes) < PROBE_LENGTH or not first_bytes.startswith(LUKS_MAGIC):
        raise DeviceError(
            f"{device} is not a LUKS volume",
            "give the partition or image that holds the LUKS2 header (see lsblk -f)",
        )
    (version,) = _VERSION.unpack_from(first_bytes, len(LUKS_MAGIC))
    uuid = first_bytes[_UUID_OFFSET : _UUID_OFFSET + _UUID_LENGTH].split(b"\0", 1)[0]
    if version == 1:
        raise DeviceError(
            f"{device} is LUKS1, which has no tokens to keep a TPM enrollment in",
            "convert it first with 'cryptsetup convert --type luks2' (back up the header)",
        )
    if version != 2:
        raise DeviceError(f"{device} has an unknown LUKS version {version}")
    return Probe(version=version, uuid=require_uuid(uuid.decode("ascii", "replace"), device))


def is_uuid(text: str) -> bool:
    """Is ``text`` a UUID in RFC 4122's textual form (8-4-4-4-12 hex digits), nothing else?"""
    return _UUID_TEXT.fullmatch(text) is not None


def require_uuid(text: str, device: str) -> str:
    """``text`` if it is a UUID (see is_uuid), else DeviceError: it came from a LUKS2 header
    that someone altered, and sealer puts it in file and device-mapper names."""
    if not is_uuid(text):
        raise DeviceError(
            f"{device}: the LUKS2 header's UUID {text[:40]!r} is not a UUID (the header was "
            "altered)",
            "restore a header backup (cryptsetup luksHeaderRestore), or give the volume a new "
            "UUID with 'cryptsetup luksUUID --uuid $(uuidgen)'; its passphrase still opens it",
        )
    return text


@dataclass(frozen=True)
class Keyslot:
    """One keyslot: its number and KDF, and the salt that tells its current key from earlier
    ones.
    """

    slot: int
    kdf: str  # "pbkdf2", "argon2id", "argon2i"
    iterations: int | None = None  # PBKDF2 only
    # The KDF salt (base64, as LUKS2 stores it): new with every key put into the keyslot,
    # so it tells a keyslot's current key from an earlier one of the same number.
    salt: str | None = None

    @property
    def minimal_kdf(self) -> bool:
        return self.kdf == "pbkdf2" and self.iterations == MINIMAL_PBKDF2_ITERATIONS


@dataclass(frozen=True)
class Token:
    """One token of any type, its JSON kept as stored: only the reader of that type parses it."""

    token_id: int
    type: str
    keyslots: tuple[int, ...]
    data: Mapping[str, Any]  # the whole token JSON object, as stored


@dataclass(frozen=True)
class LuksHeader:
    """What sealer needs of a LUKS2 header: its keyslots, its tokens and the room left for more."""

    device: str
    uuid: str
    keyslots: Mapping[int, Keyslot]
    tokens: Mapping[int, Token]
    json_size: int | None = None  # the metadata area's size in bytes (config.json_size)
    json_used: int = 0  # the metadata's length as cryptsetup printed it (about what it stores)

    def json_room(self) -> int | None:
        """Bytes left in the metadata area; None when the header did not say its size."""
        return None if self.json_size is None else self.json_size - self.json_used

    def free_keyslot(self) -> int | None:
        return next((n for n in range(MAX_KEYSLOTS) if n not in self.keyslots), None)

    def free_token_id(self) -> int | None:
        return next((n for n in range(MAX_TOKENS) if n not in self.tokens), None)

    def tokens_of_type(self, token_type: str) -> list[Token]:
        return [t for _, t in sorted(self.tokens.items()) if t.type == token_type]

    def keyslots_without_token(self) -> list[int]:
        """Keyslots no token claims: passphrases and recovery keys a person can type."""
        claimed = {slot for token in self.tokens.values() for slot in token.keyslots}
        return sorted(n for n in self.keyslots if n not in claimed)

    def is_sealer_made(self, slot: int) -> bool:
        """True when ``slot`` exists, no token claims it, and it has sealer's minimal KDF.

        Before sealer removes a keyslot an interrupted operation left behind, it checks this:
        a keyslot a person added by hand in the meantime has a slow KDF and is never touched.
        """
        keyslot = self.keyslots.get(slot)
        return keyslot is not None and keyslot.minimal_kdf and slot in self.keyslots_without_token()


def _int_key(value: str, what: str, device: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise DeviceError(f"{device}: LUKS2 metadata has a malformed {what} id {value!r}")
    try:
        return int(value)
    except ValueError as exc:
        raise DeviceError(f"{device}: LUKS2 metadata has a malformed {what} id {value!r}") from exc


def parse_metadata(device: str, uuid: str, text: str) -> LuksHeader:
    """Build a LuksHeader from ``cryptsetup luksDump --dump-json-metadata`` output."""
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # Besides JSONDecodeError: ValueError for a number of more than 4300 digits, and
        # RecursionError for arrays or objects nested about a thousand deep.
        raise DeviceError(f"{device}: cryptsetup printed unreadable LUKS2 metadata") from exc
    if not isinstance(doc, dict):
        raise DeviceError(f"{device}: LUKS2 metadata is not a JSON object")
    keyslots: dict[int, Keyslot] = {}
    for key, slot in _section(doc, "keyslots", device).items():
        kdf = slot.get("kdf") if isinstance(slot, dict) else None
        kdf_type = kdf.get("type", "?") if isinstance(kdf, dict) else "?"
        iterations = kdf.get("iterations") if isinstance(kdf, dict) else None
        salt = kdf.get("salt") if isinstance(kdf, dict) else None
        number = _int_key(key, "keyslot", device)
        keyslots[number] = Keyslot(
            slot=number,
            kdf=str(kdf_type),
            iterations=iterations if type(iterations) is int else None,
            salt=salt if isinstance(salt, str) else None,
        )
    tokens: dict[int, Token] = {}
    for key, token in _section(doc, "tokens", device).items():
        if not isinstance(token, dict):
            continue
        token_id = _int_key(key, "token", device)
        raw_slots = token.get("keyslots") or []
        if not isinstance(raw_slots, list):
            raise DeviceError(f"{device}: LUKS2 token {token_id} has malformed keyslots")
        slots = tuple(_int_key(str(s), "keyslot", device) for s in raw_slots)
        tokens[token_id] = Token(
            token_id=token_id, type=str(token.get("type", "")), keyslots=slots, data=token
        )
    config = doc.get("config")
    size = config.get("json_size") if isinstance(config, dict) else None
    # Its length before int(): past 4300 digits int() raises ValueError, not DeviceError.
    json_size = (
        int(size)
        if isinstance(size, str) and len(size) < 12 and size.isascii() and size.isdigit()
        else None
    )
    return LuksHeader(
        device=device, uuid=uuid, keyslots=keyslots, tokens=tokens,
        json_size=json_size if json_size is not None and len(size or "") < 12 else None,
        json_used=len(text),
    )


def _section(doc: Mapping[str, Any], name: str, device: str) -> Mapping[str, Any]:
    section = doc.get(name) or {}
    if not isinstance(section, dict):
        raise DeviceError(f"{device}: LUKS2 metadata section {name!r} is not an object")
    return section
