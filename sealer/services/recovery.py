"""``sealer recovery rotate``: replace a volume's recovery key, safe to interrupt anywhere.

The order is what makes it safe. The token records the new keyslot before it is added, the
new key is handed over (printed, or escrowed) before the token calls it current, and the old
keyslot is removed only after that. An interruption therefore leaves either a new key that
nobody ever saw (dropped by the next run) or an old key that has been replaced (removed by
the next run); the volume always opens with the passphrase and with the recovery key its
owner holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sealer.errors import HeaderFullError, SealerError, UsageError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, require_enrollments
from sealer.luks.header import LuksHeader
from sealer.luks.token import RecoveryRef
from sealer.services.escrow import Escrow, escrow_key
from sealer.services.leftovers import drop_keyslot_if_sealer_made, finish_interrupted_rotation
from sealer.services.secrets import new_recovery_key
from sealer.services.unlock import release

Progress = Callable[[str], None]
KeyReader = Callable[[], bytes]


@dataclass(frozen=True)
class NewRecoveryKey:
    """A recovery key just added to a volume, before it is handed over."""

    device: str
    uuid: str
    token_id: int
    keyslot: int
    key: str  # the secret itself: handed over once, never logged
    replaces: int | None  # the old recovery keyslot, removed after the hand-over
    escrow_record: Path | None = None  # the key's escrow record, written before the hand-over


@dataclass(frozen=True)
class Rotated:
    """The outcome of replacing a volume's recovery key."""

    new: NewRecoveryKey
    removed: int | None  # the old keyslot, once it is gone
    authorised_by: str  # "tpm" or "key": what proved the right to add a keyslot


def _the_enrollment(header: LuksHeader, token_id: int | None) -> Enrollment:
    found = require_enrollments(header, token_id)
    if len(found) > 1:
        ids = ", ".join(str(e.token_id) for e in found)
        raise UsageError(f"{header.device} has several sealer tokens ({ids})",
                         "choose one with --token")
    return found[0]


def _existing_key(
    enrollment: Enrollment, tcti: str | None, read_key: KeyReader | None
) -> tuple[bytes, str]:
    """A key that opens the volume, to authorise the new keyslot: given, or from the TPM.

    The TPM is asked only when no key was given and no PIN is needed, so that an unattended
    rotation on a machine in an approved boot state needs nobody at the keyboard.
    """
    if read_key is None and not enrollment.token.has_pin:
        try:
            key, _ = release(enrollment, tcti, lambda: b"")
            return key, "tpm"
        except SealerError as exc:  # same class, so the same exit code
            raise type(exc)(
                f"the TPM did not release the key to authorise a new keyslot: {exc.message}",
                "give the passphrase or the current recovery key with --unlock-key-file",
            ) from exc
    if read_key is None:
        raise UsageError(
            "this enrollment needs a PIN, so the TPM cannot authorise the new keyslot alone",
            "give the passphrase or the current recovery key with --unlock-key-file",
        )
    return read_key(), "key"


def rotate(
    device: str,
    *,
    token_id: int | None,
    tcti: str | None,
    read_key: KeyReader | None,
    hand_over: Callable[[NewRecoveryKey], None],
    progress: Progress,
    escrow: Escrow | None = None,
) -> Rotated:
    """Add a new recovery key, escrow it (with ``escrow``), ``hand_over`` it, then remove
    the old one.

    The escrow record is durable before the token calls the new key current: a key that
    becomes the one to keep has always been escrowed. Old records stay; the keyslot number
    in their names tells them apart.
    """
    header = cryptsetup.read_header(device)
    enrollment = _the_enrollment(header, token_id)
    if enrollment.token.recovery is not None and enrollment.token.recovery.unfinished:
        progress("finishing a recovery-key rotation that was interrupted")
        enrollment = finish_interrupted_rotation(header, enrollment)
        header = cryptsetup.read_header(device)
    unlock_key, authorised_by = _existing_key(enrollment, tcti, read_key)
    slot = header.free_keyslot()
    if slot is None:
        raise HeaderFullError(
            f"{device} has no free keyslot for the new recovery key",
            "remove an unused keyslot with 'cryptsetup luksKillSlot' first",
        )
    token = enrollment.token
    old = token.recovery.keyslot if token.recovery is not None else None
    tid = enrollment.token_id

    def record(recovery: RecoveryRef) -> None:
        cryptsetup.import_token(device, tid, replace(token, recovery=recovery).to_json(),
                                replace=True)

    progress(f"recording keyslot {slot} for the new recovery key in token {tid}")
    record(RecoveryRef(keyslot=old, pending=slot))
    key = new_recovery_key()
    progress(f"adding keyslot {slot} for the new recovery key")
    try:
        cryptsetup.add_keyslot(device, unlock_key=unlock_key, new_key=key.encode("ascii"),
                               slot=slot, minimal_kdf=True)
    except SealerError:
        record(RecoveryRef(keyslot=old))  # e.g. a wrong passphrase: as it was before
        raise
    record_path = None
    if escrow is not None:
        progress(f"escrowing the new recovery key to {escrow.certificate.subject}")
        try:
            record_path = escrow_key(
                escrow, device=device, uuid=header.uuid, token_id=tid, keyslot=slot, key=key,
                keyslot_salt=cryptsetup.keyslot_salt(device, slot),
            )
        except SealerError:
            # Nobody has the new key: take it away again, as a failed add would leave it.
            drop_keyslot_if_sealer_made(cryptsetup.read_header(device), slot)
            record(RecoveryRef(keyslot=old))
            raise
    new = NewRecoveryKey(device, header.uuid, tid, slot, key, old, record_path)
    hand_over(new)
    record(RecoveryRef(keyslot=slot, retired=old))
    if old is None:
        return Rotated(new, None, authorised_by)
    progress(f"removing keyslot {old}, the old recovery key")
    now = cryptsetup.read_header(device)
    removed = drop_keyslot_if_sealer_made(now, old)
    record(RecoveryRef(keyslot=slot))
    return Rotated(new, old if removed else None, authorised_by)
