"""The initramfs' Python runtime, laid out by ``python -m sealer.install.bundle`` in a folder
and run from there with ``-I -S``, as the initramfs runs it: it must find its standard
library by itself and import nothing from outside the bundle."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from bundle_tree import lay_out_bundle
from conftest import SealerCli
from swtpm import Swtpm

from sealer.errors import ExitCode
from sealer.luks import cryptsetup

EXIT_POLICY = int(ExitCode.POLICY)

ENTRY_MODULES = ("sealer.boot.keyscript", "sealer.boot.agent", "sealer.boot.cap_or_poweroff")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("initramfs")
    lay_out_bundle(tree)
    return tree


def bundled(tree: Path, *args: str) -> subprocess.CompletedProcess[str]:
    python = tree / "usr/lib/sealer/python/bin/python3"
    return subprocess.run(
        [str(python), "-I", "-S", *args], capture_output=True, text=True, timeout=60, env={}
    )


def test_the_bundled_interpreter_finds_its_own_library(bundle: Path) -> None:
    result = bundled(bundle, "-c", "import sys; print(sys.prefix)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bundle / "usr/lib/sealer/python")


def test_every_module_of_the_unlocker_comes_from_the_bundle(bundle: Path) -> None:
    code = (
        f"import json, sys\nfor name in {ENTRY_MODULES!r}: __import__(name)\n"
        "specs = [getattr(m, '__spec__', None) for m in list(sys.modules.values())]\n"
        "print(json.dumps([getattr(s, 'origin', None) for s in specs]))"
    )
    result = bundled(bundle, "-c", code)
    assert result.returncode == 0, result.stderr
    # Built-in and frozen modules live in the interpreter itself.
    files = [f for f in json.loads(result.stdout) if f and f not in ("built-in", "frozen")]
    outside = [f for f in files if not f.startswith(str(bundle))]
    assert outside == []
    assert [f for f in files if not f.endswith((".pyc", ".so"))] == []  # no sources shipped


def test_lazily_imported_modules_are_there_too(bundle: Path) -> None:
    # argparse imports shutil only when it formats help: a bundle of the modules loaded at
    # import time alone lacked it, and the dracut agent died before answering anything.
    result = bundled(bundle, "-m", "sealer.boot.agent", "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m sealer.boot.agent" in result.stdout


def test_the_keyscript_runs_from_the_bundle_and_says_what_it_needs(bundle: Path) -> None:
    result = bundled(bundle, "-m", "sealer.boot.keyscript")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "sealer: CRYPTTAB_SOURCE is not set: this program is a crypttab keyscript"
    )


def test_no_cryptography_and_only_the_compiled_esapi_binding(bundle: Path) -> None:
    """The boot path checks no signature in software and uses tpm2-pytss's compiled module
    alone (sealer.tpm.esys): ``cryptography`` (about 12 MB) and tpm2-pytss's Python layer
    (2 MB) stay out of every initramfs."""
    lib = bundle / "usr/lib/sealer/python/lib"
    files = {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file()}
    assert not [f for f in files if "/cryptography" in f]
    assert [f for f in files if "tpm2_pytss" in f] == [
        "python3.11/tpm2_pytss/_libtpm2_pytss.abi3.so"
    ]


def test_the_bundled_keyscript_releases_the_key_from_a_real_tpm(
    bundle: Path, sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    """The bundle alone is enough to unlock: a module the unlock needs but the discovery
    missed would end in 'internal error' and the passphrase prompt at every boot."""
    assert sealer.enroll(luks_image).returncode == 0
    python = bundle / "usr/lib/sealer/python/bin/python3"
    environment = {
        "PATH": os.environ["PATH"],  # cryptsetup, as in the initramfs
        "SEALER_TCTI": swtpm.tcti,
        "SEALER_CAP_RECORD": str(tmp_path / "cap-pcrs"),
        "CRYPTTAB_SOURCE": str(luks_image),
        "CRYPTTAB_NAME": "cryptroot",
    }
    released = subprocess.run(
        [str(python), "-I", "-S", "-m", "sealer.boot.keyscript"],
        capture_output=True, timeout=60, env=environment,
    )
    assert released.returncode == 0, released.stderr
    assert cryptsetup.test_key(str(luks_image), released.stdout, 1)
    capped = subprocess.run(
        [str(python), "-I", "-S", "-m", "sealer.boot.cap_or_poweroff"],
        capture_output=True, timeout=60, env=environment,
    )
    assert capped.returncode == 0, capped.stderr
    again = subprocess.run(
        [str(python), "-I", "-S", "-m", "sealer.boot.keyscript"],
        capture_output=True, timeout=60, env=environment,
    )
    assert (again.returncode, again.stdout) == (EXIT_POLICY, b"")
