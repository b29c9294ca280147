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
exec .venv/bin/python -m pytest -q "$@"
