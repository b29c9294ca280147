"""The escrow record: one JSON file per recovery key, holding its CMS envelope.

    {"type": "sealer-escrow", "version": 2, "machine_id": ..., "hostname": ...,
     "device": ..., "volume_uuid": ..., "token": N, "keyslot": M, "created": ISO-8601 UTC,
     "certificate_sha256": hex, "certificate_subject": RFC 4514, "cms": "-----BEGIN CMS-----..."}

Version 2 records hold an AuthEnvelopedData (RSA-OAEP, AES-256-GCM; sealer.escrow.cms), version
1 records (sealer before issue 15) an EnvelopedData (RSA PKCS#1 v1.5, AES-256-CBC): both are
read, only version 2 is written. Nothing else differs between the two.

It is named ``<machine_id>-<volume_uuid>-keyslot<M>.json``, so the keyslot number tells the
records of successive keys apart. A record is replaced only by a new key in the same keyslot,
and a keyslot is reused only once its old key is gone: the record replaced never opened
anything any more. Everything in it but the envelope is public (the header says as much).
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sealer.errors import StateError, TokenError, UsageError
from sealer.host import files
from sealer.host.checkpoint import before_write
from sealer.host.files import write_private_file
from sealer.luks.header import is_uuid, require_uuid

RECORD_TYPE = "sealer-escrow"
RECORD_VERSION = 2  # the version written
READABLE_VERSIONS = (1, 2)
MAX_RECORD_BYTES = 64 * 1024  # a record is about 1 KiB; anything far larger is not one
# Safe in a file name, and what /etc/machine-id holds (32 hex digits) fits.
MACHINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_MAX_SLOT = 31  # LUKS2 has keyslots and tokens 0 to 31


@dataclass(frozen=True)
class EscrowRecord:
    """One escrowed recovery key: the volume and keyslot it opens, and the key itself in a CMS
    envelope that only the holder of the escrow certificate's private key can open.
    """

    machine_id: str
    hostname: str
    device: str
    volume_uuid: str
    token: int
    keyslot: int
    created: str
    certificate_sha256: str
    certificate_subject: str
    cms: str
    # The keyslot's KDF salt when the key was escrowed: a later key in a keyslot of the same
    # number has another salt, so an old record never vouches for it ("": not recorded).
    keyslot_salt: str = ""
    # 2: the envelope is an AuthEnvelopedData (RSA-OAEP, AES-GCM), 1: EnvelopedData (older).
    version: int = RECORD_VERSION

    @property
    def file_name(self) -> str:
        return record_name(self.machine_id, self.volume_uuid, self.keyslot)

    def to_json(self) -> dict[str, Any]:
        return {"type": RECORD_TYPE, **asdict(self)}


def record_name(machine_id: str, volume_uuid: str, keyslot: int) -> str:
    """The record's file name; DeviceError (UsageError for the machine id) before a UUID or
    machine id that is not one could make the name a path out of the escrow directory."""
    if not MACHINE_ID.fullmatch(machine_id):
        raise UsageError(f"{machine_id!r} is not a machine id", "give one with --machine-id")
    return f"{machine_id}-{require_uuid(volume_uuid, 'the volume')}-keyslot{keyslot}.json"


def parse_record(doc: object) -> EscrowRecord:
    """A record from parsed JSON; TokenError names the first thing wrong with it.

    Fields this version does not know are ignored, so a later minor addition still reads.
    """
    if not isinstance(doc, dict):
        raise TokenError("it is not a JSON object")
    if doc.get("type") != RECORD_TYPE:
        raise TokenError(f"its type is {doc.get('type')!r}, not {RECORD_TYPE!r}")
    version = doc.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise TokenError(f"it has version {version!r}; this sealer reads versions "
                         f"{' and '.join(map(str, READABLE_VERSIONS))}",
                         "use a newer sealer")
    texts = {name: _text(doc, name) for name in (
        "machine_id", "hostname", "device", "volume_uuid", "created", "certificate_sha256",
        "certificate_subject", "cms",
    )}
    if not MACHINE_ID.fullmatch(texts["machine_id"]):
        raise TokenError("its machine_id is not a machine id")
    if not is_uuid(texts["volume_uuid"]):
        raise TokenError("its volume_uuid is not a UUID")
    if not _SHA256_HEX.fullmatch(texts["certificate_sha256"]):
        raise TokenError("its certificate_sha256 is not 64 lowercase hex digits")
    try:
        created = datetime.fromisoformat(texts["created"])
    except ValueError:
        raise TokenError("its created time is not ISO 8601") from None
    if created.utcoffset() is None or created.utcoffset():
        raise TokenError("its created time is not in UTC")
    if not texts["cms"].startswith("-----BEGIN CMS-----"):
        raise TokenError("its cms field is not a PEM CMS block")
    salt = doc.get("keyslot_salt", "")
    if not isinstance(salt, str):
        raise TokenError("its keyslot_salt is not a string")
    return EscrowRecord(
        token=_slot(doc, "token"), keyslot=_slot(doc, "keyslot"), keyslot_salt=salt,
        version=version, **texts,
    )


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise TokenError(f"its {name} is missing or not a string")
    return value


def _slot(doc: dict[str, Any], name: str) -> int:
    value = doc.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SLOT:
        raise TokenError(f"its {name} is not a number from 0 to {_MAX_SLOT}")
    return value


def read_record(path: Path) -> EscrowRecord:
    """The record in ``path``: UsageError if it cannot be read, TokenError if it is bad."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"the escrow record {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read the escrow record {path}: {exc.strerror}") from exc
    try:
        if len(data) > MAX_RECORD_BYTES:
            raise TokenError(f"it is larger than {MAX_RECORD_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TokenError("it is not JSON") from exc
        return parse_record(doc)
    except TokenError as exc:
        raise TokenError(f"{path} is not a sealer escrow record: {exc.message}",
                         exc.hint or "use another copy of the record") from exc


def write_record(directory: Path, record: EscrowRecord) -> Path:
    """Write ``record`` into ``directory`` (made 0700) as a 0600 file, atomically and durably.

    The temporary file is fsynced before the rename and the directory after it: once this
    returns, a power cut keeps the record, which is why callers make a key usable only after.
    """
    path = directory / record.file_name
    data = (json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    before_write(f"state: write escrow record {record.file_name}")
    try:
        write_private_file(path, data)
    except OSError as exc:
        raise StateError(f"cannot write the escrow record {path}: {exc.strerror}",
                         directory_hint(directory, exc.errno)) from exc
    return path


def directory_hint(directory: Path, error: int | None = None) -> str:
    """What to do about an escrow directory sealer cannot write (``--escrow-dir`` names another)."""
    return files.directory_hint(directory, "--escrow-dir", error)


def find_records(
    directory: Path, volume_uuid: str, keyslot: int, salt: str | None = None
) -> list[EscrowRecord]:
    """The valid records in ``directory`` for this volume's keyslot (any machine id); with
    ``salt``, only those of the key now in it (a record without a salt cannot say)."""
    found: list[EscrowRecord] = []
    if not is_uuid(volume_uuid):
        return found  # no record is ever written for it, and it is no glob to expand
    for path in sorted(directory.glob(f"*-{glob.escape(volume_uuid)}-keyslot{keyslot}.json")):
        try:
            record = read_record(path)
        except (TokenError, UsageError):
            continue  # unreadable or damaged: it escrows nothing
        if record.volume_uuid != volume_uuid or record.keyslot != keyslot:
            continue
        if salt is not None and record.keyslot_salt not in ("", salt):
            continue  # the record of an earlier key in a keyslot of the same number
        found.append(record)
    return found
