"""``sealer remove``: take a TPM enrollment and its keyslot off a volume."""

from __future__ import annotations

from dataclasses import dataclass

from sealer.errors import RefusedError, TokenError, UsageError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import select_tokens
from sealer.luks.header import LuksHeader, Token
from sealer.luks.token import RecoveryRef, parse_token
from sealer.services.leftovers import free_counter


@dataclass(frozen=True)
class Removed:
    """What was taken away: the token, its keyslots, and what became of its retirement counter."""

    device: str
    token_id: int
    keyslots: tuple[int, ...]
    # The enrollment's retirement counter in TPM NV memory: "freed", or why it was left
    # ("" when the enrollment had none).
    counter: str = ""


def _unfinished_slots(header: LuksHeader, token: Token) -> tuple[int, ...]:
    """Keyslots an interrupted enrollment or rotation of ``token`` added but never handed over."""
    try:
        sealed = parse_token(token.token_id, token.data)
    except TokenError:
        return ()  # corrupted: only the keyslots the token claims are known to be its own
    recovery = sealed.recovery or RecoveryRef(keyslot=None)
    candidates = (recovery.pending,) if sealed.complete else (sealed.keyslot, recovery.pending)
    return tuple(s for s in candidates if s is not None and header.is_sealer_made(s))


def remove(device: str, token_id: int | None, tcti: str | None = None) -> Removed:
    """Remove a sealer enrollment from ``device``: its keyslots, its retirement counter, its token.

    A token that is corrupted or was half removed is still removed. UsageError when the device has
    several sealer tokens and ``token_id`` is None; RefusedError when the volume would be left
    without a passphrase or recovery key keyslot. Safe to interrupt and run again.
    """
    header = cryptsetup.read_header(device)
    # Raw tokens, not parsed ones: a corrupted or half-removed token must still be removable.
    tokens = select_tokens(header, token_id)
    if len(tokens) > 1:
        ids = ", ".join(str(t.token_id) for t in tokens)
        raise UsageError(f"{device} has several sealer tokens ({ids})",
                         "choose one with --token")
    token = tokens[0]
    slots = tuple(s for s in token.keyslots if s in header.keyslots)
    slots += _unfinished_slots(header, token)
    # A person must still be able to open the volume afterwards.
    if not [s for s in header.keyslots_without_token() if s not in slots]:
        raise RefusedError(
            f"removing token {token.token_id} would leave {device} with no passphrase or "
            "recovery key keyslot",
            "add a passphrase first (cryptsetup luksAddKey), then remove the enrollment",
        )
    # Keyslots first, token second: an interruption leaves a token that names its keyslots,
    # which status shows and a second 'sealer remove' cleans up, never an anonymous
    # keyslot that looks like a passphrase.
    for slot in slots:
        cryptsetup.kill_keyslot(device, slot)
    # The counter before the token, which names it: stopped in between, a rerun finds it.
    counter = free_counter(token.token_id, token.data, tcti)
    remaining = cryptsetup.read_header(device)
    if token.token_id in remaining.tokens:
        cryptsetup.remove_token(device, token.token_id)
    return Removed(device=device, token_id=token.token_id, keyslots=slots, counter=counter)
