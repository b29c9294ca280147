"""Volume commands: ``sealer enroll``, ``unlock``, ``status`` and ``remove``.

Parse, call the service (sealer.services.enroll, unlock, status, remove), print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealer.cli.common import (
    DEFAULT_STATE_DIR,
    DIRECTORY,
    FILE,
    check_initrd_has_kernel,
    emit_json,
    escrow_options,
    json_option,
    prepare_escrow,
    progress,
    quiet_option,
    shows_key,
    state_dir_option,
    warn,
)
from sealer.cli.results import EnrollOutput, RemoveOutput, StatusOutput, UnlockOutput
from sealer.errors import UsageError
from sealer.pcrs import bank_named, format_pcrs, parse_pcr_list, parse_pcr_value

if TYPE_CHECKING:
    from sealer.services.nextboot import NextBootRequest


@click.command()
@click.argument("device")
@click.option(
    "--unlock-key-file",
    metavar="PATH",
    help="Read the existing passphrase or recovery key from PATH ('-' for standard input) "
    "instead of prompting. Never give it on the command line.",
)
@click.option(
    "--pcrs",
    "pcrs_text",
    help="PCRs the key is bound to, e.g. '4,7' (boot loader/UKI + Secure Boot policy). "
    "Default: chosen from this boot's event log: 4,7 for a UKI, 4,7,9 for a kernel's EFI "
    "stub, 4,7,8,9 for GRUB (4,7 without a log).",
)
@click.option("--pcr-bank", default="sha256", show_default=True, help="PCR bank to bind to.")
@click.option(
    "--pcr",
    "pcr_values",
    multiple=True,
    metavar="N=BANK:HEX",
    help="Expected value of PCR N instead of its current one, for provisioning a boot state "
    "that is known but not current. Repeatable.",
)
@click.option(
    "--cap-pcr",
    default=15,
    show_default=True,
    type=click.IntRange(0, 23),
    help="PCR extended after unlock at boot (0-15: 16-23 can be reset without a reboot); "
    "the sealed object requires its pre-cap value.",
)
@click.option("--pin", is_flag=True, help="Also require a PIN (checked by the TPM, with lockout).")
@click.option(
    "--pin-file",
    metavar="PATH",
    help="Read the new PIN from PATH ('-' for stdin) instead of prompting; implies --pin.",
)
@click.option(
    "--recovery-key",
    is_flag=True,
    help="Also add a generated recovery key in its own keyslot and print it once "
    "(or escrow it: --escrow-cert).",
)
@escrow_options("STATE_DIR/escrow")
@state_dir_option("Where the machine's policy key is kept (0600; on the encrypted root).")
@click.option(
    "--eventlog",
    "log_path",
    metavar="FILE",
    type=FILE,
    help="Choose and check the binding with this TCG event log instead of this boot's "
    "(refuses PCRs that leave the kernel, initrd or command line unmeasured).",
)
@click.option(
    "--allow-unbound",
    is_flag=True,
    help="Enroll even when the PCRs leave this boot's kernel, initrd or command line "
    "unmeasured (a warning instead of a refusal).",
)
@click.option(
    "--trust-vendor-key",
    "vendor_key",
    metavar="PUB.pem",
    type=FILE,
    help="Also accept approvals signed by this vendor key ('sealer policy sign'); the vendor "
    "becomes the revocation authority ('sealer revoke --statement').",
)
@json_option()
@quiet_option()
@click.pass_context
def enroll(
    ctx: click.Context,
    device: str,
    unlock_key_file: str | None,
    pcrs_text: str,
    pcr_bank: str,
    pcr_values: tuple[str, ...],
    cap_pcr: int,
    pin: bool,
    pin_file: str | None,
    recovery_key: bool,
    escrow_cert: Path | None,
    escrow_dir: Path | None,
    print_recovery_key: bool,
    machine_id: str | None,
    state_dir: Path,
    log_path: Path | None,
    allow_unbound: bool,
    vendor_key: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Add a TPM-sealed keyslot to the LUKS2 volume DEVICE (block device or image file).

    The existing passphrase (or recovery key) proves you may change the volume; it stays in
    place. A fresh 32-byte secret is sealed to this TPM under a policy that accepts signed
    approvals of boot states; the first approval accepts the current values of --pcrs and
    the cap PCR at its value before unlock.

    With --recovery-key --escrow-cert ORG.pem the recovery key is encrypted to the
    organisation's certificate and written to STATE_DIR/escrow/MACHINE-UUID-keyslotN.json
    before the enrollment is complete, and is not printed; 'sealer recovery show' or
    'openssl cms -decrypt' opens the record with the organisation's private key.
    """
    from sealer.services.enroll import EnrollRequest, boot_log, choose_binding, preflight
    from sealer.services.enroll import enroll as run_enroll
    from sealer.services.secrets import read_secret

    if unlock_key_file == "-" and pin_file == "-":
        raise UsageError("only one secret can come from standard input")
    bank = bank_named(pcr_bank)
    expected: dict[int, bytes] = {}
    for text in pcr_values:
        index, value_bank, value = parse_pcr_value(text, bank)
        if value_bank != bank:
            raise UsageError(f"--pcr {text}: bank {value_bank.name} is not --pcr-bank")
        expected[index] = value
    # Files are checked before any prompt: a bad one must not cost a typed passphrase.
    if escrow_cert is not None and not recovery_key:
        raise UsageError(
            "--escrow-cert escrows the recovery key, and there is none", "add --recovery-key"
        )
    escrow = prepare_escrow(escrow_cert, escrow_dir, machine_id, state_dir / "escrow")
    vendor_pem = None
    if vendor_key is not None:
        from sealer.policy.vendor import read_public_key  # predict, pefile: not otherwise

        vendor_pem = read_public_key(vendor_key)
    preflight(device, ctx.obj.tcti, cap_pcr)
    # The binding is chosen and checked against this boot's log before any prompt: a
    # refused one must not cost a typed passphrase.
    log, _ = boot_log(log_path)
    binding = choose_binding(
        parse_pcr_list(pcrs_text) if pcrs_text is not None else None,
        log,
        allow_unbound=allow_unbound,
    )
    unlock_key = read_secret(unlock_key_file, f"Passphrase or recovery key for {device}")
    new_pin = None
    if pin or pin_file:
        new_pin = read_secret(pin_file, "New TPM PIN", confirm=True)
    request = EnrollRequest(
        device=device,
        unlock_key=unlock_key,
        bank=bank,
        pcrs=binding.pcrs,
        expected=expected,
        cap_pcr=cap_pcr,
        pin=new_pin,
        recovery_key=recovery_key,
        state_dir=state_dir,
        tcti=ctx.obj.tcti,
        log_path=log_path,
        vendor_key_pem=vendor_pem,
        escrow=escrow,
        allow_unbound=allow_unbound,
    )
    result = run_enroll(request, progress(quiet or as_json))
    shown = result.recovery_key if shows_key(escrow, print_recovery_key) else None
    record = None if result.escrow_record is None else str(result.escrow_record)
    for warning in result.warnings:
        warn(warning)
    if as_json:
        emit_json(
            EnrollOutput(
                device=result.device,
                uuid=result.uuid,
                token=result.token_id,
                keyslot=result.keyslot,
                pcr_bank=result.bank,
                approved_pcrs=result.approved,
                srk_name=result.srk_name,
                pin=result.pin,
                recovery_keyslot=result.recovery_keyslot,
                recovery_key=shown,
                escrow_record=record,
                warnings=result.warnings,
                binding=binding.to_json(),
            )
        )
        return
    pcrs = format_pcrs(p for p in result.approved if p != cap_pcr)
    click.echo(
        f"Enrolled {device}: token {result.token_id}, keyslot {result.keyslot}, "
        f"{result.bank} PCRs {pcrs} (+ cap PCR {cap_pcr}){', PIN' if result.pin else ''}."
    )
    click.echo(f"Binding: PCRs {format_pcrs(binding.pcrs)}, {binding.reason}.")
    if escrow is not None and record is not None:
        click.echo(
            f"\nRecovery key (keyslot {result.recovery_keyslot}) escrowed to {record},\n"
            f"encrypted to {escrow.certificate.subject}"
            + ("." if shown else " (not shown; 'sealer recovery show' opens the record).")
        )
    if shown:
        click.echo(
            f"\nRecovery key (keyslot {result.recovery_keyslot}). Write it down and keep it "
            "apart from this machine;\nit is shown only this once and opens the volume at "
            "the passphrase prompt:\n\n"
            f"    {shown}\n"
        )


@click.command()
@click.argument("device")
@click.option("--name", help="Mapping name under /dev/mapper (default: luks-UUID).")
@click.option(
    "--test",
    "test_only",
    is_flag=True,
    help="Only prove that the TPM releases a key the volume accepts; open nothing. "
    "Works on image files without device-mapper.",
)
@click.option("--token", "token_id", type=int, help="Use this sealer token only.")
@click.option("--pin-file", metavar="PATH", help="Read the PIN from PATH ('-' for stdin).")
@json_option()
@click.pass_context
def unlock(
    ctx: click.Context,
    device: str,
    name: str | None,
    test_only: bool,
    token_id: int | None,
    pin_file: str | None,
    as_json: bool,
) -> None:
    """Unseal the key from the TPM and open DEVICE (or only test it with --test)."""
    from sealer.services.secrets import reader
    from sealer.services.unlock import unlock as run_unlock

    released = run_unlock(
        device,
        name=name,
        test_only=test_only,
        token_id=token_id,
        tcti=ctx.obj.tcti,
        read_pin=reader(pin_file, f"TPM PIN for {device}"),
    )
    if as_json:
        emit_json(
            UnlockOutput(
                device=released.device,
                token=released.token_id,
                keyslot=released.keyslot,
                approval=released.approval_index,
                binding=released.binding,
                opened=not test_only,
                name=name,
            )
        )
    elif test_only and released.binding != "sealer-tpm2":
        click.echo(
            f"The TPM released the key of {released.binding} token {released.token_id}; "
            f"keyslot {released.keyslot} accepts it ('sealer migrate' moves it to sealer)."
        )
    elif test_only:
        click.echo(
            f"The TPM released the key of token {released.token_id} "
            f"(approval {released.approval_index}); keyslot {released.keyslot} accepts it."
        )
    else:
        click.echo(f"Opened {device} with the TPM (keyslot {released.keyslot}).")


@click.command()
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@json_option("Print the report as JSON.")
@click.option(
    "--next-boot",
    is_flag=True,
    help="Also tell whether the next boot will unlock by TPM: predict its PCRs and look for an "
    "approval (not revoked) that holds them.",
)
@click.option("--uki", type=FILE, metavar="FILE", help="With --next-boot: the UKI it starts.")
@click.option("--kernel", type=FILE, metavar="FILE", help="With --next-boot: its kernel.")
@click.option("--initrd", type=FILE, metavar="FILE", help="The initrd that goes with --kernel.")
@click.option(
    "--eventlog",
    "log_path",
    type=FILE,
    metavar="FILE",
    help="With --next-boot: predict from this event log instead of this boot's.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="With --next-boot: take this boot's PCRs from the event log, not from the TPM.",
)
# Where update.conf and the kernels are; tests (and the update hook's tests) move them.
@click.option(
    "--etc-dir",
    type=click.Path(path_type=Path),
    envvar="SEALER_HOOK_ETC",
    default="/etc/sealer",
    hidden=True,
)
@click.option(
    "--boot-dir",
    type=click.Path(path_type=Path),
    envvar="SEALER_HOOK_BOOT",
    default="/boot",
    hidden=True,
)
@click.option(
    "--escrow-dir",
    type=DIRECTORY,
    default=DEFAULT_STATE_DIR / "escrow",
    show_default=True,
    help="Where escrow records are: status says whether each recovery key has one.",
)
@state_dir_option(
    "Where sealer keeps the TPM's lockout authorization: status says whether it holds the one "
    "in force."
)
@click.pass_context
def status(
    ctx: click.Context,
    devices: tuple[str, ...],
    as_json: bool,
    next_boot: bool,
    uki: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    log_path: Path | None,
    offline: bool,
    etc_dir: Path,
    boot_dir: Path,
    escrow_dir: Path,
    state_dir: Path,
) -> None:
    """Show keyslots, tokens and whether the TPM would release the key now.

    Without DEVICE, every LUKS2 block device udev knows is shown.

    \b
    With --next-boot, also whether the next boot will unlock by TPM. Its image is the UKI
    or kernel given, or else the newest kernel in /boot, booted as /etc/sealer/update.conf
    says (SEALER_BOOT=kernel|uki, SEALER_UKI=/path/%v.efi), as the update hook does:
      sealer status --next-boot
      sealer status --next-boot --json --uki /boot/efi/EFI/Linux/new.efi /dev/nvme0n1p3
    """
    from sealer.services.status import discover_luks2_devices, render, volume_status

    check = None
    if next_boot:
        from sealer.services.nextboot import NextBootCheck  # plain status does without

        request = _next_boot_request(
            uki, kernel, initrd, log_path, offline, etc_dir, boot_dir, ctx.obj.tcti
        )
        check = NextBootCheck(request)
    elif uki or kernel or initrd or log_path or offline:
        raise UsageError(
            "--uki, --kernel, --initrd, --eventlog and --offline go with --next-boot",
            "add --next-boot",
        )
    names = list(devices) or discover_luks2_devices()
    reports = [volume_status(d, ctx.obj.tcti, check, escrow_dir, state_dir) for d in names]
    if as_json:
        emit_json(StatusOutput(reports=reports, single=len(devices) == 1))
    elif not reports:
        click.echo("No LUKS2 block devices found (give an image file as DEVICE).")
    else:
        click.echo("\n\n".join(render(r) for r in reports))


def _next_boot_request(
    uki: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    log_path: Path | None,
    offline: bool,
    etc_dir: Path,
    boot_dir: Path,
    tcti: str | None,
) -> NextBootRequest:
    from sealer.measure.predict import NextBoot
    from sealer.services.nextboot import NextBootRequest

    if uki is not None and kernel is not None:
        raise UsageError("give either --uki or --kernel, not both", "the next boot starts one")
    check_initrd_has_kernel(kernel, initrd)
    boot = None
    if uki is not None or kernel is not None:
        boot = NextBoot(uki=uki, kernel=kernel, initrd=initrd)
    return NextBootRequest(boot, etc_dir, boot_dir, log_path, offline, tcti)


@click.command()
@click.argument("device")
@click.option("--token", "token_id", type=int, help="The sealer token to remove.")
@json_option()
@click.pass_context
def remove(ctx: click.Context, device: str, token_id: int | None, as_json: bool) -> None:
    """Remove a TPM enrollment (its token and keyslot) from DEVICE.

    Refuses when no passphrase or recovery key keyslot would remain.
    """
    from sealer.services.remove import remove as run_remove

    removed = run_remove(device, token_id, ctx.obj.tcti)
    if as_json:
        emit_json(
            RemoveOutput(
                device=removed.device,
                token=removed.token_id,
                keyslots=removed.keyslots,
                retirement_counter=removed.counter or None,
            )
        )
    else:
        slots = ", ".join(str(s) for s in removed.keyslots) or "none left"
        click.echo(f"Removed token {removed.token_id} (keyslot {slots}) from {device}.")
        if removed.counter:
            click.echo(f"Its retirement counter: {removed.counter}.")


COMMANDS = (enroll, unlock, status, remove)
