"""Lay out, inside an initramfs, the smallest Python runtime that runs the boot unlocker.

``python -m sealer.install.bundle --destdir DIR`` is run by the initramfs-tools hook (and the
dracut module) with the interpreter that has sealer installed. It:

- asks a child interpreter which modules the boot entry points import, and the
  standard-library modules those import lazily inside functions (one step deep), so the
  bundle holds those standard-library modules and nothing of the rest (tests, tkinter,
  asyncio, ...);
- copies the third-party packages the unlocker imports (sealer, cffi's backend) whole, since
  they import some of their own modules lazily; of a package only one module of which is
  loaded on its own (tpm2-pytss's compiled ESAPI binding: sealer.tpm.esys), that file alone.
  Lazy imports of other packages are not followed: they serve paths the boot does not take
  (``cryptography`` checks signatures in software only to explain a refusal on a running
  system), and an initramfs without them is 14 MB smaller;
- writes every pure module as sourceless bytecode into DIR, under BUNDLE_ROOT;
- prints, one per line, ``exec SOURCE DEST`` for each native file (the interpreter's
  libpython, extension modules, the TPM device TCTI that libtss2 loads with dlopen, the
  keyscript): the hook copies those with initramfs-tools' ``copy_exec``, which also brings
  their shared libraries, then strips them (a self-built libpython keeps its debug symbols:
  23 MB instead of 4);
  ``file SOURCE DEST`` for a file to copy as it is (an interpreter linked to such a libpython).

The bundled interpreter finds its standard library from its own location (the ``os.pyc``
and ``lib-dynload`` landmarks), so it needs no environment variables and runs with ``-I -S``.
"""

from __future__ import annotations

import argparse
import json
import os
import py_compile
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sealer.errors import SealerError
from sealer.host.proc import run
from sealer.install.bootwire import find_hook_source
from sealer.install.crypttab import KEYSCRIPT_PATH

BUNDLE_ROOT = PurePosixPath("/usr/lib/sealer/python")
KEYSCRIPT = PurePosixPath(KEYSCRIPT_PATH)
# The one capping program (cap or power off), for both initramfs kinds.
CAP_PROGRAM = PurePosixPath("/usr/lib/sealer/cap")
ENTRY_MODULES = ("sealer.boot.keyscript", "sealer.boot.agent", "sealer.boot.cap_or_poweroff")
# Functions that load modules without an import statement, called by the discovery: the
# compiled ESAPI binding and cffi's backend are loaded by sealer.tpm.esys at the first TPM use.
RUNTIME_LOADERS = ("sealer.tpm.esys:binding",)
# Codecs are imported by name when first used (open(..., encoding="ascii")), which no import
# statement shows. An interpreter that loaded one at startup put it in the bundle by chance;
# Debian's python3.11 loads only utf_8, so the installed package's initramfs lacked ascii and
# the unlocker failed at boot with "unknown encoding: ascii" (found by tests/lifecycle/).
CODEC_MODULES = ("encodings.ascii", "encodings.utf_8", "encodings.latin_1", "encodings.utf_16_le")
# libtss2-tctildr loads the TCTI named in the TCTI string at run time; ldd cannot see it.
TCTI_LIBRARIES = ("libtss2-tcti-device.so.0",)
SYSTEM_LIBRARY_DIR = PurePosixPath("/usr/lib/x86_64-linux-gnu")
# Imported by the interpreter itself or by site; not needed under -I -S.
_STARTUP_ONLY = ("site", "_sitebuiltins", "_distutils_hack", "__editable__", "sitecustomize")
_SKIPPED_DIRS = {"__pycache__", "tests", "test"}
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")

_DISCOVER = """
import dis, importlib, json, sys, types

def imported_names(code):
    names = {i.argval for i in dis.get_instructions(code)
             if i.opname == "IMPORT_NAME" and not i.argval.startswith(".")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= imported_names(const)
    return names

for name in sys.argv[1:]:
    module_name, _, loader = name.partition(":")
    module = importlib.import_module(module_name)
    if loader:  # a function that loads modules at run time (importlib, not an import statement)
        getattr(module, loader)()
# One lazy step: the modules that the loaded code imports inside its functions (argparse
# imports shutil only when it formats help, for instance), with their own eager imports.
lazy = set()
for name, module in list(sys.modules.items()):
    loader = getattr(getattr(module, "__spec__", None), "loader", None)
    try:
        code = loader.get_code(name)
    except Exception:
        code = None
    if code is not None:
        lazy |= imported_names(code)
# Only the standard library's: see the module's docstring.
lazy = {n for n in lazy if n.split(".")[0] in sys.stdlib_module_names}
for name in sorted(lazy - set(sys.modules) - INTERACTIVE_ONLY):
    try:
        importlib.import_module(name)
    except Exception:
        pass  # another platform's module, or an optional dependency absent here too
found = {}
for name, module in sorted(sys.modules.items()):
    spec = getattr(module, "__spec__", None)
    found[name] = getattr(spec, "origin", None) if spec is not None else None
print(json.dumps(found))
""".replace("INTERACTIVE_ONLY", repr({"pydoc", "readline", "rlcompleter", "pdb", "tkinter"}))


@dataclass
class Bundle:
    """Where each file goes in the initramfs (destination -> source on the host)."""

    pure: dict[PurePosixPath, Path] = field(default_factory=dict)  # .py compiled to .pyc
    native: dict[PurePosixPath, Path] = field(default_factory=dict)  # copied with libraries
    plain: dict[PurePosixPath, Path] = field(default_factory=dict)  # copied as they are


def _lib_dir() -> PurePosixPath:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return BUNDLE_ROOT / "lib" / version


def discover_modules(entry_modules: Iterable[str]) -> dict[str, str | None]:
    """Every module (name -> origin file) a fresh interpreter has after importing the entries."""
    result = run([sys.executable, "-c", _DISCOVER, *entry_modules])
    if result.returncode != 0:
        raise SealerError(
            f"cannot import the boot unlocker to list its modules: {result.reason}",
            "check that sealer and its dependencies are installed for this interpreter",
        )
    found: dict[str, str | None] = json.loads(result.stdout)
    return found


def _stdlib_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]).resolve(), Path(paths["platstdlib"]).resolve()]


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _package_root(origin: Path) -> Path:
    """The directory (or single file) holding the top-level module whose origin is given."""
    if origin.name.startswith("__init__."):
        return origin.parent
    return origin


def _walk_package(root: Path) -> Iterator[Path]:
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for filename in sorted(filenames):
            yield Path(dirpath) / filename


def _add_file(bundle: Bundle, source: Path, relative: PurePosixPath) -> None:
    if source.suffix == ".py":
        bundle.pure[_lib_dir() / relative.with_suffix(".pyc")] = source
    elif source.suffix == ".so":
        bundle.native[_lib_dir() / relative] = source


def plan(modules: dict[str, str | None]) -> Bundle:
    """What goes where, from a module list as ``discover_modules`` returns it."""
    bundle = Bundle()
    stdlib = _stdlib_dirs()
    third_party: dict[str, Path] = {}
    for name, origin in modules.items():
        top = name.split(".")[0]
        if origin is None or not origin.startswith("/") or top.startswith(_STARTUP_ONLY):
            continue  # built in, frozen, namespace package, or only for site
        path = Path(origin).resolve()
        home = next((root for root in stdlib if _under(path, root)), None)
        if home is not None and "site-packages" not in path.parts:
            _add_file(bundle, path, PurePosixPath(path.relative_to(home).as_posix()))
        elif top not in modules:
            # A module loaded on its own, without its package: that file alone, in its place.
            _add_file(bundle, path, PurePosixPath(*name.split(".")[:-1], path.name))
        elif top not in third_party:
            top_origin = modules.get(top)
            third_party[top] = _package_root(Path(top_origin or origin).resolve())
    for root in third_party.values():
        for source in _walk_package(root):
            relative = source.relative_to(root.parent)
            _add_file(bundle, source, PurePosixPath(relative.as_posix()))
    # The interpreter finds its prefix by these landmarks: os is frozen into the binary, so
    # nothing above brought os.py in.
    bundle.pure[_lib_dir() / "os.pyc"] = Path(stdlib[0]) / "os.py"
    interpreter = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    libpython = shared_libpython()
    if libpython is None:
        bundle.native[BUNDLE_ROOT / "bin" / "python3"] = interpreter
    else:
        # A shared libpython outside the system's library directories is found through the
        # interpreter's RUNPATH, which may name a directory that is not there at boot (or is
        # hidden: pyenv's /root/... lies under the initramfs' mount point for the real root).
        # Copied plainly, the interpreter finds libpython in the default directory instead.
        bundle.plain[BUNDLE_ROOT / "bin" / "python3"] = interpreter
        bundle.native[SYSTEM_LIBRARY_DIR / libpython.name] = libpython
    for library in TCTI_LIBRARIES:
        bundle.native[SYSTEM_LIBRARY_DIR / library] = find_library(library)
    return bundle


def shared_libpython() -> Path | None:
    """The interpreter's libpython, when it is built as a shared library."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    path = Path(str(sysconfig.get_config_var("LIBDIR")), str(sysconfig.get_config_var("LDLIBRARY")))
    return path.resolve() if path.exists() else None


def find_library(name: str) -> Path:
    """The installed shared library ``name``, resolved; SealerError when it is not installed."""
    for directory in _LIBRARY_DIRS:
        candidate = Path(directory) / name
        if candidate.exists():
            return candidate.resolve()
    raise SealerError(
        f"{name} is not installed",
        "install the TPM device TCTI (Debian: apt-get install libtss2-tcti-device0)",
    )


def write_pure(bundle: Bundle, destdir: Path) -> int:
    """Compile every pure module to sourceless bytecode inside ``destdir``; return the count."""
    for dest, source in sorted(bundle.pure.items()):
        target = destdir / dest.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        py_compile.compile(
            str(source),
            cfile=str(target),
            dfile=str(dest.with_suffix(".py")),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    (destdir / _lib_dir().relative_to("/") / "lib-dynload").mkdir(parents=True, exist_ok=True)
    return len(bundle.pure)


def main(argv: list[str] | None = None) -> int:
    """Lay out the bundle in ``--destdir``, printing each file the hook must copy as an
    ``exec|file SOURCE DEST`` line; returns 1 (with the reason on stderr) when it cannot.
    """
    parser = argparse.ArgumentParser(
        prog="python -m sealer.install.bundle",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--destdir", type=Path, required=True, help="the initramfs tree")
    args = parser.parse_args(argv)
    try:
        bundle = plan(discover_modules((*ENTRY_MODULES, *RUNTIME_LOADERS, *CODEC_MODULES)))
        write_pure(bundle, args.destdir)
        # For a volume named on the kernel command line (cryptopts=) rather than in crypttab,
        # cryptroot's own hook does not copy the keyscript.
        hook_source = find_hook_source(None)
        bundle.native[KEYSCRIPT] = hook_source / "keyscript"
        bundle.native[CAP_PROGRAM] = hook_source / "cap"
        entries = [("exec", bundle.native), ("file", bundle.plain)]
        for kind, files in entries:
            for dest, source in sorted(files.items()):
                if not source.exists():
                    raise SealerError(f"{source} is missing", "reinstall sealer")
                print(f"{kind} {source} {dest}")
    except (SealerError, OSError, py_compile.PyCompileError) as error:
        message = error.one_line() if isinstance(error, SealerError) else str(error)
        print(f"sealer: cannot bundle the boot unlocker: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
