"""sealer built as a wheel and installed (not editable) into a fresh virtualenv finds its own
boot hook files: ``sealer boot enable`` needs no source checkout and no --hook-source."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sealer.install import bootwire

CHECKOUT = Path(__file__).resolve().parents[2]
CRYPTTAB = "cryptroot UUID=8a6d3d5e-0000-4000-8000-000000000001 none luks,discard\n"


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=300, cwd=cwd
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: pip builds in the source tree, and the checkout must stay clean.
    source = tmp_path_factory.mktemp("source")
    shutil.copy(CHECKOUT / "pyproject.toml", source)
    shutil.copytree(
        CHECKOUT / "sealer", source / "sealer", ignore=shutil.ignore_patterns("__pycache__")
    )
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the dev virtualenv's setuptools builds it, nothing is downloaded.
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-q", "-w", out, source)
    (built,) = out.glob("sealer-*.whl")
    return built


def test_the_wheel_holds_every_hook_file_with_its_mode(wheel: Path) -> None:
    shipped = {
        path.relative_to(CHECKOUT).as_posix(): stat.S_IMODE(path.stat().st_mode)
        for path in bootwire.HOOK_FILES.rglob("*")
        if path.is_file()
    }
    assert "sealer/install/hookfiles/initramfs-tools/keyscript" in shipped
    assert "sealer/install/hookfiles/dracut/90sealer/module-setup.sh" in shipped
    with zipfile.ZipFile(wheel) as archive:
        modes = {
            info.filename: stat.S_IMODE(info.external_attr >> 16)
            for info in archive.infolist()
            if info.filename.startswith("sealer/install/hookfiles/")
        }
    assert modes == shipped


def test_an_installed_wheel_wires_from_its_own_hook_files(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install",
        "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel)
    purelib = run(
        venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    ).stdout.strip()
    # The dependencies come from the dev virtualenv, after the wheel's own site-packages; its
    # .pth files (the editable sealer among them) are not read from a directory listed so.
    dev_purelib = run(
        sys.executable, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
    ).stdout.strip()
    Path(purelib, "dev-dependencies.pth").write_text(dev_purelib + "\n")
    where = run(
        venv / "bin" / "python", "-c",
        "import sealer.install.bootwire as b; print(b.HOOK_FILES)",
        cwd=tmp_path,  # not the checkout, whose sealer/ `python -c` would import first
    ).stdout.strip()
    assert where == str(Path(purelib).resolve() / "sealer" / "install" / "hookfiles")

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "crypttab").write_text(CRYPTTAB)
    (root / "etc" / "crypttab").chmod(0o600)
    result = subprocess.run(
        [venv / "bin" / "sealer", "boot", "enable", "--dry-run", "--root", root,
         "--name", "cryptroot"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    keyscript = (bootwire.HOOK_FILES / "initramfs-tools" / "keyscript").read_text()
    assert "".join(f"+{line}\n" for line in keyscript.splitlines()) in out
    assert f"+SEALER_PYTHON={venv / 'bin' / 'python'}\n" in out
    assert f"+++ {root}/etc/systemd/system/sealer-prune.service\n" in out
    assert out.endswith("Dry run: nothing was changed.\n")
    assert "Traceback" not in result.stderr
