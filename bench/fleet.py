"""Wall time of the Ansible provision playbook on N machines simulated on this host.

    .venv/bin/python bench/fleet.py [--machines N] [--json FILE]

Each machine is an inventory host with connection: local and its own swtpm, LUKS2 image,
state directory and boot root (swtpm-fixtures/ansible_fleet.py, as in tests/integration/
test_ansible.py). The real .venv/bin/ansible-playbook runs the collection's provision
playbook twice: the first run enrolls every volume with an escrowed recovery key, fetches
the escrow records and wires the boot hook; the rerun must change nothing. Then the same
with one machine alone. Printed: the wall time of each run, that time divided by the number
of machines, and the median machine's time in flight (from each task's start to that
machine's result, summed over the tasks; with forks >= N the machines run side by side, so
this is close to the wall time, not a share of it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from ansible_fleet import Fleet, PlaybookRun


def in_flight(run: PlaybookRun) -> dict[str, float]:
    """Per host: the seconds from each task's start to that host's result, summed."""
    totals: dict[str, float] = {}
    for line in run.record.splitlines():
        event = json.loads(line)
        if str(event["event"]).startswith("item_"):
            continue  # the loop's own result follows, with the time of its last item
        totals[event["host"]] = totals.get(event["host"], 0.0) + float(event["elapsed"])
    return totals


def summarize(name: str, run: PlaybookRun, machines: int) -> dict[str, Any]:
    per_host = in_flight(run)
    return {
        "run": name,
        "wall_s": round(run.seconds, 2),
        "wall_per_machine_s": round(run.seconds / machines, 2),
        "in_flight_per_machine_s": {h: round(s, 2) for h, s in sorted(per_host.items())},
        "in_flight_median_s": round(statistics.median(per_host.values()), 2),
        "changed": {h: s["changed"] for h, s in sorted(run.stats.items())},
        "failed": {h: s["failures"] for h, s in sorted(run.stats.items())},
    }


def check(first: PlaybookRun, rerun: PlaybookRun, fleet: Fleet) -> list[str]:
    problems = []
    for run, name in ((first, "first run"), (rerun, "rerun")):
        if run.returncode != 0:
            problems.append(f"{name}: ansible-playbook exited {run.returncode}")
    if any(s["changed"] == 0 for s in first.stats.values()):
        problems.append("first run: a machine reported no change")
    if any(s["changed"] != 0 for s in rerun.stats.values()):
        problems.append("rerun: a machine reported a change")
    records = list(fleet.collect_dir.rglob("*.json"))
    if len(records) != len(fleet.machines):
        problems.append(
            f"{len(records)} escrow records reached the controller, not {len(fleet.machines)}"
        )
    return problems


def provision(machines: int) -> tuple[PlaybookRun, PlaybookRun] | None:
    """The first run and the rerun on ``machines`` fresh machines; None if one went wrong."""
    with tempfile.TemporaryDirectory(prefix="sealer-bench-fleet-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            for index in range(machines):
                fleet.add_machine(f"m{index + 1}")
            fleet.write_inventory()
            first = fleet.run("provision.yml")
            rerun = fleet.run("provision.yml")
        finally:
            fleet.stop()
        problems = check(first, rerun, fleet)
    if problems:
        for problem in problems:
            print(f"bench: {problem}", file=sys.stderr)
        print(first.stdout[-4000:], first.stderr[-2000:], file=sys.stderr)
        return None
    return first, rerun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machines", type=int, default=3, help="how many (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.machines < 1:
        parser.error("--machines must be at least 1")
    load = os.getloadavg()[0]
    # N machines side by side, then (for the time of one machine alone) a fleet of one.
    sizes = [args.machines] if args.machines == 1 else [args.machines, 1]
    runs = []
    for size in sizes:
        done = provision(size)
        if done is None:
            return 1
        first, rerun = done
        runs += [
            summarize(f"first run, {size}", first, size),
            summarize(f"rerun, {size}", rerun, size),
        ]
    forks = max(3, args.machines)
    figures = {
        "machines": args.machines,
        "forks": forks,
        "cpus": os.cpu_count(),
        "load_average_1min_before": round(load, 2),
        "runs": runs,
    }
    print(
        f"provision playbook on simulated machines (connection: local, forks {forks}, "
        f"{os.cpu_count()} CPUs, 1-min load average before: {load:.2f})"
    )
    print(f"{'run, machines':<18}{'wall':>9}{'wall / machine':>16}{'in flight (median)':>20}")
    for run in runs:
        print(
            f"{run['run']:<18}{run['wall_s']:>8.2f}s{run['wall_per_machine_s']:>15.2f}s"
            f"{run['in_flight_median_s']:>19.2f}s"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
