"""Reading and extending PCRs."""

from __future__ import annotations

from collections.abc import Sequence

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_CAP
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

from sealer.errors import TPMError
from sealer.pcrs import BANKS, Bank


def selection(bank: Bank, indices: Sequence[int]) -> TPML_PCR_SELECTION:
    """The TPM's selection of PCRs ``indices`` in ``bank``."""
    return TPML_PCR_SELECTION.parse(f"{bank.name}:{','.join(str(i) for i in sorted(indices))}")


def read_pcrs(ctx: ESAPI, bank: Bank, indices: Sequence[int]) -> dict[int, bytes]:
    """Current values of ``indices`` in ``bank``. The TPM answers at most 8 per call."""
    wanted = sorted(set(indices))
    values: dict[int, bytes] = {}
    while len(values) < len(wanted):
        missing = [i for i in wanted if i not in values]
        _, returned, digests = ctx.pcr_read(selection(bank, missing))
        got = [
            byte * 8 + bit
            for sel in returned
            for byte, mask in enumerate(bytes(sel.pcrSelect)[: sel.sizeofSelect])
            for bit in range(8)
            if mask & (1 << bit)
        ]
        if not got:
            raise TPMError(
                f"the TPM has no active {bank.name} PCR bank",
                "choose another bank with --pcr-bank, or enable it in the firmware",
            )
        for index, digest in zip(sorted(got), digests, strict=True):
            values[index] = bytes(digest)
    return values


def extend_pcr(ctx: ESAPI, bank: Bank, index: int, digest: bytes) -> None:
    """Extend PCR ``index`` of ``bank`` with ``digest``."""
    values = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=bank.alg_id, digest=TPMU_HA(**{bank.name: digest}))]
    )
    ctx.pcr_extend(ESYS_TR.PCR0 + index, values)


def active_banks(ctx: ESAPI) -> list[Bank]:
    """The PCR banks the TPM has allocated (with at least one PCR), among those sealer knows."""
    _, data = ctx.get_capability(TPM2_CAP.PCRS, 0, 1)
    by_id = {bank.alg_id: bank for bank in BANKS.values()}
    return [
        by_id[int(sel.hash)]
        for sel in data.data.assignedPCR
        if int(sel.hash) in by_id and any(bytes(sel.pcrSelect)[: sel.sizeofSelect])
    ]


def extend_all_banks(ctx: ESAPI, index: int, event: bytes) -> list[Bank]:
    """Extend PCR ``index`` with the hash of ``event`` in every active bank, in one command.

    Extending every bank, as firmware does, keeps the banks telling the same story: a policy
    on any bank sees the PCR move.
    """
    banks = active_banks(ctx)
    values = TPML_DIGEST_VALUES(
        [
            TPMT_HA(hashAlg=bank.alg_id, digest=TPMU_HA(**{bank.name: bank.hash(event)}))
            for bank in banks
        ]
    )
    ctx.pcr_extend(ESYS_TR.PCR0 + index, values)
    return banks


def reset_count(ctx: ESAPI) -> int:
    """How many times the TPM has been reset (TPMS_CLOCK_INFO.resetCount).

    A TPM reset happens with every platform reset, so the count names this boot: an
    approval that records it was made during this boot exactly when the counts are equal.
    """
    return int(ctx.read_clock().clockInfo.resetCount)
