"""The ``sealer`` command: the main group, every command group registered on it, and the one
place where a failure becomes a message and an exit code.

Commands are thin: parse, call a service, print. They raise; they never exit. What they
raise is handled here (:class:`SealerGroup`):

- a :class:`sealer.errors.SealerError` exits with its ``exit_code`` (the table below, from
  :class:`sealer.errors.ExitCode`, which the initramfs code uses too), after one line
  ``sealer: MESSAGE (HINT)`` on stderr and, when the command was given ``--json``, the error
  document (:class:`sealer.cli.results.ErrorOutput`) on stdout;
- an interruption (Ctrl-C) exits with 130;
- anything else is a bug: one line ``sealer: internal error: ...`` and exit 1 (``--debug``
  shows the traceback);
- click's own usage errors (unknown option, bad value) keep click's message and exit 2.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, NoReturn

import click

from sealer import __version__
from sealer.cli import boot, measured, migrate, policy, recovery, tpm, volume
from sealer.cli.common import Options, dumps
from sealer.cli.results import ErrorOutput
from sealer.errors import SealerError

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


def fail(error: SealerError, as_json: bool) -> NoReturn:
    """Report ``error`` (JSON document on stdout with ``--json``, one line on stderr) and exit
    with its code."""
    if as_json:
        doc = ErrorOutput(error.message, error.hint, int(error.exit_code)).to_json()
        click.echo(dumps(doc, sort_keys=False))
    click.echo(f"sealer: {error.one_line()}", err=True)
    sys.exit(int(error.exit_code))


class SealerGroup(click.Group):
    """The main group: runs the command, and turns what it raises into an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise  # the command line itself was wrong, or --help/--version: click's way
        except SealerError as error:
            if _options(ctx).debug:
                traceback.print_exc()
            fail(error, _options(ctx).as_json)
        except KeyboardInterrupt:
            click.echo("sealer: interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # a bug: still one line unless asked for the traceback
            options = _options(ctx)
            if options.debug:
                traceback.print_exc()
            internal = SealerError(
                f"internal error: {type(error).__name__}: {error}",
                "rerun with --debug and report it; the volume was not changed by this failure"
                if not options.debug
                else None,
            )
            fail(internal, options.as_json)


def _options(ctx: click.Context) -> Options:
    return ctx.obj if isinstance(ctx.obj, Options) else Options(tcti=None, debug=False)


@click.group(
    cls=SealerGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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


for _module in (volume, boot, measured, policy, migrate, recovery, tpm):
    for _command in _module.COMMANDS:
        main.add_command(_command)
