"""The command line's layout rules (sealer/cli/): command modules share only common and
results, and every --json document comes from a frozen result class."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

from sealer.cli import results

CLI = Path(__file__).resolve().parents[2] / "sealer" / "cli"
SHARED = {"sealer.cli.common", "sealer.cli.results"}
COMMAND_MODULES = ("volume", "boot", "measured", "policy", "recovery", "migrate", "tpm")


def _imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "sealer.cli":
            found.update(f"sealer.cli.{alias.name}" for alias in node.names)  # submodules
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_command_modules_import_no_other_command_module() -> None:
    for name in COMMAND_MODULES:
        cli_imports = {m for m in _imported(CLI / f"{name}.py") if m.startswith("sealer.cli")}
        assert cli_imports <= SHARED, (name, cli_imports)


def test_common_and_results_import_no_command_module() -> None:
    for name in ("common", "results"):
        cli_imports = {m for m in _imported(CLI / f"{name}.py") if m.startswith("sealer.cli")}
        assert cli_imports <= SHARED, (name, cli_imports)


def test_every_result_is_a_frozen_dataclass_with_to_json() -> None:
    classes = [c for _, c in inspect.getmembers(results, inspect.isclass)]
    outputs = [c for c in classes if c.__module__ == results.__name__]
    assert len(outputs) >= 20
    for cls in outputs:
        assert dataclasses.is_dataclass(cls), cls
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
        assert callable(getattr(cls, "to_json", None)), cls
