"""``sealer migrate``: replace a systemd-cryptenroll or clevis TPM binding with sealer's.

The old binding's TPM releases its keyslot's key; that key authorises the new sealer keyslot
(no passphrase typed when the PCRs still match), and the old token and keyslot go only after
the new enrollment has proven that the TPM releases a key the volume accepts.

Every step leaves the volume openable: the passphrase and recovery keyslots are never
touched; until the old binding is removed both bindings work; an interruption after the new
token is written leaves two working bindings, and running migrate again finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sealer.errors import RefusedError, TokenError, UsageError
from sealer.interop.bindings import PinReader, ToolBinding, release_tool_key, tool_bindings
from sealer.luks import cryptsetup
from sealer.luks.token import TOKEN_TYPE
from sealer.pcrs import bank_named
from sealer.services.enroll import EnrollRequest, EnrollResult, enroll
from sealer.services.unlock import release_key

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MigrateRequest:
    """A volume bound by systemd-cryptenroll or clevis, to be moved to a sealer enrollment."""

    device: str
    pcrs: Sequence[int] | None  # None: the PCRs the old binding used
    cap_pcr: int
    keep_old: bool
    state_dir: Path
    tcti: str | None
    vendor_key_pem: str | None = None


@dataclass(frozen=True)
class Migrated:
    """What migrate did: the other tool's binding it replaced, and whether that was removed."""

    device: str
    old_kind: str
    old_token: int
    old_keyslots: tuple[int, ...]
    removed: bool
    enrolled: EnrollResult | None  # None: an earlier, interrupted migrate had enrolled
    warnings: list[str] = field(default_factory=list)


def _enroll_with(
    req: MigrateRequest, key: bytes, bank: str, pcrs: Sequence[int], progress: Progress
) -> EnrollResult:
    return enroll(
        EnrollRequest(
            device=req.device,
            unlock_key=key,  # the old TPM keyslot authorises the new one
            # A clevis binding to no PCRs names no bank: then --pcrs chose the PCRs, and the
            # bank is sealer enroll's default.
            bank=bank_named(bank or "sha256"),
            pcrs=tuple(req.pcrs if req.pcrs is not None else pcrs),
            expected={},
            cap_pcr=req.cap_pcr,
            pin=None,
            recovery_key=False,
            state_dir=req.state_dir,
            tcti=req.tcti,
            vendor_key_pem=req.vendor_key_pem,
            # The old tool's PCRs (or --pcrs) as they are: enroll warns when they leave part
            # of this boot free, as before; migrate does not choose a binding of its own.
            allow_unbound=True,
        ),
        progress,
    )


def _refuse_no_pcrs(req: MigrateRequest, binding: ToolBinding) -> None:
    """A binding to no PCRs would become an approval of the cap PCR alone, whose pre-cap value
    every boot of this machine reaches: it would unlock whatever booted. --pcrs must say."""
    if req.pcrs is None and not binding.pcrs:  # --pcrs itself is checked by enroll
        raise UsageError(
            f"the {binding.tool} binding of {req.device} is bound to no PCRs, and a sealer "
            f"enrollment bound to the cap PCR {req.cap_pcr} alone would unlock on any boot "
            "(nothing was changed)",
            "choose the PCRs to bind with --pcrs, e.g. 'sealer migrate --pcrs 7' for the "
            "Secure Boot state",
        )


def _check_sealer_releases(req: MigrateRequest, read_pin: PinReader) -> None:
    """The old binding goes only once sealer's own opens the volume in this boot state."""
    unsealed = release_key(req.device, token_id=None, tcti=req.tcti, read_pin=read_pin)
    slot = unsealed.enrollment.token.keyslot
    if not cryptsetup.test_key(req.device, unsealed.key, slot):
        raise TokenError(
            f"keyslot {slot} does not accept the key the TPM released for sealer; the old "
            "binding was kept",
            "remove the sealer enrollment with 'sealer remove' and report this",
        )


def migrate(req: MigrateRequest, read_pin: PinReader, progress: Progress) -> Migrated:
    """Move a volume from another tool's TPM binding to a sealer enrollment.

    The other tool's binding releases the key (asking for its PIN through ``read_pin`` if it has
    one), a sealer enrollment is made with it and checked to release, and then, unless ``keep_old``,
    the old token and its keyslot are removed. A rerun after an interruption finishes the job.
    UsageError when the old binding has no PCRs and ``pcrs`` gives none (it would unlock on any
    boot); RefusedError when removing the old binding would leave no passphrase or recovery key
    keyslot (it is then kept).
    """
    header = cryptsetup.read_header(req.device)
    enrolling = not header.tokens_of_type(TOKEN_TYPE)
    readable, _ = tool_bindings(header)
    if enrolling and readable and all(not b.pcrs for b in readable):
        _refuse_no_pcrs(req, readable[0])  # before the TPM (and maybe a PIN) is asked
    progress("asking the TPM for the key of the existing binding")
    old = release_tool_key(header, req.tcti, read_pin)
    binding = old.binding
    if enrolling:
        _refuse_no_pcrs(req, binding)
        enrolled = _enroll_with(req, old.key, binding.pcr_bank, binding.pcrs, progress)
        progress("checking that the TPM releases the new key")
        _check_sealer_releases(req, read_pin)
        warnings = list(enrolled.warnings)
    else:
        # An earlier migrate stopped after enrolling: finish it, if that enrollment works.
        enrolled = None
        _check_sealer_releases(req, read_pin)
        warnings = []
    if req.keep_old:
        return Migrated(req.device, binding.kind, binding.token_id, binding.keyslots, False,
                        enrolled, warnings)
    after = cryptsetup.read_header(req.device)
    if not after.keyslots_without_token():
        raise RefusedError(
            f"{req.device} has no passphrase or recovery key keyslot, so the {binding.tool} "
            "binding is kept as a second way in",
            "add a passphrase (cryptsetup luksAddKey) and run 'sealer migrate' again",
        )
    progress(f"removing the {binding.tool} token {binding.token_id} and its keyslot")
    # Keyslot first, token second (as 'sealer remove' does): an interruption never leaves an
    # anonymous keyslot that looks like a passphrase.
    for slot in binding.keyslots:
        if slot in after.keyslots:
            cryptsetup.kill_keyslot(req.device, slot)
    if binding.token_id in cryptsetup.read_header(req.device).tokens:
        cryptsetup.remove_token(req.device, binding.token_id)
    return Migrated(req.device, binding.kind, binding.token_id, binding.keyslots, True,
                    enrolled, warnings)
