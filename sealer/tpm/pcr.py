"""Reading and extending PCRs."""

from __future__ import annotations

from collections.abc import Sequence

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

from sealer.errors import TPMError
from sealer.pcrs import Bank


def selection(bank: Bank, indices: Sequence[int]) -> TPML_PCR_SELECTION:
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
    values = TPML_DIGEST_VALUES(
        [TPMT_HA(hashAlg=bank.alg_id, digest=TPMU_HA(**{bank.name: digest}))]
    )
    ctx.pcr_extend(ESYS_TR.PCR0 + index, values)
