"""The command line: parse, call a service, print. No TPM or LUKS logic lives here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sealer import __version__
from sealer.cli_escrow import escrow_options, prepare_escrow, shows_key
from sealer.clikit import (
    DEFAULT_STATE_DIR,
    Options,
    emit_json,
    progress,
    run_command,
    state_dir_option,
)
from sealer.errors import UsageError
from sealer.pcrs import bank_named, format_pcrs, parse_pcr_list, parse_pcr_value

if TYPE_CHECKING:
    from sealer.install.bootopts import BootOptionFinding
    from sealer.install.bootwire import Plan
    from sealer.services.nextboot import NextBootRequest


EXIT_CODES_HELP = """\b
Exit codes:
   0  success
   1  internal error (a bug: please report it)
   2  bad command line
   3  device missing, unreadable, or not LUKS2
   4  no TPM reachable
   5  the boot state matches no approval (PCRs changed)
   6  wrong passphrase, recovery key or PIN
   7  the volume was enrolled with another TPM
   8  the TPM is in dictionary-attack lockout
   9  no usable sealer token (missing, corrupted, unknown version)
  10  no free keyslot or token slot in the LUKS2 header
  11  the state directory or policy key cannot be used
  12  refused: the volume would be left with no way to open it
  13  a system file (crypttab, initramfs hook) cannot be changed, or the
      initramfs rebuild failed
  14  the event log or a boot image cannot be read, or cannot predict
      a PCR the enrollment needs
"""


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sealer")
@click.option(
    "--tcti",
    envvar="SEALER_TCTI",
    metavar="TCTI",
    help="How to reach the TPM: 'device:/dev/tpmrm0' (default) or 'swtpm:host=H,port=P'. "
    "Also read from SEALER_TCTI.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of failures.")
@click.pass_context
def main(ctx: click.Context, tcti: str | None, debug: bool) -> None:
    """Unlock LUKS2 volumes with a TPM 2.0 bound to the verified boot chain.

    \b
    Typical use, as root:
      sealer enroll /dev/nvme0n1p3             # asks for the passphrase
      sealer enroll --recovery-key --pcrs 7 /dev/sda2
      sealer status                             # every LUKS2 volume udev knows
      sealer unlock --test /dev/nvme0n1p3       # does the TPM release the key now?
      sealer remove /dev/nvme0n1p3
      sealer boot enable --dry-run              # unlock enrolled volumes at boot

    \b
    Measured boot (after updates, and when the TPM refuses):
      sealer eventlog --pcr 4,7                 # what the firmware measured, checked
      sealer predict --uki new.efi              # the PCRs the next boot will have
      sealer reseal --uki new.efi               # approve it ahead of the reboot
      sealer explain                            # why this boot did not unlock
      sealer prune                              # drop states this boot made stale

    \b
    Fleets (see 'sealer policy --help'):
      sealer enroll --trust-vendor-key vendor.pub.pem DEVICE
      sealer policy install release-7.approval  # vendor-signed: no re-sealing
      sealer revoke --statement below-7.revocation
    """
    ctx.obj = Options(tcti=tcti, debug=debug)


@main.command()
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
    default="4,7",
    show_default=True,
    help="PCRs the key is bound to, e.g. '7' (Secure Boot policy) or '4,7' (+ boot loader/UKI).",
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
@click.option(
    "--pin", is_flag=True, help="Also require a PIN (checked by the TPM, with lockout)."
)
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
    type=click.Path(path_type=Path, dir_okay=False),
    help="Check the binding against this TCG event log instead of this boot's (warns when "
    "--pcrs leaves the kernel, initrd or command line unmeasured).",
)
@click.option(
    "--trust-vendor-key",
    "vendor_key",
    metavar="PUB.pem",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also accept approvals signed by this vendor key ('sealer policy sign'); the vendor "
    "becomes the revocation authority ('sealer revoke --statement').",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
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
    from sealer.services.enroll import EnrollRequest, preflight
    from sealer.services.enroll import enroll as run_enroll
    from sealer.services.secrets import read_secret

    def action() -> None:
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
            raise UsageError("--escrow-cert escrows the recovery key, and there is none",
                             "add --recovery-key")  # fmt: skip
        escrow = prepare_escrow(escrow_cert, escrow_dir, machine_id, state_dir / "escrow")
        vendor_pem = None
        if vendor_key is not None:
            from sealer.policy.vendor import read_public_key  # predict, pefile: not otherwise

            vendor_pem = read_public_key(vendor_key)
        preflight(device, ctx.obj.tcti, cap_pcr)
        unlock_key = read_secret(unlock_key_file, f"Passphrase or recovery key for {device}")
        new_pin = None
        if pin or pin_file:
            new_pin = read_secret(pin_file, "New TPM PIN", confirm=True)
        request = EnrollRequest(
            device=device,
            unlock_key=unlock_key,
            bank=bank,
            pcrs=parse_pcr_list(pcrs_text),
            expected=expected,
            cap_pcr=cap_pcr,
            pin=new_pin,
            recovery_key=recovery_key,
            state_dir=state_dir,
            tcti=ctx.obj.tcti,
            log_path=log_path,
            vendor_key_pem=vendor_pem,
            escrow=escrow,
        )
        result = run_enroll(request, progress(quiet or as_json))
        shown = result.recovery_key if shows_key(escrow, print_recovery_key) else None
        record = None if result.escrow_record is None else str(result.escrow_record)
        for warning in result.warnings:
            click.echo(f"sealer: warning: {warning}", err=True)
        if as_json:
            emit_json(
                {
                    "device": result.device,
                    "uuid": result.uuid,
                    "token": result.token_id,
                    "keyslot": result.keyslot,
                    "pcr_bank": result.bank,
                    "approved_pcrs": {str(p): v.hex() for p, v in result.approved.items()},
                    "srk_name": result.srk_name.hex(),
                    "pin": result.pin,
                    "recovery_keyslot": result.recovery_keyslot,
                    "recovery_key": shown,
                    "escrow_record": record,
                    "warnings": result.warnings,
                }
            )
            return
        pcrs = format_pcrs(p for p in result.approved if p != cap_pcr)
        click.echo(
            f"Enrolled {device}: token {result.token_id}, keyslot {result.keyslot}, "
            f"{result.bank} PCRs {pcrs} (+ cap PCR {cap_pcr}){', PIN' if result.pin else ''}."
        )
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

    run_command(ctx, as_json, action)


@main.command()
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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
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

    def action() -> None:
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
                {
                    "device": released.device,
                    "token": released.token_id,
                    "keyslot": released.keyslot,
                    "approval": released.approval_index,
                    "binding": released.binding,
                    "opened": not test_only,
                    "name": name,
                }
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

    run_command(ctx, as_json, action)


_FILE = click.Path(path_type=Path, dir_okay=False)


@main.command()
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--next-boot",
    is_flag=True,
    help="Also tell whether the next boot will unlock by TPM: predict its PCRs and look for an "
    "approval (not revoked) that holds them.",
)
@click.option("--uki", type=_FILE, metavar="FILE", help="With --next-boot: the UKI it starts.")
@click.option("--kernel", type=_FILE, metavar="FILE", help="With --next-boot: its kernel.")
@click.option("--initrd", type=_FILE, metavar="FILE", help="The initrd that goes with --kernel.")
@click.option(
    "--eventlog",
    "log_path",
    type=_FILE,
    metavar="FILE",
    help="With --next-boot: predict from this event log instead of this boot's.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="With --next-boot: take this boot's PCRs from the event log, not from the TPM.",
)
# Where update.conf and the kernels are; tests (and the update hook's tests) move them.
@click.option("--etc-dir", type=click.Path(path_type=Path), envvar="SEALER_HOOK_ETC",
              default="/etc/sealer", hidden=True)  # fmt: skip
@click.option("--boot-dir", type=click.Path(path_type=Path), envvar="SEALER_HOOK_BOOT",
              default="/boot", hidden=True)  # fmt: skip
@click.option(
    "--escrow-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_STATE_DIR / "escrow",
    show_default=True,
    help="Where escrow records are: status says whether each recovery key has one.",
)
@state_dir_option("Where sealer keeps the TPM's lockout authorization: status says whether "
                  "it holds the one in force.")  # fmt: skip
@click.pass_context
def status(
    ctx: click.Context, devices: tuple[str, ...], as_json: bool, next_boot: bool,
    uki: Path | None, kernel: Path | None, initrd: Path | None, log_path: Path | None,
    offline: bool, etc_dir: Path, boot_dir: Path, escrow_dir: Path, state_dir: Path,
) -> None:  # fmt: skip
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

    def action() -> None:
        check = None
        if next_boot:
            from sealer.services.nextboot import NextBootCheck  # plain status does without

            check = NextBootCheck(_next_boot_request(
                uki, kernel, initrd, log_path, offline, etc_dir, boot_dir, ctx.obj.tcti
            ))  # fmt: skip
        elif uki or kernel or initrd or log_path or offline:
            raise UsageError(
                "--uki, --kernel, --initrd, --eventlog and --offline go with --next-boot",
                "add --next-boot",
            )
        names = list(devices) or discover_luks2_devices()
        reports = [volume_status(d, ctx.obj.tcti, check, escrow_dir, state_dir) for d in names]
        if as_json:
            emit_json(reports[0] if len(devices) == 1 else reports)
        elif not reports:
            click.echo("No LUKS2 block devices found (give an image file as DEVICE).")
        else:
            click.echo("\n\n".join(render(r) for r in reports))

    run_command(ctx, as_json, action)


def _next_boot_request(
    uki: Path | None, kernel: Path | None, initrd: Path | None, log_path: Path | None,
    offline: bool, etc_dir: Path, boot_dir: Path, tcti: str | None,
) -> NextBootRequest:  # fmt: skip
    from sealer.measure.predict import NextBoot
    from sealer.services.nextboot import NextBootRequest

    if uki is not None and kernel is not None:
        raise UsageError("give either --uki or --kernel, not both", "the next boot starts one")
    if initrd is not None and kernel is None:
        raise UsageError("--initrd goes with --kernel", "give the kernel it belongs to")
    boot = None
    if uki is not None or kernel is not None:
        boot = NextBoot(uki=uki, kernel=kernel, initrd=initrd)
    return NextBootRequest(boot, etc_dir, boot_dir, log_path, offline, tcti)


@main.command()
@click.argument("device")
@click.option("--token", "token_id", type=int, help="The sealer token to remove.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def remove(ctx: click.Context, device: str, token_id: int | None, as_json: bool) -> None:
    """Remove a TPM enrollment (its token and keyslot) from DEVICE.

    Refuses when no passphrase or recovery key keyslot would remain.
    """
    from sealer.services.remove import remove as run_remove

    def action() -> None:
        removed = run_remove(device, token_id, ctx.obj.tcti)
        if as_json:
            emit_json(
                {
                    "device": removed.device,
                    "token": removed.token_id,
                    "keyslots": list(removed.keyslots),
                    "retirement_counter": removed.counter or None,
                }
            )
        else:
            slots = ", ".join(str(s) for s in removed.keyslots) or "none left"
            click.echo(f"Removed token {removed.token_id} (keyslot {slots}) from {device}.")
            if removed.counter:
                click.echo(f"Its retirement counter: {removed.counter}.")

    run_command(ctx, as_json, action)


@main.group()
def boot() -> None:
    """Wire the boot-time unlocker into the initramfs (Debian initramfs-tools).

    \b
    'sealer boot enable' writes, as root:
      /etc/crypttab                      keyscript=/usr/lib/sealer/keyscript added to the
                                         chosen entries; every other line stays as it is
      /usr/lib/sealer/keyscript          run by cryptsetup to get those volumes' keys
      /etc/initramfs-tools/hooks/sealer  puts the unlocker into the initramfs
      /etc/initramfs-tools/scripts/init-bottom/sealer
                                         caps PCR 15 once every volume is open
      /etc/sealer/initramfs.conf         which Python interpreter has sealer installed
    then runs 'update-initramfs -u'. Look first with --dry-run.

    At boot the keyscript asks the TPM for the key. When anything is unexpected it says why
    in one line and the usual passphrase prompt appears: the passphrase and the recovery key
    keep working. Undo everything with 'sealer boot disable'.
    """


def _boot_options(
    default_choice: str,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options enable and disable share; ``default_choice`` says what --name defaults to."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(_boot_option_list(default_choice)):
            command = option(command)
        return command

    return decorate


def _boot_option_list(default_choice: str) -> list[Callable[[Any], Any]]:
    return [
        click.option(
            "--name",
            "names",
            multiple=True,
            metavar="NAME",
            help=f"The crypttab entry (first field) to change. Repeatable. Default: "
            f"{default_choice}.",
        ),
        click.option(
            "--crypttab",
            type=click.Path(path_type=Path, dir_okay=False),
            metavar="PATH",
            help="The crypttab to change. Default: /etc/crypttab (under --root).",
        ),
        click.option(
            "--root",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            metavar="DIR",
            help="Change the files under DIR (a chroot or image tree) instead of this "
            "machine's; update-initramfs is then not run: run it inside DIR.",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Print a diff of every file that would change and the commands that would "
            "run; change nothing.",
        ),
        click.option(
            "--no-update-initramfs",
            is_flag=True,
            help="Do not run 'update-initramfs -u'; the change takes effect at the next rebuild.",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print the plan or result as JSON."),
    ]


def _report_plan(
    plan: Plan, dry_run: bool, as_json: bool, boot_options: list[BootOptionFinding] | None = None
) -> None:
    """Print what a boot plan changes (or would change, with --dry-run), and, for enable,
    what the kernel command line's options mean for the unlock (``boot_options``)."""
    from sealer.install.crypttab import KEYSCRIPT_OPTION

    for warning in plan.warnings:
        click.echo(f"sealer: warning: {warning}", err=True)
    if as_json:
        emit_json(
            {
                **(
                    {"boot_options": [f.to_json() for f in boot_options]}
                    if boot_options is not None
                    else {}
                ),
                "action": plan.action,
                "dry_run": dry_run,
                "crypttab": str(plan.crypttab),
                "entries": [
                    {
                        "name": e.name,
                        "line": e.line,
                        "source": e.source,
                        "changed": e.changed,
                        "before": e.before,
                        "after": e.after,
                    }
                    for e in plan.entries
                ],
                "files": [
                    {
                        "path": str(f.path),
                        "change": f.change,
                        "mode": None if f.mode is None else f"{f.mode:04o}",
                        **({"diff": f.diff()} if dry_run else {}),
                    }
                    for f in plan.files
                ],
                "commands": [list(argv) for argv in plan.commands],
                "notes": list(plan.notes),
                "warnings": list(plan.warnings),
            }
        )
        return
    for note in plan.notes:
        click.echo(f"sealer: note: {note}", err=True)
    for finding in boot_options or []:
        click.echo(f"sealer: boot option {finding.line()}", err=True)
    commands = ", ".join(" ".join(argv) for argv in plan.commands)
    if dry_run:
        for change in plan.changed_files:
            click.echo(change.diff(), nl=False)
        if not plan.changed_files:
            click.echo("No file would change.")
        if commands:
            click.echo(f"Would run: {commands}")
        click.echo("Dry run: nothing was changed.")
        return
    enabling = plan.action == "enable"
    for entry in plan.entries:
        if enabling:
            state = "now uses" if entry.changed else "already uses"
        else:
            state = "no longer uses" if entry.changed else "did not use"
        click.echo(f"{plan.crypttab}: {entry.name} (line {entry.line}) {state} {KEYSCRIPT_OPTION}")
    verbs = {"create": "Installed", "update": "Updated", "remove": "Removed"}
    for change in plan.changed_files:
        if change.path != plan.crypttab:
            click.echo(f"{verbs[change.change]} {change.path}")
    if commands:
        click.echo(f"Ran: {commands}")
    when = "At the next boot" if commands else "Once the initramfs is rebuilt"
    if enabling:
        click.echo(
            f"{when} the TPM unlocks these volumes; the passphrase prompt stays as the "
            "fallback. Undo with 'sealer boot disable'."
        )
    elif plan.entries or plan.changed_files:
        click.echo(f"{when} these volumes ask for their passphrase again.")
    else:
        click.echo("No crypttab entry uses sealer's keyscript: nothing to undo.")


@boot.command("enable")
@_boot_options("every entry whose source is a LUKS2 volume enrolled with sealer")
@click.option(
    "--hook-source",
    type=click.Path(path_type=Path, file_okay=False),
    metavar="DIR",
    help="The initramfs-hook directory of a sealer source checkout to install the hook and "
    "keyscript from. Default: the one next to the sealer package.",
)
@click.pass_context
def boot_enable(
    ctx: click.Context,
    names: tuple[str, ...],
    crypttab: Path | None,
    root: Path | None,
    dry_run: bool,
    no_update_initramfs: bool,
    as_json: bool,
    hook_source: Path | None,
) -> None:
    """Unlock the chosen crypttab volumes with the TPM at boot.

    Installs the keyscript, the initramfs hook and /etc/sealer/initramfs.conf, adds
    keyscript=/usr/lib/sealer/keyscript to the chosen /etc/crypttab entries (an entry without
    options gets 'luks,keyscript=...'), then runs 'update-initramfs -u'. An entry that
    already uses another keyscript is refused. Running it again changes nothing.

    The passphrase prompt stays as the fallback whenever the TPM does not release the key.
    Undo with 'sealer boot disable'.

    It also says what this boot's kernel command line (under --root: DIR/etc/kernel/cmdline)
    means for the unlock: options that reach a shell (capped first) or skip the initramfs.
    """
    from sealer.install.bootopts import cmdline_findings
    from sealer.install.bootwire import WireRequest, apply, plan_enable

    def action() -> None:
        request = WireRequest(
            names=names,
            root=root,
            crypttab=crypttab,
            hook_source=hook_source,
            update_initramfs=not no_update_initramfs,
        )
        plan = plan_enable(request)
        if not dry_run:
            apply(plan, progress(as_json))
        _report_plan(plan, dry_run, as_json, cmdline_findings(root))

    run_command(ctx, as_json, action)


@boot.command("disable")
@_boot_options("every entry that uses sealer's keyscript")
@click.pass_context
def boot_disable(
    ctx: click.Context,
    names: tuple[str, ...],
    crypttab: Path | None,
    root: Path | None,
    dry_run: bool,
    no_update_initramfs: bool,
    as_json: bool,
) -> None:
    """Undo 'sealer boot enable': the passphrase prompt is back at boot.

    Removes keyscript=/usr/lib/sealer/keyscript from the chosen /etc/crypttab entries (any
    other option, including 'luks', stays). Once no entry uses it, also removes the
    keyscript, the initramfs hook and /etc/sealer/initramfs.conf. Then runs
    'update-initramfs -u'. The TPM enrollments stay in the volumes ('sealer remove' takes
    them away).
    """
    from sealer.install.bootwire import WireRequest, apply, plan_disable

    def action() -> None:
        request = WireRequest(
            names=names, root=root, crypttab=crypttab, update_initramfs=not no_update_initramfs
        )
        plan = plan_disable(request)
        if not dry_run:
            apply(plan, progress(as_json))
        _report_plan(plan, dry_run, as_json)

    run_command(ctx, as_json, action)


def _register_commands() -> None:
    from sealer import cli_interop, cli_measured, cli_policy, cli_recovery, cli_tpm

    for command in (
        *cli_measured.COMMANDS, *cli_policy.COMMANDS, *cli_interop.COMMANDS,
        *cli_recovery.COMMANDS, *cli_tpm.COMMANDS,
    ):  # fmt: skip
        main.add_command(command)


_register_commands()
