"""What every command shares: options object, failure handling, progress, JSON output.

Kept apart from the commands so that command modules (sealer.cli, sealer.cli_measured) can
use it without importing each other.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from sealer.errors import SealerError

DEFAULT_STATE_DIR = Path("/var/lib/sealer")


class Options:
    def __init__(self, tcti: str | None, debug: bool) -> None:
        self.tcti = tcti
        self.debug = debug


def fail(error: SealerError, as_json: bool) -> NoReturn:
    if as_json:
        doc = {"error": error.message, "hint": error.hint, "exit_code": int(error.exit_code)}
        click.echo(json.dumps(doc, indent=2))
    click.echo(f"sealer: {error.one_line()}", err=True)
    sys.exit(int(error.exit_code))


def run_command(ctx: click.Context, as_json: bool, action: Callable[[], None]) -> None:
    """Run a command body, turning every failure into one line and an exit code."""
    options: Options = ctx.obj
    try:
        action()
    except SealerError as error:
        if options.debug:
            traceback.print_exc()
        fail(error, as_json)
    except KeyboardInterrupt:
        click.echo("sealer: interrupted", err=True)
        sys.exit(130)
    except Exception as error:  # a bug: still one line unless asked for the traceback
        if options.debug:
            traceback.print_exc()
        internal = SealerError(
            f"internal error: {type(error).__name__}: {error}",
            "rerun with --debug and report it; the volume was not changed by this failure"
            if not options.debug
            else None,
        )
        fail(internal, as_json)


def progress(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            click.echo(f"sealer: {message}...", err=True)

    return say


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=True))


def state_dir_option(help_text: str) -> Callable[[Any], Any]:
    return click.option(
        "--state-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help=help_text,
    )
