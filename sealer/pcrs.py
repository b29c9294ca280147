"""PCR banks and PCR values as plain data, shared by every package.

Parsing of the user's ``--pcrs`` and ``--pcr`` options lives here too, so the CLI, the services
and the tests agree on one grammar.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sealer.errors import UsageError

PCR_COUNT = 24
# PCRs 17-22 start at all ones (they belong to dynamic launch); every other PCR starts at zero.
_ONES_AT_RESET = range(17, 23)


@dataclass(frozen=True)
class Bank:
    """A PCR bank: its hash and TPM algorithm id, and the PCR arithmetic done with that hash."""

    name: str
    alg_id: int  # TPM2_ALG_ID
    size: int

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.name, data).digest()

    def initial_value(self, pcr: int) -> bytes:
        return (b"\xff" if pcr in _ONES_AT_RESET else b"\x00") * self.size

    def extend(self, value: bytes, digest: bytes) -> bytes:
        return self.hash(value + digest)


BANKS: dict[str, Bank] = {
    b.name: b
    for b in (
        Bank("sha1", 0x0004, 20),
        Bank("sha256", 0x000B, 32),
        Bank("sha384", 0x000C, 48),
        Bank("sha512", 0x000D, 64),
    )
}

PcrValues = Mapping[int, bytes]


def bank_named(name: str) -> Bank:
    """The bank called ``name`` (in any case); UsageError when there is none."""
    try:
        return BANKS[name.lower()]
    except KeyError:
        raise UsageError(
            f"unknown PCR bank {name!r}", f"choose one of {', '.join(BANKS)}"
        ) from None


def parse_pcr_index(text: str) -> int:
    """A PCR index given as text (e.g. on the command line); UsageError when it is not one."""
    text = text.strip()
    # isascii(): str.isdigit() is also true for digits int() refuses, such as "²".
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) < PCR_COUNT:
        raise UsageError(f"{text!r} is not a PCR index", f"PCRs are numbered 0 to {PCR_COUNT - 1}")
    return int(text)


def parse_pcr_list(text: str) -> tuple[int, ...]:
    """``"4,7"`` -> (4, 7), sorted, without duplicates; ``""`` is refused."""
    parts = [p for p in text.replace("+", ",").split(",") if p.strip()]
    if not parts:
        raise UsageError("no PCRs given", "name at least one PCR, for example --pcrs 7")
    return tuple(sorted({parse_pcr_index(p) for p in parts}))


def parse_pcr_value(text: str, default_bank: Bank) -> tuple[int, Bank, bytes]:
    """``"7=sha256:ab12.."`` (or ``"7=ab12.."`` in the default bank) -> (7, bank, value)."""
    index_text, sep, rest = text.partition("=")
    if not sep:
        raise UsageError(f"--pcr {text!r} has no '='", "write it as 7=sha256:HEX")
    index = parse_pcr_index(index_text)
    bank_text, colon, hex_text = rest.partition(":")
    bank = bank_named(bank_text) if colon else default_bank
    if not colon:
        hex_text = bank_text
    try:
        value = bytes.fromhex(hex_text.strip())
    except ValueError:
        raise UsageError(f"--pcr {text!r}: the value is not hex") from None
    if len(value) != bank.size:
        raise UsageError(
            f"--pcr {text!r}: a {bank.name} value has {bank.size} bytes, not {len(value)}"
        )
    return index, bank, value


def format_pcrs(indices: Iterable[int]) -> str:
    """PCR indices as messages show them: sorted, comma-separated."""
    return ",".join(str(i) for i in sorted(indices))
