"""Close the TPM to whoever holds no secret: DA parameters and a lockout authorization.

At enrollment (``secure_tpm``), while the lockout authorization is empty, sealer sets the DA
parameters (sealer.tpm.hierarchy.SEALER_DA) and then a random 32-byte lockout authorization.
The authorization is kept in the state directory as ``tpm-lockout.auth`` (0600, the raw bytes:
``tpm2_dictionarylockout -c -p file:/var/lib/sealer/tpm-lockout.auth`` reads it as it is) and,
with ``--escrow-cert``, escrowed to the organisation next to the recovery key.

Never lost, whatever interrupts it: the new authorization is written durably as
``tpm-lockout.auth.new`` *before* the TPM's is changed, and renamed to ``tpm-lockout.auth``
after. So the next run knows:

- ``.new`` present, lockout authorization empty: the change never happened; redo it with the
  same value (an escrow record of it may already exist);
- ``.new`` present, authorization set: it happened, or someone else set one meanwhile; one
  command authorized with the ``.new`` value tells, and only if it works is it kept;
- ``tpm-lockout.auth`` present, authorization set: sealer holds it;
- ``tpm-lockout.auth`` present, authorization empty: the TPM was cleared since; take it again;
- no file, authorization set: someone else holds it; sealer leaves the TPM alone and says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealer.errors import AuthError, LockoutError, StateError
from sealer.host.checkpoint import before_write
from sealer.host.files import (
    directory_hint,
    rename_state_file,
    write_private_file,
    write_state_file,
)
from sealer.policy.revocation import REVOCATION_INDEX
from sealer.tpm.connection import connect
from sealer.tpm.hierarchy import (
    LOCKOUT_AUTH_BYTES,
    SEALER_DA,
    Tpm,
    change_lockout_auth,
    lockout_auth_in_force,
    nv_index_exists,
    read_hierarchies,
    reset_lockout,
    set_da_parameters,
)
from sealer.tpm.lockout import read_lockout
from sealer.tpm.srk import Srk

if TYPE_CHECKING:
    from sealer.services.escrow import Escrow

DEFAULT_STATE_DIR = Path("/var/lib/sealer")
LOCKOUT_AUTH_FILE = "tpm-lockout.auth"
PENDING_SUFFIX = ".new"
REJECTED_SUFFIX = ".not-in-force"
ESCROW_SUFFIX = "-tpm-lockout.cms"  # not .json: the recovery keys' records stay apart

Progress = Callable[[str], None]

SOMEONE_ELSES = (
    "the TPM's lockout authorization was set by someone else, so sealer leaves it (and the "
    "dictionary-attack parameters) alone; whoever holds it can reset a PIN lockout"
)


def new_lockout_auth() -> bytes:
    """32 random bytes, none of them 0 (255.8 bits of entropy).

    tpm2-tools reads ``-p file:PATH`` as a C string, so an authorization with a 0 byte would
    be cut short there (one in 8 would have one); the TPM also drops trailing 0 bytes of an
    authorization value.
    """
    auth = b""
    while len(auth) < LOCKOUT_AUTH_BYTES:
        auth += bytes(b for b in os.urandom(LOCKOUT_AUTH_BYTES) if b)
    return auth[:LOCKOUT_AUTH_BYTES]


def _auth_path(state_dir: Path) -> Path:
    return state_dir / LOCKOUT_AUTH_FILE


def _pending_path(state_dir: Path) -> Path:
    return state_dir / (LOCKOUT_AUTH_FILE + PENDING_SUFFIX)


def _read(path: Path) -> bytes | None:
    """The authorization in ``path``; None when absent (a malformed one is an error)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(
            f"cannot read {path}: {exc.strerror}",
            directory_hint(path.parent, "--state-dir", exc.errno),
        ) from exc
    if len(data) != LOCKOUT_AUTH_BYTES:
        raise StateError(
            f"{path} is not a TPM lockout authorization ({len(data)} bytes, not "
            f"{LOCKOUT_AUTH_BYTES})",
            "restore it from a backup or from the escrowed copy",
        )
    return data


def held_lockout_auth(state_dir: Path) -> bytes | None:
    """The lockout authorization sealer set, from the state directory; None: none kept."""
    return _read(_auth_path(state_dir))


def _write_pending(state_dir: Path, auth: bytes) -> None:
    write_state_file(state_dir, _pending_path(state_dir).name, auth)


def _confirm(state_dir: Path) -> None:
    """The pending authorization is in force: make it the kept one (a rename, durably)."""
    rename_state_file(state_dir, _pending_path(state_dir).name, _auth_path(state_dir).name)


def _rejected_path(state_dir: Path) -> Path:
    return state_dir / (LOCKOUT_AUTH_FILE + REJECTED_SUFFIX)


def _set_aside(state_dir: Path) -> None:
    """The pending authorization is not the TPM's: keep it, under a name never tried."""
    rename_state_file(state_dir, _pending_path(state_dir).name, _rejected_path(state_dir).name)


def _escrow_path(escrow: Escrow) -> Path:
    return escrow.directory / f"{escrow.machine_id}{ESCROW_SUFFIX}"


def _escrow(escrow: Escrow, auth: bytes, progress: Progress) -> Path:
    """Encrypt the authorization (as hex text) to the organisation's certificate.

    A PEM CMS file of its own, ``<machine-id>-tpm-lockout.cms``, which ``openssl cms -decrypt
    -inform PEM -inkey org.key`` opens; not a recovery-key record (those are JSON).
    """
    from sealer.escrow import cms  # only with --escrow-cert

    path = _escrow_path(escrow)
    progress(f"escrowing the TPM's lockout authorization to {escrow.certificate.subject}")
    header = (
        f"sealer TPM lockout authorization (hex) of machine {escrow.machine_id} "
        f"({escrow.hostname}), {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}\n"
    )
    data = header.encode() + cms.encrypt(escrow.certificate, auth.hex().encode()).encode()
    before_write(f"state: write escrow record {path.name}")
    try:
        write_private_file(path, data)
    except OSError as exc:
        raise StateError(
            f"cannot write {path}: {exc.strerror}",
            directory_hint(escrow.directory, "--escrow-dir", exc.errno),
        ) from exc
    return path


def _take(
    ctx: Tpm, srk: Srk, state_dir: Path, auth: bytes | None, escrow: Escrow | None,
    progress: Progress,
) -> None:
    """The lockout authorization is empty: set the DA parameters, then ``auth`` (or a new one)."""
    progress(
        f"closing the TPM's lockout hierarchy (DA: {SEALER_DA.max_tries} tries, one back every "
        f"{SEALER_DA.recovery_time_s} s)"
    )
    set_da_parameters(ctx, b"")
    if auth is None:
        auth = new_lockout_auth()
        _write_pending(state_dir, auth)
    if escrow is not None:
        _escrow(escrow, auth, progress)
    change_lockout_auth(ctx, srk, b"", auth)
    _confirm(state_dir)


def secure_tpm(
    ctx: Tpm, srk: Srk, state_dir: Path, escrow: Escrow | None, progress: Progress
) -> list[str]:
    """Make sure no one without a secret can reset or reconfigure the DA lockout.

    ``srk`` salts the session that carries the new authorization. Returns warnings: a TPM
    that refuses lockout authorizations for now (someone tried a wrong one) does not stop
    the enrollment; the next 'sealer enroll' closes the hierarchy.
    """
    try:
        return _secure(ctx, srk, state_dir, escrow, progress)
    except (AuthError, LockoutError) as exc:
        return [
            f"the TPM's lockout hierarchy was not closed ({exc.message}): until it is, anyone "
            "can reset or switch off the PIN lockout; run 'sealer enroll' again later"
        ]


def _secure(
    ctx: Tpm, srk: Srk, state_dir: Path, escrow: Escrow | None, progress: Progress
) -> list[str]:
    hierarchies = read_hierarchies(ctx)
    pending = _read(_pending_path(state_dir))
    held = held_lockout_auth(state_dir)
    if not hierarchies.lockout_auth_set:
        # Never set, or the TPM was cleared since sealer set it (the kept one is stale), or
        # an earlier run stopped before its change: the pending value is reused then.
        _take(ctx, srk, state_dir, pending, escrow, progress)
        return []
    if pending is not None:
        # An earlier run stopped after writing it: did its change reach the TPM?
        if lockout_auth_in_force(ctx, pending):
            _confirm(state_dir)
            return []
        _set_aside(state_dir)  # never tried again: each wrong try locks the hierarchy
        return [f"{SOMEONE_ELSES} (an interrupted enrollment's value is not it: kept as "
                f"{_rejected_path(state_dir)})"]
    if held is not None:  # sealer set it; escrowed now if it was not yet to this directory
        if escrow is not None and not _escrow_path(escrow).exists():
            _escrow(escrow, held, progress)
        return []
    return [SOMEONE_ELSES]


def clear_lockout(tcti: str | None, state_dir: Path) -> dict[str, Any]:
    """``sealer tpm clear-lockout``: reset the DA counter with the kept authorization."""
    auth = held_lockout_auth(state_dir)
    if auth is None:
        raise StateError(
            f"sealer holds no TPM lockout authorization ({_auth_path(state_dir)} does not exist)",
            "give the state directory it was kept in with --state-dir, or ask whoever set the "
            "TPM's lockout authorization",
        )
    with connect(tcti) as ctx:
        before = read_lockout(ctx)
        reset_lockout(ctx, auth)
        after = read_lockout(ctx)
    return {"before": before.to_json(), "after": after.to_json()}


def tpm_hygiene(ctx: Tpm, state_dir: Path) -> dict[str, Any]:
    """Who can reconfigure this TPM: authorizations set or empty, and what sealer keeps."""
    hierarchies = read_hierarchies(ctx)
    try:
        held: bool | None = held_lockout_auth(state_dir) is not None
    except StateError:
        held = None  # unreadable here (not root?): unknown
    pending = _pending_path(state_dir).exists()
    if not hierarchies.lockout_auth_set:
        holder = "nobody"
    elif pending and not held:
        holder = "unknown (an enrollment was interrupted: the next 'sealer enroll' decides)"
    elif held:
        holder = "sealer"
    elif held is None:
        holder = "unknown (the state directory cannot be read)"
    else:
        holder = "someone else"
    return {
        **hierarchies.to_json(),
        "lockout_auth_holder": holder,
        "sealer_lockout_auth_file": str(_auth_path(state_dir)) if held else None,
        "revocation_field": {
            "nv_index": f"0x{REVOCATION_INDEX:08x}",
            "present": nv_index_exists(ctx, REVOCATION_INDEX),
        },
    }


def tpm_status(tcti: str | None, state_dir: Path) -> dict[str, Any]:
    """``sealer tpm status``: the DA state and the hygiene, for the TPM alone."""
    with connect(tcti) as ctx:
        return {"lockout": read_lockout(ctx).to_json(), "hygiene": tpm_hygiene(ctx, state_dir)}


def render_hygiene(hygiene: dict[str, Any], lockout: dict[str, Any] | None) -> list[str]:
    """Text lines for a person (status and 'sealer tpm status')."""

    def said(flag: bool) -> str:
        return "set" if flag else "EMPTY"

    holder = hygiene["lockout_auth_holder"]
    lines = [
        f"  TPM lockout authorization: {said(hygiene['lockout_auth_set'])} (held by {holder})",
        f"  TPM owner authorization: {said(hygiene['owner_auth_set'])}"
        + ("" if hygiene["owner_auth_set"] else " (as Linux tools expect)"),
    ]
    if lockout is not None:
        lines.append(
            f"  TPM DA parameters: max tries {lockout['max_tries']}, one forgotten every "
            f"{lockout['interval_s']} s, {lockout['lockout_recovery_s']} s after a wrong "
            f"lockout authorization; failed tries now {lockout['failed_tries']}"
        )
    field = hygiene["revocation_field"]
    lines.append(
        f"  TPM revocation field {field['nv_index']}: "
        + ("present" if field["present"] else "absent")
    )
    return lines
