"""``sealer key rotate``: a new machine policy key, and the old one's approvals dead.

The sealed object names the key it trusts in its own policy (PolicyAuthorize binds the key's
TPM name), so no approval by another key can ever satisfy it. Rotating the key therefore
means a new sealed object: each enrollment that trusts the current key is enrolled again
under the next key (authorised by the volume's passphrase or recovery key, as any
enrollment), keeping its PCR binding, vendor key and recovery keyslot, and then the old
enrollment (token, TPM keyslot, retirement counter) is removed. With the old object gone, the
old key's approvals open nothing, even with the old key in hand. Once every volume given is
done, the next key replaces the current one in the state directory.

Every step is safe to interrupt and to run again: the next key is kept in the state
directory (``policy-key.next.pem``) until it replaces the current one, a volume that already
has an enrollment under the next key only has its old one removed, and an enrollment
interrupted half-way is cleared by the rerun, as 'sealer enroll' does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sealer.errors import StateError, UsageError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment
from sealer.luks.header import LuksHeader
from sealer.luks.token import TOKEN_TYPE, parse_token
from sealer.pcrs import bank_named
from sealer.policy import keys
from sealer.policy.revocation import REVOCATION_INDEX, RevocationIndex
from sealer.services.enroll import EnrollRequest, enroll, require_tpm
from sealer.services.remove import remove
from sealer.tpm.connection import connect
from sealer.tpm.nv import undefine_revocation_index
from sealer.tpm.policykey import policy_key_name

NEXT_KEY_FILE = "policy-key.next.pem"

Progress = Callable[[str], None]
# Asks for what a device's new enrollment needs: (passphrase or recovery key, new PIN or None).
SecretsFor = Callable[[str, bool], tuple[bytes, bytes | None]]


@dataclass(frozen=True)
class Rotated:
    """One volume after a key rotation: the enrollments added under the next key and the old ones
    removed.
    """

    device: str
    enrolled: tuple[int, ...]  # the new tokens, under the next key
    removed: tuple[int, ...]  # the old tokens taken away
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RotateRequest:
    """The volumes whose enrollments move to the next machine policy key."""

    devices: Sequence[str]
    state_dir: Path
    tcti: str | None


def _key_name(state_dir: Path, name: str) -> bytes | None:
    key = keys.load_machine_key(state_dir, name)
    return None if key is None else policy_key_name(keys.public_pem(key))


def _machine_key_of(enrollment: Enrollment) -> bytes | None:
    return next((k.name for k in enrollment.token.policy_keys if k.role == "machine"), None)


def _current_key(state_dir: Path) -> bytes:
    name = _key_name(state_dir, keys.MACHINE_KEY_FILE)
    if name is None:
        raise StateError(
            f"there is no policy key in {state_dir}: nothing to rotate",
            "give the state directory the volumes were enrolled with (--state-dir)",
        )
    return name


def _half_removed(header: LuksHeader) -> list[int]:
    """Sealer tokens whose keyslot is gone but which are still there: a removal (of this
    rotation, or by hand) was stopped in between. Unusable; the rotation finishes them."""
    return [
        t.token_id for t in header.tokens_of_type(TOKEN_TYPE)
        if not t.keyslots and "enrolling" not in t.data
    ]


def _enrollments(device: str) -> list[Enrollment]:
    """The device's complete enrollments, past any half-removed token."""
    header = cryptsetup.read_header(device)
    half = set(_half_removed(header))
    parsed = [
        Enrollment(t.token_id, parse_token(t.token_id, t.data))
        for t in header.tokens_of_type(TOKEN_TYPE) if t.token_id not in half
    ]
    return [e for e in parsed if e.token.complete]


def _finish_half_removed(device: str, key_name: bytes, tcti: str | None) -> list[int]:
    """Finish removing the old key's tokens that a stopped run left without keyslot."""
    header = cryptsetup.read_header(device)
    done = []
    for token_id in _half_removed(header):
        names = [k.get("name") for k in header.tokens[token_id].data.get("policy_keys", [])
                 if isinstance(k, dict)]
        if key_name.hex() in names:
            done.append(remove(device, token_id, tcti).token_id)
    return done


def check(req: RotateRequest) -> dict[str, list[Enrollment]]:
    """Everything that can be checked before a secret is asked for; the enrollments of each
    device that trust the current key (empty for a device whose rotation is done)."""
    if not req.devices:
        raise UsageError("no volume to rotate", "give the enrolled volumes as arguments")
    current = _current_key(req.state_dir)
    found: dict[str, list[Enrollment]] = {}
    for device in req.devices:
        mine = [e for e in _enrollments(device) if _machine_key_of(e) == current]
        if not mine and not _has_next(device, req.state_dir):
            raise UsageError(
                f"{device} has no sealer enrollment that trusts the policy key in "
                f"{req.state_dir}",
                "give only volumes enrolled on this machine (see 'sealer status')",
            )
        found[device] = mine
    require_tpm(req.tcti)
    return found


def _next_enrollments(device: str, state_dir: Path) -> list[Enrollment]:
    """The device's enrollments under the next key (made by an interrupted rotation)."""
    name = _key_name(state_dir, NEXT_KEY_FILE)
    if name is None:
        return []
    return [e for e in _enrollments(device) if _machine_key_of(e) == name]


def _has_next(device: str, state_dir: Path) -> bool:
    return bool(_next_enrollments(device, state_dir))


def _same_binding(a: Enrollment, b: Enrollment) -> bool:
    ta, tb = a.token, b.token
    return (ta.pcr_bank, ta.pcrs, ta.cap_pcr) == (tb.pcr_bank, tb.pcrs, tb.cap_pcr)


def rotate(
    req: RotateRequest, found: dict[str, list[Enrollment]], secrets: SecretsFor,
    progress: Progress,
) -> list[Rotated]:
    """Replace the machine policy key: enroll each volume again under the next key, then remove the
    enrollments under the current one, then promote the next key in ``state_dir``.

    ``found`` holds each device's enrollments under the current key and ``secrets`` supplies the
    passphrase or recovery key that authorises each new enrollment. Returns one Rotated per device.
    Safe to interrupt and rerun: see the module's docstring.
    """
    current = _current_key(req.state_dir)
    keys.load_or_create_machine_key(req.state_dir, NEXT_KEY_FILE)
    _replace_revocation_field(req, current, found)
    results = [
        _rotate_device(req, current, d, found[d], secrets, progress) for d in req.devices
    ]
    progress(f"the next policy key replaces the old one in {req.state_dir}")
    keys.promote_machine_key(req.state_dir, NEXT_KEY_FILE)
    return results


def _replace_revocation_field(
    req: RotateRequest, current: bytes, found: dict[str, list[Enrollment]]
) -> None:
    """The revocation field names the machine key as the authority that may set its bits
    (when no vendor is): the old key's field goes, and the first enrollment under the next
    key defines a new one. Its revoked releases go with it, and may: every approval that
    checked them belongs to a sealed object this rotation removes."""
    if not any(
        e.token.revocation is not None and e.token.revocation.authority == "machine"
        for enrollments_of_device in found.values() for e in enrollments_of_device
    ):
        return
    old_field = RevocationIndex(REVOCATION_INDEX, current)
    with connect(req.tcti) as ctx:
        undefine_revocation_index(ctx, old_field)


def _rotate_device(
    req: RotateRequest, current: bytes, device: str, old: list[Enrollment],
    secrets: SecretsFor, progress: Progress,
) -> Rotated:
    enrolled: list[int] = []
    warnings: list[str] = []
    removed = _finish_half_removed(device, current, req.tcti)
    done = _next_enrollments(device, req.state_dir)  # by an interrupted rotation
    todo = [e for e in old if not any(_same_binding(e, n) for n in done)]
    if todo:
        unlock_key, pin = secrets(device, any(e.token.has_pin for e in todo))
        for enrollment in todo:
            token = enrollment.token
            vendor = next((k.public_pem for k in token.policy_keys if k.role == "vendor"), None)
            progress(f"{device}: enrolling token {enrollment.token_id}'s binding again under the "
                     "next policy key")
            result = enroll(
                EnrollRequest(
                    device=device, unlock_key=unlock_key, bank=bank_named(token.pcr_bank),
                    pcrs=token.pcrs, expected={}, cap_pcr=token.cap_pcr,
                    pin=pin if token.has_pin else None, recovery_key=False,
                    state_dir=req.state_dir, tcti=req.tcti, vendor_key_pem=vendor,
                    machine_key_file=NEXT_KEY_FILE, keep_recovery=token.recovery,
                    # The same binding again: a key rotation does not change what it binds
                    # (enroll still warns when it leaves part of this boot free).
                    allow_unbound=True,
                ),
                progress,
            )
            enrolled.append(result.token_id)
            warnings += result.warnings
    for enrollment in old:
        progress(f"{device}: removing token {enrollment.token_id} (the old key's)")
        removed.append(remove(device, enrollment.token_id, req.tcti).token_id)
    return Rotated(device, tuple(enrolled), tuple(removed), warnings)
