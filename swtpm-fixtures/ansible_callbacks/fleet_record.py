"""An Ansible callback for the fleet tests: every task result, as callbacks get it, as JSON.

Enabled by ansible_fleet.py next to the default output (ANSIBLE_CALLBACKS_ENABLED=fleet_record),
it appends one JSON line per host and task (and per loop item) to $SEALER_FLEET_RECORD.
It sees exactly what every other callback sees (a log shipper, a CI reporter): results
that no_log has already censored. So the secret checks read this file too.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: fleet_record
    type: aggregate
    short_description: record task results as JSON lines (sealer's fleet tests)
    description: Appends every task result to the file named by $SEALER_FLEET_RECORD.
"""


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task_started = time.monotonic()

    def v2_playbook_on_task_start(self, task: Any, is_conditional: bool) -> None:
        self._task_started = time.monotonic()

    def _record(self, event: str, result: Any) -> None:
        path = os.environ.get("SEALER_FLEET_RECORD")
        if not path:
            return
        line = {
            "event": event,
            "task": result._task.get_name(),
            "host": result._host.get_name(),
            "result": result._result,
            # Seconds from the task's start until this host's result (the bench's per-host
            # figures add these up).
            "elapsed": round(time.monotonic() - self._task_started, 3),
        }
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line, default=str) + "\n")

    def v2_runner_on_ok(self, result: Any) -> None:
        self._record("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._record("failed", result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._record("skipped", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._record("unreachable", result)

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self._record("item_ok", result)

    def v2_runner_item_on_failed(self, result: Any) -> None:
        self._record("item_failed", result)

    def v2_runner_item_on_skipped(self, result: Any) -> None:
        self._record("item_skipped", result)
