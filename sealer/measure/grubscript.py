"""GRUB's script language, as far as ``grub-mkconfig`` writes it, and what GRUB measures.

GRUB 2.06 (Debian's signed ``grubx64.efi``) measures into the TPM, through its ``tpm`` verifier:

- PCR 8, every command it executes: the command's words after expansion, joined by single
  spaces (quotes gone, empty quoted words kept), as ``grub_cmd: ...``; the digest is of the
  string alone, without the prefix or the NUL the event data ends with. ``menuentry`` and
  ``submenu`` are commands too: their last word is their block, ``{`` + the source text up to
  the closing brace + ``}``. The ``linux`` command also measures the
  kernel command line it builds, as ``kernel_cmdline: `` + the words after ``linux``.
- PCR 9, every file it opens for reading: the config files (``source``, ``configfile``), the
  environment block (``load_env`` and the ``[ -s FILE ]`` test), the kernel and each initrd;
  the event data is the path as GRUB names it, the digest is of the file's bytes.

This module runs a config the way GRUB would and lists those measurements. It knows only the
commands and constructs ``grub-mkconfig``'s templates use; anything else raises
``UnsupportedScript`` with what it met, and the caller reports the PCRs as unpredictable. What a
boot measures before the config runs (the ESP's stub config, GRUB's own start) and the machine's
facts (GRUB's devices, its feature flags) come from this boot's event log, and the caller
checks the result against this boot's events: a command this model would get wrong shows up
there as a difference, never as a wrong prediction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from sealer.errors import MeasurementError


class UnsupportedScript(MeasurementError):
    """The config uses something this model of GRUB does not run: its measurements are not
    predictable."""


# ---------------------------------------------------------------------------------------------
# What GRUB measures


@dataclass(frozen=True)
class Measured:
    """One measurement GRUB (or the firmware, for the kernel image) makes while running."""

    kind: Literal["command", "cmdline", "file", "kernel-image"]
    text: str  # the command or command line; for a file or image, its path as GRUB names it

    @property
    def pcr(self) -> int:
        return {"command": 8, "cmdline": 8, "file": 9, "kernel-image": 4}[self.kind]

    @property
    def description(self) -> str:
        if self.kind == "command":
            return f"grub_cmd: {self.text}"
        if self.kind == "cmdline":
            return f"kernel_cmdline: {self.text}"
        return self.text


class GrubFiles:
    """The files GRUB's devices hold, by GRUB path (``(hd1)/grub/grub.cfg``)."""

    def exists(self, path: str) -> bool:
        raise NotImplementedError

    def read_text(self, path: str) -> str:
        """A config or environment file's text; MeasurementError when it cannot be read."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Parsing

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+|[?#@*]")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_WORD_END = set(" \t\n;")

# A word is a list of parts: literal text, or a variable, quoted (one word) or not (split).
Part = tuple[Literal["text", "var", "qvar"], str]
Word = tuple[Part, ...]


@dataclass(frozen=True)
class Command:
    """A simple command (or ``name=value``): its words, unexpanded."""

    words: tuple[Word, ...]


@dataclass(frozen=True)
class If:
    """``if``/``elif``/``else``: each branch's condition and body, then the ``else`` body."""

    branches: tuple[tuple[tuple[Node, ...], tuple[Node, ...]], ...]  # (condition, body)
    otherwise: tuple[Node, ...]


@dataclass(frozen=True)
class Function:
    """A ``function NAME { ... }`` definition: defining one measures nothing."""

    name: str
    body: tuple[Node, ...]


@dataclass(frozen=True)
class Block:
    """A ``menuentry`` or ``submenu`` command: its words, then its block's source text."""

    words: tuple[Word, ...]
    source: str


Node = Command | If | Function | Block


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _skip_blank(self, newlines: bool) -> None:
        while self.at < len(self.text):
            char = self.text[self.at]
            if char in " \t" or (newlines and char in "\n;"):
                self.at += 1
            elif char == "\\" and self.text[self.at + 1 : self.at + 2] == "\n":
                self.at += 2
            elif char == "#":
                while self.at < len(self.text) and self.text[self.at] != "\n":
                    self.at += 1
            else:
                return

    def _variable(self, quoted: bool) -> Part:
        self.at += 1  # the "$"
        if self._peek() == "{":
            end = self.text.find("}", self.at)
            if end < 0:
                raise UnsupportedScript("an unterminated ${...} in the GRUB config")
            name = self.text[self.at + 1 : end]
            self.at = end + 1
        else:
            found = _NAME.match(self.text, self.at)
            if found is None:
                return ("text", "$")
            name = found.group(0)
            self.at = found.end()
        return ("qvar" if quoted else "var", name)

    def word(self) -> Word | None:
        """The next word, or None at the end of a command."""
        self._skip_blank(newlines=False)
        parts: list[Part] = []
        start = self.at
        while self.at < len(self.text):
            char = self.text[self.at]
            if char in _WORD_END:
                break
            if char == "'":
                end = self.text.find("'", self.at + 1)
                if end < 0:
                    raise UnsupportedScript("an unterminated '...' in the GRUB config")
                parts.append(("text", self.text[self.at + 1 : end]))
                self.at = end + 1
            elif char == '"':
                self.at += 1
                parts.append(("text", ""))  # a quoted empty word is still a word
                while self._peek() not in ('"', ""):
                    if self._peek() == "$":
                        parts.append(self._variable(quoted=True))
                    elif self._peek() == "\\" and self.text[self.at + 1 : self.at + 2] in '"$\\':
                        parts.append(("text", self.text[self.at + 1]))
                        self.at += 2
                    else:
                        parts.append(("text", self._peek()))
                        self.at += 1
                if self._peek() != '"':
                    raise UnsupportedScript('an unterminated "..." in the GRUB config')
                self.at += 1
            elif char == "$":
                parts.append(self._variable(quoted=False))
            elif char == "\\" and self.at + 1 < len(self.text):
                parts.append(("text", self.text[self.at + 1]))
                self.at += 2
            else:
                parts.append(("text", char))
                self.at += 1
        if self.at == start:
            return None
        return tuple(parts)

    def _literal(self, word: Word) -> str | None:
        if all(kind == "text" for kind, _ in word):
            return "".join(text for _, text in word)
        return None

    def _block_source(self) -> str:
        """The text from after ``{`` to before its matching ``}``, which is consumed."""
        self._skip_blank(newlines=True)
        if self._peek() != "{":
            raise UnsupportedScript("a menu entry without a { block } in the GRUB config")
        self.at += 1
        start, depth = self.at, 1
        while self.at < len(self.text):
            char = self.text[self.at]
            if char == "'":
                self.at = self.text.index("'", self.at + 1) + 1
                continue
            if char == "$" and self.text[self.at + 1 : self.at + 2] == "{":
                self.at = self.text.index("}", self.at) + 1
                continue
            if char == "\\":
                self.at += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    source = self.text[start : self.at]
                    self.at += 1
                    return source
            self.at += 1
        raise UnsupportedScript("a { block } without its closing brace in the GRUB config")

    def _words(self) -> list[Word]:
        words = []
        while (word := self.word()) is not None:
            words.append(word)
        return words

    def statements(self, until: tuple[str, ...] = ()) -> tuple[list[Node], str]:
        """Statements up to one of the keywords ``until`` (returned, consumed) or the end."""
        nodes: list[Node] = []
        while True:
            self._skip_blank(newlines=True)
            if self.at >= len(self.text) or self._peek() == "}":
                if until:
                    raise UnsupportedScript(f"the GRUB config ends before {until[0]!r}")
                return nodes, ""
            mark = self.at
            first = self.word()
            assert first is not None
            keyword = self._literal(first)
            if keyword in until:
                return nodes, keyword
            if keyword == "if":
                nodes.append(self._if())
            elif keyword == "function":
                name = self.word()
                literal = self._literal(name) if name else None
                if literal is None:
                    raise UnsupportedScript("a function without a name in the GRUB config")
                self._skip_blank(newlines=True)
                if self._peek() != "{":
                    raise UnsupportedScript(f"function {literal} has no {{ body }}")
                self.at += 1
                body, _ = self.statements()
                if self._peek() != "}":
                    raise UnsupportedScript(f"function {literal} has no closing brace")
                self.at += 1
                nodes.append(Function(literal, tuple(body)))
            elif keyword in ("menuentry", "submenu"):
                words = [first]
                while True:
                    self._skip_blank(newlines=False)
                    if self._peek() == "{":
                        break
                    word = self.word()
                    if word is None:
                        raise UnsupportedScript(f"a {keyword} without a {{ block }}")
                    words.append(word)
                nodes.append(Block(tuple(words), self._block_source()))
            elif keyword in ("while", "until", "for", "case", "then", "else", "elif", "fi"):
                raise UnsupportedScript(f"the GRUB config uses {keyword!r}, which sealer does "
                                        "not model")
            else:
                self.at = mark
                nodes.append(Command(tuple(self._words())))

    def _if(self) -> If:
        branches = []
        condition, _ = self.statements(("then",))
        while True:
            body, end = self.statements(("elif", "else", "fi"))
            branches.append((tuple(condition), tuple(body)))
            if end == "elif":
                condition, _ = self.statements(("then",))
                continue
            if end == "else":
                otherwise, _ = self.statements(("fi",))
                return If(tuple(branches), tuple(otherwise))
            return If(tuple(branches), ())


def parse_script(text: str) -> tuple[Node, ...]:
    """A GRUB config's statements; UnsupportedScript for what the model does not know."""
    parser = _Parser(text)
    nodes, _ = parser.statements()
    if parser.at < len(text):
        raise UnsupportedScript("a closing brace without its block in the GRUB config")
    return tuple(nodes)


# ---------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Entry:
    """A top-level menu entry: its title, id, and its block's source."""

    title: str
    entry_id: str | None
    source: str
    submenu: bool


@dataclass
class GrubRun:
    """The state of one run: variables, functions, menu entries, and what was measured."""

    files: GrubFiles
    env: dict[str, str]
    devices: Mapping[str, str]  # filesystem UUID -> GRUB device name ("hd1")
    kernel_loads: int = 2  # PCR 4 application events per loaded kernel image (shim + firmware)
    measured: list[Measured] = field(default_factory=list)
    functions: dict[str, Function] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)
    kernel: str | None = None  # the GRUB path of the kernel ``linux`` loaded
    initrds: tuple[str, ...] = ()

    # -- expansion ------------------------------------------------------------------------

    def expand(self, words: tuple[Word, ...]) -> list[str]:
        args: list[str] = []
        for word in words:
            pieces = [""]
            quoted = False
            for kind, value in word:
                if kind == "text":
                    pieces[-1] += value
                    quoted = quoted or value == ""
                elif kind == "qvar":
                    pieces[-1] += self.env.get(value, "")
                    quoted = True
                else:
                    split = self.env.get(value, "").split()
                    if split:
                        pieces[-1] += split[0]
                        pieces.extend(split[1:])
            if pieces != [""] or quoted or any(k == "text" and v for k, v in word):
                args.extend(pieces)
        return args

    def path(self, name: str) -> str:
        """A GRUB path with its device: ``/vmlinuz`` on ``$root`` is ``(hd1)/vmlinuz``."""
        if name.startswith("("):
            return name
        root = self.env.get("root", "")
        if not root:
            raise UnsupportedScript(f"GRUB reads {name} with no root device set")
        return f"({root}){name}"

    # -- statements -----------------------------------------------------------------------

    def run(self, nodes: tuple[Node, ...]) -> bool:
        status = True
        for node in nodes:
            status = self._node(node)
        return status

    def _node(self, node: Node) -> bool:
        if isinstance(node, Function):
            self.functions[node.name] = node
            return True
        if isinstance(node, If):
            for condition, body in node.branches:
                if self.run(condition):
                    return self.run(body)
            return self.run(node.otherwise)
        if isinstance(node, Block):
            args = self.expand(node.words)
            self.measured.append(Measured("command", " ".join([*args, "{" + node.source + "}"])))
            self._add_entry(args, node.source)
            return True
        args = self.expand(node.words)
        if not args:
            return True
        self.measured.append(Measured("command", " ".join(args)))
        return self._command(args)

    def _add_entry(self, args: list[str], source: str) -> None:
        kind, rest = args[0], args[1:]
        title, entry_id, positional = None, None, []
        i = 0
        while i < len(rest):
            arg = rest[i]
            if arg in ("--class", "--users", "--hotkey", "--id", "--source"):
                if arg == "--id" and i + 1 < len(rest):
                    entry_id = rest[i + 1]
                i += 2
                continue
            if arg in ("--unrestricted",):
                i += 1
                continue
            positional.append(arg)
            i += 1
        if not positional:
            raise UnsupportedScript(f"a {kind} without a title in the GRUB config")
        title = positional[0]
        self.entries.append(Entry(title, entry_id, source, kind == "submenu"))

    def _command(self, args: list[str]) -> bool:
        name = args[0]
        if _ASSIGNMENT.match(name) and len(args) == 1:
            key, value = name.split("=", 1)
            self.env[key] = value
            return True
        handler = _COMMANDS.get(name)
        if handler is not None:
            return handler(self, args[1:])
        function = self.functions.get(name)
        if function is not None:
            saved = {k: self.env.get(k) for k in ("1", "2", "3")}
            for i, value in enumerate(args[1:4], start=1):
                self.env[str(i)] = value
            try:
                return self.run(function.body)
            finally:
                for key, old in saved.items():
                    if old is None:
                        self.env.pop(key, None)
                    else:
                        self.env[key] = old
        raise UnsupportedScript(f"the GRUB config runs {name!r}, which sealer does not model")

    def read_file(self, name: str) -> str:
        path = self.path(name)
        self.measured.append(Measured("file", name))
        return self.files.read_text(path)

    def run_default_entry(self) -> Entry:
        """Run the entry GRUB boots when nobody touches the menu."""
        entry = self._default_entry()
        if entry.submenu:
            raise UnsupportedScript(
                f"the default menu entry is the submenu {entry.title!r}: sealer predicts only "
                "a top-level default entry"
            )
        self.measured.append(Measured("command", f"setparams {entry.title}"))
        self.run(parse_script(entry.source))
        return entry

    def _default_entry(self) -> Entry:
        default = self.env.get("default", "0")
        if not self.entries:
            raise UnsupportedScript("the GRUB config has no menu entry")
        if default.isdigit():
            index = int(default)
            if index >= len(self.entries):
                raise UnsupportedScript(f"the GRUB default entry {default} does not exist")
            return self.entries[index]
        for entry in self.entries:
            if default in (entry.entry_id, entry.title):
                return entry
        raise UnsupportedScript(
            f"the GRUB default entry is {default!r}, which sealer cannot resolve (a saved or "
            "submenu entry)"
        )


# ---------------------------------------------------------------------------------------------
# Commands


def _test(run: GrubRun, args: list[str]) -> bool:
    if not args or args[-1] != "]":
        raise UnsupportedScript("a [ test without its closing ]")
    return _TestParser(run, args[:-1]).parse()


class _TestParser:
    _FILE_TESTS = ("-e", "-f", "-d", "-s")
    _STRING_TESTS: ClassVar[dict[str, Callable[[str, str], bool]]] = {
        "=": str.__eq__,
        "==": str.__eq__,
        "!=": str.__ne__,
    }
    _NUMBER_TESTS = ("-eq", "-ne", "-lt", "-le", "-gt", "-ge")

    def __init__(self, run: GrubRun, tokens: list[str]) -> None:
        self.run = run
        self.tokens = tokens
        self.at = 0

    def parse(self) -> bool:
        if not self.tokens:
            return False
        value = self._or()
        if self.at != len(self.tokens):
            raise UnsupportedScript(f"a [ test sealer cannot read: {' '.join(self.tokens)}")
        return value

    def _take(self) -> str:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def _more(self) -> bool:
        return self.at < len(self.tokens)

    def _or(self) -> bool:
        value = self._and()
        while self._more() and self.tokens[self.at] == "-o":
            self.at += 1
            value = self._and() or value
        return value

    def _and(self) -> bool:
        value = self._not()
        while self._more() and self.tokens[self.at] == "-a":
            self.at += 1
            value = self._not() and value
        return value

    def _not(self) -> bool:
        if self._more() and self.tokens[self.at] == "!":
            self.at += 1
            return not self._not()
        return self._primary()

    def _primary(self) -> bool:
        token = self._take()
        if token in self._FILE_TESTS and self._more():
            return self._file_test(token, self._take())
        if token in ("-z", "-n") and self._more():
            operand = self._take()
            return (operand == "") == (token == "-z")
        if self._more() and self.tokens[self.at] in self._STRING_TESTS:
            compare = self._STRING_TESTS[self._take()]
            return compare(token, self._take())
        if self._more() and self.tokens[self.at] in self._NUMBER_TESTS:
            raise UnsupportedScript("a numeric [ test in the GRUB config")
        return token != ""

    def _file_test(self, test: str, name: str) -> bool:
        path = self.run.path(name)
        if test == "-d":
            raise UnsupportedScript(f"a [ -d {name} ] test in the GRUB config")
        exists = self.run.files.exists(path)
        if test == "-s" and exists:
            # Opening the file to size it measures it.
            self.run.measured.append(Measured("file", name))
            return self.run.files.read_text(path) != ""
        return exists


def _set(run: GrubRun, args: list[str]) -> bool:
    for arg in args:
        if "=" not in arg:
            raise UnsupportedScript(f"'set {arg}' in the GRUB config")
        key, value = arg.split("=", 1)
        run.env[key] = value
    return True


def _load_env(run: GrubRun, args: list[str]) -> bool:
    if args:
        raise UnsupportedScript(f"'load_env {' '.join(args)}' in the GRUB config")
    name = run.env.get("prefix", "") + "/grubenv"
    if not run.files.exists(run.path(name)):
        return False
    for line in run.read_file(name).splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        run.env[key] = value
    return True


def _save_env(run: GrubRun, args: list[str]) -> bool:
    raise UnsupportedScript(
        "GRUB writes its environment block in this boot (save_env: a one-time or saved "
        "default entry), so the next boots differ from each other"
    )


def _source(run: GrubRun, args: list[str]) -> bool:
    if len(args) != 1:
        raise UnsupportedScript("'source' with other than one file in the GRUB config")
    return run.run(parse_script(run.read_file(args[0])))


def _search(run: GrubRun, args: list[str]) -> bool:
    variable, value = "root", None
    for arg in args:
        if arg.startswith("--set="):
            variable = arg.split("=", 1)[1]
        elif arg in ("--no-floppy", "--fs-uuid", "-u") or arg.startswith("--hint"):
            continue
        elif arg.startswith("-"):
            raise UnsupportedScript(f"'search {arg}' in the GRUB config")
        else:
            value = arg
    if "--fs-uuid" not in args and "-u" not in args:
        raise UnsupportedScript("a search by other than file system UUID in the GRUB config")
    device = run.devices.get(value or "")
    if device is None:
        raise UnsupportedScript(
            f"the GRUB config looks for file system {value}, which this boot's GRUB did not "
            "find"
        )
    run.env[variable] = device
    return True


def _linux(run: GrubRun, args: list[str]) -> bool:
    if not args:
        raise UnsupportedScript("'linux' without a kernel in the GRUB config")
    run.kernel = run.path(args[0])
    run.measured.append(Measured("file", args[0]))
    run.measured.extend(Measured("kernel-image", args[0]) for _ in range(run.kernel_loads))
    run.measured.append(Measured("cmdline", " ".join(args)))
    return True


def _initrd(run: GrubRun, args: list[str]) -> bool:
    run.initrds = tuple(run.path(a) for a in args)
    run.measured.extend(Measured("file", a) for a in args)
    return True


def _no_effect(run: GrubRun, args: list[str]) -> bool:
    return True


_COMMANDS: dict[str, Callable[[GrubRun, list[str]], bool]] = {
    "[": _test,
    "set": _set,
    "load_env": _load_env,
    "save_env": _save_env,
    "source": _source,
    "search": _search,
    "linux": _linux,
    "initrd": _initrd,
    # Measured like any command, with no effect on what GRUB measures next. loadfont succeeds:
    # Debian's signed GRUB carries its unicode font inside its image.
    **dict.fromkeys(
        ("export", "insmod", "echo", "loadfont", "terminal_output", "true"),
        _no_effect,
    ),
}
