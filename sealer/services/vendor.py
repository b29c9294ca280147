"""Vendor-signed approvals and revocation: the release workflow of a fleet.

On the build machine (no TPM): ``sealer.policy.vendor.keygen`` once; for each release,
``sign_release`` predicts the PCRs the release's UKI gives on the target hardware (from a
reference event log of that model) and signs an approval for them, as release number N;
``sign_revocation`` signs a statement that revokes every release below N.

On each machine: ``install`` copies a release's approval into the volume's token (no TPM, no
machine key: the vendor's signature is what the TPM checks), where the boot-time unlocker
finds it with no network; ``revoke`` sets the revocation bits in the TPM, under the vendor's
statement or, when the machine is its own authority, under its own key.

The files' formats and signatures live in sealer.policy.vendor; here is what needs the TPM's
view of a key, the event log or the volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sealer.errors import MeasurementError, RefusedError, StateError, UsageError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, require_enrollments
from sealer.luks.token import PolicyKeyRef
from sealer.measure.eventlog import read_event_log
from sealer.measure.measurements import event_record
from sealer.measure.predict import NextBoot, predict
from sealer.pcrs import Bank
from sealer.policy import keys, revocation
from sealer.policy import vendor as vendor_files
from sealer.policy.approval import Approval, sign_approval, verify_approval
from sealer.policy.binding import VENDOR_BINDING, Binding, check_cap_pcr
from sealer.policy.revocation import REVOCATION_INDEX, RevocationIndex
from sealer.policy.vendor import ApprovalFile, Statement, verify_statement
from sealer.tpm.connection import connect
from sealer.tpm.nv import read_revoked_bits, set_revoked_bits
from sealer.tpm.policykey import policy_key_name

KEEP_VENDOR_APPROVALS = 4  # the newest releases a token keeps (the header has room for more)


# ---------------------------------------------------------------------------------------------
# Releases


def read_approval_file(path: Path) -> ApprovalFile:
    """A vendor's approval file, its signature and key checked."""
    return vendor_files.read_approval_file(path, policy_key_name)


def sign_release(
    key_path: Path,
    boot: NextBoot,
    reference_log: Path,
    bank: Bank,
    pcrs: Sequence[int],
    cap_pcr: int,
    release: int,
    comment: str,
) -> ApprovalFile:
    """An approval, signed with the vendor key, of the PCRs ``boot`` gives on the reference
    hardware (its event log), for release number ``release``."""
    key, pem = vendor_files.load_private_key(key_path)
    revocation.check_release(release)
    # The policyRef says what is approved (bank, PCR selection, capping PCR): the fleet's
    # sealed objects accept it only for the binding they were enrolled with.
    binding = Binding(bank, tuple(pcrs), check_cap_pcr(cap_pcr), enrollment_id=VENDOR_BINDING)
    log = read_event_log(reference_log)
    prediction = predict(log, bank, boot)
    blocked = {p: why for p, why in prediction.unpredictable.items() if p in pcrs}
    if blocked:
        pcr, why = sorted(blocked.items())[0]
        raise MeasurementError(f"cannot predict PCR {pcr} for the {boot.describe()}: {why}")
    values = {p: prediction.value(p) for p in pcrs}
    values[cap_pcr] = bank.initial_value(cap_pcr)
    name = policy_key_name(pem)
    field = RevocationIndex(REVOCATION_INDEX, name)
    approval = sign_approval(
        key, name, bank, [values], comment=comment,
        events=[event_record(prediction.measurements, pcrs)], release=(release, field.name),
        policy_ref=binding.policy_ref("vendor"),
    )
    return ApprovalFile(approval, pem)


# ---------------------------------------------------------------------------------------------
# Installing approvals on a machine


@dataclass(frozen=True)
class Installed:
    """A vendor approval added to a volume's token."""

    device: str
    token_id: int
    release: int
    vendor_approvals: int  # how many the token keeps after this one


def _vendor_key(enrollment: Enrollment, name: bytes) -> PolicyKeyRef | None:
    return next((k for k in enrollment.token.policy_keys if k.name == name), None)


def _check_fits(enrollment: Enrollment, approval: Approval, where: str) -> None:
    token = enrollment.token
    binding = enrollment.binding
    cap_values = [b.get(binding.cap_pcr, b"") for b in approval.branches]
    misfit = binding.check_approval_fits(approval.pcrs, approval.bank, cap_values)
    if misfit or approval.policy_ref != binding.policy_ref("vendor"):
        raise RefusedError(
            f"{where} cannot serve token {enrollment.token_id}: "
            + (misfit or "it was signed for another PCR selection or capping PCR"),
            "sign the release for the PCRs and capping PCR the fleet enrolls "
            "(sealer policy sign --pcrs --cap-pcr)",
        )
    if token.revocation is None or token.revocation.nv_name != approval.nv_name:
        raise RefusedError(
            f"{where} checks another revocation field than token {enrollment.token_id}",
            "the volume was enrolled without this vendor key as its revocation authority",
        )


def install(path: Path, devices: Sequence[str]) -> list[Installed]:
    """Add the release's approval to every enrollment that trusts its vendor key."""
    found = read_approval_file(path)
    approval = found.approval
    assert approval.release is not None  # read_approval_file refuses others
    done = []
    for device in devices:
        header = cryptsetup.read_header(device)
        for enrollment in require_enrollments(header):
            trusted = _vendor_key(enrollment, approval.key_name)
            if trusted is None or trusted.role != "vendor":
                continue
            verify_approval(approval, trusted.public_pem)
            _check_fits(enrollment, approval, str(path))
            token = enrollment.token
            kept = [
                doc for doc in token.approvals
                if not (doc.get("key_name") == approval.key_name.hex()
                        and doc.get("release") == approval.release)
            ]
            vendor = [d for d in kept if d.get("key_name") == approval.key_name.hex()]
            vendor.sort(key=lambda d: int(d.get("release", 0)))
            dropped = vendor[: max(0, len(vendor) + 1 - KEEP_VENDOR_APPROVALS)]
            # Without its unsigned tpm_boot: 'reseal' must never take a vendor's approval for
            # one this machine made during this boot.
            installed = replace(approval, tpm_boot=None).to_json()
            approvals = [d for d in kept if d not in dropped] + [installed]
            new_token = replace(token, approvals=tuple(approvals))
            cryptsetup.import_token(device, enrollment.token_id, new_token.to_json(), replace=True)
            count = len(vendor) - len(dropped) + 1
            done.append(Installed(device, enrollment.token_id, approval.release, count))
    if not done:
        raise RefusedError(
            f"no enrollment on {', '.join(devices)} trusts the key that signed {path}",
            "enroll with 'sealer enroll --trust-vendor-key VENDOR.pub.pem'",
        )
    return done


# ---------------------------------------------------------------------------------------------
# Revocation


def sign_revocation(key_path: Path, below: int) -> Statement:
    """A statement, signed with the vendor key, that revokes every release below ``below``."""
    key, pem = vendor_files.load_private_key(key_path)
    return vendor_files.sign_statement(key, pem, policy_key_name(pem), below)


@dataclass(frozen=True)
class Revoked:
    """A raised revocation level: the NV index, the level before and after, and the volumes that use
    it.
    """

    nv_index: int
    level_before: int
    level_after: int
    devices: tuple[str, ...]


def revoke(
    devices: Sequence[str],
    below: int | None,
    statement_path: Path | None,
    state_dir: Path,
    tcti: str | None,
) -> list[Revoked]:
    """Set the revocation bits of every field the volumes' enrollments check."""
    fields: dict[int, tuple[Enrollment, list[str]]] = {}
    for device in devices:
        for enrollment in require_enrollments(cryptsetup.read_header(device)):
            field = enrollment.token.revocation
            if field is None:
                raise RefusedError(
                    f"token {enrollment.token_id} of {device} was enrolled before revocation "
                    "existed: it has no revocation field",
                    "enroll it again to make its approvals revocable",
                )
            fields.setdefault(field.nv_index, (enrollment, []))[1].append(device)
    statement = vendor_files.read_statement(statement_path) if statement_path else None
    results = []
    for index, (enrollment, on) in fields.items():
        field = enrollment.token.revocation
        assert field is not None
        chosen = _statement_for(enrollment, statement, below, state_dir)
        if chosen.nv_name != field.nv_name or chosen.nv_index != index:
            raise RefusedError(
                "the revocation statement is for another revocation field than the one "
                f"{', '.join(on)} check",
                "use a statement signed by the key the volume was enrolled to trust",
            )
        authority = RevocationIndex(index, policy_key_name(chosen.signer_pem))
        if authority.name != field.nv_name:
            raise RefusedError("the statement's signer is not the field's revocation authority")
        verify_statement(chosen)
        with connect(tcti) as ctx:
            before = read_revoked_bits(ctx, index)
            if before is None:
                raise StateError(f"TPM NV index 0x{index:08x} (the revocation field) is missing")
            set_revoked_bits(ctx, authority, chosen.bits, chosen.signer_pem, chosen.signature_rs)
            after = read_revoked_bits(ctx, index) or 0
        results.append(
            Revoked(index, revocation.level_of(before), revocation.level_of(after), tuple(on))
        )
    return results


def _statement_for(
    enrollment: Enrollment, statement: Statement | None, below: int | None, state_dir: Path
) -> Statement:
    field = enrollment.token.revocation
    assert field is not None
    if field.authority == "machine":
        if below is None:
            raise UsageError("say what to revoke", "give --below N")
        key = keys.load_machine_key(state_dir)
        if key is None:
            raise StateError(f"there is no policy key in {state_dir}", "give --state-dir")
        pem = keys.public_pem(key)
        return vendor_files.sign_statement(key, pem, policy_key_name(pem), below)
    if statement is None:
        raise UsageError(
            "this volume's revocation authority is its vendor: revoking needs the vendor's "
            "signed statement",
            "get one from the vendor ('sealer policy revoke --key VENDOR.pem --below N') and "
            "pass it with --statement FILE",
        )
    if below is not None and revocation.bits_below(below) & ~statement.bits:
        raise UsageError(
            f"the statement revokes releases below {revocation.level_of(statement.bits)}, "
            f"not below {below}"
        )
    return statement
