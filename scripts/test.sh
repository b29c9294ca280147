#!/usr/bin/env bash
# Lints, type-checks and runs the whole test suite (unit + integration against swtpm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --boot-chain
echo "test: ruff" >&2
.venv/bin/ruff check sealer tests swtpm-fixtures scripts bench fuzz ansible
echo "test: mypy" >&2
.venv/bin/mypy
echo "test: pytest" >&2
# Two workers (the machines have two cores), one test file each at a time: a file's module
# fixtures (a provisioned QEMU machine, a wire audit) are made once, in one worker. QEMU boots
# under TCG use one core each, so the real boots take about half as long side by side.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
