"""``sealer enroll``: add a TPM-sealed keyslot (and optionally a recovery key) to a volume."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sealer.errors import HeaderFullError, SealerError, UsageError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, enrollments
from sealer.luks.header import LuksHeader
from sealer.luks.passphrase import keyslot_passphrase
from sealer.luks.token import (
    ENROLLMENT_ID_BYTES,
    PolicyKeyRef,
    RecoveryRef,
    RetirementRef,
    RevocationRef,
    SealerToken,
)
from sealer.measure.coverage import (
    CHAIN_NAMES,
    DEFAULT_PCRS,
    UNKNOWN,
    Coverage,
    coverage,
    coverage_warnings,
    gap_message,
    gaps,
)
from sealer.measure.eventlog import FIRMWARE_LOG, EventLog, EventLogError, read_event_log
from sealer.measure.measurements import event_record, measurements_of, replay
from sealer.pcrs import Bank, PcrValues, format_pcrs
from sealer.policy import keys, revocation
from sealer.policy.approval import EventRecord, sign_approval
from sealer.policy.binding import Binding, check_cap_pcr
from sealer.policy.retirement import counter_tag
from sealer.policy.revocation import REVOCATION_INDEX, RevocationIndex
from sealer.services.escrow import Escrow, escrow_key
from sealer.services.leftovers import clear_interrupted_enrollment, free_counter
from sealer.services.secrets import new_recovery_key, pin_auth_value
from sealer.services.tpmguard import secure_tpm
from sealer.tpm.connection import connect
from sealer.tpm.nv import ensure_revocation_index, read_revoked_bits
from sealer.tpm.pcr import read_pcrs
from sealer.tpm.policykey import policy_key_name
from sealer.tpm.retirement import define_counter
from sealer.tpm.seal import seal
from sealer.tpm.srk import SRK_HANDLE, ensure_srk

SECRET_BYTES = 32
PIN_SALT_BYTES = 16

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EnrollRequest:
    """Everything ``sealer enroll`` needs to bind a volume to this TPM and boot state."""

    device: str
    unlock_key: bytes
    bank: Bank
    pcrs: tuple[int, ...]
    expected: Mapping[int, bytes]  # explicit values that replace the current ones
    cap_pcr: int
    pin: bytes | None
    recovery_key: bool
    state_dir: Path
    tcti: str | None
    # The event log to check the binding against: None reads this boot's, if it has one.
    log_path: Path | None = None
    # A vendor's policy key (PEM): its approvals are accepted too, and it alone may revoke.
    vendor_key_pem: str | None = None
    # Escrow the recovery key to the organisation (checked already); needs recovery_key.
    escrow: Escrow | None = None
    # The machine key's file in state_dir ('sealer key rotate' enrolls with the next key).
    machine_key_file: str = keys.MACHINE_KEY_FILE
    # A recovery keyslot an earlier enrollment recorded, which the new token takes over
    # ('sealer key rotate'); never together with recovery_key.
    keep_recovery: RecoveryRef | None = None
    # Enroll even when the binding leaves the kernel, the initrd or the command line free
    # in this boot (warnings then); otherwise that is refused before anything changes.
    allow_unbound: bool = False


@dataclass(frozen=True)
class EnrollResult:
    """What an enrollment added to the volume: its token, keyslots and approved state."""

    device: str
    uuid: str
    token_id: int
    keyslot: int
    bank: str
    approved: PcrValues
    srk_name: bytes
    pin: bool
    recovery_keyslot: int | None = None
    recovery_key: str | None = None
    warnings: list[str] = field(default_factory=list)
    escrow_record: Path | None = None  # the record of the recovery key, when escrowed


def check_request(req: EnrollRequest) -> None:
    """Refuse a request that contradicts itself, before anything is read or changed.

    UsageError when the capping PCR is also bound, a --pcr value is for an unselected PCR, or an
    option needs another that is missing.
    """
    check_choices(req.cap_pcr, req.pcrs, req.expected, req.escrow is not None, req.recovery_key)


def check_choices(
    cap_pcr: int,
    pcrs: Sequence[int],
    expected: Mapping[int, bytes],
    escrow: bool,
    recovery_key: bool,
) -> None:
    """``check_request`` on the choices alone, so the CLI can make it before any prompt."""
    check_cap_pcr(cap_pcr)
    if cap_pcr in pcrs:
        raise UsageError(
            f"PCR {cap_pcr} is the capping PCR and cannot also be a bound PCR",
            "it is always bound to its value before unlock; drop it from --pcrs or change "
            "--cap-pcr",
        )
    stray = sorted(set(expected) - set(pcrs))
    if stray:
        raise UsageError(
            f"--pcr gives a value for PCR {format_pcrs(stray)}, which --pcrs does not select"
        )
    check_escrow_wanted(escrow, recovery_key)


def check_escrow_wanted(escrow: bool, recovery_key: bool) -> None:
    """UsageError when --escrow-cert is given without a recovery key to escrow."""
    if escrow and not recovery_key:
        raise UsageError(
            "--escrow-cert escrows the recovery key, and there is none", "add --recovery-key"
        )


def preflight(device: str, tcti: str | None, cap_pcr: int) -> None:
    """What enroll can check before anyone types a secret: the capping PCR, that DEVICE is a
    LUKS2 volume (exit 3 otherwise), and that the TPM is reachable (exit 4). A passphrase
    typed for a command that was bound to fail is a passphrase typed in vain."""
    check_cap_pcr(cap_pcr)
    cryptsetup.read_header(device)
    require_tpm(tcti)


def require_tpm(tcti: str | None) -> None:
    """TPMUnavailableError (exit 4) unless a TPM can be reached at ``tcti``."""
    with connect(tcti):
        pass  # opening the transport proves a TPM answers there; no command is sent


def _plan_slots(header: LuksHeader, want_recovery: bool) -> tuple[int, int, int | None]:
    """(token id, TPM keyslot, recovery keyslot), or HeaderFullError before anything changes."""
    token_id = header.free_token_id()
    if token_id is None:
        raise HeaderFullError(
            f"{header.device} has no free LUKS2 token slot (all 32 are used)",
            "remove an unused token with 'cryptsetup token remove --token-id N' first",
        )
    free = [n for n in range(32) if n not in header.keyslots]
    needed = 2 if want_recovery else 1
    if len(free) < needed:
        raise HeaderFullError(
            f"{header.device} has {len(free)} free keyslot(s), enrollment needs {needed}",
            "remove an unused keyslot with 'cryptsetup luksKillSlot' first",
        )
    return token_id, free[0], free[1] if want_recovery else None


def boot_log(log_path: Path | None) -> tuple[EventLog | None, list[str]]:
    """The event log to check the binding with (None when there is none), and warnings.

    A log the user named (``log_path``) must be readable; this boot's own log only helps, so
    when it cannot be read the enrollment goes on with a warning.
    """
    if log_path is not None:
        return read_event_log(log_path), []
    if not FIRMWARE_LOG.exists():
        return None, []  # no TPM event log (no TPM driver, or a software TPM): nothing to check
    try:
        return read_event_log(None), []
    except EventLogError as exc:
        return None, [f"the binding was not checked against this boot's event log: {exc.message}"]


DEFAULT_BINDING = DEFAULT_PCRS[UNKNOWN]  # without an event log to choose from: PCRs 4,7


@dataclass(frozen=True)
class BindingChoice:
    """The PCRs an enrollment binds, and why those."""

    pcrs: tuple[int, ...]
    source: str  # "--pcrs" (given) or "default"
    chain: str | None  # the boot chain the log shows (coverage.UKI, ...); None: no log
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "pcrs": list(self.pcrs),
            "source": self.source,
            "boot_chain": self.chain,
            "reason": self.reason,
        }


def _chain_reason(found: Coverage) -> str:
    parts = [
        f"the {what} into PCR {format_pcrs(pcrs)}" for what, pcrs in found.items() if pcrs
    ]
    measured = ", ".join(parts) if parts else "nothing it starts into any PCR"
    return f"this boot was started by {CHAIN_NAMES[found.chain]}, which measures {measured}"


def choose_binding(
    pcrs: tuple[int, ...] | None, log: EventLog | None, *, allow_unbound: bool
) -> BindingChoice:
    """The binding to enroll: ``pcrs`` when given, else the default for this boot's chain.

    With this boot's event log, a UKI gets PCRs 4,7, a kernel started through its EFI stub
    with Linux's initrd event 4,7,9 and GRUB 4,7,8,9; without one, 4,7. UsageError (before
    any change or prompt) when the binding leaves the kernel, the initrd or the command line
    free in this boot, unless ``allow_unbound``.
    """
    found = coverage(log) if log is not None else None
    if pcrs is not None:
        source, chosen = "--pcrs", pcrs
        reason = "given with --pcrs"
        if found is not None:
            reason += f"; {_chain_reason(found)}"
    elif found is None:
        source, chosen = "default", DEFAULT_BINDING
        reason = "no event log of this boot to choose from: the default binding"
    else:
        source, chosen = "default", DEFAULT_PCRS[found.chain]
        reason = (
            f"{_chain_reason(found)}: PCRs {format_pcrs(chosen)} bind them, with the Secure "
            "Boot policy (PCR 7)"
            if found.chain != UNKNOWN
            else f"{_chain_reason(found)}: the default binding"
        )
    if log is not None:
        check_binding(log, chosen, allow_unbound=allow_unbound)
    return BindingChoice(tuple(chosen), source, None if found is None else found.chain, reason)


def check_binding(log: EventLog, pcrs: tuple[int, ...], *, allow_unbound: bool) -> None:
    """UsageError when ``pcrs`` leave the kernel, the initrd or the command line free in the
    boot ``log`` records (or this boot measures one of them into no PCR at all), unless
    ``allow_unbound``: then 'enroll' warns instead."""
    if allow_unbound:
        return
    found = coverage(log)
    missing = gaps(found, pcrs)
    if not missing:
        return
    missing.sort(key=lambda g: not g.unmeasured)  # then the last names what to add
    message = "; ".join(gap_message(found, pcrs, g, refusal=True) for g in missing)
    add = sorted({g.add for g in missing if g.add is not None})
    if add:
        raise UsageError(
            f"{message}, or pass --allow-unbound",
            f"--pcrs {format_pcrs(sorted({*pcrs, *add}))} binds the kernel, the initrd and the "
            "command line of this boot",
        )
    raise UsageError(
        message,
        "--allow-unbound enrolls anyway (the TPM then releases the key whatever that part of "
        "the boot is)",
    )


def _log_findings(
    log: EventLog, req: EnrollRequest, current: Mapping[int, bytes]
) -> tuple[list[str], EventRecord | None]:
    """Warnings about the binding, and the event record of the approved state."""
    warnings = coverage_warnings(log, req.pcrs)
    try:
        measurements = measurements_of(log, req.bank)
    except EventLogError as exc:
        return [*warnings, f"the event log cannot explain this binding: {exc.message}"], None
    replayed = replay(measurements, req.bank, log.startup_locality)
    unaccounted = [
        p for p in req.pcrs
        if p not in req.expected and replayed.get(p, req.bank.initial_value(p)) != current[p]
    ]
    if unaccounted:
        warnings.append(
            f"the event log does not account for the value of PCR {format_pcrs(unaccounted)}, "
            "so 'sealer reseal' cannot predict it after an update"
        )
    if req.expected:  # the approved values are not this boot's: its events do not describe them
        return warnings, None
    return warnings, event_record(measurements, req.pcrs)


def _clear_interrupted(header: LuksHeader, tcti: str | None, progress: Progress) -> LuksHeader:
    """Clear what an interrupted enrollment left (this run redoes it); the header after."""
    leftovers = [e for e in enrollments(header, interrupted=True) if not e.token.complete]
    for enrollment in leftovers:
        progress(f"clearing token {enrollment.token_id}, left by an interrupted enrollment")
        clear_interrupted_enrollment(header, enrollment)
        free_counter(enrollment.token_id, enrollment.token.to_json(), tcti)
    return cryptsetup.read_header(header.device) if leftovers else header


def enroll(req: EnrollRequest, progress: Progress) -> EnrollResult:
    """Seal a new secret in the TPM and add it to the volume as a keyslot and a sealer token.

    The secret is bound to the selected PCRs through an approval signed by the machine's policy key
    (created in ``state_dir`` on first use), so later boot images can be approved without enrolling
    again. Returns what was added; with ``recovery_key``, the new recovery key is in the result,
    shown once. An enrollment interrupted earlier is cleared first. HeaderFullError when no keyslot
    or token slot is free; UsageError for a contradictory request; TPM errors as the TPM raises
    them.
    """
    check_request(req)
    header = cryptsetup.read_header(req.device)
    # Before any change: a bad --eventlog changes nothing.
    log, log_warnings = boot_log(req.log_path)
    if log is not None:  # the CLI checked it before any prompt; other callers too
        check_binding(log, req.pcrs, allow_unbound=req.allow_unbound)
    header = _clear_interrupted(header, req.tcti, progress)
    token_id, keyslot, recovery_slot = _plan_slots(header, req.recovery_key)

    machine_key = keys.load_or_create_machine_key(req.state_dir, req.machine_key_file)
    key_pem = keys.public_pem(machine_key)
    key_name = policy_key_name(key_pem)
    pin_salt = os.urandom(PIN_SALT_BYTES) if req.pin is not None else None
    auth_value = pin_auth_value(req.pin, pin_salt) if req.pin and pin_salt else b""
    secret = os.urandom(SECRET_BYTES)
    warnings = list(log_warnings)
    trusted = [PolicyKeyRef(role="machine", public_pem=key_pem, name=key_name)]
    if req.vendor_key_pem is not None:
        vendor_pem = keys.normalized_public_pem(req.vendor_key_pem, "the vendor key")
        trusted.append(
            PolicyKeyRef(role="vendor", public_pem=vendor_pem, name=policy_key_name(vendor_pem))
        )
    # The vendor, when there is one, is the revocation authority: its statements then serve
    # every machine of the fleet (the field's name is the same everywhere).
    authority = trusted[-1]
    field = RevocationIndex(REVOCATION_INDEX, authority.name)
    enrollment_id = os.urandom(ENROLLMENT_ID_BYTES)
    binding = Binding(req.bank, req.pcrs, req.cap_pcr, enrollment_id)

    progress("sealing a new secret in the TPM")
    with connect(req.tcti) as ctx:
        srk = ensure_srk(ctx, SRK_HANDLE)
        warnings += secure_tpm(ctx, srk, req.state_dir, req.escrow, progress)
        nv_name = ensure_revocation_index(ctx, field)
        level = revocation.level_of(read_revoked_bits(ctx, field.index) or 0)
        counter = define_counter(ctx, counter_tag(enrollment_id))
        current = read_pcrs(ctx, req.bank, [*req.pcrs, req.cap_pcr])
        blob = seal(
            ctx,
            srk,
            secret,
            binding.object_policy(
                [(k.role, k.name) for k in trusted], with_pin=pin_salt is not None
            ),
            auth_value,
        )
    initial_cap = req.bank.initial_value(req.cap_pcr)
    if current[req.cap_pcr] != initial_cap:
        warnings.append(
            f"PCR {req.cap_pcr} was already extended in this boot, so the TPM will release "
            "the key only after the next reboot ('sealer unlock --test' fails until then)"
        )
    approved = {p: req.expected.get(p, current[p]) for p in req.pcrs}
    approved[req.cap_pcr] = initial_cap
    record = None
    if log is not None:
        findings, record = _log_findings(log, req, current)
        warnings += findings
    approval = sign_approval(
        machine_key, key_name, req.bank, [approved], comment="enroll", events=[record],
        release=(level, nv_name), policy_ref=binding.policy_ref("machine"),
        epoch=(counter.value, counter.name),
    )

    token = SealerToken(
        keyslot=keyslot,
        srk_handle=srk.persistent,
        srk_name=srk.name,
        srk_public=srk.public,
        pcr_bank=req.bank.name,
        pcrs=req.pcrs,
        cap_pcr=req.cap_pcr,
        sealed_public=blob.public,
        sealed_private=blob.private,
        pin_salt=pin_salt,
        policy_keys=tuple(trusted),
        approvals=(approval.to_json(),),
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        revocation=RevocationRef(field.index, nv_name, authority.role),
        complete=False,
        recovery=None if recovery_slot is None else RecoveryRef(None, pending=recovery_slot),
        enrollment_id=binding.enrollment_id,
        retirement=RetirementRef(counter.index, counter.name),
    )
    recovery = new_recovery_key() if recovery_slot is not None else None
    written = _write_enrollment(
        req, header.uuid, token_id, token, keyslot_passphrase(secret), recovery, progress
    )
    warnings += written.warnings
    return EnrollResult(
        device=req.device,
        uuid=header.uuid,
        token_id=token_id,
        keyslot=keyslot,
        bank=req.bank.name,
        approved=approved,
        srk_name=srk.name,
        pin=pin_salt is not None,
        warnings=warnings,
        recovery_keyslot=recovery_slot,
        recovery_key=recovery,
        escrow_record=written.escrow_record,
    )


@dataclass(frozen=True)
class _Written:
    warnings: list[str]
    escrow_record: Path | None


def _write_enrollment(
    req: EnrollRequest,
    uuid: str,
    token_id: int,
    token: SealerToken,
    tpm_key: bytes,
    recovery: str | None,
    progress: Progress,
) -> _Written:
    """Write the enrollment to the header so that an interruption anywhere can be undone.

    The token goes in first, incomplete, naming the keyslots about to be added: whatever
    an interruption leaves, 'sealer status' can name and the next 'sealer enroll' (or
    'sealer remove') can clear. Only the last write makes the enrollment usable, and the
    caller prints the recovery key right after it. An escrowed recovery key's record is
    written (durably) just before that last write, so a usable recovery key is always an
    escrowed one; a record whose enrollment a rerun clears names a keyslot that is gone
    (and the rerun's record for that keyslot replaces it).
    """
    warnings = []
    record = None
    progress(f"writing token {token_id} (incomplete until the keyslots are in)")
    cryptsetup.import_token(req.device, token_id, token.to_json())
    try:
        # luksAddKey checks the passphrase itself: a wrong one fails here, before any
        # keyslot changes. Checking it separately first would cost a second run of its
        # (slow) KDF.
        progress(f"checking the passphrase and adding keyslot {token.keyslot} for the TPM")
        cryptsetup.add_keyslot(
            req.device, unlock_key=req.unlock_key, new_key=tpm_key, slot=token.keyslot,
            minimal_kdf=True,
        )
        try:
            cryptsetup.prefer_keyslot(req.device, token.keyslot)
        except SealerError as error:  # only a boot-time cost: the enrollment works without it
            warnings.append(f"keyslot {token.keyslot} is not tried first at boot: {error.message}")
        if recovery is not None and token.recovery is not None:
            slot = token.recovery.pending
            assert slot is not None
            progress(f"adding keyslot {slot} for the recovery key")
            cryptsetup.add_keyslot(
                # The new TPM keyslot authorises this one: its KDF is cheap, the
                # passphrase's is not.
                req.device, unlock_key=tpm_key, new_key=recovery.encode("ascii"), slot=slot,
                minimal_kdf=True,
            )
            token = replace(token, recovery=RecoveryRef(keyslot=slot))
            if req.escrow is not None:
                progress(f"escrowing the recovery key to {req.escrow.certificate.subject}")
                record = escrow_key(
                    req.escrow, device=req.device, uuid=uuid, token_id=token_id, keyslot=slot,
                    key=recovery, keyslot_salt=cryptsetup.keyslot_salt(req.device, slot),
                )
        if req.keep_recovery is not None:
            # Only the complete token names a recovery keyslot it takes over: an incomplete
            # one's keyslots are cleared by the next run, and that one must stay.
            token = replace(token, recovery=req.keep_recovery)
        progress(f"completing token {token_id}")
        cryptsetup.import_token(
            req.device, token_id, replace(token, complete=True).to_json(), replace=True
        )
    except SealerError:
        # Undo what this run added, so that a wrong passphrase leaves the header as it was.
        # Should the undo fail too, the incomplete token still names what to clear.
        with contextlib.suppress(SealerError):
            now = cryptsetup.read_header(req.device)
            clear_interrupted_enrollment(now, Enrollment(token_id, token))
            free_counter(token_id, token.to_json(), req.tcti)
        raise
    return _Written(warnings, record)
