"""Ansible module: enroll a LUKS2 volume with the TPM through ``sealer enroll``."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes
from ansible_collections.sealer.tpm.plugins.module_utils.sealer_cli import (
    COMMON_ARGS,
    SealerFailed,
    escrow_dir,
    escrow_record,
    exit_if_not_installed_in_check_mode,
    run_json,
    volume_summary,
)

DOCUMENTATION = r"""
---
module: sealer_enroll
short_description: Enroll a LUKS2 volume with the TPM (sealer enroll), idempotently
description:
  - Runs C(sealer enroll) on the target to add a TPM-sealed keyslot to a LUKS2 volume, and
    optionally a recovery key escrowed to the organisation's certificate.
  - Idempotent. When C(sealer status --json) already shows a complete sealer enrollment on
    the volume, nothing is done and C(changed) is false. An interrupted enrollment (not
    complete) is cleared and redone by sealer.
  - The passphrase goes to sealer on standard input only; it is never in the command line,
    the environment, the result or the logs. With I(escrow_cert), sealer never prints the
    recovery key; only the escrow record's path is returned.
  - Supports check mode (reports what would change, touches nothing; fails with sealer's
    line when C(sealer status) cannot reach the TPM, as the enrollment would) and diff mode
    (the volume's enrollments and keyslots, before and after).
version_added: "0.1.0"
author: sealer developers
options:
  device:
    description: The LUKS2 block device or image file.
    type: path
    required: true
  passphrase:
    description:
      - An existing passphrase (or recovery key) of the volume, which authorises the change.
      - Given to sealer on standard input; one trailing newline is dropped, as sealer does.
    type: str
    required: true
    no_log: true
  pcrs:
    description: PCRs to bind to, for example C(7) or C(4,7). Default is sealer's (C(4,7)).
    type: str
  recovery_key:
    description:
      - Also add a generated recovery key in its own keyslot.
      - Requires I(escrow_cert), so that the key is escrowed and never printed.
    type: bool
    default: false
  escrow_cert:
    description: The organisation's X.509 certificate (PEM) the recovery key is encrypted to.
    type: path
  escrow_dir:
    description: Where sealer writes escrow records. Default is I(state_dir)/escrow.
    type: path
  machine_id:
    description: The machine id recorded in escrow records (default is sealer's).
    type: str
  state_dir:
    description: sealer's state directory (the machine policy key). Default C(/var/lib/sealer).
    type: path
  tcti:
    description: How sealer reaches the TPM (C(--tcti)), for example C(swtpm:host=H,port=P).
    type: str
  sealer:
    description: Path to the sealer executable. Default is C(sealer) on the PATH.
    type: path
notes:
  - Check mode and diff mode are supported.
  - A volume that already has a complete enrollment is left as it is, even when I(pcrs)
    differ; a warning says so. Remove it with C(sealer remove) to enroll it again.
"""

EXAMPLES = r"""
- name: Enroll the root volume, recovery key escrowed
  sealer.tpm.sealer_enroll:
    device: /dev/nvme0n1p3
    passphrase: "{{ vault_root_passphrase }}"
    pcrs: "7"
    recovery_key: true
    escrow_cert: /etc/sealer/escrow-cert.pem
  no_log: true
  register: enrolled
"""

RETURN = r"""
device:
  description: The volume.
  returned: always
  type: str
uuid:
  description: The volume's LUKS2 UUID.
  returned: success
  type: str
token:
  description: The sealer token id (null in check mode when it would be created).
  returned: success
  type: int
keyslot:
  description: The TPM keyslot.
  returned: success
  type: int
recovery_keyslot:
  description: The recovery keyslot, if any.
  returned: success
  type: int
escrow_record:
  description: Path on the target of the recovery key's escrow record, when there is one.
  returned: success
  type: str
enrollment:
  description: C(created), C(present) (nothing done) or C(would be created) (check mode).
  returned: success
  type: str
rc:
  description: sealer's exit code when it failed (see the README's "Exit codes").
  returned: failure
  type: int
"""


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "device": {"type": "path", "required": True},
        "passphrase": {"type": "str", "required": True, "no_log": True},
        "pcrs": {"type": "str"},
        "recovery_key": {"type": "bool", "default": False},
        "escrow_cert": {"type": "path"},
        "escrow_dir": {"type": "path"},
        "machine_id": {"type": "str"},
        "state_dir": {"type": "path"},
        **COMMON_ARGS,
    }


def enroll_args(params: dict[str, Any], escrow: str) -> list[str]:
    args = ["enroll", "--unlock-key-file", "-", "--quiet"]
    if params["pcrs"]:
        args += ["--pcrs", params["pcrs"]]
    if params["state_dir"]:
        args += ["--state-dir", params["state_dir"]]
    if params["recovery_key"]:
        args += ["--recovery-key", "--escrow-cert", params["escrow_cert"], "--escrow-dir", escrow]
        if params["machine_id"]:
            args += ["--machine-id", params["machine_id"]]
    return [*args, params["device"]]


def status_args(params: dict[str, Any], escrow: str) -> list[str]:
    return ["status", "--json", "--escrow-dir", escrow, params["device"]]


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params: dict[str, Any] = module.params
    if params["recovery_key"] and not params["escrow_cert"]:
        module.fail_json(
            msg="recovery_key needs escrow_cert: without escrow sealer would print the "
            "recovery key, and a module result must not hold a secret"
        )
    if params["escrow_cert"] and not params["recovery_key"]:
        module.fail_json(msg="escrow_cert is given but recovery_key is false: nothing to escrow")
    escrow = escrow_dir(params)
    result: dict[str, Any] = {"changed": False, "device": params["device"]}
    exit_if_not_installed_in_check_mode(module, result)
    try:
        before = run_json(module, status_args(params, escrow))
        complete = [e for e in before.get("enrollments", []) if e.get("complete")]
        if complete:
            present = complete[0]
            recovery = present.get("recovery") or {}
            result.update(
                enrollment="present",
                uuid=before.get("uuid"),
                token=present.get("token"),
                keyslot=present.get("keyslot"),
                recovery_keyslot=recovery.get("keyslot"),
                escrow_record=_escrow_of(params, escrow, before.get("uuid"), recovery),
            )
            _warn_differences(module, params, present, recovery)
            module.exit_json(**result)
        summary = volume_summary(before)
        tpm_error = (before.get("tpm") or {}).get("error")
        if module.check_mode and tpm_error:
            # What 'sealer enroll' would say: status could not reach the TPM either.
            module.fail_json(msg=f"sealer: {tpm_error}", **result)
        if module.check_mode:
            new_slots = ["(new): token (new) (sealer-tpm2)"]
            if params["recovery_key"]:
                new_slots.append("(new): recovery key (token (new))")
            after = {
                "enrollments": [
                    *summary["enrollments"],
                    {
                        "token": "(new)",
                        "keyslot": "(new)",
                        "complete": True,
                        "pcrs": _pcr_list(params["pcrs"]) or "(sealer's default)",
                        "recovery_keyslot": "(new)" if params["recovery_key"] else None,
                    },
                ],
                "keyslots": summary["keyslots"] + new_slots,
            }
            result.update(changed=True, enrollment="would be created", uuid=before.get("uuid"))
            result.update(token=None, keyslot=None, recovery_keyslot=None, escrow_record=None)
            if module._diff:
                result["diff"] = {"before": summary, "after": after}
            module.exit_json(**result)
        secret = to_bytes(params["passphrase"], errors="surrogate_or_strict")
        done = run_json(module, enroll_args(params, escrow), data=secret)
        result.update(
            changed=True,
            enrollment="created",
            uuid=done.get("uuid"),
            token=done.get("token"),
            keyslot=done.get("keyslot"),
            recovery_keyslot=done.get("recovery_keyslot"),
            escrow_record=done.get("escrow_record"),
        )
        if params["recovery_key"] and not done.get("escrow_record"):
            # Fail loudly rather than let a volume leave the bench with no escrowed key.
            module.fail_json(
                msg="sealer enrolled the volume but reported no escrow record; is this sealer "
                "older than --escrow-cert?",
                **result,
            )
        for warning in done.get("warnings") or []:
            module.warn(f"sealer: {warning}")
        if module._diff:
            after_report = run_json(module, status_args(params, escrow))
            result["diff"] = {"before": summary, "after": volume_summary(after_report)}
    except SealerFailed as failure:
        result.update(failure.result())
        module.fail_json(**result)
    module.exit_json(**result)


def _escrow_of(
    params: dict[str, Any], escrow: str, uuid: str | None, recovery: dict[str, Any]
) -> str | None:
    escrowed = recovery.get("escrowed")
    if isinstance(escrowed, str):
        return escrowed
    if uuid is None or recovery.get("keyslot") is None:
        return None
    found: str | None = escrow_record(escrow, params["machine_id"], uuid, int(recovery["keyslot"]))
    return found


def _pcr_list(pcrs: str | None) -> list[int] | None:
    """PCRs "4,7" as [4, 7]; None when not given or not a plain list (sealer judges it)."""
    if not pcrs:
        return None
    try:
        return sorted(int(p) for p in pcrs.replace(" ", "").split(",") if p)
    except ValueError:
        return None


def _warn_differences(
    module: Any, params: dict[str, Any], present: dict[str, Any], recovery: dict[str, Any]
) -> None:
    """The volume is enrolled already; say where it differs from what was asked."""
    device = params["device"]
    wanted = _pcr_list(params["pcrs"])
    if wanted is not None and sorted(present.get("pcrs") or []) != wanted:
        module.warn(
            f"{device} is already enrolled with PCRs {present.get('pcrs')}, not "
            f"{wanted}: left as it is ('sealer remove' it to enroll it again)"
        )
    if params["recovery_key"]:
        if recovery.get("keyslot") is None:
            module.warn(
                f"{device} is already enrolled without a recovery key: left as it is "
                "('sealer remove' it to enroll it again with one)"
            )
        elif recovery.get("escrowed") is False:
            module.warn(
                f"{device}: the recovery key (keyslot {recovery['keyslot']}) has no escrow "
                f"record in {escrow_dir(params)}: 'sealer recovery rotate' with an escrow "
                "certificate makes one"
            )


if __name__ == "__main__":
    main()
