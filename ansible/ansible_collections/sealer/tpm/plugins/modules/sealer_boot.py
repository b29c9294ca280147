"""Ansible module: wire sealer's unlocker into the initramfs (``sealer boot enable|disable``)."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.sealer.tpm.plugins.module_utils.sealer_cli import (
    SealerFailed,
    exit_if_not_installed_in_check_mode,
    run_json,
)

DOCUMENTATION = r"""
---
module: sealer_boot
short_description: Wire the TPM unlocker into the initramfs (sealer boot enable/disable)
description:
  - Runs C(sealer boot enable) (I(state=enabled)) or C(sealer boot disable)
    (I(state=disabled)) on the target.
  - Idempotent by the files sealer would install. The module first asks sealer for its plan
    (C(--dry-run --json)), which covers the keyscript, the initramfs hook, the capping script,
    C(/etc/sealer/initramfs.conf), the kernel and initramfs update hooks, the prune unit and
    C(/etc/crypttab), each compared by content and mode with what is installed. When none of
    them would change, sealer is not run again (and so neither is C(update-initramfs)), and
    C(changed) is false.
  - Check mode reports the plan without writing; diff mode shows sealer's unified diff of
    every file that changes.
version_added: "0.1.0"
author: sealer developers
options:
  state:
    description: C(enabled) wires the chosen crypttab entries, C(disabled) unwires them.
    type: str
    choices: [enabled, disabled]
    default: enabled
  names:
    description:
      - The crypttab entries (first field) to change.
      - Default for C(enabled) is every entry whose volume is enrolled with sealer; for
        C(disabled), every entry that uses sealer's keyscript.
    type: list
    elements: str
    default: []
  root:
    description:
      - Change the files under this directory (a chroot or image tree) instead of the
        target's own; C(update-initramfs) is then not run.
    type: path
  crypttab:
    description: The crypttab to change. Default is C(/etc/crypttab) under I(root).
    type: path
  hook_source:
    description:
      - A directory laid out like sealer/install/hookfiles of a sealer checkout (C(enabled)
        only). Default is the hook files installed with the sealer package.
    type: path
  update_initramfs:
    description: Run C(update-initramfs -u) after a change (never under I(root)).
    type: bool
    default: true
  sealer:
    description: Path to the sealer executable. Default is C(sealer) on the PATH.
    type: path
"""

EXAMPLES = r"""
- name: Unlock the enrolled crypttab volumes with the TPM at boot
  sealer.tpm.sealer_boot:
    sealer: /opt/sealer/bin/sealer
- name: Undo it
  sealer.tpm.sealer_boot:
    state: disabled
"""

RETURN = r"""
files:
  description: Every file sealer manages, with its change (create, update, remove, unchanged).
  returned: success
  type: list
  elements: dict
entries:
  description: The crypttab entries chosen, with their line before and after.
  returned: success
  type: list
  elements: dict
commands:
  description: The commands sealer ran (or would run) after writing.
  returned: success
  type: list
  elements: list
notes:
  description: sealer's notes about the plan.
  returned: success
  type: list
  elements: str
rc:
  description: sealer's exit code when it failed.
  returned: failure
  type: int
"""


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "state": {"type": "str", "choices": ["enabled", "disabled"], "default": "enabled"},
        "names": {"type": "list", "elements": "str", "default": []},
        "root": {"type": "path"},
        "crypttab": {"type": "path"},
        "hook_source": {"type": "path"},
        "update_initramfs": {"type": "bool", "default": True},
        "sealer": {"type": "path"},
    }


def boot_args(params: dict[str, Any]) -> list[str]:
    action = "enable" if params["state"] == "enabled" else "disable"
    args = ["boot", action, "--json"]
    for name in params["names"]:
        args += ["--name", name]
    for option in ("root", "crypttab"):
        if params[option]:
            args += [f"--{option}", params[option]]
    if params["hook_source"] and action == "enable":
        args += ["--hook-source", params["hook_source"]]
    if not params["update_initramfs"]:
        args.append("--no-update-initramfs")
    return args


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params: dict[str, Any] = module.params
    args = boot_args(params)
    result: dict[str, Any] = {"changed": False}
    exit_if_not_installed_in_check_mode(module, result)
    try:
        plan = run_json(module, [*args, "--dry-run"])
        changing = [f for f in plan.get("files", []) if f.get("change") != "unchanged"]
        result.update(
            files=[{"path": f["path"], "change": f["change"]} for f in plan.get("files", [])],
            entries=plan.get("entries", []),
            commands=plan.get("commands", []),
            notes=plan.get("notes", []),
        )
        for warning in plan.get("warnings", []):
            module.warn(f"sealer: {warning}")
        if not changing:
            module.exit_json(**result)
        result["changed"] = True
        if module._diff:
            result["diff"] = {"prepared": "".join(f.get("diff", "") for f in changing)}
        if module.check_mode:
            module.exit_json(**result)
        done = run_json(module, args)
        result["files"] = [{"path": f["path"], "change": f["change"]} for f in done["files"]]
        result["entries"] = done.get("entries", [])
        result["commands"] = done.get("commands", [])
    except SealerFailed as failure:
        result.update(failure.result())
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
