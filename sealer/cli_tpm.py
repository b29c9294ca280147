"""The TPM itself: ``sealer tpm status`` and ``sealer tpm clear-lockout``."""

from __future__ import annotations

from pathlib import Path

import click

from sealer.clikit import emit_json, run_command, state_dir_option

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
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def tpm_status(ctx: click.Context, state_dir: Path, as_json: bool) -> None:
    """Show the DA state and parameters, which authorizations are set, and who holds them."""
    from sealer.services.tpmguard import render_hygiene, tpm_status

    def action() -> None:
        report = tpm_status(ctx.obj.tcti, state_dir)
        if as_json:
            emit_json(report)
            return
        lockout = report["lockout"]
        state = "LOCKED OUT" if lockout["in_lockout"] else "not locked out"
        click.echo(
            f"TPM dictionary-attack lockout: {state}, {lockout['tries_left']} of "
            f"{lockout['max_tries']} tries left"
        )
        click.echo("\n".join(line[2:] for line in render_hygiene(report["hygiene"], lockout)))

    run_command(ctx, as_json, action)


@tpm.command("clear-lockout")
@state_dir_option(_STATE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def clear_lockout(ctx: click.Context, state_dir: Path, as_json: bool) -> None:
    """End a dictionary-attack lockout now (wrong PINs forgotten), with the kept authorization.

    The authorization never leaves sealer in clear: the TPM gets an HMAC keyed with it.
    """
    from sealer.services.tpmguard import clear_lockout as clear

    def action() -> None:
        result = clear(ctx.obj.tcti, state_dir)
        if as_json:
            emit_json(result)
            return
        click.echo(
            f"sealer: the TPM's dictionary-attack counter was {result['before']['failed_tries']}, "
            f"now {result['after']['failed_tries']}: "
            f"{result['after']['tries_left']} of {result['after']['max_tries']} tries left"
        )

    run_command(ctx, as_json, action)


COMMANDS = [tpm]
