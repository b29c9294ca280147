"""Recovery-key escrow: write the key's record for the organisation, and read it back.

The organisation holds the private key of an X.509 certificate; each machine encrypts its
recovery key to that certificate (sealer.escrow.cms) and writes the envelope in a record
(sealer.escrow.record). Enrollment and rotation write the record before the token makes the
key current, so no recovery key becomes the one to keep without being escrowed first.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sealer.errors import AuthError, StateError, TokenError, UsageError
from sealer.escrow import cms
from sealer.escrow.record import (
    MACHINE_ID,
    EscrowRecord,
    directory_hint,
    find_records,
    read_record,
    write_record,
)
from sealer.luks.header import LuksHeader
from sealer.services.secrets import is_recovery_key

MACHINE_ID_FILE = Path("/etc/machine-id")
ESCROW_SUBDIR = "escrow"  # under the state directory, unless --escrow-dir says otherwise
DEFAULT_ESCROW_DIR = Path("/var/lib/sealer") / ESCROW_SUBDIR
MAX_KEY_FILE = 1024 * 1024


@dataclass(frozen=True)
class Escrow:
    """Where and to whom a recovery key is escrowed: every input already checked."""

    certificate: cms.EscrowCertificate
    directory: Path
    machine_id: str
    hostname: str


def prepare_escrow(
    certificate: Path, directory: Path, machine_id: str | None,
    machine_id_file: Path = MACHINE_ID_FILE,
) -> Escrow:
    """Check everything escrow needs before anything changes: a bad input costs nothing."""
    checked = cms.load_certificate(certificate)
    if machine_id is None:
        machine_id = read_machine_id(machine_id_file)
    elif not MACHINE_ID.fullmatch(machine_id):
        raise UsageError(
            f"--machine-id {machine_id!r} is not a machine id",
            "use letters, digits, '.', '_' and '-' only (128 at most), as /etc/machine-id has",
        )
    _check_writable(directory)
    return Escrow(checked, directory, machine_id, socket.gethostname())


def read_machine_id(path: Path = MACHINE_ID_FILE) -> str:
    """This machine's id from /etc/machine-id; UsageError when it is missing or malformed."""
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist, so this machine has no machine id",
                         "give one with --machine-id") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}",
                         "give the machine id with --machine-id") from exc
    if not MACHINE_ID.fullmatch(text):
        raise UsageError(f"{path} does not hold a machine id", "give one with --machine-id")
    return text


def _check_writable(directory: Path) -> None:
    """Fail now, not after a keyslot was added, when the record could not be written."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StateError(f"the escrow directory {directory} cannot be made: {existing} is not "
                         "a directory", directory_hint(directory))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StateError(f"the escrow directory {directory} is not writable",
                         directory_hint(directory))


def escrow_key(
    escrow: Escrow, *, device: str, uuid: str, token_id: int, keyslot: int, key: str,
    keyslot_salt: str | None,
) -> Path:
    """Encrypt ``key`` to the certificate and write its record durably; the record's path.

    ``keyslot_salt`` is the KDF salt of the keyslot that holds ``key`` (see EscrowRecord).
    """
    record = EscrowRecord(
        machine_id=escrow.machine_id,
        hostname=escrow.hostname,
        device=device,
        volume_uuid=uuid,
        token=token_id,
        keyslot=keyslot,
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        certificate_sha256=escrow.certificate.sha256,
        certificate_subject=escrow.certificate.subject,
        cms=cms.encrypt(escrow.certificate, key.encode("ascii")),
        keyslot_salt=keyslot_salt or "",
    )
    return write_record(escrow.directory, record)


def escrowed(directory: Path, header: LuksHeader, keyslot: int) -> bool | None:
    """Is there a valid record of the key now in this keyslot? None: no escrow directory."""
    if not directory.is_dir():
        return None
    current = header.keyslots.get(keyslot)
    salt = current.salt if current is not None else None
    return bool(find_records(directory, header.uuid, keyslot, salt))


@dataclass(frozen=True)
class Recovered:
    """A recovery key taken back out of its escrow record, with the record it came from."""

    record: EscrowRecord
    key: str  # the recovery key itself: shown once to whoever holds the organisation's key


def recover(record_path: Path, key_path: Path, read_password: Callable[[], bytes]) -> Recovered:
    """Decrypt the recovery key in ``record_path`` with the organisation's private key."""
    record = read_record(record_path)
    try:
        with key_path.open("rb") as handle:
            data = handle.read(MAX_KEY_FILE)
    except OSError as exc:
        raise UsageError(f"cannot read the private key {key_path}: {exc.strerror}",
                         "give the organisation's escrow private key with --key") from exc
    key = cms.load_private_key(data, str(key_path), read_password)
    wrong_key = AuthError(
        f"the private key {key_path} does not decrypt {record_path}",
        f"use the key of the certificate it was escrowed to: {record.certificate_subject} "
        f"(SHA-256 {record.certificate_sha256[:16]}...)",
    )
    try:
        if record.version >= 2 and not cms.is_authenticated(record.cms):
            # Version 2 promises RSA-OAEP and AES-GCM: an older envelope in it is a downgrade.
            raise TokenError(f"its version is {record.version} but its envelope is not an "
                             "AuthEnvelopedData (RSA-OAEP, AES-GCM)")
        content = cms.decrypt(record.cms, key)
    except TokenError as exc:
        raise TokenError(f"{record_path} is not a sealer escrow record: {exc.message}",
                         "use another copy of the record") from exc
    except AuthError:
        raise wrong_key from None
    if not is_recovery_key(content):  # what a wrong key yields when it slips past padding
        raise wrong_key
    return Recovered(record, content.decode("ascii"))
