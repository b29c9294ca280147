"""Policy commands: vendor approvals (``sealer policy ...``), revocation (``sealer revoke``)
and the machine's policy key (``sealer key rotate``).

Parse, call the service (sealer.services.vendor, keyrotate), print.
"""

from __future__ import annotations

from pathlib import Path

import click

from sealer.cli.common import (
    FILE,
    emit_json,
    enrolled_devices_or,
    json_option,
    progress,
    quiet_option,
    state_dir_option,
    warn,
)
from sealer.cli.results import (
    KeyRotateOutput,
    PolicyInstallOutput,
    PolicyShowOutput,
    PolicySignOutput,
    RevokeOutput,
)
from sealer.errors import UsageError
from sealer.pcrs import bank_named, format_pcrs, parse_pcr_list


@click.group()
def policy() -> None:
    """Vendor-signed approvals: one signature per release serves the whole fleet.

    \b
    On the build machine (no TPM needed):
      sealer policy keygen --out vendor.pem          # once: vendor.pem + vendor.pub.pem
      sealer policy sign --key vendor.pem --uki release-7.efi --release 7 \\
          --eventlog reference.log --out release-7.approval
      sealer policy revoke --key vendor.pem --below 7 --out below-7.revocation
    On each machine:
      sealer enroll --trust-vendor-key vendor.pub.pem DEVICE   # at provisioning
      sealer policy install release-7.approval                 # with the update
      sealer revoke --statement below-7.revocation             # when 6 must never boot
    """


@policy.command("keygen")
@click.option("--out", "out", type=FILE, required=True, help="The private key file to create.")
def keygen(out: Path) -> None:
    """Make a vendor policy key: ECC P-256, PKCS#8 PEM (openssl reads it), mode 0600.

    The public half goes next to it as NAME.pub.pem: that is what machines enroll to trust.
    Keep the private key offline (or in an HSM): whoever holds it can approve boot images
    and revoke releases on every machine that trusts it.
    """
    from sealer.policy.vendor import keygen as run_keygen

    public = run_keygen(out)
    click.echo(f"Wrote {out} (private, 0600) and {public} (public).")


@policy.command("sign")
@click.option("--key", "key", type=FILE, required=True, help="The vendor's private key.")
@click.option("--uki", type=FILE, help="The release's signed UKI.")
@click.option("--kernel", type=FILE, help="Or: the release's kernel (EFI stub)...")
@click.option("--initrd", type=FILE, help="...and its initrd.")
@click.option(
    "--eventlog",
    "log_path",
    type=FILE,
    required=True,
    help="A TCG event log captured on the target hardware model (its firmware-owned PCRs).",
)
@click.option(
    "--release",
    type=click.IntRange(0, 63),
    required=True,
    help="The release number, 0-63; 'sealer revoke --below N' retires those below N.",
)
@click.option(
    "--pcrs",
    "pcrs_text",
    default="4,7",
    show_default=True,
    help="The PCRs the fleet enrolls (must match their enrollment).",
)
@click.option("--pcr-bank", default="sha256", show_default=True)
@click.option("--cap-pcr", default=15, show_default=True, type=click.IntRange(0, 23))
@click.option("--comment", default="", help="Shown by 'sealer policy show' and 'sealer status'.")
@click.option("--out", "out", type=FILE, required=True, help="The approval file to write.")
@json_option("Print the approval as JSON.")
def sign(
    key: Path,
    uki: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    log_path: Path,
    release: int,
    pcrs_text: str,
    pcr_bank: str,
    cap_pcr: int,
    comment: str,
    out: Path,
    as_json: bool,
) -> None:
    """Sign an approval of the PCRs a release's boot image gives on the target hardware.

    Predicts the PCRs from the reference event log with the release's image in place of the
    logged one (see 'sealer predict'), and signs them with the vendor key as release N.
    Machines that trust the key accept it at their next boot once it is installed
    ('sealer policy install'): no re-sealing on the machine.
    """
    from sealer.measure.predict import NextBoot
    from sealer.policy.vendor import write_json
    from sealer.services.vendor import sign_release

    if (uki is None) == (kernel is None):
        raise UsageError("give --uki, or --kernel with --initrd")
    image = uki or kernel
    assert image is not None  # one of the two, checked above
    boot = NextBoot(uki=uki, kernel=kernel, initrd=initrd)
    pcrs = parse_pcr_list(pcrs_text)
    note = comment or f"release {release}: {image.name}"
    signed = sign_release(key, boot, log_path, bank_named(pcr_bank), pcrs, cap_pcr, release, note)
    write_json(out, signed.to_json())
    if as_json:
        emit_json(PolicySignOutput(signed=signed))
    else:
        click.echo(f"Wrote {out}: release {release}, PCR {format_pcrs(signed.approval.pcrs)}.")


@policy.command("show")
@click.argument("file", type=FILE)
@json_option("Print the approval as JSON.")
def show(file: Path, as_json: bool) -> None:
    """Print what an approval file approves, after checking its signature."""
    from sealer.services.vendor import read_approval_file

    shown = PolicyShowOutput(file=file, approval=read_approval_file(file).approval)
    if as_json:
        emit_json(shown)
        return
    summary = shown.to_json()
    click.echo(f"{file}: release {summary['release']} ({summary['comment']})")
    click.echo(f"  signed {summary['created']} by key {summary['key_name'][:20]}...: valid")
    for state in summary["boot_states"]:
        for pcr, value in state.items():
            click.echo(f"  {summary['pcr_bank']} PCR {pcr:>2} = {value}")


@policy.command("install")
@click.argument("file", type=FILE)
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@json_option()
def install(file: Path, devices: tuple[str, ...], as_json: bool) -> None:
    """Add a vendor approval to the tokens of the volumes that trust its key.

    No TPM and no passphrase: the token only carries the approval; the TPM checks the
    vendor's signature at unlock. The token keeps the newest four releases.
    """
    from sealer.services.vendor import install as run_install

    done = run_install(file, enrolled_devices_or(devices))
    if as_json:
        emit_json(PolicyInstallOutput(installed=done))
        return
    for d in done:
        click.echo(
            f"{d.device}, token {d.token_id}: release {d.release} approved "
            f"({d.vendor_approvals} vendor release(s) kept)."
        )


@policy.command("revoke")
@click.option("--key", "key", type=FILE, required=True, help="The vendor's private key.")
@click.option(
    "--below",
    type=click.IntRange(1, 64),
    required=True,
    help="Revoke every release numbered below N.",
)
@click.option("--out", "out", type=FILE, required=True, help="The statement file to write.")
def policy_revoke(key: Path, below: int, out: Path) -> None:
    """Sign a statement that revokes every release below N, for 'sealer revoke --statement'.

    It allows setting exactly those revocation bits (PolicyCpHash), nothing else.
    """
    from sealer.policy.vendor import write_json
    from sealer.services.vendor import sign_revocation

    write_json(out, sign_revocation(key, below).to_json())
    click.echo(f"Wrote {out}: revokes releases below {below}.")


@click.command("revoke")
@click.argument("devices", nargs=-1, metavar="[DEVICE]...")
@click.option("--below", type=click.IntRange(1, 64), help="Revoke every release below N.")
@click.option("--statement", type=FILE, help="The vendor's signed revocation statement.")
@state_dir_option("Where the machine's policy key is (when the machine is its own authority).")
@json_option()
@click.pass_context
def revoke(
    ctx: click.Context,
    devices: tuple[str, ...],
    below: int | None,
    statement: Path | None,
    state_dir: Path,
    as_json: bool,
) -> None:
    """Revoke old releases in the TPM: their approvals stop unlocking, for good.

    Sets bits in the TPM's revocation field (monotonic: bits are never cleared). Volumes
    enrolled with --trust-vendor-key need the vendor's statement (--statement); others are
    revoked with this machine's own key (--below N). A revoked boot image falls back to the
    passphrase, saying "this boot image was revoked".
    """
    from sealer.services.vendor import revoke as run_revoke

    if below is None and statement is None:
        raise UsageError("say what to revoke", "give --below N, or --statement FILE")
    done = run_revoke(enrolled_devices_or(devices), below, statement, state_dir, ctx.obj.tcti)
    if as_json:
        emit_json(RevokeOutput(revoked=done))
        return
    for d in done:
        click.echo(
            f"Revocation field 0x{d.nv_index:08x} ({', '.join(d.devices)}): releases below "
            f"{d.level_after} are revoked (before: below {d.level_before})."
        )


@click.group()
def key() -> None:
    """The machine's policy key, which signs this machine's approvals.

    \b
      sealer key rotate /dev/nvme0n1p3 /dev/sda2   # new key; the old one's approvals dead
    """


@key.command("rotate")
@click.argument("devices", nargs=-1)
@click.option(
    "--unlock-key-file",
    metavar="PATH",
    help="Read the passphrase or recovery key from PATH ('-' for standard input) instead of "
    "prompting for each volume. Never give it on the command line.",
)
@click.option(
    "--pin-file",
    metavar="PATH",
    help="Read the new PIN of enrollments that have one from PATH ('-': stdin).",
)
@state_dir_option("The state directory holding the machine's policy key.")
@json_option()
@quiet_option()
@click.pass_context
def rotate_key(
    ctx: click.Context,
    devices: tuple[str, ...],
    unlock_key_file: str | None,
    pin_file: str | None,
    state_dir: Path,
    as_json: bool,
    quiet: bool,
) -> None:
    """Replace the machine's policy key, and retire everything the old one signed.

    Whoever holds a copy of the old key (an old backup of the state directory) could sign
    approvals for this machine's volumes. The sealed object names the key it trusts, so each
    enrollment of DEVICES is made again under a new key (authorised by the passphrase or
    recovery key, asked for each volume), keeping its PCRs, vendor key and recovery key;
    then the old enrollment, its keyslot and its retirement counter are removed, and the new
    key replaces the old one. Give every volume enrolled on this machine: a volume left out
    keeps trusting the old key, and 'sealer reseal' can no longer sign for it. Safe to
    interrupt: run it again with the same volumes to finish.
    """
    from sealer.services.keyrotate import RotateRequest, check, rotate
    from sealer.services.secrets import read_secret

    def secrets(device: str, needs_pin: bool) -> tuple[bytes, bytes | None]:
        unlock = read_secret(unlock_key_file, f"Passphrase or recovery key for {device}")
        if not needs_pin:
            return unlock, None
        return unlock, read_secret(pin_file, f"New TPM PIN for {device}", confirm=True)

    if unlock_key_file == "-" and pin_file == "-":
        raise UsageError("only one secret can come from standard input")
    req = RotateRequest(devices, state_dir, ctx.obj.tcti)
    found = check(req)  # before any secret is asked for
    results = rotate(req, found, secrets, progress(quiet or as_json))
    if as_json:
        emit_json(KeyRotateOutput(rotated=results))
        return
    for r in results:
        for warning in r.warnings:
            warn(warning)
        click.echo(
            f"{r.device}: enrolled under the new key as token(s) "
            f"{', '.join(map(str, r.enrolled)) or '(done earlier)'}; removed token(s) "
            f"{', '.join(map(str, r.removed)) or 'none'}"
        )
    click.echo(f"The new policy key is {state_dir}/policy-key.pem; the old one is gone.")


COMMANDS = (policy, revoke, key)
