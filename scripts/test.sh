#!/usr/bin/env bash
# Lints, type-checks and runs the whole test suite (unit + integration against swtpm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --boot-chain
echo "test: ruff" >&2
.venv/bin/ruff check sealer tests swtpm-fixtures scripts bench fuzz ansible
echo "test: mypy" >&2
.venv/bin/mypy
# The package tier, the life cycle's first step in short (CI has no time for its boots): build
# the .deb, lintian, install it with apt into a fresh Debian 12 root and run sealer there. It
# runs first so that the main run's summary is the last line. SEALER_SKIP_PACKAGE=1 skips it.
if [ -z "${SEALER_SKIP_PACKAGE:-}" ] && [ "$#" -eq 0 ]; then
    echo "test: pytest -m package (make deb, lintian, apt install into a fresh Debian root)" >&2
    .venv/bin/python -m pytest -q -m package tests/package
fi
echo "test: pytest" >&2
# Two workers (the machines have two cores), one test file each at a time: a file's module
# fixtures (a provisioned QEMU machine, a wire audit) are made once, in one worker. QEMU boots
# under TCG use one core each, so the real boots take about half as long side by side.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@"
