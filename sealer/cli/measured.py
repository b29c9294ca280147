"""Measured-boot commands: ``sealer eventlog``, ``predict``, ``reseal``, ``prune``, ``explain``.

Parse, call the service (sealer.services.bootstate, reseal, explain; sealer.measure.predict),
print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealer.cli.common import (
    check_initrd_has_kernel,
    emit_json,
    enrolled_devices_or,
    eventlog_options,
    image_options,
    json_option,
    progress,
    quiet_option,
    state_dir_option,
    warn,
)
from sealer.cli.results import ApprovalsOutput, EventlogOutput, ExplainOutput, PredictOutput
from sealer.errors import UsageError
from sealer.pcrs import bank_named, format_pcrs, parse_pcr_list

if TYPE_CHECKING:
    from sealer.measure.measurements import Measurement
    from sealer.measure.predict import Change, NextBoot, Prediction
    from sealer.services.explain import Explanation
    from sealer.services.reseal import VolumeApproval


def _next_boots(
    ukis: Sequence[Path], kernel: Path | None, initrd: Path | None, grub_cfg: Path | None
) -> list[NextBoot]:
    from sealer.measure.predict import NextBoot

    if grub_cfg is None:
        check_initrd_has_kernel(kernel, initrd)
    boots = [NextBoot(uki=u) for u in ukis]
    if kernel is not None or grub_cfg is not None:
        boots.append(NextBoot(kernel=kernel, initrd=initrd, grub_cfg=grub_cfg))
    return boots


def _short(digest: bytes | None) -> str:
    return "-" if digest is None else digest.hex()[:16]


def _event_line(m: Measurement) -> str:
    number = "new" if m.event is None else f"#{m.event}"
    return f"{number:>5}  PCR {m.pcr:<2} {m.type_name:<34} {_short(m.digest)}  {m.description}"


def _explained_line(m: Measurement) -> str:
    """An event as explain prints it: GRUB's commands and files named, on one line (a menu
    entry's event holds its whole text: its first line only)."""
    from sealer.measure.difference import grub_event

    grub = grub_event(m)
    if grub is None:
        return _event_line(m).strip()
    number = "new" if m.event is None else f"#{m.event}"
    return f"{number}  PCR {m.pcr:<2} {m.type_name:<34} {_short(m.digest)}  {grub.label()}"


def _change_line(c: Change) -> str:
    where = "new event" if c.event is None else f"event #{c.event}"
    what = "removed" if c.new is None else f"{_short(c.old)} -> {_short(c.new)}"
    return f"  PCR {c.pcr:<2} {where:<10} {c.type_name:<34} {what}  {c.description}"


@click.command("eventlog")
@eventlog_options()
@click.option(
    "--pcr",
    "pcr_filter",
    metavar="N[,N...]",
    help="Show only the events of these PCRs, e.g. '4,7'.",
)
@click.option("--pcr-bank", default="sha256", show_default=True, help="Bank of the digests.")
@json_option("Print events and PCRs as JSON.")
@click.pass_context
def eventlog(
    ctx: click.Context,
    log_path: Path | None,
    offline: bool,
    pcr_filter: str | None,
    pcr_bank: str,
    as_json: bool,
) -> None:
    """Show the firmware's TCG event log and check it against the TPM's PCRs.

    Each event is listed with its number, PCR, type, digest and a decoded description
    (EFI variables, boot applications, systemd-stub sections, the Linux stub's initrd).
    Then each PCR the log extends: its replayed value, its live value, and whether the two
    agree. A PCR that does not agree was extended by something the log does not record,
    and sealer never predicts it.

    \b
    Examples:
      sealer eventlog --pcr 4,7
      sealer eventlog --eventlog captured.bin --offline --json
    """
    from sealer.errors import TPMUnavailableError
    from sealer.services.bootstate import read_boot_state

    bank = bank_named(pcr_bank)
    wanted = list(parse_pcr_list(pcr_filter)) if pcr_filter else list(range(24))
    note = None
    try:
        state = read_boot_state(bank, wanted, log_path=log_path, tcti=ctx.obj.tcti, offline=offline)
    except TPMUnavailableError as exc:
        state = read_boot_state(bank, wanted, log_path=log_path, tcti=None, offline=True)
        note = f"not checked against live PCRs: {exc.message}"
    if offline:
        note = "not checked against live PCRs (--offline)"
    shown = [m for m in state.measurements if m.pcr in wanted]
    pcrs = sorted({m.pcr for m in shown})
    mismatched = set(state.unaccounted())
    if as_json:
        emit_json(
            EventlogOutput(
                bank=bank.name,
                banks=list(state.log.algorithms),
                events=shown,
                pcrs=pcrs,
                replayed=state.replayed,
                live=state.live,
                mismatched=frozenset(mismatched),
                verified=state.verified,
                note=note,
            )
        )
        return
    banks = ", ".join(state.log.algorithms)
    click.echo(f"{len(state.log.events)} events (banks: {banks}); {bank.name} digests shown")
    for m in shown:
        click.echo(_event_line(m))
    click.echo("")
    for p in pcrs:
        if state.live is None:
            verdict = "replayed only"
        elif p in mismatched:
            verdict = f"DIFFERS from live {_short(state.live[p])}: not predictable"
        else:
            verdict = "matches the TPM"
        click.echo(f"PCR {p:<2} {state.replayed[p].hex()}  {verdict}")
    if note:
        click.echo(f"\n{note}")


def _print_prediction(boot: NextBoot, prediction: Prediction, pcrs: Sequence[int]) -> None:
    click.echo(f"Next boot: {boot.describe()}")
    for p in pcrs:
        current = prediction.current.get(p, prediction.bank.initial_value(p))
        if p in prediction.unpredictable:
            click.echo(f"  PCR {p:<2} cannot be predicted: {prediction.unpredictable[p]}")
            continue
        value = prediction.value(p)
        verdict = "unchanged" if value == current else f"changes (now {_short(current)})"
        click.echo(f"  PCR {p:<2} {value.hex()}  {verdict}")
    if prediction.changes:
        click.echo("Events that change:")
        for change in prediction.changes:
            click.echo(_change_line(change))
    else:
        click.echo("No event changes: the next boot measures like this one.")


@click.command("predict")
@image_options()
@eventlog_options()
@click.option(
    "--pcrs",
    "pcrs_text",
    default="4,7,9,11",
    show_default=True,
    help="PCRs to predict.",
)
@click.option("--pcr-bank", default="sha256", show_default=True, help="Bank to predict.")
@json_option("Print the prediction as JSON.")
@click.pass_context
def predict(
    ctx: click.Context,
    ukis: tuple[Path, ...],
    kernel: Path | None,
    initrd: Path | None,
    grub_cfg: Path | None,
    log_path: Path | None,
    offline: bool,
    pcrs_text: str,
    pcr_bank: str,
    as_json: bool,
) -> None:
    """Print the PCR values the next boot will have with new boot images.

    Takes this boot's event log, replaces the events the new UKI (or kernel and initrd)
    changes (PCR 4: the image's Authenticode hash; PCR 11: systemd-stub's section
    measurements; PCR 9: the kernel's initrd and command line), and replays it. PCR 7 is
    checked too: it stays the same only if the same db certificate signed the new image.
    On a boot through shim and GRUB, the new grub.cfg is run as GRUB would run it: PCR 8
    gets its commands and the kernel command line, PCR 9 the files it reads (the config,
    grubenv, the kernel, the initrd). Nothing is changed; 'sealer reseal' approves the
    result.

    \b
    Examples:
      sealer predict --uki /boot/efi/EFI/Linux/debian-6.1.0-27.efi
      sealer predict --kernel /boot/vmlinuz-6.1.0-27-amd64 \\
                     --initrd /boot/initrd.img-6.1.0-27-amd64 --pcrs 4,9
      sealer predict --grub-cfg /boot/grub/grub.cfg --pcrs 4,7,8,9
    """
    from sealer.measure.predict import predict as run_predict
    from sealer.services.bootstate import read_boot_state

    bank = bank_named(pcr_bank)
    pcrs = parse_pcr_list(pcrs_text)
    boots = _next_boots(ukis, kernel, initrd, grub_cfg)
    if not boots:
        raise UsageError("no boot image given", "give --uki FILE, --kernel FILE or --grub-cfg FILE")
    state = read_boot_state(bank, pcrs, log_path=log_path, tcti=ctx.obj.tcti, offline=offline)
    results = [(b, run_predict(state.log, bank, b, state.live)) for b in boots]
    if as_json:
        emit_json(PredictOutput(predictions=results, pcrs=pcrs, verified=state.verified))
        return
    for boot, prediction in results:
        _print_prediction(boot, prediction, pcrs)
    if not state.verified:
        click.echo("(not checked against live PCRs: --offline)")


def _print_approvals(results: Sequence[VolumeApproval], verb: str) -> None:
    for r in results:
        done = verb if r.written else f"would be {verb} (--dry-run)"
        click.echo(
            f"{r.device}, token {r.token_id}: {len(r.states)} boot state(s) approved, "
            f"{r.dropped} dropped; {done}"
        )
        for state in r.states:
            click.echo(f"  - {state.label}")
        for warning in r.warnings:
            warn(warning)


@click.command("reseal")
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@image_options()
@eventlog_options()
@click.option(
    "--approve-current",
    is_flag=True,
    help="Approve this boot's state even though no approval matches it (only after checking, "
    "with 'sealer explain', that the change is yours).",
)
@state_dir_option("Where the machine's policy key is (it signs the approval).")
@click.option("--dry-run", is_flag=True, help="Show what would be approved; change nothing.")
@json_option()
@quiet_option()
@click.pass_context
def reseal(
    ctx: click.Context,
    devices: tuple[str, ...],
    ukis: tuple[Path, ...],
    kernel: Path | None,
    initrd: Path | None,
    grub_cfg: Path | None,
    log_path: Path | None,
    offline: bool,
    approve_current: bool,
    state_dir: Path,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Approve this boot and the next boot's predicted state, without any passphrase.

    For each enrolled volume (every one udev knows when no DEVICE is given), signs one
    approval with the machine's policy key that accepts: this boot's state, the predicted
    state of each new image given, and states approved earlier in this boot (updates still
    waiting for their reboot). Older approved states are dropped. Nothing is unsealed: the
    TPM checks the signature at the next unlock.

    Refuses when this boot is not itself an approved state: a prediction starts from this
    boot's event log, and a tampered boot must not become the template of the next.
    The kernel and initramfs hooks run it after every update.

    \b
    Examples:
      sealer reseal --uki /boot/efi/EFI/Linux/new.efi
      sealer reseal --kernel /boot/vmlinuz-6.1.0-27-amd64 \\
                    --initrd /boot/initrd.img-6.1.0-27-amd64 /dev/nvme0n1p3
    """
    from sealer.services.reseal import ResealRequest
    from sealer.services.reseal import reseal as run_reseal

    request = ResealRequest(
        devices=enrolled_devices_or(devices),
        boots=_next_boots(ukis, kernel, initrd, grub_cfg),
        log_path=log_path,
        offline=offline,
        approve_current=approve_current,
        state_dir=state_dir,
        tcti=ctx.obj.tcti,
        dry_run=dry_run,
    )
    results = run_reseal(request, progress(quiet or as_json))
    if as_json:
        emit_json(ApprovalsOutput(approvals=results))
        return
    _print_approvals(results, "written")
    for r in results:
        for boot, prediction in zip(request.boots, r.predictions, strict=True):
            changed = format_pcrs(p for p in prediction.changed_pcrs() if p in r.pcrs)
            click.echo(f"  {boot.describe()}: PCR {changed or 'none'} change(s)")


@click.command("prune")
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@state_dir_option("Where the machine's policy key is (it signs the approval).")
@click.option("--dry-run", is_flag=True, help="Show what would be dropped; change nothing.")
@json_option()
@click.pass_context
def prune(
    ctx: click.Context, devices: tuple[str, ...], state_dir: Path, dry_run: bool, as_json: bool
) -> None:
    """Drop approved boot states that this boot has made stale.

    Run after a boot that the TPM unlocks (sealer-prune.service does it): keeps the approved
    state that matches this boot and the states approved during this boot (a pending
    update), drops the rest, so an older boot image no longer unlocks. Refuses, changing
    nothing, when this boot matches no approved state.
    """
    from sealer.services.reseal import prune as run_prune

    results = run_prune(enrolled_devices_or(devices), state_dir, ctx.obj.tcti, dry_run)
    if as_json:
        emit_json(ApprovalsOutput(approvals=results))
    else:
        _print_approvals(results, "written")


def _print_explanation(e: Explanation) -> None:
    verdict = "the TPM releases the key" if e.unlocks else "the TPM refuses"
    click.echo(f"{e.device}, token {e.token_id} ({e.bank}): {verdict} in this boot state")
    if e.log_unreadable:
        click.echo(f"  (no event details: {e.log_unreadable})")
    elif not e.verified:
        click.echo("  (event log not checked against live PCRs)")
    for s in e.states:
        head = f"  approval {s.approval}, boot state {s.branch} ({s.comment}, {s.created})"
        if not s.differences:
            click.echo(f"{head}: matches")
            continue
        pcrs = format_pcrs(d.pcr for d in s.differences)
        click.echo(f"{head}: PCR {pcrs} differ")
        for d in s.differences:
            click.echo(f"    PCR {d.pcr}: approved {_short(d.approved)}, now {_short(d.current)}")
            if not d.log_replays:
                click.echo("      the event log does not account for its value")
            if d.recorded:
                for m in d.unapproved:
                    click.echo(f"      not approved: {_explained_line(m)}")
                if d.missing:
                    click.echo(
                        f"      {d.missing} event(s) of the approved state are not in this "
                        "boot (replaced by the ones above, or gone)"
                    )
            else:
                click.echo("      no event record in the approval; this boot's events:")
                for m in d.events:
                    click.echo(f"        {_explained_line(m)}")


@click.command("explain")
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@eventlog_options()
@json_option("Print the explanation as JSON.")
@click.pass_context
def explain(
    ctx: click.Context,
    devices: tuple[str, ...],
    log_path: Path | None,
    offline: bool,
    as_json: bool,
) -> None:
    """Explain why the TPM does or does not release a volume's key in this boot.

    For each approved boot state: the PCRs whose value differs now and, from this boot's
    event log, the events that account for it (number, type, description), e.g. a boot
    application whose Authenticode hash no approval has. Run it after a boot that asked
    for the passphrase.
    """
    from sealer.services.explain import explain_volume

    results = [
        e
        for device in enrolled_devices_or(devices)
        for e in explain_volume(device, log_path=log_path, tcti=ctx.obj.tcti, offline=offline)
    ]
    if as_json:
        emit_json(ExplainOutput(explanations=results))
        return
    for e in results:
        _print_explanation(e)


COMMANDS = (eventlog, predict, reseal, prune, explain)
