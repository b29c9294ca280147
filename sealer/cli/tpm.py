"""The TPM itself: ``sealer tpm status`` and ``sealer tpm clear-lockout``.

Parse, call the service (sealer.services.tpmguard), print.
"""

from __future__ import annotations

from pathlib import Path

import click

from sealer.cli.common import emit_json, json_option, state_dir_option
from sealer.cli.results import ClearLockoutOutput, TpmStatusOutput

_STATE_HELP = "Where sealer keeps the TPM's lockout authorization (0600)."


@click.group("tpm")
def tpm() -> None:
    """The TPM's dictionary-attack lockout and who can reconfigure it.

    'sealer enroll' sets the TPM's dictionary-attack parameters (32 tries, one forgotten every
    7200 s, 600 s after a wrong lockout authorization) and a random lockout authorization,
    kept in the state directory, when the lockout authorization is empty; one that someone
    else set is left alone.
    """


@tpm.command("status")
@state_dir_option(_STATE_HELP)
@json_option("Print the report as JSON.")
@click.pass_context
def tpm_status(ctx: click.Context, state_dir: Path, as_json: bool) -> None:
    """Show the DA state and parameters, which authorizations are set, and who holds them."""
    from sealer.services.tpmguard import render_hygiene, tpm_status

    report = tpm_status(ctx.obj.tcti, state_dir)
    if as_json:
        emit_json(TpmStatusOutput(report=report))
        return
    lockout = report["lockout"]
    state = "LOCKED OUT" if lockout["in_lockout"] else "not locked out"
    click.echo(
        f"TPM dictionary-attack lockout: {state}, {lockout['tries_left']} of "
        f"{lockout['max_tries']} tries left"
    )
    click.echo("\n".join(line[2:] for line in render_hygiene(report["hygiene"], lockout)))


@tpm.command("clear-lockout")
@state_dir_option(_STATE_HELP)
@json_option()
@click.pass_context
def clear_lockout(ctx: click.Context, state_dir: Path, as_json: bool) -> None:
    """End a dictionary-attack lockout now (wrong PINs forgotten), with the kept authorization.

    The authorization never leaves sealer in clear: the TPM gets an HMAC keyed with it.
    """
    from sealer.services.tpmguard import clear_lockout as clear

    result = clear(ctx.obj.tcti, state_dir)
    if as_json:
        emit_json(ClearLockoutOutput(result=result))
        return
    before, after = result["before"], result["after"]
    click.echo(
        f"sealer: the TPM's dictionary-attack counter was {before['failed_tries']}, "
        f"now {after['failed_tries']}: {after['tries_left']} of {after['max_tries']} tries left"
    )


COMMANDS = (tpm,)
