"""Volumes bound by another tool: systemd-cryptenroll (``systemd-tpm2``) or clevis (tpm2 pin).

sealer opens them as those tools would (``sealer unlock``) and replaces their binding with
its own (``sealer migrate``). The formats live in this package's systemd_tpm2 and clevis
modules, the TPM work in sealer.tpm; here is only which binding a volume has and what its
key is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from sealer.errors import PolicyMismatchError, SealerError, TokenError
from sealer.luks.header import LuksHeader, Token

PinReader = Callable[[], bytes]


@dataclass(frozen=True)
class ToolBinding:
    """Another tool's TPM binding of a volume (systemd-cryptenroll or clevis), and how to ask
    the TPM for its key.
    """

    kind: str  # the LUKS2 token type: "systemd-tpm2" or "clevis"
    tool: str  # who made it, for messages
    token_id: int
    keyslots: tuple[int, ...]
    pcr_bank: str
    pcrs: tuple[int, ...]
    unlock: Callable[[str | None, PinReader], bytes]  # the keyslot passphrase, from the TPM


def _systemd_binding(token: Token) -> ToolBinding:
    from sealer.interop import systemd_tpm2

    parsed = systemd_tpm2.parse(token.token_id, token.data)
    return ToolBinding(
        kind=systemd_tpm2.TOKEN_TYPE, tool="systemd-cryptenroll", token_id=token.token_id,
        keyslots=parsed.keyslots, pcr_bank=parsed.pcr_bank, pcrs=parsed.pcrs,
        unlock=partial(systemd_tpm2.passphrase, parsed),
    )


def _clevis_binding(token: Token) -> ToolBinding:
    from sealer.interop import clevis

    parsed = clevis.parse(token.token_id, token.data)

    def unlock(tcti: str | None, read_pin: PinReader) -> bytes:
        return clevis.passphrase(parsed, tcti)  # clevis's tpm2 pin has no PIN

    return ToolBinding(
        kind=clevis.TOKEN_TYPE, tool="clevis", token_id=token.token_id,
        keyslots=parsed.keyslots, pcr_bank=parsed.pcr_bank, pcrs=parsed.pcrs, unlock=unlock,
    )


# LUKS2 token type -> its reader. The literals keep the interop modules (and the TPM code
# behind them) unimported until a volume has such a token.
_READERS: dict[str, Callable[[Token], ToolBinding]] = {
    "systemd-tpm2": _systemd_binding,
    "clevis": _clevis_binding,
}


def has_tool_binding(header: LuksHeader) -> bool:
    """Whether the header holds a token of another tool that sealer can read (systemd-tpm2,
    clevis).
    """
    return any(header.tokens_of_type(kind) for kind in _READERS)


def tool_bindings(header: LuksHeader) -> tuple[list[ToolBinding], list[SealerError]]:
    """The volume's systemd-tpm2 and clevis tpm2 bindings, and why others could not be read."""
    found: list[ToolBinding] = []
    errors: list[SealerError] = []
    for kind, read in _READERS.items():
        for token in header.tokens_of_type(kind):
            try:
                found.append(read(token))
            except SealerError as exc:
                errors.append(exc)
    return found, errors


@dataclass(frozen=True)
class ToolKey:
    """The key another tool's binding released, and that binding."""

    key: bytes  # the keyslot passphrase: a secret, never logged
    binding: ToolBinding


def release_tool_key(header: LuksHeader, tcti: str | None, read_pin: PinReader) -> ToolKey:
    """The key of the first other-tool binding the TPM releases in this boot state."""
    bindings, errors = tool_bindings(header)
    failures: list[SealerError] = list(errors)
    for binding in bindings:
        try:
            return ToolKey(binding.unlock(tcti, read_pin), binding)
        except (PolicyMismatchError, TokenError) as exc:
            failures.append(exc)  # another binding of the same volume may still work
    if failures:
        raise failures[0]
    raise TokenError(
        f"{header.device} has no TPM binding sealer can use (no sealer-tpm2, systemd-tpm2 or "
        "clevis tpm2 token)",
        "enroll it with 'sealer enroll'",
    )
