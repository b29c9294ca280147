"""Ansible module: ``sealer status --json`` of volumes, as facts."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sealer.tpm.plugins.module_utils.sealer_cli import (
    COMMON_ARGS,
    SealerFailed,
    escrow_dir,
    run_json,
)

DOCUMENTATION = r"""
---
module: sealer_status
short_description: The sealer status of LUKS2 volumes, as facts
description:
  - Runs C(sealer status --json) on the target for each volume and returns the reports as
    the fact C(sealer_status), a list with one object per volume, as sealer prints it
    (enrollments, keyslots, whether the TPM releases the key now, and with I(next_boot)
    whether the next boot will unlock; the TPM's dictionary-attack lockout state).
  - A volume whose status fails is in the list as C({device, error, rc}), with sealer's
    one-line message and exit code; the module then fails (after reporting every volume)
    unless I(fail_on_error) is false.
  - Never changes anything; safe in check mode.
version_added: "0.1.0"
author: sealer developers
options:
  devices:
    description: The LUKS2 block devices or image files.
    type: list
    elements: path
    required: true
    aliases: [device]
  next_boot:
    description:
      - Also ask whether the next boot will unlock (C(--next-boot)), for the boot images
        given by I(uki), or I(kernel) and I(initrd), and the event log I(eventlog).
      - True by default when any of those is given.
    type: bool
  uki:
    description: The unified kernel image the next boot will start.
    type: path
  kernel:
    description: The kernel the next boot will start (with I(initrd)).
    type: path
  initrd:
    description: The initrd the next boot will load (with I(kernel)).
    type: path
  eventlog:
    description: The TCG event log of this boot to predict from (default is sealer's).
    type: path
  escrow_dir:
    description: Where the escrow records are. Default is I(state_dir)/escrow.
    type: path
  state_dir:
    description: sealer's state directory, when not the default.
    type: path
  fail_on_error:
    description: Fail when the status of a volume cannot be read.
    type: bool
    default: true
  tcti:
    description: How sealer reaches the TPM (C(--tcti)).
    type: str
  sealer:
    description: Path to the sealer executable. Default is C(sealer) on the PATH.
    type: path
"""

EXAMPLES = r"""
- name: Read the sealer status of the data volumes
  sealer.tpm.sealer_status:
    devices: [/dev/sda2, /dev/sdb1]
    uki: /boot/efi/EFI/Linux/debian-new.efi
- name: Show whether the next boot unlocks
  ansible.builtin.debug:
    msg: "{{ ansible_facts.sealer_status | map(attribute='enrollments') }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts set by the module.
  returned: always
  type: dict
  contains:
    sealer_status:
      description: One C(sealer status --json) report per volume, or C({device, error, rc}).
      type: list
      elements: dict
errors:
  description: sealer's one-line message for each volume whose status failed.
  returned: always
  type: list
  elements: str
"""


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "devices": {"type": "list", "elements": "path", "required": True, "aliases": ["device"]},
        "next_boot": {"type": "bool"},
        "uki": {"type": "path"},
        "kernel": {"type": "path"},
        "initrd": {"type": "path"},
        "eventlog": {"type": "path"},
        "escrow_dir": {"type": "path"},
        "state_dir": {"type": "path"},
        "fail_on_error": {"type": "bool", "default": True},
        **COMMON_ARGS,
    }


def status_args(params: dict[str, Any], device: str) -> list[str]:
    args = ["status", "--json"]
    if params["escrow_dir"] or params["state_dir"]:
        args += ["--escrow-dir", escrow_dir(params)]
    images = [name for name in ("uki", "kernel", "initrd", "eventlog") if params[name]]
    next_boot = params["next_boot"] if params["next_boot"] is not None else bool(images)
    if next_boot:
        args.append("--next-boot")
        for name in images:
            args += [f"--{name}", params[name]]
    return [*args, device]


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=[("uki", "kernel"), ("uki", "initrd")],
        required_together=[("kernel", "initrd")],
    )
    params: dict[str, Any] = module.params
    reports: list[dict[str, Any]] = []
    errors: list[str] = []
    for device in params["devices"]:
        try:
            report = run_json(module, status_args(params, device))
        except SealerFailed as failure:
            errors.append(f"{device}: {failure.message}")
            reports.append({"device": device, "error": failure.message, "rc": failure.rc})
            continue
        reports.append(report if isinstance(report, dict) else {"device": device, "report": report})
    result: dict[str, Any] = {
        "changed": False,
        "ansible_facts": {"sealer_status": reports},
        "errors": errors,
    }
    if errors and params["fail_on_error"]:
        rcs = {r["rc"] for r in reports if "rc" in r}
        result["rc"] = rcs.pop() if len(rcs) == 1 else 1
        module.fail_json(msg="; ".join(errors), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
