"""Running the ``sealer`` command line from the sealer.tpm modules.

The modules never import sealer: they run its command line on the target, as a person would,
with secrets on standard input only, and read its ``--json`` output. Every sealer failure is
one line ``sealer: ...`` on standard error and a documented exit code; both are passed on.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/sealer"
# A LUKS2 UUID comes from an attacker-writable header: only RFC 4122 text may name a file.
_UUID = re.compile("-".join(f"[0-9a-fA-F]{{{n}}}" for n in (8, 4, 4, 4, 12)))

# Parameters every module that talks to sealer accepts.
COMMON_ARGS: dict[str, dict[str, Any]] = {
    "sealer": {"type": "path"},
    "tcti": {"type": "str"},
}


class SealerFailed(Exception):
    """sealer exited non-zero: its one-line message and exit code."""

    def __init__(self, message: str, rc: int, args: list[str]) -> None:
        super().__init__(message)
        self.message = message
        self.rc = rc
        self.command = args

    def result(self) -> dict[str, Any]:
        """What a module returns with fail_json: the message, the exit code, the command."""
        return {"msg": self.message, "rc": self.rc, "sealer_command": self.command}


def sealer_executable(module: Any) -> str:
    given = module.params.get("sealer")
    if given:
        if not os.access(given, os.X_OK):
            module.fail_json(msg=f"sealer executable {given} not found or not executable")
        return str(given)
    return str(module.get_bin_path("sealer", required=True))


def exit_if_not_installed_in_check_mode(module: Any, result: dict[str, Any]) -> None:
    """In check mode, a sealer still to be installed (by an earlier task) is a change."""
    given = module.params.get("sealer")
    found = os.access(given, os.X_OK) if given else module.get_bin_path("sealer") is not None
    if module.check_mode and not found:
        result.update(changed=True, msg="sealer is not installed yet: this would run after it is")
        module.exit_json(**result)


def failure_line(rc: int, stdout: str, stderr: str) -> str:
    """sealer's one-line reason: its last ``sealer:`` line that is not a warning or note."""
    for line in reversed(stderr.splitlines()):
        text = line.strip()
        if text.startswith("sealer: ") and not text.startswith(
            ("sealer: warning:", "sealer: note:")
        ):
            return text
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("error"):
        hint = f": {doc['hint']}" if doc.get("hint") else ""
        return f"sealer: {doc['error']}{hint}"
    last = stderr.strip().splitlines()[-1:] or [f"sealer exited with status {rc}"]
    return last[0]


def run_sealer(module: Any, args: list[str], data: bytes | None = None) -> str:
    """Run ``sealer [--tcti T] ARGS`` and return its standard output.

    ``data`` (a secret) goes to standard input, byte for byte: never into argv, the
    environment or a file. Raises SealerFailed with sealer's one line and exit code.
    """
    argv = [sealer_executable(module)]
    tcti = module.params.get("tcti")
    if tcti:
        argv += ["--tcti", tcti]
    argv += args
    rc, stdout, stderr = module.run_command(
        argv,
        data=data,
        binary_data=True,
        check_rc=False,
        environ_update={"LC_ALL": "C.UTF-8"},
    )
    if rc != 0:
        raise SealerFailed(failure_line(rc, stdout, stderr), rc, argv[1:])
    return str(stdout)


def run_json(module: Any, args: list[str], data: bytes | None = None) -> Any:
    stdout = run_sealer(module, [*args, "--json"] if "--json" not in args else args, data)
    try:
        return json.loads(stdout)
    except ValueError:
        raise SealerFailed(
            f"sealer printed no JSON for {' '.join(args[:2])}: {stdout[:200]!r}", 1, args
        ) from None


def escrow_dir(params: dict[str, Any]) -> str:
    """Where escrow records are: escrow_dir, else <state_dir>/escrow (sealer's default)."""
    if params.get("escrow_dir"):
        return str(params["escrow_dir"])
    return os.path.join(params.get("state_dir") or DEFAULT_STATE_DIR, "escrow")


def escrow_record(directory: str, machine_id: str | None, uuid: str, keyslot: int) -> str | None:
    """The escrow record of a volume's recovery keyslot, if it is in ``directory``."""
    if not _UUID.fullmatch(uuid):
        return None  # sealer refuses such a volume; never a pattern for elsewhere
    pattern = f"{glob.escape(machine_id) if machine_id else '*'}-{uuid}-keyslot{keyslot}.json"
    found = sorted(glob.glob(os.path.join(glob.escape(directory), pattern)))
    return found[-1] if found else None


def volume_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a ``sealer status --json`` report that a diff shows: no secret in it."""
    enrollments = []
    for entry in report.get("enrollments", []):
        recovery = entry.get("recovery") or {}
        enrollments.append(
            {
                "token": entry.get("token"),
                "keyslot": entry.get("keyslot"),
                "complete": entry.get("complete"),
                "pcrs": entry.get("pcrs"),
                "recovery_keyslot": recovery.get("keyslot"),
            }
        )
    keyslots = [f"{slot['slot']}: {slot['used_by']}" for slot in report.get("keyslots", [])]
    return {"enrollments": enrollments, "keyslots": keyslots}
