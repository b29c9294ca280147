"""What each command prints with ``--json``: one frozen result class per command.

The JSON documents are an API (the Ansible collection in ansible/ and the fleet report read
them; docs/json.md gives each schema). A command builds its result object from what the
services return and hands it to :func:`sealer.cli.common.emit_json`, which prints
``to_json()`` with two-space indentation and sorted keys. ``to_json`` is the only place a
document's fields are named: change it and docs/json.md together, and only compatibly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealer.install.bootopts import BootOptionFinding
    from sealer.install.bootwire import Plan
    from sealer.measure.measurements import Measurement
    from sealer.measure.predict import NextBoot, Prediction
    from sealer.policy.approval import Approval
    from sealer.policy.vendor import ApprovalFile
    from sealer.services.escrow import Recovered
    from sealer.services.explain import Explanation
    from sealer.services.keyrotate import Rotated
    from sealer.services.nextboot import DeviceVerdict
    from sealer.services.reseal import VolumeApproval
    from sealer.services.vendor import Installed, Revoked


@dataclass(frozen=True)
class ErrorOutput:
    """Any command, when it fails with ``--json``: printed on stdout (keys in this order, not
    sorted), as well as the one-line message on stderr."""

    error: str
    hint: str | None
    exit_code: int

    def to_json(self) -> dict[str, Any]:
        return {"error": self.error, "hint": self.hint, "exit_code": self.exit_code}


# ---------------------------------------------------------------------------------------------
# Volume commands (sealer/cli/volume.py)


@dataclass(frozen=True)
class EnrollOutput:
    """``sealer enroll --json``."""

    device: str
    uuid: str
    token: int
    keyslot: int
    pcr_bank: str
    approved_pcrs: Mapping[int, bytes]
    srk_name: bytes
    pin: bool
    recovery_keyslot: int | None
    recovery_key: str | None  # None when escrowed and not asked to print it
    escrow_record: str | None
    warnings: Sequence[str]
    binding: Mapping[str, Any] | None = None  # which PCRs were bound, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "uuid": self.uuid,
            "token": self.token,
            "keyslot": self.keyslot,
            "pcr_bank": self.pcr_bank,
            "approved_pcrs": {str(p): v.hex() for p, v in self.approved_pcrs.items()},
            "srk_name": self.srk_name.hex(),
            "pin": self.pin,
            "recovery_keyslot": self.recovery_keyslot,
            "recovery_key": self.recovery_key,
            "escrow_record": self.escrow_record,
            "warnings": list(self.warnings),
            "binding": None if self.binding is None else dict(self.binding),
        }


@dataclass(frozen=True)
class UnlockOutput:
    """``sealer unlock --json``."""

    device: str
    token: int
    keyslot: int
    approval: int  # -1 for another tool's binding
    binding: str
    opened: bool
    name: str | None  # --name as given

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "token": self.token,
            "keyslot": self.keyslot,
            "approval": self.approval,
            "binding": self.binding,
            "opened": self.opened,
            "name": self.name,
        }


@dataclass(frozen=True)
class StatusOutput:
    """``sealer status --json``: one report (one DEVICE named) or a list of them.

    The reports are built by sealer.services.status.volume_status (a JSON-ready dict each)."""

    reports: Sequence[Mapping[str, Any]]
    single: bool  # exactly one DEVICE was named: the report itself, not a list

    def to_json(self) -> Any:
        return self.reports[0] if self.single else list(self.reports)


@dataclass(frozen=True)
class RemoveOutput:
    """``sealer remove --json``."""

    device: str
    token: int
    keyslots: Sequence[int]
    retirement_counter: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "token": self.token,
            "keyslots": list(self.keyslots),
            "retirement_counter": self.retirement_counter,
        }


# ---------------------------------------------------------------------------------------------
# Boot wiring (sealer/cli/boot.py)


@dataclass(frozen=True)
class BootPlanOutput:
    """``sealer boot enable --json`` and ``sealer boot disable --json`` (the latter without
    ``boot_options``)."""

    plan: Plan
    dry_run: bool
    boot_options: Sequence[BootOptionFinding] | None  # enable only
    # enable on this machine, after the rebuild: whether the next boot unlocks each volume
    next_boot: Sequence[DeviceVerdict] | None = None

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            **(
                {"boot_options": [f.to_json() for f in self.boot_options]}
                if self.boot_options is not None
                else {}
            ),
            "action": plan.action,
            "dry_run": self.dry_run,
            "initramfs": {
                "generator": plan.initramfs.generator,
                "reason": plan.initramfs.reason,
            },
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
                    **({"diff": f.diff()} if self.dry_run else {}),
                }
                for f in plan.files
            ],
            "commands": [list(argv) for argv in plan.commands],
            "removed_directories": [str(d) for d in plan.remove_dirs],
            "notes": list(plan.notes),
            "warnings": list(plan.warnings),
            **(
                {"next_boot": [v.to_json() for v in self.next_boot]}
                if self.next_boot is not None
                else {}
            ),
        }


# ---------------------------------------------------------------------------------------------
# Measured boot (sealer/cli/measured.py)


@dataclass(frozen=True)
class EventlogOutput:
    """``sealer eventlog --json``."""

    bank: str
    banks: Sequence[str]  # the banks the log records
    events: Sequence[Measurement]  # the events of the PCRs asked for
    pcrs: Sequence[int]  # the PCRs those events extend
    replayed: Mapping[int, bytes]
    live: Mapping[int, bytes] | None  # None: not read (offline, or no TPM)
    mismatched: frozenset[int]  # live PCRs the log does not replay to
    verified: bool
    note: str | None

    def to_json(self) -> dict[str, Any]:
        live = self.live
        return {
            "bank": self.bank,
            "banks": list(self.banks),
            "events": [
                {
                    "event": m.event,
                    "pcr": m.pcr,
                    "type": m.type_name,
                    "digest": m.digest.hex(),
                    "description": m.description,
                }
                for m in self.events
            ],
            "pcrs": {
                str(p): {
                    "replayed": self.replayed[p].hex(),
                    "live": live[p].hex() if live else None,
                    "matches": None if live is None else p not in self.mismatched,
                }
                for p in self.pcrs
            },
            "verified": self.verified,
            "note": self.note,
        }


def _prediction_json(prediction: Prediction, pcrs: Sequence[int]) -> dict[str, Any]:
    return {
        "bank": prediction.bank.name,
        "pcrs": {
            str(p): {
                "current": prediction.current.get(p, prediction.bank.initial_value(p)).hex(),
                "predicted": None if p in prediction.unpredictable else prediction.value(p).hex(),
                "unpredictable": prediction.unpredictable.get(p),
            }
            for p in pcrs
        },
        "changes": [
            {
                "pcr": c.pcr,
                "event": c.event,
                "type": c.type_name,
                "description": c.description,
                "old": c.old.hex() if c.old else None,
                "new": c.new.hex() if c.new else None,
            }
            for c in prediction.changes
        ],
    }


@dataclass(frozen=True)
class PredictOutput:
    """``sealer predict --json``: one prediction per boot image given."""

    predictions: Sequence[tuple[NextBoot, Prediction]]
    pcrs: Sequence[int]  # --pcrs
    verified: bool  # this boot's log was checked against live PCRs

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {"boot": b.describe(), "verified": self.verified, **_prediction_json(p, self.pcrs)}
            for b, p in self.predictions
        ]


@dataclass(frozen=True)
class ApprovalsOutput:
    """``sealer reseal --json`` and ``sealer prune --json``: one entry per enrollment."""

    approvals: Sequence[VolumeApproval]

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.approvals]


@dataclass(frozen=True)
class ExplainOutput:
    """``sealer explain --json``: one entry per enrollment."""

    explanations: Sequence[Explanation]

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.explanations]


# ---------------------------------------------------------------------------------------------
# Policy: vendor approvals, revocation, the machine's key (sealer/cli/policy.py)


@dataclass(frozen=True)
class PolicySignOutput:
    """``sealer policy sign --json``: the approval file written, as written."""

    signed: ApprovalFile

    def to_json(self) -> dict[str, Any]:
        return self.signed.to_json()


@dataclass(frozen=True)
class PolicyShowOutput:
    """``sealer policy show --json``: an approval file, its signature checked."""

    file: Path
    approval: Approval

    def to_json(self) -> dict[str, Any]:
        a = self.approval
        return {
            "file": str(self.file),
            "release": a.release,
            "comment": a.comment,
            "created": a.created,
            "pcr_bank": a.bank.name,
            "key_name": a.key_name.hex(),
            "signature": "valid",
            "boot_states": [{str(p): v.hex() for p, v in sorted(b.items())} for b in a.branches],
        }


@dataclass(frozen=True)
class PolicyInstallOutput:
    """``sealer policy install --json``: one entry per token the approval was added to."""

    installed: Sequence[Installed]

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "device": d.device,
                "token_id": d.token_id,
                "release": d.release,
                "vendor_approvals": d.vendor_approvals,
            }
            for d in self.installed
        ]


@dataclass(frozen=True)
class RevokeOutput:
    """``sealer revoke --json``: one entry per revocation field set."""

    revoked: Sequence[Revoked]

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "nv_index": d.nv_index,
                "level_before": d.level_before,
                "level_after": d.level_after,
                "devices": list(d.devices),
            }
            for d in self.revoked
        ]


@dataclass(frozen=True)
class KeyRotateOutput:
    """``sealer key rotate --json``: one entry per volume."""

    rotated: Sequence[Rotated]

    def to_json(self) -> list[dict[str, Any]]:
        return [
            {
                "device": r.device,
                "enrolled_tokens": list(r.enrolled),
                "removed_tokens": list(r.removed),
                "warnings": list(r.warnings),
            }
            for r in self.rotated
        ]


# ---------------------------------------------------------------------------------------------
# Recovery keys (sealer/cli/recovery.py)


@dataclass(frozen=True)
class RecoveryRotateOutput:
    """``sealer recovery rotate --json``: printed as soon as the new key opens the volume,
    before the old one is removed."""

    device: str
    uuid: str
    token: int
    recovery_keyslot: int
    recovery_key: str | None  # None when escrowed and not asked to print it
    replaces_keyslot: int | None
    escrow_record: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "uuid": self.uuid,
            "token": self.token,
            "recovery_keyslot": self.recovery_keyslot,
            "recovery_key": self.recovery_key,
            "replaces_keyslot": self.replaces_keyslot,
            "escrow_record": self.escrow_record,
        }


@dataclass(frozen=True)
class RecoveryShowOutput:
    """``sealer recovery show --json``: the escrow record's fields and the key."""

    recovered: Recovered

    def to_json(self) -> dict[str, Any]:
        return {**self.recovered.record.to_json(), "recovery_key": self.recovered.key}


# ---------------------------------------------------------------------------------------------
# Migration (sealer/cli/migrate.py)


@dataclass(frozen=True)
class MigrateOutput:
    """``sealer migrate --json``; the new enrollment's fields are None when an earlier,
    interrupted run had enrolled."""

    device: str
    old_binding: str
    old_token: int
    old_keyslots: Sequence[int]
    old_removed: bool
    token: int | None
    keyslot: int | None
    pcr_bank: str | None
    pcrs: Sequence[int] | None  # bound PCRs, without the cap PCR
    warnings: Sequence[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "old_binding": self.old_binding,
            "old_token": self.old_token,
            "old_keyslots": list(self.old_keyslots),
            "old_removed": self.old_removed,
            "token": self.token,
            "keyslot": self.keyslot,
            "pcr_bank": self.pcr_bank,
            "pcrs": None if self.pcrs is None else list(self.pcrs),
            "warnings": list(self.warnings),
        }


# ---------------------------------------------------------------------------------------------
# The TPM (sealer/cli/tpm.py)


@dataclass(frozen=True)
class TpmStatusOutput:
    """``sealer tpm status --json``: built by sealer.services.tpmguard.tpm_status."""

    report: Mapping[str, Any]  # {"lockout": {...}, "hygiene": {...}}

    def to_json(self) -> dict[str, Any]:
        return dict(self.report)


@dataclass(frozen=True)
class ClearLockoutOutput:
    """``sealer tpm clear-lockout --json``: built by sealer.services.tpmguard.clear_lockout."""

    result: Mapping[str, Any]  # {"before": {...}, "after": {...}}

    def to_json(self) -> dict[str, Any]:
        return dict(self.result)
