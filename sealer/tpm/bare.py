"""The TPM through the bare ESAPI binding (sealer.tpm.esys): opening it, PCRs, the lockout state.

What every boot needs, whichever step: the unlock (sealer.tpm.release) and the cap
(sealer.boot.pcrcap), which imports only this.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sealer.errors import TPMError, TPMUnavailableError
from sealer.pcrs import BANKS, Bank
from sealer.tpm import esys, rc
from sealer.tpm.esys import EsysError, Tpm
from sealer.tpm.lockout import CAP_TPM_PROPERTIES, LockoutState, lockout_error, lockout_state
from sealer.tpm.tcti import Deadline, check_device, deadline_of, resolve_tcti


@contextmanager
def open_tpm(tcti: str | None = None) -> Iterator[Tpm]:
    """The TPM through the bare binding; libtss2's errors come out as sealer's."""
    spec = resolve_tcti(tcti)
    check_device(spec)
    seconds = deadline_of(spec)
    tpm = Tpm(spec, None if seconds is None else Deadline(spec, seconds))
    try:
        tpm.__enter__()
    except EsysError as exc:
        raise TPMUnavailableError(
            f"cannot reach the TPM through {spec!r} ({exc.text})",
            "check that the TPM (or swtpm) is running and that you are root",
        ) from exc
    try:
        yield tpm
    except EsysError as exc:
        cause = rc.first_cause(exc, EsysError)
        lockout = _lockout_after(tpm, cause.rc) if not tpm.stuck else None
        raise rc.translate(cause.rc, cause.text, lockout) from exc
    finally:
        tpm.__exit__(None, None, None)


def _lockout_after(tpm: Tpm, code: int) -> LockoutState | None:
    if not rc.is_pin_failure(code):
        return None
    try:
        return read_lockout(tpm)
    except (EsysError, TPMUnavailableError):
        return None


def read_lockout(tpm: Tpm) -> LockoutState:
    """The TPM's dictionary-attack state (sealer.tpm.lockout)."""

    def read(start: int, count: int) -> tuple[bool, list[tuple[int, int]]]:
        more, data = tpm.get_capability(CAP_TPM_PROPERTIES, start, count)
        # TPMS_CAPABILITY_DATA: capability, then TPML_TAGGED_TPM_PROPERTY: count, pairs.
        (found,) = struct.unpack_from(">I", data, 4)
        return more, [struct.unpack_from(">II", data, 8 + 8 * i) for i in range(found)]

    return lockout_state(read)


def refuse_if_locked_out(tpm: Tpm) -> None:
    """Raise LockoutError before a PIN is asked for that the TPM would refuse unseen."""
    state = read_lockout(tpm)
    if state.in_lockout:
        raise lockout_error(state)


def pcr_selection(bank: Bank, indices: Sequence[int]) -> bytes:
    """The marshalled TPML_PCR_SELECTION of ``indices`` in ``bank`` (PCRs 0 to 23)."""
    bitmap = 0
    for index in indices:
        bitmap |= 1 << index
    return struct.pack(">IHB", 1, bank.alg_id, 3) + bitmap.to_bytes(3, "little")


def _selected(selection: bytes) -> list[int]:
    (count,) = struct.unpack_from(">I", selection)
    found: list[int] = []
    offset = 4
    for _ in range(count):
        size = selection[offset + 2]
        bitmap = int.from_bytes(selection[offset + 3 : offset + 3 + size], "little")
        found += [i for i in range(8 * size) if bitmap >> i & 1]
        offset += 3 + size
    return sorted(found)


def _digests(digest_list: bytes) -> list[bytes]:
    (count,) = struct.unpack_from(">I", digest_list)
    found = []
    offset = 4
    for _ in range(count):
        (size,) = struct.unpack_from(">H", digest_list, offset)
        found.append(digest_list[offset + 2 : offset + 2 + size])
        offset += 2 + size
    return found


def read_pcrs(tpm: Tpm, bank: Bank, indices: Sequence[int]) -> dict[int, bytes]:
    """Current values of ``indices`` in ``bank``. The TPM answers at most 8 per call."""
    wanted = sorted(set(indices))
    values: dict[int, bytes] = {}
    while len(values) < len(wanted):
        missing = [i for i in wanted if i not in values]
        selected, digest_list = tpm.pcr_read(pcr_selection(bank, missing))
        got = _selected(selected)
        if not got:
            raise TPMError(
                f"the TPM has no active {bank.name} PCR bank",
                "choose another bank with --pcr-bank, or enable it in the firmware",
            )
        values.update(zip(got, _digests(digest_list), strict=True))
    return values


def active_banks(tpm: Tpm) -> list[Bank]:
    """The PCR banks the TPM has allocated (with at least one PCR), among those sealer knows."""
    _, data = tpm.get_capability(esys.CAP_PCRS, 0, 1)
    by_id = {bank.alg_id: bank for bank in BANKS.values()}
    banks = []
    (count,) = struct.unpack_from(">I", data, 4)
    offset = 8
    for _ in range(count):
        alg, size = struct.unpack_from(">HB", data, offset)
        if alg in by_id and any(data[offset + 3 : offset + 3 + size]):
            banks.append(by_id[alg])
        offset += 3 + size
    return banks


def extend_all_banks(tpm: Tpm, index: int, event: bytes) -> list[Bank]:
    """Extend PCR ``index`` with the hash of ``event`` in every active bank, in one command.

    Extending every bank, as firmware does, keeps the banks telling the same story: a policy
    on any bank sees the PCR move.
    """
    banks = active_banks(tpm)
    values = struct.pack(">I", len(banks)) + b"".join(
        struct.pack(">H", bank.alg_id) + bank.hash(event) for bank in banks
    )
    tpm.pcr_extend(index, values)
    return banks
