"""The boot group: ``sealer boot enable`` and ``sealer boot disable``.

Parse, call the install-time wiring (sealer.install.bootwire: a plan, then its application),
print what the plan changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealer.cli.common import (
    DIRECTORY,
    FILE,
    F,
    emit_json,
    json_option,
    option_group,
    progress,
    warn,
)
from sealer.cli.results import BootPlanOutput

if TYPE_CHECKING:
    from sealer.install.bootopts import BootOptionFinding
    from sealer.install.bootwire import Plan
    from sealer.services.nextboot import DeviceVerdict


@click.group()
def boot() -> None:
    """Wire the boot-time unlocker into the initramfs (initramfs-tools or dracut).

    It finds which one this system builds its initramfs with (dpkg's record of the
    initramfs-tools and dracut packages; dracut-core alone does not count), or takes
    --initramfs. With initramfs-tools, 'sealer boot enable' writes, as root:

    \b
      /etc/crypttab                      keyscript=/usr/lib/sealer/keyscript added to the
                                         chosen entries; every other line stays as it is
      /usr/lib/sealer/keyscript          run by cryptsetup to get those volumes' keys
      /etc/initramfs-tools/hooks/sealer  puts the unlocker into the initramfs
      /etc/initramfs-tools/scripts/init-bottom/sealer
                                         caps PCR 15 once every volume is open
      /etc/sealer/initramfs.conf         which Python interpreter has sealer installed
    then runs 'update-initramfs -u'. With dracut it writes:

    \b
      /usr/lib/dracut/modules.d/90sealer sealer's dracut module: a password agent that
                                         answers systemd-cryptsetup with the TPM's key,
                                         and the capping service
      /etc/dracut.conf.d/90-sealer.conf  adds the module to every initramfs
      /etc/sealer/initramfs.conf         which Python interpreter has sealer installed
    then runs 'dracut --force' for the newest kernel; /etc/crypttab stays as it is.

    Both also install the kernel hook that approves the next boot after a kernel update
    (/etc/kernel/postinst.d/zzz-sealer) and the prune unit. Look first with --dry-run.

    At boot the keyscript (initramfs-tools) or the password agent (dracut) asks the TPM for
    the key. When anything is unexpected it says why in one line and the usual passphrase
    prompt appears: the passphrase and the recovery key keep working. Undo everything with
    'sealer boot disable'.
    """


def _wiring_options(default_choice: str) -> Callable[[F], F]:
    """The options enable and disable share; ``default_choice`` says what --name defaults to."""
    return option_group(
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
            type=FILE,
            metavar="PATH",
            help="The crypttab to change. Default: /etc/crypttab (under --root).",
        ),
        click.option(
            "--root",
            type=click.Path(path_type=Path, file_okay=False, exists=True),
            metavar="DIR",
            help="Change the files under DIR (a chroot or image tree) instead of this "
            "machine's; the initramfs is then not rebuilt: rebuild it inside DIR.",
        ),
        click.option(
            "--initramfs",
            type=click.Choice(["auto", "initramfs-tools", "dracut"]),
            default="auto",
            show_default=True,
            help="The initramfs generator to wire. auto: dracut when dpkg records the dracut "
            "package as installed (dracut-core alone does not count; without a dpkg database: "
            "when only dracut's kernel hook is there), initramfs-tools otherwise; under --root "
            "read in DIR.",
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
            help="Do not rebuild the initramfs ('update-initramfs -u' or 'dracut --force'); "
            "the change takes effect at the next rebuild.",
        ),
        json_option("Print the plan or result as JSON."),
    )


def _report_plan(
    plan: Plan,
    dry_run: bool,
    as_json: bool,
    boot_options: Sequence[BootOptionFinding] | None = None,
    verdicts: Sequence[DeviceVerdict] | None = None,
) -> None:
    """Print what a boot plan changes (or would change, with --dry-run), and, for enable,
    what the kernel command line's options mean for the unlock (``boot_options``) and
    whether the next boot unlocks each enrolled volume (``verdicts``)."""
    from sealer.install.crypttab import KEYSCRIPT_OPTION

    for warning in plan.warnings:
        warn(warning)
    if as_json:
        emit_json(BootPlanOutput(plan, dry_run, boot_options, verdicts))
        return
    for note in plan.notes:
        click.echo(f"sealer: note: {note}", err=True)
    generator = plan.initramfs.generator
    click.echo(f"Initramfs generator: {generator} ({plan.initramfs.reason})")
    for finding in boot_options or []:
        click.echo(f"sealer: boot option {finding.line()}", err=True)
    commands = ", ".join(" ".join(argv) for argv in plan.commands)
    if dry_run:
        for change in plan.changed_files:
            click.echo(change.diff(), nl=False)
        if not plan.changed_files:
            click.echo("No file would change.")
        for directory in plan.remove_dirs:
            click.echo(f"Would remove {directory}/ (when empty)")
        if commands:
            click.echo(f"Would run: {commands}")
        click.echo("Dry run: nothing was changed.")
        return
    enabling = plan.action == "enable"
    for entry in plan.entries:
        where = f"{plan.crypttab}: {entry.name} (line {entry.line})"
        if enabling and generator == "dracut":
            click.echo(f"{where}: sealer's password agent answers its passphrase request")
            continue
        if enabling:
            state = "now uses" if entry.changed else "already uses"
        else:
            state = "no longer uses" if entry.changed else "did not use"
        click.echo(f"{where} {state} {KEYSCRIPT_OPTION}")
    verbs = {"create": "Installed", "update": "Updated", "remove": "Removed"}
    for change in plan.changed_files:
        if change.path != plan.crypttab:
            click.echo(f"{verbs[change.change]} {change.path}")
    for directory in plan.remove_dirs:
        click.echo(f"Removed {directory}/ (when empty)")
    if commands:
        click.echo(f"Ran: {commands}")
    when = "At the next boot" if commands else "Once the initramfs is rebuilt"
    refused = [v for v in verdicts or () if v.unlocks is not True]
    if enabling and refused:
        for v in refused:
            warn(f"the next boot will ask for the passphrase of {v.device}: {v.verdict['reason']}")
        click.echo(
            "The initramfs is wired, but the next boot is NOT approved for every volume (see "
            "above): it asks for the passphrase there. 'sealer status --next-boot' rechecks."
        )
    elif enabling:
        click.echo(
            f"{when} the TPM unlocks these volumes; the passphrase prompt stays as the "
            "fallback. Undo with 'sealer boot disable'."
        )
    elif plan.entries or plan.changed_files:
        click.echo(f"{when} these volumes ask for their passphrase again.")
    else:
        click.echo("sealer is not wired into the initramfs: nothing to undo.")


@boot.command("enable")
@_wiring_options("every entry whose source is a LUKS2 volume enrolled with sealer")
@click.option(
    "--hook-source",
    type=DIRECTORY,
    metavar="DIR",
    help="A directory laid out like sealer/install/hookfiles of a sealer checkout to install "
    "the hook and keyscript from. Default: the hook files installed with the sealer package.",
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
    initramfs: str,
    hook_source: Path | None,
) -> None:
    """Unlock the chosen crypttab volumes with the TPM at boot.

    With initramfs-tools: installs the keyscript, the initramfs hook and
    /etc/sealer/initramfs.conf, adds keyscript=/usr/lib/sealer/keyscript to the chosen
    /etc/crypttab entries (an entry without options gets 'luks,keyscript=...'), then runs
    'update-initramfs -u'. An entry that already uses another keyscript is refused.

    With dracut: installs the dracut module /usr/lib/dracut/modules.d/90sealer,
    /etc/dracut.conf.d/90-sealer.conf and /etc/sealer/initramfs.conf, then runs 'dracut
    --force' for the newest kernel; crypttab is not changed and --name is refused (the
    module answers for every enrolled volume). Which one: see --initramfs.

    Both install the kernel hook that approves the next boot and the prune unit. Running
    it again changes nothing.

    The passphrase prompt stays as the fallback whenever the TPM does not release the key.
    Undo with 'sealer boot disable'.

    It also says what this boot's kernel command line (under --root: DIR/etc/kernel/cmdline)
    means for the unlock: options that reach a shell (capped first) or skip the initramfs.
    """
    from sealer.install.bootopts import cmdline_findings
    from sealer.install.bootwire import WireRequest, apply, plan_enable

    request = WireRequest(
        names=names,
        root=root,
        crypttab=crypttab,
        hook_source=hook_source,
        update_initramfs=not no_update_initramfs,
        initramfs=initramfs,
    )
    plan = plan_enable(request)
    verdicts = None
    if not dry_run:
        apply(plan, progress(as_json), relay=lambda line: click.echo(line, err=True))
        if plan.commands:  # the initramfs was rebuilt here, and the hook approved its boot
            verdicts = _next_boot_verdicts(plan, ctx.obj.tcti, as_json)
    _report_plan(plan, dry_run, as_json, cmdline_findings(root), verdicts)


def _next_boot_verdicts(plan: Plan, tcti: str | None, quiet: bool) -> list[DeviceVerdict]:
    """Whether the next boot unlocks each enrolled volume of the plan: the last line of
    'boot enable' is a claim about it, so it is checked, not assumed."""
    from sealer.install.bootwire import resolve_source
    from sealer.services.nextboot import next_boot_of_devices

    devices = dict.fromkeys(
        str(device) for e in plan.entries if (device := resolve_source(e.source)) is not None
    )
    progress(quiet)("checking that the next boot unlocks by TPM")
    return next_boot_of_devices(list(devices), tcti)


@boot.command("disable")
@_wiring_options("every entry that uses sealer's keyscript")
def boot_disable(
    names: tuple[str, ...],
    crypttab: Path | None,
    root: Path | None,
    dry_run: bool,
    no_update_initramfs: bool,
    as_json: bool,
    initramfs: str,
) -> None:
    """Undo 'sealer boot enable': the passphrase prompt is back at boot.

    Removes keyscript=/usr/lib/sealer/keyscript from the chosen /etc/crypttab entries (any
    other option, including 'luks', stays). Once no entry uses it, also removes every file
    'sealer boot enable' installs, for initramfs-tools and for dracut. Then rebuilds the
    initramfs ('update-initramfs -u', or 'dracut --force' for the newest kernel). With
    dracut --name is refused: the module answers for every enrolled volume, so it goes
    as a whole. The TPM enrollments stay in the volumes ('sealer remove' takes them away).
    """
    from sealer.install.bootwire import WireRequest, apply, plan_disable

    request = WireRequest(
        names=names,
        root=root,
        crypttab=crypttab,
        update_initramfs=not no_update_initramfs,
        initramfs=initramfs,
    )
    plan = plan_disable(request)
    if not dry_run:
        apply(plan, progress(as_json), relay=lambda line: click.echo(line, err=True))
    _report_plan(plan, dry_run, as_json)


COMMANDS = (boot,)
