"""Recovery keys and their escrow: ``sealer recovery rotate`` and ``sealer recovery show``.

Parse, call the service (sealer.services.recovery, escrow), print. The escrow options and
checks that ``sealer enroll`` shares are in sealer.cli.common.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from sealer.cli.common import (
    DEFAULT_STATE_DIR,
    emit_json,
    escrow_options,
    json_option,
    prepare_escrow,
    progress,
    quiet_option,
    shows_key,
)
from sealer.cli.results import RecoveryRotateOutput, RecoveryShowOutput


@click.group("recovery")
def recovery() -> None:
    """Manage the recovery key of an enrolled volume.

    A recovery key is a generated 150-bit key in its own keyslot, for the day the TPM will not
    release the disk key (a firmware update nobody approved, a replaced motherboard). Enroll
    one with 'sealer enroll --recovery-key'; replace it with 'sealer recovery rotate'. With
    --escrow-cert it is encrypted to the organisation's certificate instead of printed;
    'sealer recovery show' opens such a record with the organisation's private key.
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
@escrow_options(str(DEFAULT_STATE_DIR / "escrow"))
@json_option(
    "Print the new key as JSON, as soon as it opens the volume (before the old one is "
    "removed); should a later step fail, an error object follows it."
)
@quiet_option()
@click.pass_context
def rotate(
    ctx: click.Context,
    device: str,
    token_id: int | None,
    unlock_key_file: str | None,
    escrow_cert: Path | None,
    escrow_dir: Path | None,
    print_recovery_key: bool,
    machine_id: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Replace the recovery key of DEVICE: add a new one, print it, remove the old one.

    The new key is printed (or, with --escrow-cert, escrowed) before the old one is
    removed, and every step is recorded in the volume's sealer token: an interrupted
    rotation loses no key, 'sealer status' says where it stopped, and running the command
    again finishes it (a new key that was never handed over is dropped, an old one that was
    replaced is removed). The passphrase is never touched. Escrow records of older keys
    stay in the escrow directory; the keyslot in their names tells them apart.

    \b
    Examples:
      sealer recovery rotate /dev/nvme0n1p3          # the TPM authorises (approved boot)
      sealer recovery rotate --unlock-key-file - /dev/sda2 < passphrase.txt
      sealer recovery rotate --escrow-cert /etc/sealer/org-escrow.pem /dev/nvme0n1p3
    """
    from sealer.services.recovery import NewRecoveryKey
    from sealer.services.recovery import rotate as run_rotate
    from sealer.services.secrets import read_secret

    escrow = prepare_escrow(escrow_cert, escrow_dir, machine_id, DEFAULT_STATE_DIR / "escrow")
    show = shows_key(escrow, print_recovery_key)

    def hand_over(new: NewRecoveryKey) -> None:
        # Before the old key goes: whatever happens next, this key has reached its owner
        # (and, escrowed, its record is on disk already).
        record = None if new.escrow_record is None else str(new.escrow_record)
        if as_json:
            emit_json(
                RecoveryRotateOutput(
                    device=new.device,
                    uuid=new.uuid,
                    token=new.token_id,
                    recovery_keyslot=new.keyslot,
                    recovery_key=new.key if show else None,
                    replaces_keyslot=new.replaces,
                    escrow_record=record,
                )
            )
        else:
            if escrow is not None:
                click.echo(
                    f"New recovery key for {new.device} (keyslot {new.keyslot}) escrowed "
                    f"to {record},\nencrypted to {escrow.certificate.subject}"
                    + ("." if show else " (not shown; 'sealer recovery show' opens it).")
                )
            if show:
                click.echo(
                    f"New recovery key for {new.device} (keyslot {new.keyslot}). Write it "
                    f"down and keep it away from the machine:\n\n    {new.key}\n"
                )
        sys.stdout.flush()

    def read_key() -> bytes:
        return read_secret(unlock_key_file, f"Passphrase or recovery key for {device}")

    rotated = run_rotate(
        device,
        token_id=token_id,
        tcti=ctx.obj.tcti,
        read_key=read_key if unlock_key_file is not None else None,
        hand_over=hand_over,
        progress=progress(quiet),
        escrow=escrow,
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


@recovery.command("show")
@click.argument("record", type=click.Path(path_type=Path))
@click.option(
    "--key",
    "key_path",
    required=True,
    metavar="ORG.key",
    type=click.Path(path_type=Path),
    help="The private key of the escrow certificate (PEM or DER; RSA).",
)
@click.option(
    "--key-password-file",
    metavar="PATH",
    help="The private key's password: the first line of PATH ('-' for standard input), as "
    "openssl's -passin file: reads it. Asked for on the terminal when the key is encrypted "
    "and this is not given.",
)
@json_option("Print the record's fields and the key as JSON.")
def show(record: Path, key_path: Path, key_password_file: str | None, as_json: bool) -> None:
    """Decrypt the recovery key in an escrow RECORD with the organisation's private key.

    For the help desk, away from the machine: no TPM and no volume are needed. The same
    works with openssl alone:

    \b
      jq -r .cms RECORD | openssl cms -decrypt -inform PEM -inkey ORG.key; echo
    """
    from sealer.services.escrow import recover
    from sealer.services.secrets import read_secret

    def read_password() -> bytes:
        data = read_secret(key_password_file, f"Password for {key_path}")
        if key_password_file is None:
            return data
        return data.split(b"\n", 1)[0].removesuffix(b"\r")  # its first line, as openssl

    recovered = recover(record, key_path, read_password)
    if as_json:
        emit_json(RecoveryShowOutput(recovered=recovered))
        return
    found = recovered.record
    click.echo(
        f"Recovery key escrowed {found.created} by {found.hostname} "
        f"(machine id {found.machine_id})\n"
        f"for {found.device}, LUKS2 UUID {found.volume_uuid}, keyslot {found.keyslot} "
        f"(token {found.token}):\n{recovered.key}"
    )


COMMANDS = (recovery,)
