"""Write sealer(1), the man page, from the click command tree: every command's usage, help
and options, so the page never disagrees with ``--help``.

Run at package build time (debian/rules) with the interpreter that has sealer installed:
``python scripts/manpage.py --output sealer.1``. The date comes from SOURCE_DATE_EPOCH when
it is set (dpkg sets it from debian/changelog), so that the build is reproducible.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from sealer import __version__, errors
from sealer.cli import main as sealer_main

FILES = (
    ("/etc/crypttab", "the volumes unlocked at boot; 'sealer boot enable' adds the keyscript"),
    ("/etc/sealer/", "the machine's policy key, approvals and update hook settings"),
    ("/etc/sealer/initramfs.conf", "SEALER_PYTHON, the interpreter the initramfs hook bundles"),
    ("/usr/lib/sealer/keyscript", "the keyscript cryptroot runs in the initramfs"),
)
SEE_ALSO = "cryptsetup(8), crypttab(5), update-initramfs(8), systemd-cryptenroll(1)"


def escape(text: str) -> str:
    """Text safe for roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in text.splitlines()
    )


def paragraphs(help_text: str) -> Iterator[str]:
    """click's help as roff paragraphs; a paragraph after click's \\b marker keeps its lines."""
    text = inspect.cleandoc(help_text.split("\f")[0])
    for block in re.split(r"\n\s*\n", text):
        if block.startswith("\b"):
            body = block[1:].strip("\n")
            yield f".PP\n.nf\n{escape(body)}\n.fi"
        elif block.strip():
            yield f".PP\n{escape(' '.join(block.split()))}"


def options(command: click.Command, ctx: click.Context) -> Iterator[str]:
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            names, help_text = record
            yield f".TP\n.B {escape(names)}\n{escape(help_text) if help_text else ''}".rstrip()


def usage(command: click.Command, ctx: click.Context) -> str:
    return f"{ctx.command_path} {' '.join(command.collect_usage_pieces(ctx))}".rstrip()


def commands(group: click.Group, parent: click.Context) -> Iterator[str]:
    """Each subcommand of ``group``, depth first in name order, as one .SS section."""
    for name in sorted(group.list_commands(parent)):
        command = group.get_command(parent, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=parent)
        yield f'.SS "{escape(ctx.command_path)}"'
        yield f".PP\n.B {escape(usage(command, ctx))}"
        yield from paragraphs(command.help or command.short_help or "")
        yield from options(command, ctx)
        if isinstance(command, click.Group):
            yield from commands(command, ctx)


def exit_codes() -> Iterator[str]:
    """The exit codes with the comment each has in sealer/errors.py (the one list of them)."""
    source = inspect.getsource(errors.ExitCode)
    for code, comment in re.findall(r"^\s+\w+ = (\d+)(?:\s+#\s*(.*))?$", source, re.M):
        yield f".TP\n.B {code}\n{escape(comment or 'success')}"


def manpage() -> str:
    ctx = click.Context(sealer_main, info_name="sealer")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    summary = (sealer_main.help or "").strip().splitlines()[0].rstrip(".")
    lines = [
        f'.TH SEALER 1 "{date}" "sealer {__version__}" "User Commands"',
        ".SH NAME",
        f"sealer \\- {escape(summary[0].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        f".B {escape(usage(sealer_main, ctx))}",
        ".SH DESCRIPTION",
        *paragraphs((sealer_main.help or "").split("\n", 1)[1]),
        ".PP",
        "Every command also explains itself with \\fB\\-\\-help\\fR.",
        ".SH OPTIONS",
        *options(sealer_main, ctx),
        ".SH COMMANDS",
        *commands(sealer_main, ctx),
        ".SH EXIT STATUS",
        *exit_codes(),
        ".SH ENVIRONMENT",
        ".TP",
        ".B SEALER_TCTI",
        "How to reach the TPM, as \\fB\\-\\-tcti\\fR.",
        ".SH FILES",
    ]
    for path, what in FILES:
        lines += [".TP", f".I {escape(path)}", escape(what)]
    lines += [".SH SEE ALSO", escape(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, help="write here instead of standard output")
    args = parser.parse_args(argv)
    page = manpage()
    if args.output is None:
        sys.stdout.write(page)
    else:
        args.output.write_text(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
