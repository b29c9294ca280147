"""Cleaning up after an interrupted enrollment or recovery-key rotation.

Every multi-step header change records what it is about to add before adding it (see
``SealerToken.complete`` and ``RecoveryRef``), so a rerun knows exactly which keyslots an
interruption left behind. A recorded keyslot is removed only when it still looks like one
sealer made (``LuksHeader.is_sealer_made``): never a keyslot a person added in the meantime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sealer.errors import SealerError, TokenError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment
from sealer.luks.header import LuksHeader
from sealer.luks.token import RecoveryRef, parse_token
from sealer.tpm.connection import connect
from sealer.tpm.retirement import undefine_counter


def drop_keyslot_if_sealer_made(header: LuksHeader, slot: int | None) -> bool:
    """Remove ``slot`` if it is a keyslot sealer made and nothing claims; True if removed."""
    if slot is None or not header.is_sealer_made(slot):
        return False
    cryptsetup.kill_keyslot(header.device, slot)
    return True


def clear_interrupted_enrollment(header: LuksHeader, enrollment: Enrollment) -> list[int]:
    """Take an incomplete enrollment's keyslots and token away; the keyslots removed.

    The keyslots go first: an interruption in between leaves the token, which names them,
    so the next run finds them again (or finds them gone and only removes the token).
    """
    token = enrollment.token
    recovery = token.recovery or RecoveryRef(keyslot=None)
    dropped = [
        slot
        for slot in (token.keyslot, *recovery.slots())
        if drop_keyslot_if_sealer_made(header, slot)
    ]
    cryptsetup.remove_token(header.device, enrollment.token_id)
    return dropped


def finish_interrupted_rotation(header: LuksHeader, enrollment: Enrollment) -> Enrollment:
    """Complete or undo a recovery-key rotation that was interrupted; the enrollment after.

    A ``pending`` key was never handed to anyone, so it is dropped; a ``retired`` key was
    replaced by one that was handed over, so it is removed as the rotation meant to.
    """
    recovery = enrollment.token.recovery
    if recovery is None or not recovery.unfinished:
        return enrollment
    for slot in (recovery.pending, recovery.retired):
        drop_keyslot_if_sealer_made(header, slot)
    token = replace(enrollment.token, recovery=RecoveryRef(keyslot=recovery.keyslot))
    cryptsetup.import_token(header.device, enrollment.token_id, token.to_json(), replace=True)
    return Enrollment(enrollment.token_id, token)


def free_counter(token_id: int, doc: Mapping[str, Any], tcti: str | None) -> str:
    """Free the retirement counter of a removed enrollment's token (``doc``), if this TPM
    holds it; what became of it, "" when it had none. Never fails: the enrollment is gone
    already, and a counter left behind only costs NV space."""
    try:
        ref = parse_token(token_id, doc).retirement
    except TokenError:
        return "left in the TPM (the token was corrupted)"
    if ref is None:
        return ""
    try:
        with connect(tcti) as ctx:
            freed = undefine_counter(ctx, ref.nv_index, ref.nv_name)
    except SealerError as error:
        return f"left in the TPM ({error.message})"
    return "freed" if freed else "not in this TPM (enrolled on another machine, or gone)"
