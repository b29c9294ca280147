"""What every command module shares, and the only module they share.

Command modules (volume, boot, measured, policy, recovery, migrate, tpm) import from here and
from the services, never from each other. Here are: the options object the main group hands
down, the click types and option groups more than one command uses (one decorator style:
:func:`option_group`), the checks more than one command makes, progress messages, and the
JSON printer every ``--json`` goes through. Failures become exit codes in
:mod:`sealer.cli.main`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import click

from sealer.errors import UsageError

if TYPE_CHECKING:
    from sealer.services.escrow import Escrow

DEFAULT_STATE_DIR = Path("/var/lib/sealer")

F = TypeVar("F", bound=Callable[..., Any])

# A regular file named on the command line (it need not exist: the services say why not).
FILE = click.Path(path_type=Path, dir_okay=False)
# A directory named on the command line.
DIRECTORY = click.Path(path_type=Path, file_okay=False)


@dataclass
class Options:
    """The main group's options, as ``ctx.obj`` of every command.

    ``as_json`` is set by :func:`json_option` while the command line is parsed, so that a
    failure is reported as a JSON document too when the command was asked for JSON.
    """

    tcti: str | None
    debug: bool
    as_json: bool = False


# ---------------------------------------------------------------------------------------------
# Option groups: one style. A group is a list of click.option decorators applied in order.


def option_group(*options: Callable[[Any], Any]) -> Callable[[F], F]:
    """One decorator that applies ``options`` so that ``--help`` lists them in the given order."""

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    options = ctx.find_object(Options)  # made by the main group; a failure reads it
    if options is not None:
        options.as_json = value
    return value


def json_option(help_text: str = "Print the result as JSON.") -> Callable[[F], F]:
    """``--json`` (parameter ``as_json``): print the command's result object as JSON."""
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, help=help_text)


def quiet_option() -> Callable[[F], F]:
    """``--quiet``/``-q`` (parameter ``quiet``): no progress messages."""
    return click.option("--quiet", "-q", is_flag=True, help="No progress messages.")


def state_dir_option(help_text: str) -> Callable[[F], F]:
    """``--state-dir`` (parameter ``state_dir``), default /var/lib/sealer."""
    return click.option(
        "--state-dir",
        type=DIRECTORY,
        default=DEFAULT_STATE_DIR,
        show_default=True,
        help=help_text,
    )


def eventlog_options() -> Callable[[F], F]:
    """``--eventlog FILE`` (parameter ``log_path``) and ``--offline``: where this boot's
    measurements come from (eventlog, predict, reseal, explain)."""
    return option_group(
        click.option(
            "--eventlog",
            "log_path",
            metavar="FILE",
            type=FILE,
            help="Read the TCG event log from FILE instead of this boot's "
            "(/sys/kernel/security/tpm0/binary_bios_measurements).",
        ),
        click.option(
            "--offline",
            is_flag=True,
            help="Do not read the TPM: take the PCR values from the event log's replay (a log "
            "captured on the target machine). Results are then not checked against live PCRs.",
        ),
    )


def image_options() -> Callable[[F], F]:
    """``--uki`` (repeatable, parameter ``ukis``), ``--kernel``, ``--initrd``, ``--grub-cfg``:
    the boot images of the next boot (predict, reseal)."""
    return option_group(
        click.option(
            "--uki",
            "ukis",
            metavar="FILE",
            multiple=True,
            type=FILE,
            help="A unified kernel image (systemd-stub) the next boot starts. Repeatable.",
        ),
        click.option(
            "--kernel",
            metavar="FILE",
            type=FILE,
            help="A kernel the firmware (or shim) starts through its EFI stub.",
        ),
        click.option(
            "--initrd",
            metavar="FILE",
            type=FILE,
            help="The initrd that goes with --kernel (measured into PCR 9 by the kernel).",
        ),
        click.option(
            "--grub-cfg",
            metavar="FILE",
            type=FILE,
            help="On a machine that boots through shim and GRUB: the grub.cfg the next boot "
            "reads (default /boot/grub/grub.cfg). GRUB's default entry decides the kernel and "
            "initrd, so --kernel and --initrd may be left out. Ignored on other boot chains.",
        ),
    )


def escrow_options(default_dir: str) -> Callable[[F], F]:
    """``--escrow-cert``, ``--escrow-dir``, ``--print-recovery-key``, ``--machine-id``: where a
    new recovery key is escrowed (enroll, recovery rotate)."""
    return option_group(
        click.option(
            "--escrow-cert",
            metavar="ORG.pem",
            type=click.Path(path_type=Path),  # checked by sealer, for a one-line message
            help="Escrow the recovery key: encrypt it to this X.509 certificate (PEM or DER, "
            "RSA, keyEncipherment) as CMS EnvelopedData, and write it in a record file. The "
            "key is then not printed (see --print-recovery-key).",
        ),
        click.option(
            "--escrow-dir",
            metavar="DIR",
            type=DIRECTORY,
            help=f"Where the escrow record is written (0600). Default: {default_dir}.",
        ),
        click.option(
            "--print-recovery-key",
            is_flag=True,
            help="Print the recovery key even though it is escrowed.",
        ),
        click.option(
            "--machine-id",
            metavar="ID",
            help="The machine id the escrow record names. Default: /etc/machine-id.",
        ),
    )


# ---------------------------------------------------------------------------------------------
# Checks more than one command makes


def check_initrd_has_kernel(kernel: Path | None, initrd: Path | None) -> None:
    """UsageError unless ``--initrd`` comes with the ``--kernel`` it belongs to."""
    if initrd is not None and kernel is None:
        raise UsageError("--initrd goes with --kernel", "give the kernel it belongs to")


def enrolled_devices_or(devices: Sequence[str]) -> list[str]:
    """``devices``, or every enrolled LUKS2 device udev knows when none is named."""
    if devices:
        return list(devices)
    from sealer.services.status import enrolled_devices

    found = enrolled_devices()
    if not found:
        raise UsageError(
            "no LUKS2 block device with a sealer enrollment was found",
            "name the volume (block device or image file) on the command line",
        )
    return found


def prepare_escrow(
    escrow_cert: Path | None, escrow_dir: Path | None, machine_id: str | None, default_dir: Path
) -> Escrow | None:
    """The checked escrow target, or None without --escrow-cert; before anything changes."""
    if escrow_cert is None:
        given = [
            name
            for name, value in (("--escrow-dir", escrow_dir), ("--machine-id", machine_id))
            if value is not None
        ]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UsageError(
                f"{' and '.join(given)} {verb} with --escrow-cert only",
                "add --escrow-cert ORG.pem, or leave it out",
            )
        return None
    from sealer.services.escrow import prepare_escrow as prepare  # cryptography's x509: lazily

    return prepare(escrow_cert, escrow_dir or default_dir, machine_id)


def shows_key(escrow: Escrow | None, print_recovery_key: bool) -> bool:
    """A recovery key is printed unless it is escrowed (then only when asked to)."""
    return escrow is None or print_recovery_key


# ---------------------------------------------------------------------------------------------
# Output


class JsonResult(Protocol):
    """A command's result (sealer/cli/results.py): ``to_json()`` is what ``--json`` prints."""

    def to_json(self) -> Any: ...


def dumps(doc: Any, *, sort_keys: bool) -> str:
    """The one JSON encoding of sealer's output: two-space indent, ASCII escapes."""
    return json.dumps(doc, indent=2, sort_keys=sort_keys)


def emit_json(result: JsonResult) -> None:
    """Print a command's result object on standard output as JSON, keys sorted."""
    click.echo(dumps(result.to_json(), sort_keys=True))


def progress(quiet: bool) -> Callable[[str], None]:
    """A progress callback for the services: ``sealer: MESSAGE...`` on stderr, unless ``quiet``."""

    def say(message: str) -> None:
        if not quiet:
            click.echo(f"sealer: {message}...", err=True)

    return say


def warn(message: str) -> None:
    """``sealer: warning: MESSAGE`` on stderr."""
    click.echo(f"sealer: warning: {message}", err=True)
