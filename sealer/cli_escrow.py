"""The escrow options that 'sealer enroll' and 'sealer recovery rotate' share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sealer.errors import UsageError

if TYPE_CHECKING:
    from sealer.services.escrow import Escrow


def escrow_options(default_dir: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--escrow-cert, --escrow-dir, --print-recovery-key, --machine-id."""
    options = [
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
            type=click.Path(path_type=Path, file_okay=False),
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
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def prepare_escrow(
    escrow_cert: Path | None, escrow_dir: Path | None, machine_id: str | None, default_dir: Path
) -> Escrow | None:
    """The checked escrow target, or None without --escrow-cert; before anything changes."""
    if escrow_cert is None:
        given = [name for name, value in (("--escrow-dir", escrow_dir),
                                          ("--machine-id", machine_id)) if value is not None]
        if given:
            verb = "goes" if len(given) == 1 else "go"
            raise UsageError(f"{' and '.join(given)} {verb} with --escrow-cert only",
                             "add --escrow-cert ORG.pem, or leave it out")  # fmt: skip
        return None
    from sealer.services.escrow import prepare_escrow as prepare  # cryptography's x509: lazily

    return prepare(escrow_cert, escrow_dir or default_dir, machine_id)


def shows_key(escrow: Escrow | None, print_recovery_key: bool) -> bool:
    """A recovery key is printed unless it is escrowed (then only when asked to)."""
    return escrow is None or print_recovery_key
