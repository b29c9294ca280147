"""Unit tests for sealer.install.crypttab: parsing and editing crypttab(5) text."""

from __future__ import annotations

import pytest

from sealer.errors import UsageError
from sealer.install.crypttab import (
    KEYSCRIPT_OPTION,
    KEYSCRIPT_PATH,
    Crypttab,
    Entry,
    Line,
    disable_line,
    enable_line,
)

OURS = KEYSCRIPT_OPTION

SAMPLE = (
    "# /etc/crypttab: mappings for encrypted partitions.\n"
    "#\n"
    "# <target name>\t<source device>\t<key file>\t<options>\n"
    "\n"
    "cryptroot UUID=8a6d3d5e-1f2b-4c3d-9e8f-0a1b2c3d4e5f none luks,discard\n"
    "   # an indented comment\n"
    "swap\t/dev/sda3\t/dev/urandom\tswap,cipher=aes-xts-plain64,size=256\n"
    "data   PARTUUID=0011-22   /etc/keys/data.key\n"
    "bare /dev/sdb1\n"
)


def line_of(text: str) -> Line:
    (line,) = Crypttab.parse(text).lines
    return line


def entry_of(text: str) -> Entry:
    entry = line_of(text).entry
    assert entry is not None, text
    return entry


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text",
    [
        SAMPLE,
        SAMPLE.rstrip("\n"),  # no final newline
        "",
        "\n\n\n",
        SAMPLE.replace("\n", "\r\n"),
        "  \t  \n#\n\t# x\n",
        "name\tsource\tnone\tluks   \n",  # trailing blanks
        "caf\udce9 /dev/sda1 none luks\n",  # a byte that is not UTF-8, via surrogateescape
        "a\x0bb /dev/sda1 none luks\x1c\n",  # characters str.splitlines would split on
    ],
)
def test_parse_then_render_gives_back_the_exact_text(text: str) -> None:
    assert Crypttab.parse(text).render() == text


def test_entries_are_read_field_by_field() -> None:
    table = Crypttab.parse(SAMPLE)
    entries = {entry.name: (line.number, entry) for line, entry in table.entries()}
    assert sorted(entries) == ["bare", "cryptroot", "data", "swap"]
    number, root = entries["cryptroot"]
    assert number == 5
    assert root.source == "UUID=8a6d3d5e-1f2b-4c3d-9e8f-0a1b2c3d4e5f"
    assert root.keyfile == "none"
    assert root.options == ("luks", "discard")
    assert entries["swap"][1].options == ("swap", "cipher=aes-xts-plain64", "size=256")
    assert entries["data"][1].keyfile == "/etc/keys/data.key"
    assert entries["data"][1].options is None
    assert entries["bare"][1].keyfile is None and entries["bare"][1].options is None


def test_comments_and_blank_lines_are_not_entries() -> None:
    table = Crypttab.parse(SAMPLE)
    comments = [line for line in table.lines if line.entry is None]
    assert all(line.problem is None for line in comments)
    assert [line.number for line in comments] == [1, 2, 3, 4, 6, 10]


def test_a_dos_line_end_is_not_part_of_the_options() -> None:
    assert entry_of("root /dev/sda2 none luks\r").options == ("luks",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lonely", "no source device"),
        ("a b c d e", "5 fields"),
        ("a b c luks, discard", "5 fields"),  # a blank inside the options
    ],
)
def test_lines_that_are_not_entries_say_why(text: str, problem: str) -> None:
    line = line_of(text)
    assert line.entry is None
    assert line.problem is not None and problem in line.problem


def test_names_are_matched_exactly_and_malformed_lines_are_found_by_name() -> None:
    table = Crypttab.parse("root /dev/sda2 none luks\nroot2 /dev/sda3\nbroken x y z w\n")
    assert [line.number for line in table.lines_named("root")] == [1]
    assert [line.number for line in table.lines_named("broken")] == [3]
    assert table.lines_named("ROOT") == []
    assert table.names() == ["root", "root2"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("luks", ()),
        ("luks,keyscript=/usr/lib/sealer/keyscript", (KEYSCRIPT_PATH,)),
        ("keyscript=decrypt_keyctl", ("/lib/cryptsetup/scripts/decrypt_keyctl",)),
        ("keyscript=/a,luks,keyscript=/b", ("/a", "/b")),
        ("keyscript", ()),  # a flag without a value is not a keyscript
    ],
)
def test_keyscripts_are_read_the_way_debian_resolves_them(
    options: str, expected: tuple[str, ...]
) -> None:
    assert entry_of(f"n /dev/x none {options}").keyscripts == expected


# ---------------------------------------------------------------------------------------------
# Enabling


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("root /dev/sda2 none luks", f"root /dev/sda2 none luks,{OURS}"),
        ("root\t/dev/sda2\tnone\tluks,discard", f"root\t/dev/sda2\tnone\tluks,discard,{OURS}"),
        # no options: cryptsetup is told the type, as sealer only enrolls LUKS2
        ("root /dev/sda2 none", f"root /dev/sda2 none luks,{OURS}"),
        ("root\t/dev/sda2\tnone", f"root\t/dev/sda2\tnone\tluks,{OURS}"),
        # no key field: Debian skips such an entry, so "none" is written
        ("root /dev/sda2", f"root /dev/sda2 none luks,{OURS}"),
        ("root    /dev/sda2", f"root    /dev/sda2    none    luks,{OURS}"),
        # leading and trailing blanks and a DOS line end stay where they were
        ("  root /dev/sda2 none luks  ", f"  root /dev/sda2 none luks,{OURS}  "),
        ("root /dev/sda2 none luks\r", f"root /dev/sda2 none luks,{OURS}\r"),
        ("root /dev/sda2 none\t\r", f"root /dev/sda2 none luks,{OURS}\t\r"),
        # a key file stays: the keyscript gets it as its argument
        ("d /dev/sdb1 /k.key luks", f"d /dev/sdb1 /k.key luks,{OURS}"),
    ],
)
def test_enable_adds_the_keyscript_keeping_the_layout(before: str, after: str) -> None:
    assert enable_line(line_of(before)) == after
    assert entry_of(after).uses_sealer


@pytest.mark.parametrize(
    "text",
    [
        f"root /dev/sda2 none luks,{OURS}",
        f"root /dev/sda2 none {OURS},luks,discard",
        f"root\t/dev/sda2  none   luks,{OURS}   ",
    ],
)
def test_enable_is_idempotent(text: str) -> None:
    assert enable_line(line_of(text)) == text


def test_enable_twice_gives_the_same_line() -> None:
    once = enable_line(line_of("root /dev/sda2"))
    assert enable_line(line_of(once)) == once


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ("luks,keyscript=/lib/cryptsetup/scripts/decrypt_keyctl", "decrypt_keyctl"),
        ("luks,keyscript=passdev", "/lib/cryptsetup/scripts/passdev"),
        (f"luks,{OURS},keyscript=/usr/local/bin/mine", "/usr/local/bin/mine"),
        ("keyscript=/lib/sealer/keyscript", "/lib/sealer/keyscript"),  # not the same path
    ],
)
def test_enable_refuses_an_entry_with_another_keyscript(options: str, shown: str) -> None:
    text = f"# header\nvault /dev/sdc1 none {options}\n"
    line = Crypttab.parse(text).lines[1]
    with pytest.raises(UsageError) as info:
        enable_line(line, "/etc/crypttab")
    message = info.value.message
    assert "'vault'" in message and "line 2" in message and shown in message
    assert "/etc/crypttab" in message
    assert info.value.hint is not None and "--name" in info.value.hint


@pytest.mark.parametrize("text", ["lonely", "a b c d e", "# comment"])
def test_enable_refuses_a_line_that_is_not_an_entry(text: str) -> None:
    with pytest.raises(UsageError, match="line 1"):
        enable_line(line_of(text), "/etc/crypttab")


def test_replace_changes_only_the_named_lines() -> None:
    table = Crypttab.parse(SAMPLE)
    root = table.lines[4]
    swap = table.lines[6]
    new = table.replace({root.number: enable_line(root)})
    old_lines = SAMPLE.split("\n")
    new_lines = new.render().split("\n")
    assert len(old_lines) == len(new_lines)
    for number, (old, changed) in enumerate(zip(old_lines, new_lines, strict=True), 1):
        assert (old == changed) == (number != root.number), number
    assert new.lines[4].entry is not None and new.lines[4].entry.uses_sealer
    assert new.lines[6] == swap


# ---------------------------------------------------------------------------------------------
# Disabling


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (f"root /dev/sda2 none luks,{OURS}", "root /dev/sda2 none luks"),
        (f"root /dev/sda2 none {OURS},luks,discard", "root /dev/sda2 none luks,discard"),
        # only our option: the empty field goes with the blank before it
        (f"root /dev/sda2 none {OURS}", "root /dev/sda2 none"),
        (f"root /dev/sda2 none\t{OURS}  \r", "root /dev/sda2 none  \r"),
        (f"root /dev/sda2 none luks,{OURS},{OURS}", "root /dev/sda2 none luks"),
    ],
)
def test_disable_removes_only_our_keyscript(before: str, after: str) -> None:
    assert disable_line(line_of(before)) == after
    assert not entry_of(after).uses_sealer


def test_disable_refuses_a_line_that_is_not_an_entry() -> None:
    # crypttab has no trailing comments: "# x" is a fifth field that Debian would choke on.
    with pytest.raises(UsageError, match="6 fields"):
        disable_line(line_of(f"root\t/dev/sda2\tnone\tluks,{OURS}\t# x"))


@pytest.mark.parametrize(
    "text",
    [
        "root /dev/sda2 none luks",
        "root /dev/sda2",
        "vault /dev/sdc1 none luks,keyscript=decrypt_keyctl",  # someone else's: left alone
    ],
)
def test_disable_leaves_other_entries_unchanged(text: str) -> None:
    assert disable_line(line_of(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "root /dev/sda2 none luks,discard",
        "root\t/dev/sda2\t/k.key\tluks   ",
        "root /dev/sda2 none luks\r",
    ],
)
def test_disable_undoes_enable_when_the_entry_had_options(text: str) -> None:
    enabled = enable_line(line_of(text))
    assert enabled != text
    assert disable_line(line_of(enabled)) == text


def test_disable_after_enable_of_a_bare_entry_keeps_luks() -> None:
    enabled = enable_line(line_of("root /dev/sda2 none"))
    assert disable_line(line_of(enabled)) == "root /dev/sda2 none luks"
