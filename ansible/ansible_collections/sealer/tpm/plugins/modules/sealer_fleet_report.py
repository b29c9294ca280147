"""Ansible module: write the fleet health report from the hosts' ``sealer_status`` results."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: sealer_fleet_report
short_description: Write the fleet health report (JSON for tools, a table for people)
description:
  - Runs on the controller (C(delegate_to=localhost), C(run_once=true)) with the result
    that M(sealer.tpm.sealer_status) registered on every host, and writes
    C(fleet-report.json) and C(fleet-report.txt) into I(dest).
  - Per host and volume, it tells whether the TPM releases the key now, whether the next
    boot will unlock (true, false, or null when it cannot be told, with sealer's reason),
    whether a recovery key is escrowed, the TPM's dictionary-attack lockout state, and every
    error. A host whose status failed, or that was unreachable, is in the report with its
    error, never left out.
  - In check mode nothing is written. C(changed) is true when a file's content (apart from
    the time it was generated) changes.
version_added: "0.1.0"
author: sealer developers
options:
  results:
    description:
      - Host name to the result M(sealer.tpm.sealer_status) registered there. A host whose
        result is missing, failed or unreachable is reported with its error.
    type: dict
    required: true
  dest:
    description: Directory (on the controller) to write the two files into.
    type: path
    required: true
  json_name:
    description: File name of the JSON report.
    type: str
    default: fleet-report.json
  text_name:
    description: File name of the table.
    type: str
    default: fleet-report.txt
"""

EXAMPLES = r"""
- name: Write the fleet report
  sealer.tpm.sealer_fleet_report:
    results: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all
                 | map('extract', hostvars, 'sealer_status_result'))) }}"
    dest: "{{ playbook_dir }}/reports"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
report:
  description: The JSON report (also written to I(dest)/I(json_name)).
  returned: always
  type: dict
text:
  description: The table for a person (also written to I(dest)/I(text_name)).
  returned: always
  type: str
json_path:
  description: Path of the JSON report.
  returned: always
  type: str
text_path:
  description: Path of the table.
  returned: always
  type: str
"""

REPORT_VERSION = 1


def _lockout(tpm: dict[str, Any] | None) -> dict[str, Any] | None:
    if not tpm or "lockout" not in tpm:
        return None
    lockout: dict[str, Any] = tpm["lockout"]
    return lockout


def _next_boot(enrollments: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Will the next boot unlock? True if one enrollment will, null if it cannot be told."""
    views = [e["next_boot"] for e in enrollments if isinstance(e.get("next_boot"), dict)]
    if not views:
        return None
    verdicts = [v.get("unlocks") for v in views]
    unlocks = True if True in verdicts else (None if None in verdicts else False)
    chosen = next(v for v in views if v.get("unlocks") is unlocks)
    return {"unlocks": unlocks, "reason": chosen.get("reason"), "image": chosen.get("image")}


def _volume(report: dict[str, Any]) -> dict[str, Any]:
    device = report.get("device")
    errors: list[str] = []
    if "error" in report:
        errors.append(str(report["error"]))
        return {
            "device": device,
            "uuid": None,
            "enrolled": None,
            "unlocks_now": None,
            "next_boot": None,
            "recovery_key": None,
            "recovery_escrowed": None,
            "errors": errors,
        }
    if report.get("token_error"):
        errors.append(f"sealer token unusable: {report['token_error']}")
    enrollments = report.get("enrollments") or []
    complete = [e for e in enrollments if e.get("complete")]
    for entry in enrollments:
        if entry.get("interrupted"):
            errors.append(str(entry["interrupted"]))
        if entry.get("tpm_error"):
            errors.append(str(entry["tpm_error"]))
    if not complete and not errors:
        errors.append("not enrolled")
    recoveries = [e.get("recovery") or {} for e in complete]
    recovery_slots = [r for r in recoveries if r.get("keyslot") is not None]
    escrowed: bool | None = None
    if recovery_slots:
        flags = [r.get("escrowed") for r in recovery_slots]
        if any(flag is True or isinstance(flag, str) for flag in flags):
            escrowed = True
        elif all(flag is False for flag in flags):
            escrowed = False
    elif complete:
        escrowed = False
    unlocks = [e.get("unlocks_now") for e in complete if "unlocks_now" in e]
    return {
        "device": device,
        "uuid": report.get("uuid"),
        "enrolled": bool(complete),
        "unlocks_now": (True in unlocks) if unlocks else None,
        "next_boot": _next_boot(complete),
        "recovery_key": bool(recovery_slots),
        "recovery_escrowed": escrowed,
        "errors": errors,
    }


def host_entry(host: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """One host of the report, from what sealer_status registered there (or nothing)."""
    entry: dict[str, Any] = {
        "host": host,
        "state": "ok",
        "volumes": [],
        "tpm_lockout": None,
        "errors": [],
    }
    if not result:
        entry["state"] = "no status"
        entry["errors"].append("no status was collected from this host")
        return entry
    if result.get("unreachable"):
        entry["state"] = "unreachable"
        entry["errors"].append(f"unreachable: {result.get('msg', '')}".strip())
        return entry
    reports = (result.get("ansible_facts") or {}).get("sealer_status")
    if reports is None:
        entry["state"] = "error"
        entry["errors"].append(str(result.get("msg") or "sealer_status returned no report"))
        return entry
    entry["volumes"] = [_volume(r) for r in reports]
    tpm_errors = {
        str(r["tpm"]["error"])
        for r in reports
        if isinstance(r.get("tpm"), dict) and "error" in r["tpm"]
    }
    entry["errors"] += sorted(f"TPM: {e}" for e in tpm_errors)
    lockouts = [_lockout(r.get("tpm")) for r in reports]
    entry["tpm_lockout"] = next((lock for lock in lockouts if lock is not None), None)
    for volume in entry["volumes"]:
        # A TPM that cannot be reached is said once for the host, not again per volume.
        own = [e for e in volume["errors"] if e not in tpm_errors]
        entry["errors"] += [f"{volume['device']}: {e}" for e in own]
    if entry["errors"]:
        entry["state"] = "error"
    elif _needs_attention(entry):
        entry["state"] = "attention"
    return entry


def _needs_attention(entry: dict[str, Any]) -> bool:
    lockout = entry["tpm_lockout"] or {}
    for volume in entry["volumes"]:
        next_boot = volume["next_boot"] or {}
        if volume["unlocks_now"] is False or next_boot.get("unlocks") is False:
            return True
        if volume["next_boot"] is not None and next_boot.get("unlocks") is None:
            return True  # asked, and sealer cannot tell: a person should look
        if volume["recovery_escrowed"] is False:
            return True
    return bool(lockout.get("in_lockout"))


def build_report(results: dict[str, Any]) -> dict[str, Any]:
    hosts = [host_entry(host, results[host]) for host in sorted(results)]
    states = [h["state"] for h in hosts]
    return {
        "version": REPORT_VERSION,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {
            "hosts": len(hosts),
            "ok": states.count("ok"),
            "attention": states.count("attention"),
            "error": len(hosts) - states.count("ok") - states.count("attention"),
            "volumes": sum(len(h["volumes"]) for h in hosts),
        },
        "hosts": hosts,
    }


def _yes_no(value: Any) -> str:
    return {True: "yes", False: "NO", None: "?"}.get(value, str(value))


def _lockout_text(lockout: dict[str, Any] | None) -> str:
    if lockout is None:
        return "?"
    if lockout.get("in_lockout"):
        return "LOCKED OUT"
    if lockout.get("max_tries") in (0, None):
        return "off"
    return f"{lockout.get('tries_left')}/{lockout.get('max_tries')} tries left"


def render_text(report: dict[str, Any]) -> str:
    """The report as a table for a person, then the reasons and errors below it."""
    summary = report["summary"]
    lines = [
        f"sealer fleet report, {report['generated']}: {summary['hosts']} hosts "
        f"({summary['ok']} ok, {summary['attention']} need attention, "
        f"{summary['error']} with errors), {summary['volumes']} volumes",
        "",
    ]
    header = ("HOST", "STATE", "VOLUME", "TPM NOW", "NEXT BOOT", "RECOVERY KEY", "TPM LOCKOUT")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for host in report["hosts"]:
        lockout = _lockout_text(host["tpm_lockout"])
        if not host["volumes"]:
            rows.append((host["host"], host["state"], "-", "-", "-", "-", lockout))
        for volume in host["volumes"]:
            next_boot = volume["next_boot"]
            recovery = (
                "?" if volume["recovery_key"] is None
                else "none" if not volume["recovery_key"]
                else "escrowed" if volume["recovery_escrowed"]
                else "NOT escrowed" if volume["recovery_escrowed"] is False
                else "? escrow"
            )
            rows.append(
                (
                    host["host"],
                    host["state"],
                    str(volume["device"]),
                    _yes_no(volume["unlocks_now"]),
                    "-" if next_boot is None else _yes_no(next_boot["unlocks"]),
                    recovery,
                    lockout,
                )
            )
            if next_boot is not None and next_boot["unlocks"] is not True and next_boot["reason"]:
                notes.append(f"{host['host']} {volume['device']}: next boot: {next_boot['reason']}")
        notes += [f"{host['host']}: {error}" for error in host["errors"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if notes:
        lines += ["", "Reasons and errors:"]
        lines += [f"  {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _comparable(text: str | None, is_json: bool) -> Any:
    """A file's content apart from its generation time."""
    if text is None:
        return None
    if is_json:
        try:
            doc = json.loads(text)
        except ValueError:
            return text
        if isinstance(doc, dict):
            doc.pop("generated", None)
        return doc
    head, _, rest = text.partition("\n")
    return (head.split(",", 1)[-1], rest)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write(module: Any, path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".fleet-report.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


def argument_spec() -> dict[str, dict[str, Any]]:
    return {
        "results": {"type": "dict", "required": True},
        "dest": {"type": "path", "required": True},
        "json_name": {"type": "str", "default": "fleet-report.json"},
        "text_name": {"type": "str", "default": "fleet-report.txt"},
    }


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params: dict[str, Any] = module.params
    report = build_report(params["results"])
    text = render_text(report)
    json_text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    json_path = os.path.join(params["dest"], params["json_name"])
    text_path = os.path.join(params["dest"], params["text_name"])
    files = ((json_path, json_text, True), (text_path, text, False))
    # Both files are written together, so that they always tell the same time.
    changed = any(_comparable(_read(p), j) != _comparable(c, j) for p, c, j in files)
    if changed and not module.check_mode:
        os.makedirs(params["dest"], exist_ok=True)
        for path, content, _ in files:
            _write(module, path, content)
    module.exit_json(
        changed=changed, report=report, text=text, json_path=json_path, text_path=text_path
    )


if __name__ == "__main__":
    main()
