"""Recovery keys: ``sealer recovery rotate``."""

from __future__ import annotations

import sys

import click

from sealer.clikit import Options, emit_json, progress, run_command


@click.group("recovery")
def recovery() -> None:
    """Manage the recovery key of an enrolled volume.

    A recovery key is a generated 150-bit key in its own keyslot, for the day the TPM will not
    release the disk key (a firmware update nobody approved, a replaced motherboard). Enroll
    one with 'sealer enroll --recovery-key'; replace it with 'sealer recovery rotate'.
    """


@recovery.command("rotate")
@click.argument("device")
@click.option("--token", "token_id", type=int, help="The sealer token whose key to rotate.")
@click.option(
    "--unlock-key-file",
    metavar="PATH",
    help="Authorise the new keyslot with the passphrase or current recovery key from PATH "
    "('-' for standard input). Without it the TPM authorises it (no PIN, approved boot).",
)
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the new key as JSON, as soon as it opens the volume (before the old one is "
    "removed); should a later step fail, an error object follows it.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@click.pass_context
def rotate(
    ctx: click.Context, device: str, token_id: int | None, unlock_key_file: str | None,
    as_json: bool, quiet: bool,
) -> None:  # fmt: skip
    """Replace the recovery key of DEVICE: add a new one, print it, remove the old one.

    The new key is printed before the old one is removed, and every step is recorded in the
    volume's sealer token: an interrupted rotation loses no key, 'sealer status' says where
    it stopped, and running the command again finishes it (a new key that was never printed
    is dropped, an old one that was replaced is removed). The passphrase is never touched.

    \b
    Examples:
      sealer recovery rotate /dev/nvme0n1p3          # the TPM authorises (approved boot)
      sealer recovery rotate --unlock-key-file - /dev/sda2 < passphrase.txt
    """
    from sealer.services.recovery import NewRecoveryKey
    from sealer.services.recovery import rotate as run_rotate
    from sealer.services.secrets import read_secret

    options: Options = ctx.obj

    def hand_over(new: NewRecoveryKey) -> None:
        # Before the old key goes: whatever happens next, this key has reached its owner.
        if as_json:
            emit_json({
                "device": new.device, "uuid": new.uuid, "token": new.token_id,
                "recovery_keyslot": new.keyslot, "recovery_key": new.key,
                "replaces_keyslot": new.replaces,
            })  # fmt: skip
        else:
            click.echo(
                f"New recovery key for {new.device} (keyslot {new.keyslot}). Write it down and "
                f"keep it away from the machine:\n\n    {new.key}\n"
            )
        sys.stdout.flush()

    def action() -> None:
        def read_key() -> bytes:
            return read_secret(unlock_key_file, f"Passphrase or recovery key for {device}")

        rotated = run_rotate(
            device,
            token_id=token_id,
            tcti=options.tcti,
            read_key=read_key if unlock_key_file is not None else None,
            hand_over=hand_over,
            progress=progress(quiet),
        )
        if as_json or quiet:
            return
        old = rotated.new.replaces
        if old is None:
            click.echo("No earlier recovery key was recorded in the token; none was removed.")
        elif rotated.removed is None:
            click.echo(f"Keyslot {old} was kept: it no longer looks like a sealer recovery key.")
        else:
            click.echo(f"The old recovery key (keyslot {old}) no longer opens the volume.")

    run_command(ctx, as_json, action)


COMMANDS = [recovery]
