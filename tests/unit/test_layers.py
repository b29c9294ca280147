"""The package's layering, checked on its import statements (lazy imports included).

    cli, boot                 front ends: the command line; what runs in the initramfs
    services                  one use case per module (enroll, unlock, status, ...)
    install                   boot wiring: crypttab, initramfs hooks and bundle, enable/disable
    tpm luks policy measure   components, each with one job; among them, imports go one
    escrow interop            way only (no two folders import each other)
    host, errors, pcrs        plumbing and vocabulary

An import may go down the layers or stay in its folder, never up. Only sealer.tpm imports
tpm2_pytss, and only sealer.luks names the cryptsetup program.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import sealer

PACKAGE = Path(sealer.__file__).parent
LAYERS = {
    "errors": 0, "pcrs": 0, "host": 0, "__init__": 0,
    "tpm": 1, "luks": 1, "policy": 1, "measure": 1, "escrow": 1, "interop": 1,
    "install": 2,
    "services": 3,
    "boot": 4, "cli": 4, "__main__": 4,
}


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(("sealer", *parts)), path


def _folder(module: str) -> str:
    """The top-level unit a module belongs to: its folder, or the module at the top."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(module: str, path: Path) -> Iterator[str]:
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base)
            yield target
            # "from sealer import host" names a folder, not an attribute
            yield from (f"{target}.{alias.name}" for alias in node.names if target == "sealer")


def _edges() -> set[tuple[str, str, str]]:
    """(importing module, imported module, folder of the imported one), within sealer."""
    found = set()
    for module, path in _modules():
        for target in _imports(module, path):
            if target.startswith("sealer.") and target.split(".")[1] in LAYERS:
                found.add((module, target, _folder(target)))
    return found


def test_every_folder_has_a_layer() -> None:
    assert {_folder(m) for m, _ in _modules()} <= set(LAYERS)


def test_no_import_runs_up_the_layers() -> None:
    upward = sorted(
        f"{module} imports {target}"
        for module, target, folder in _edges()
        if LAYERS[folder] > LAYERS[_folder(module)]
    )
    assert upward == []


def test_no_two_folders_import_each_other() -> None:
    pairs = {(_folder(m), folder) for m, _, folder in _edges() if _folder(m) != folder}
    loops = sorted(f"{a} <-> {b}" for a, b in itertools.combinations(sorted(LAYERS), 2)
                   if (a, b) in pairs and (b, a) in pairs)
    assert loops == []


def test_only_the_tpm_package_imports_tpm2_pytss() -> None:
    importers = sorted(
        module
        for module, path in _modules()
        if any(t.split(".")[0] == "tpm2_pytss" for t in _imports(module, path))
        and _folder(module) != "tpm"
    )
    assert importers == []


def _runs_cryptsetup(call: ast.Call) -> bool:
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    if name != "run" or not call.args or not isinstance(call.args[0], ast.List | ast.Tuple):
        return False
    first = call.args[0].elts[0] if call.args[0].elts else None
    return (isinstance(first, ast.Constant) and first.value == "cryptsetup") or (
        isinstance(first, ast.Name) and first.id == "CRYPTSETUP"
    )


def test_only_the_luks_package_runs_cryptsetup() -> None:
    runners = sorted(
        module
        for module, path in _modules()
        if any(
            isinstance(node, ast.Call) and _runs_cryptsetup(node)
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    assert runners and all(_folder(m) == "luks" for m in runners), runners
