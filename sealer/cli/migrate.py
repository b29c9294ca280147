"""Volumes bound by other tools (systemd-cryptenroll, clevis): ``sealer migrate``.

Parse, call the service (sealer.services.migrate), print.
"""

from __future__ import annotations

from pathlib import Path

import click

from sealer.cli.common import (
    emit_json,
    json_option,
    progress,
    quiet_option,
    state_dir_option,
    warn,
)
from sealer.cli.results import MigrateOutput
from sealer.pcrs import format_pcrs, parse_pcr_list


@click.command("migrate")
@click.argument("device")
@click.option("--pcrs", "pcrs_text", help="PCRs for the new binding (default: the old ones).")
@click.option("--cap-pcr", default=15, show_default=True, type=click.IntRange(0, 23))
@click.option("--keep-old", is_flag=True, help="Keep the old tool's token and keyslot.")
@click.option("--pin-file", metavar="PATH", help="The old binding's PIN, from PATH ('-': stdin).")
@state_dir_option("Where the machine's policy key is kept (0600; on the encrypted root).")
@json_option()
@quiet_option()
@click.pass_context
def migrate(
    ctx: click.Context,
    device: str,
    pcrs_text: str | None,
    cap_pcr: int,
    keep_old: bool,
    pin_file: str | None,
    state_dir: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Replace a systemd-cryptenroll or clevis TPM binding of DEVICE with sealer's.

    The old binding's TPM releases its key (no passphrase while the PCRs still match); that
    key authorises a new sealer keyslot; once the TPM has released the new key and the volume
    accepted it, the old token and keyslot are removed (not with --keep-old). Passphrase and
    recovery keyslots are never touched, and every step leaves the volume openable: run it
    again after an interruption and it finishes.

    \b
    Examples:
      sealer unlock --test /dev/nvme0n1p3      # does the old binding still unlock?
      sealer migrate /dev/nvme0n1p3
      sealer migrate --pcrs 4,7 --keep-old /dev/sda2
    """
    from sealer.services.migrate import MigrateRequest
    from sealer.services.migrate import migrate as run_migrate
    from sealer.services.secrets import reader

    request = MigrateRequest(
        device=device,
        pcrs=parse_pcr_list(pcrs_text) if pcrs_text else None,
        cap_pcr=cap_pcr,
        keep_old=keep_old,
        state_dir=state_dir,
        tcti=ctx.obj.tcti,
    )
    done = run_migrate(
        request, reader(pin_file, f"TPM PIN for {device}"), progress(quiet or as_json)
    )
    new = done.enrolled
    if as_json:
        emit_json(
            MigrateOutput(
                device=done.device,
                old_binding=done.old_kind,
                old_token=done.old_token,
                old_keyslots=done.old_keyslots,
                old_removed=done.removed,
                token=new.token_id if new else None,
                keyslot=new.keyslot if new else None,
                pcr_bank=new.bank if new else None,
                pcrs=sorted(p for p in new.approved if p != cap_pcr) if new else None,
                warnings=done.warnings,
            )
        )
        return
    for warning in done.warnings:
        warn(warning)
    if new is not None:
        pcrs = format_pcrs(p for p in new.approved if p != cap_pcr)
        click.echo(
            f"Enrolled {device} with sealer: token {new.token_id}, keyslot {new.keyslot}, "
            f"{new.bank} PCRs {pcrs} (+ cap PCR {cap_pcr})."
        )
    old = f"{done.old_kind} token {done.old_token}"
    if done.removed:
        slots = ", ".join(map(str, done.old_keyslots))
        click.echo(f"Removed the {old} and keyslot {slots}.")
    else:
        click.echo(f"Kept the {old} (--keep-old).")


COMMANDS = (migrate,)
