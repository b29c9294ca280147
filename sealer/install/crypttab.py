"""Reading and editing /etc/crypttab (crypttab(5)) as text, byte for byte where untouched.

Debian's cryptsetup reads each line with ``IFS=" <tab>" read -r name source key options``:
fields are separated by spaces or tabs, a first field starting with ``#`` makes a comment,
and the options are comma-separated. Only the lines sealer changes are rebuilt; every other
line (comments, blank lines, entries of other tools, lines we cannot parse) is kept exactly,
so that a person's layout and notes survive ``sealer boot enable`` and ``disable``.

Pure functions on strings: reading and writing files is the caller's job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sealer.errors import UsageError

# Where the keyscript lives on the host; Debian's cryptroot hook copies a crypttab keyscript
# into the initramfs at the same path, so one option works on both sides.
KEYSCRIPT_PATH = "/usr/lib/sealer/keyscript"
KEYSCRIPT_OPTION = f"keyscript={KEYSCRIPT_PATH}"
# Debian resolves a relative keyscript= against this directory (crypttab(5)).
_DEBIAN_KEYSCRIPT_DIR = "/lib/cryptsetup/scripts/"

_FIELD = re.compile(r"[^ \t]+")


@dataclass(frozen=True)
class Entry:
    """One crypttab entry: the fields as written, nothing decoded."""

    name: str
    source: str
    keyfile: str | None  # None: the field is absent
    options: tuple[str, ...] | None  # None: the field is absent

    @property
    def keyscripts(self) -> tuple[str, ...]:
        """Every keyscript= value, made absolute the way Debian's cryptsetup does."""
        found = []
        for option in self.options or ():
            key, sep, value = option.partition("=")
            if key == "keyscript" and sep:
                found.append(value if value.startswith("/") else _DEBIAN_KEYSCRIPT_DIR + value)
        return tuple(found)

    @property
    def uses_sealer(self) -> bool:
        return KEYSCRIPT_OPTION in (self.options or ())

    @property
    def foreign_keyscripts(self) -> tuple[str, ...]:
        return tuple(k for k in self.keyscripts if k != KEYSCRIPT_PATH)


@dataclass(frozen=True)
class Line:
    """One line of the file, without its "\\n"; ``entry`` is None for comments, blank lines
    and lines that are not a valid entry (then ``problem`` says why)."""

    number: int  # 1-based, as editors and error messages count
    text: str
    entry: Entry | None = None
    problem: str | None = None

    @property
    def first_field(self) -> str | None:
        match = _FIELD.search(self.text)
        return match.group(0) if match else None


@dataclass(frozen=True)
class Crypttab:
    """An /etc/crypttab, line by line: rendering it gives back the exact text it was parsed
    from, so that an edit changes only the lines it means to.
    """

    lines: tuple[Line, ...]

    @classmethod
    def parse(cls, text: str) -> Crypttab:
        # Split on "\n" only (not str.splitlines, which also splits on \r, \x0b, \x1c, ...):
        # joining the pieces with "\n" gives back the exact text, final newline or not.
        return cls(tuple(_parse_line(n, raw) for n, raw in enumerate(text.split("\n"), 1)))

    def render(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def entries(self) -> list[tuple[Line, Entry]]:
        return [(line, line.entry) for line in self.lines if line.entry is not None]

    def lines_named(self, name: str) -> list[Line]:
        """Entries called ``name``, and unparsable lines whose first field is ``name``."""
        return [
            line
            for line in self.lines
            if (line.entry is not None and line.entry.name == name)
            or (line.problem is not None and line.first_field == name)
        ]

    def names(self) -> list[str]:
        return [entry.name for _, entry in self.entries()]

    def replace(self, changed: dict[int, str]) -> Crypttab:
        """A copy with the lines numbered in ``changed`` replaced by new text."""
        return Crypttab(
            tuple(
                _parse_line(line.number, changed[line.number]) if line.number in changed else line
                for line in self.lines
            )
        )


@dataclass(frozen=True)
class _Split:
    """A line cut into fields and the whitespace around them: gaps[i] precedes fields[i],
    gaps[-1] trails the last field; ``cr`` is a DOS line end kept apart from the fields."""

    gaps: list[str]
    fields: list[str]
    cr: str

    def join(self) -> str:
        parts = [g + f for g, f in zip(self.gaps, self.fields, strict=False)]
        return "".join(parts) + self.gaps[len(self.fields)] + self.cr


def _split(text: str) -> _Split:
    cr = "\r" if text.endswith("\r") else ""
    body = text[: len(text) - len(cr)]
    gaps: list[str] = []
    fields: list[str] = []
    position = 0
    for match in _FIELD.finditer(body):
        gaps.append(body[position : match.start()])
        fields.append(match.group(0))
        position = match.end()
    gaps.append(body[position:])
    return _Split(gaps, fields, cr)


def _parse_line(number: int, text: str) -> Line:
    fields = _split(text).fields
    if not fields or fields[0].startswith("#"):
        return Line(number, text)
    if len(fields) < 2:
        return Line(number, text, problem="it has no source device field")
    if len(fields) > 4:
        return Line(number, text, problem=f"it has {len(fields)} fields; crypttab(5) has 4")
    keyfile = fields[2] if len(fields) > 2 else None
    options = tuple(fields[3].split(",")) if len(fields) > 3 else None
    return Line(number, text, Entry(fields[0], fields[1], keyfile, options))


def _require_entry(line: Line, crypttab_path: str) -> Entry:
    if line.entry is None:
        name = line.first_field or "?"
        raise UsageError(
            f"{crypttab_path} line {line.number} ({name}) is not a valid crypttab entry: "
            f"{line.problem or 'it is a comment'}",
            "fix that line by hand (see crypttab(5)), then try again",
        )
    return line.entry


def enable_line(line: Line, crypttab_path: str = "/etc/crypttab") -> str:
    """The line with sealer's keyscript added to its options; unchanged if already there.

    Refuses an entry that names another keyscript: two tools cannot both supply the key,
    and silently replacing someone's keyscript could lock them out of their own scheme.
    """
    entry = _require_entry(line, crypttab_path)
    if entry.foreign_keyscripts:
        raise UsageError(
            f"{crypttab_path} entry {entry.name!r} (line {line.number}) already uses "
            f"keyscript={entry.foreign_keyscripts[0]}",
            "remove that keyscript from the entry by hand if sealer should supply the key, "
            "or leave the entry out by choosing others with --name",
        )
    if entry.uses_sealer:
        return line.text
    parts = _split(line.text)
    if entry.options is None:
        # No options at all: cryptsetup would guess the type; say LUKS, which is the only
        # kind sealer enrolls, so Debian does not fall back to plain dm-crypt.
        new_options = f"luks,{KEYSCRIPT_OPTION}"
    else:
        new_options = ",".join((*entry.options, KEYSCRIPT_OPTION))
    # Reuse the line's own separator for added fields, so an aligned file stays readable.
    separator = parts.gaps[-2] if len(parts.fields) >= 2 else "\t"
    if len(parts.fields) == 4:
        parts.fields[3] = new_options
    elif len(parts.fields) == 3:
        parts.fields.append(new_options)
        parts.gaps.insert(3, separator)
    else:
        # Debian skips an entry without a key field; "none" means "no key file", which is
        # what a keyscript entry has (the keyscript gets this field as its argument).
        parts.fields.extend(["none", new_options])
        parts.gaps[2:2] = [separator, separator]
    return parts.join()


def disable_line(line: Line, crypttab_path: str = "/etc/crypttab") -> str:
    """The line without sealer's keyscript option; unchanged if it has none.

    Only our option goes: a ``luks`` that enable added is a true statement about the volume
    and harmless, and we cannot tell it from one the administrator wrote.
    """
    entry = _require_entry(line, crypttab_path)
    if not entry.uses_sealer or entry.options is None:
        return line.text
    parts = _split(line.text)
    remaining = [option for option in entry.options if option != KEYSCRIPT_OPTION]
    if remaining:
        parts.fields[3] = ",".join(remaining)
    else:
        # An empty options field cannot be written; drop it with the gap before it.
        del parts.fields[3]
        del parts.gaps[3]
    return parts.join()
