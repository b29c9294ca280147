"""Volumes bound by another tool: systemd-cryptenroll (``systemd-tpm2``) or clevis (tpm2 pin).

sealer opens them as those tools would (``sealer unlock``) and replaces their binding with
its own (``sealer migrate``). The formats and the TPM work live in sealer.interop and
sealer.tpm; here is only which binding a volume has and what its key is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sealer.errors import PolicyMismatchError, SealerError, TokenError
from sealer.luks.header import LuksHeader

PinReader = Callable[[], bytes]


@dataclass(frozen=True)
class ForeignBinding:
    kind: str  # the LUKS2 token type: "systemd-tpm2" or "clevis"
    tool: str  # who made it, for messages
    token_id: int
    keyslots: tuple[int, ...]
    pcr_bank: str
    pcrs: tuple[int, ...]
    unlock: Callable[[str | None, PinReader], bytes]  # the keyslot passphrase, from the TPM


def foreign_bindings(header: LuksHeader) -> tuple[list[ForeignBinding], list[SealerError]]:
    """The volume's systemd-tpm2 and clevis tpm2 bindings, and why others could not be read."""
    from sealer.interop import clevis, systemd_tpm2

    found: list[ForeignBinding] = []
    errors: list[SealerError] = []
    for token in header.tokens_of_type(systemd_tpm2.TOKEN_TYPE):
        try:
            parsed = systemd_tpm2.parse(token.token_id, token.data)
        except SealerError as exc:
            errors.append(exc)
            continue
        found.append(
            ForeignBinding(
                kind=systemd_tpm2.TOKEN_TYPE, tool="systemd-cryptenroll",
                token_id=token.token_id, keyslots=parsed.keyslots, pcr_bank=parsed.pcr_bank,
                pcrs=parsed.pcrs,
                unlock=partial(systemd_tpm2.passphrase, parsed),
            )
        )  # fmt: skip
    for token in header.tokens_of_type(clevis.TOKEN_TYPE):
        try:
            parsed_clevis = clevis.parse(token.token_id, token.data)
        except SealerError as exc:
            errors.append(exc)
            continue
        found.append(
            ForeignBinding(
                kind=clevis.TOKEN_TYPE, tool="clevis", token_id=token.token_id,
                keyslots=parsed_clevis.keyslots, pcr_bank=parsed_clevis.pcr_bank,
                pcrs=parsed_clevis.pcrs,
                unlock=partial(_clevis_unlock, parsed_clevis),
            )
        )  # fmt: skip
    return found, errors


def _clevis_unlock(token: object, tcti: str | None, read_pin: PinReader) -> bytes:
    from sealer.interop import clevis

    assert isinstance(token, clevis.ClevisTpm2Token)
    return clevis.passphrase(token, tcti)  # the tpm2 pin of clevis has no PIN


@dataclass(frozen=True)
class ForeignKey:
    key: bytes  # the keyslot passphrase: a secret, never logged
    binding: ForeignBinding


def release_foreign(header: LuksHeader, tcti: str | None, read_pin: PinReader) -> ForeignKey:
    """The key of the first foreign binding the TPM releases in this boot state."""
    bindings, errors = foreign_bindings(header)
    failures: list[SealerError] = list(errors)
    for binding in bindings:
        try:
            return ForeignKey(binding.unlock(tcti, read_pin), binding)
        except (PolicyMismatchError, TokenError) as exc:
            failures.append(exc)  # another binding of the same volume may still work
    if failures:
        raise failures[0]
    raise TokenError(
        f"{header.device} has no TPM binding sealer can use (no sealer-tpm2, systemd-tpm2 or "
        "clevis tpm2 token)",
        "enroll it with 'sealer enroll'",
    )
