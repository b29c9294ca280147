"""Every cryptsetup invocation sealer makes. Keys travel through pipes, never argv."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from sealer.errors import AuthError, DeviceError, HeaderFullError, SealerError
from sealer.host.checkpoint import before_write
from sealer.host.proc import Completed, fd_path, run, secret_pipe
from sealer.luks.header import (
    MINIMAL_PBKDF2_ITERATIONS,
    PROBE_LENGTH,
    LuksHeader,
    parse_metadata,
    probe,
)

CRYPTSETUP = "cryptsetup"
# cryptsetup's documented exit status for "no permission (bad passphrase)".
_EXIT_BAD_PASSPHRASE = 2
# A TPM-sealed or recovery secret has at least 128 bits of entropy: a slow KDF adds boot time
# and nothing else, so such keyslots use PBKDF2 at cryptsetup's minimum iteration count.
MINIMAL_KDF = ("--pbkdf", "pbkdf2", "--pbkdf-force-iterations", str(MINIMAL_PBKDF2_ITERATIONS))


def _check_device(device: str) -> bytes:
    try:
        with open(device, "rb") as handle:
            return handle.read(PROBE_LENGTH)
    except FileNotFoundError as exc:
        raise DeviceError(f"{device} does not exist", "check the path (lsblk -f)") from exc
    except PermissionError as exc:
        raise DeviceError(f"cannot read {device}: permission denied", "run sealer as root") from exc
    except IsADirectoryError as exc:
        raise DeviceError(f"{device} is a directory, not a block device or image") from exc
    except OSError as exc:
        raise DeviceError(f"cannot read {device}: {exc.strerror}") from exc


def read_header(device: str) -> LuksHeader:
    """The LUKS2 header of ``device``; DeviceError when it is missing, unreadable or not LUKS2."""
    info = probe(device, _check_device(device))
    result = run([CRYPTSETUP, "luksDump", "--dump-json-metadata", device])
    if result.returncode != 0:
        raise DeviceError(f"cannot read the LUKS2 header of {device}: {result.reason}")
    return parse_metadata(device, info.uuid, result.stdout_text)


def keyslot_salt(device: str, slot: int) -> str | None:
    """The KDF salt of ``slot``: it changes whenever a new key is put into the keyslot."""
    keyslot = read_header(device).keyslots.get(slot)
    return keyslot.salt if keyslot is not None else None


def _fail(device: str, action: str, result: Completed, hint: str | None = None) -> SealerError:
    """The error for a failed cryptsetup call; ``action`` reads "cannot <action>"."""
    reason = result.reason
    lowered = reason.lower()
    if result.returncode == _EXIT_BAD_PASSPHRASE:
        return AuthError(
            f"{device} did not accept the passphrase or recovery key",
            "check it (a key file is used byte for byte, including any newline)",
        )
    if "space" in lowered or "full" in lowered:
        return HeaderFullError(f"cannot {action}: {reason}", hint)
    return DeviceError(f"cannot {action}: {reason}", hint)


def add_keyslot(
    device: str, *, unlock_key: bytes, new_key: bytes, slot: int, minimal_kdf: bool
) -> None:
    """Add ``new_key`` in ``slot``, authorised by an existing key (passphrase or recovery)."""
    before_write(f"luks: add keyslot {slot}")
    with secret_pipe(new_key) as new_fd:
        argv = [CRYPTSETUP, "luksAddKey", "--batch-mode", "--key-file=-"]
        argv += ["--new-key-slot", str(slot), "--new-keyfile", fd_path(new_fd)]
        if minimal_kdf:
            argv += MINIMAL_KDF
        result = run([*argv, device], stdin=unlock_key, pass_fds=[new_fd])
    if result.returncode != 0:
        raise _fail(device, f"add keyslot {slot} to {device}", result)


def prefer_keyslot(device: str, slot: int) -> None:
    """Have cryptsetup try ``slot`` first whenever no keyslot is named.

    Debian's cryptroot hands the keyscript's output to cryptsetup without a keyslot, and
    cryptsetup tries the slots in order: without this, every TPM unlock at boot first runs
    the passphrase slot's deliberately slow KDF (Argon2id: seconds and a gigabyte) in vain.
    """
    before_write(f"luks: prefer keyslot {slot}")
    argv = [CRYPTSETUP, "config", "--batch-mode", "--key-slot", str(slot), "--priority", "prefer"]
    result = run([*argv, device])
    if result.returncode != 0:
        raise _fail(device, f"set the priority of keyslot {slot} of {device}", result)


def test_key(device: str, key: bytes, slot: int | None = None) -> bool:
    """True when ``key`` opens ``slot`` (or any slot); nothing is activated."""
    argv = [CRYPTSETUP, "open", "--test-passphrase", "--key-file=-", "--disable-external-tokens"]
    if slot is not None:
        argv += ["--key-slot", str(slot)]
    result = run([*argv, device], stdin=key)
    if result.returncode == 0:
        return True
    if result.returncode == _EXIT_BAD_PASSPHRASE:
        return False
    raise _fail(device, f"test a key on {device}", result)


def open_volume(device: str, name: str, key: bytes, slot: int) -> None:
    """Open ``device`` as /dev/mapper/``name`` with ``key``, trying keyslot ``slot`` only.

    AuthError when the keyslot rejects the key; DeviceError for any other failure (such as no
    device-mapper, in a container).
    """
    argv = [CRYPTSETUP, "open", "--type", "luks2", "--key-file=-", "--key-slot", str(slot)]
    result = run([*argv, device, name], stdin=key)
    if result.returncode != 0:
        hint = None
        if not os.path.exists("/dev/mapper/control"):
            hint = (
                "device-mapper is not available here (no /dev/mapper/control); "
                "'sealer unlock --test' checks the key without opening the volume"
            )
        raise _fail(device, f"open {device} as /dev/mapper/{name}", result, hint)


def wipe_open_keys(sys_block: str = "/sys/block") -> list[str]:
    """Take the volume keys of every open dm-crypt mapping out of the kernel; say what happened.

    For a machine about to be powered off because the TPM could not be capped: close each
    mapping, or, when it is in use (a mounted root), suspend it, which wipes its key as well.
    Never raises: whatever cannot be done is said, and the power-off follows anyway.
    """
    said: list[str] = []
    try:
        entries = sorted(os.listdir(sys_block))
    except OSError as exc:
        return [f"cannot list the device-mapper devices: {exc.strerror}"]
    for entry in entries:
        try:
            with open(f"{sys_block}/{entry}/dm/uuid", encoding="ascii") as handle:
                uuid = handle.read().strip()
            with open(f"{sys_block}/{entry}/dm/name", encoding="utf-8") as handle:
                name = handle.read().strip()
        except (OSError, UnicodeDecodeError):
            continue  # not a device-mapper device
        if not uuid.startswith("CRYPT-"):
            continue
        try:
            if run([CRYPTSETUP, "close", name]).returncode == 0:
                said.append(f"closed /dev/mapper/{name}")
                continue
            result = run([CRYPTSETUP, "luksSuspend", name])
        except SealerError as error:  # cryptsetup is missing
            return [*said, error.message]
        if result.returncode == 0:
            said.append(f"wiped the key of /dev/mapper/{name} (in use: suspended)")
        else:
            said.append(f"cannot wipe the key of /dev/mapper/{name}: {result.reason}")
    return said


def kill_keyslot(device: str, slot: int) -> None:
    """Remove keyslot ``slot`` from ``device``; DeviceError when cryptsetup fails."""
    before_write(f"luks: remove keyslot {slot}")
    result = run([CRYPTSETUP, "luksKillSlot", "--batch-mode", device, str(slot)])
    if result.returncode != 0:
        raise _fail(device, f"remove keyslot {slot} from {device}", result)


def import_token(
    device: str, token_id: int, token: Mapping[str, Any], *, replace: bool = False
) -> None:
    """Write ``token`` as ``token_id``; with ``replace``, over the token already there.

    A replacement is one metadata update of the header (both copies, with a new sequence
    id), so an interrupted one leaves either the old token or the new one, never neither.
    """
    before_write(f"luks: {'replace' if replace else 'write'} token {token_id}")
    text = json.dumps(token, separators=(",", ":"), sort_keys=True).encode()
    argv = [CRYPTSETUP, "token", "import", "--json-file", "-", "--token-id", str(token_id)]
    if replace:
        argv.append("--token-replace")
    result = run([*argv, device], stdin=text)
    if result.returncode != 0:
        raise _token_import_error(device, token_id, len(text), result)


def _token_import_error(device: str, token_id: int, size: int, result: Completed) -> SealerError:
    """cryptsetup says only "Failed to import token" when the metadata area is full: tell."""
    try:
        room = read_header(device).json_room()
    except SealerError:
        room = None
    # The stored metadata is the printed one without its indentation, plus the new token
    # (a replaced token frees its old size, so this errs on the side of "full").
    if room is not None and size >= room:
        return HeaderFullError(
            f"cannot write token {token_id} to {device}: the LUKS2 metadata area is full "
            f"({size} bytes needed, about {room} left)",
            "remove unused tokens ('cryptsetup token remove --token-id N'); a new volume "
            "can have a larger area (luksFormat --luks2-metadata-size)",
        )
    return _fail(device, f"write token {token_id} to {device}", result)


def remove_token(device: str, token_id: int) -> None:
    """Remove token ``token_id`` from ``device``'s header; DeviceError when cryptsetup fails."""
    before_write(f"luks: remove token {token_id}")
    argv = [CRYPTSETUP, "token", "remove", "--token-id", str(token_id), device]
    result = run(argv)
    if result.returncode != 0:
        raise _fail(device, f"remove token {token_id} from {device}", result)

