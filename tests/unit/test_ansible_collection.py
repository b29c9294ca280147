"""The sealer.tpm collection's module code without Ansible running it: documentation that
matches each module's options, sealer's failure line, and the fleet report's verdicts.
The modules against real machines are in tests/integration/test_ansible.py."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

COLLECTION = Path(__file__).resolve().parents[2] / "ansible"
MODULES = COLLECTION / "ansible_collections" / "sealer" / "tpm" / "plugins" / "modules"

PREFIX = "ansible_collections.sealer.tpm.plugins"
sealer_cli: Any = importlib.import_module(f"{PREFIX}.module_utils.sealer_cli")
report: Any = importlib.import_module(f"{PREFIX}.modules.sealer_fleet_report")


def _docs(path: Path) -> dict[str, Any]:
    found = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
                assert isinstance(node.value, ast.Constant)
                found[name] = yaml.safe_load(node.value.value)
    return found


@pytest.mark.parametrize("path", sorted(MODULES.glob("*.py")), ids=lambda p: p.stem)
def test_documentation_parses_and_names_every_option(path: Path) -> None:
    docs = _docs(path)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    assert docs["DOCUMENTATION"]["module"] == path.stem
    module = importlib.import_module(f"{PREFIX}.modules.{path.stem}")
    spec = module.argument_spec()
    options = docs["DOCUMENTATION"]["options"]
    assert set(options) == set(spec)
    for name, option in spec.items():
        assert options[name]["type"] == option["type"], name
        assert options[name].get("no_log", False) == option.get("no_log", False), name
    assert all(isinstance(task, dict) for task in docs["EXAMPLES"])


def test_the_passphrase_is_the_only_secret_and_it_is_no_log() -> None:
    enroll = importlib.import_module(f"{PREFIX}.modules.sealer_enroll")
    secret = [name for name, option in enroll.argument_spec().items() if option.get("no_log")]
    assert secret == ["passphrase"]


def test_failure_line_is_sealers_last_line_that_is_not_a_warning() -> None:
    stderr = (
        "sealer: warning: PCR 7 only\nsealer: cannot reach the TPM: check it\n"
        "sealer: note: nothing changed\n"
    )
    assert sealer_cli.failure_line(4, "", stderr) == "sealer: cannot reach the TPM: check it"
    doc = '{"error": "bad device", "hint": "check the path", "exit_code": 3}'
    assert sealer_cli.failure_line(3, doc, "") == "sealer: bad device: check the path"
    assert sealer_cli.failure_line(1, "", "") == "sealer exited with status 1"


def _status(unlocks_now: bool, next_boot: bool | None, escrowed: bool | None) -> dict[str, Any]:
    return {
        "device": "/dev/sda2",
        "uuid": "u-1",
        "enrollments": [
            {
                "complete": True,
                "token": 0,
                "keyslot": 1,
                "recovery": {"keyslot": 2, "escrowed": escrowed},
                "unlocks_now": unlocks_now,
                "next_boot": {"image": "UKI /x.efi", "unlocks": next_boot, "reason": "why"},
            }
        ],
        "tpm": {"lockout": {"in_lockout": False, "tries_left": 3, "max_tries": 3}},
    }


def _facts(*reports: dict[str, Any]) -> dict[str, Any]:
    return {"changed": False, "ansible_facts": {"sealer_status": list(reports)}}


def test_every_host_is_in_the_report_with_its_state() -> None:
    results = {
        "good": _facts(_status(True, True, True)),
        "stale": _facts(_status(True, False, True)),
        "unescrowed": _facts(_status(True, True, False)),
        "down": {"unreachable": True, "msg": "ssh: connect to host down port 22"},
        "crashed": {"failed": True, "msg": "sealer executable /opt/sealer/bin/sealer not found"},
        "missing": None,
        "nodisk": {
            "failed": True,
            "msg": "/dev/sdz: sealer: /dev/sdz does not exist",
            **_facts({"device": "/dev/sdz", "error": "sealer: /dev/sdz does not exist", "rc": 3}),
        },
    }
    built = report.build_report(results)
    hosts = {h["host"]: h for h in built["hosts"]}
    assert {h: hosts[h]["state"] for h in hosts} == {
        "good": "ok", "stale": "attention", "unescrowed": "attention", "down": "unreachable",
        "crashed": "error", "missing": "no status", "nodisk": "error",
    }
    assert hosts["good"]["volumes"][0] == {
        "device": "/dev/sda2", "uuid": "u-1", "enrolled": True, "unlocks_now": True,
        "next_boot": {"unlocks": True, "reason": "why", "image": "UKI /x.efi"},
        "recovery_key": True, "recovery_escrowed": True, "errors": [],
    }
    assert hosts["crashed"]["errors"] == ["sealer executable /opt/sealer/bin/sealer not found"]
    assert hosts["nodisk"]["errors"] == ["/dev/sdz: sealer: /dev/sdz does not exist"]
    assert built["summary"] == {"hosts": 7, "ok": 1, "attention": 2, "error": 4, "volumes": 4}
    text = report.render_text(built)
    for host in hosts:
        assert f"\n{host} " in text
    assert "stale /dev/sda2: next boot: why" in text


def test_escrow_record_lookup_takes_only_a_uuid(tmp_path: Path) -> None:
    """Issue 15: the UUID comes from the LUKS2 header; as a glob it could reach elsewhere."""
    escrow = tmp_path / "escrow"
    escrow.mkdir()
    uuid = "564fedb6-c653-4f75-9d78-8a760590c397"
    record = escrow / f"m-{uuid}-keyslot2.json"
    record.write_text("{}")
    (tmp_path / "x-keyslot2.json").write_text("{}")  # outside the escrow directory
    assert sealer_cli.escrow_record(str(escrow), "m", uuid, 2) == str(record)
    for hostile in ("/../../x", "*", "../*", uuid + "/"):
        assert sealer_cli.escrow_record(str(escrow), None, hostile, 2) is None
