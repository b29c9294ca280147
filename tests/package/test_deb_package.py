"""The Debian package: built by ``make deb`` (scripts/deb.sh), its metadata and files checked,
lintian run, then installed with apt into a fresh Debian 12 root made by mmdebstrap, where the
installed sealer runs, finds its hook files and imports its vendored dependencies.

Run as root with network (apt, PyPI): ``.venv/bin/pytest -m package tests/package``. The
package tier runs only when selected by marker (tests/conftest.py). SEALER_DEB=path checks an
already built .deb instead of building one.
"""

from __future__ import annotations

import encodings
import encodings.aliases
import gzip
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from sealer import __version__
from sealer.cli import main as sealer_main
from sealer.install import bootwire

CHECKOUT = Path(__file__).resolve().parents[2]
VENV = "usr/lib/sealer"
SITE = f"{VENV}/lib/python3.11/site-packages"
COMPLETIONS = (
    "usr/share/bash-completion/completions/sealer",
    "usr/share/zsh/vendor-completions/_sealer",
    "usr/share/fish/vendor_completions.d/sealer.fish",
)
Members = dict[str, tarfile.TarInfo]  # path in the package (no ./) -> its entry
CRYPTTAB = "cryptroot UUID=8a6d3d5e-0000-4000-8000-000000000001 none luks,discard\n"


def run(*argv: str | Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def deb() -> Path:
    if os.geteuid() != 0:
        pytest.skip("building and installing the package needs root (apt-get, chroot)")
    given = os.environ.get("SEALER_DEB")
    if given:
        return Path(given).resolve()
    run("bash", CHECKOUT / "scripts" / "deb.sh", timeout=1200)
    return CHECKOUT / "dist" / f"sealer_{__version__}_amd64.deb"


@pytest.fixture(scope="module")
def members(deb: Path) -> dict[str, tarfile.TarInfo]:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        return {m.name.removeprefix("./").rstrip("/"): m for m in archive.getmembers()}


def read_member(deb: Path, name: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        handle = archive.extractfile(f"./{name}")
        assert handle is not None
        return handle.read()


def field(deb: Path, name: str) -> str:
    return run("dpkg-deb", "-f", deb, name).stdout.strip()


@pytest.fixture(scope="module")
def root(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Debian 12 (apt variant) with the package installed by apt, as a user would:
    its dependencies come from the Debian mirror, nothing from PyPI."""
    if shutil.which("mmdebstrap") is None:
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", "mmdebstrap")
    where = tmp_path_factory.mktemp("debian") / "root"
    # (mmdebstrap --include=/path/to.deb fails in root mode: dpkg, chrooted, cannot see the
    # file apt hands it. Copied in and installed with apt-get inside instead.)
    run(
        "mmdebstrap", "--variant=apt", "--quiet",
        f"--customize-hook=copy-in {deb} /tmp",
        "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive "
        f"apt-get install -y -q /tmp/{deb.name}",
        "bookworm", where,
        timeout=900,
    )
    yield where
    shutil.rmtree(where, ignore_errors=True)


def in_root(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return run("chroot", root, *argv)


# ---------------------------------------------------------------------------------------------
# The .deb itself


def test_the_control_fields(deb: Path) -> None:
    assert deb.name == f"sealer_{__version__}_amd64.deb"
    assert field(deb, "Package") == "sealer"
    assert field(deb, "Version") == __version__
    assert field(deb, "Architecture") == "amd64"
    depends = [d.strip().split(" ")[0] for d in field(deb, "Depends").split(",")]
    for needed in ("python3.11", "cryptsetup-bin", "libtss2-esys-3.0.2-0", "libtss2-mu0",
                   "libtss2-tctildr0", "libtss2-tcti-device0", "libffi8", "libudev1"):
        assert needed in depends
    assert not [d for d in depends if "fapi" in d or d.startswith("swtpm")]
    assert field(deb, "Recommends") == "cryptsetup-initramfs | dracut"


def test_the_launcher_and_the_private_environment(
    deb: Path, members: Members
) -> None:
    launcher = members["usr/bin/sealer"]
    assert launcher.isfile() and stat.S_IMODE(launcher.mode) == 0o755
    assert b"exec /usr/lib/sealer/bin/python3 -I -m sealer" in read_member(deb, "usr/bin/sealer")
    assert members[f"{VENV}/bin/python3"].issym()
    assert members[f"{VENV}/bin/python3"].linkname == "python3.11"
    # Debian's interpreter, never the build machine's own (a pyenv one, say).
    assert members[f"{VENV}/bin/python3.11"].linkname == "../../../bin/python3.11"
    config = read_member(deb, f"{VENV}/pyvenv.cfg").decode()
    assert "home = /usr/bin\n" in config
    assert "include-system-site-packages = false\n" in config
    for package in ("sealer", "tpm2_pytss", "cryptography", "cffi", "click", "pyudev"):
        assert members[f"{SITE}/{package}/__init__.py"].isfile()
    assert members[f"{SITE}/pefile.py"].isfile()
    assert not [n for n in members if n.startswith(f"{VENV}/bin/") and "python" not in n]


def test_every_hook_file_ships_with_its_mode(members: Members) -> None:
    expected = {
        f"{SITE}/sealer/install/hookfiles/{p.relative_to(bootwire.HOOK_FILES).as_posix()}":
        stat.S_IMODE(p.stat().st_mode)
        for p in bootwire.HOOK_FILES.rglob("*")
        if p.is_file()
    }
    shipped = {
        name: stat.S_IMODE(m.mode)
        for name, m in members.items()
        if name.startswith(f"{SITE}/sealer/install/hookfiles/") and m.isfile()
    }
    assert shipped == expected


def test_no_bytecode_no_tests_no_build_paths(deb: Path, members: Members) -> None:
    assert not [n for n in members if n.endswith((".pyc", ".pyo")) or "__pycache__" in n]
    assert not [n for n in members if set(n.split("/")) & {"tests", "test"}]
    assert f"{SITE}/sealer-{__version__}.dist-info/direct_url.json" not in members
    command = read_member(deb, f"{VENV}/pyvenv.cfg").decode()
    assert "debian/sealer" not in command and "build/deb" not in command


def test_the_man_page_covers_every_command(deb: Path, members: Members) -> None:
    page = gzip.decompress(read_member(deb, "usr/share/man/man1/sealer.1.gz")).decode()
    assert page.startswith('.TH SEALER 1 "')
    assert f'"sealer {__version__}"' in page.splitlines()[0]

    def paths(group: click.Group, prefix: str) -> Iterator[str]:
        for name, command in group.commands.items():
            if not command.hidden:
                yield f"{prefix} {name}"
                if isinstance(command, click.Group):
                    yield from paths(command, f"{prefix} {name}")

    for path in paths(sealer_main, "sealer"):
        roff = path.replace("-", "\\-")  # roff's minus sign, as the generator writes it
        assert f'.SS "{roff}"' in page, path
    assert "\\-\\-hook\\-source DIR" in page
    for name in COMPLETIONS:
        assert members[name].isfile()
        assert b"_SEALER_COMPLETE" in read_member(deb, name)


def test_lintian_finds_no_error(deb: Path) -> None:
    result = subprocess.run(["lintian", "--fail-on", "error", deb], capture_output=True,
                            text=True, timeout=600)
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == [] and result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# Installed into a fresh Debian 12


def test_the_installed_sealer_runs(root: Path) -> None:
    assert in_root(root, "sealer", "--version").stdout == f"sealer, version {__version__}\n"
    assert "boot" in in_root(root, "sealer", "--help").stdout


def test_the_vendored_dependencies_import_with_debians_python(root: Path) -> None:
    out = in_root(
        root, "/usr/lib/sealer/bin/python3", "-c",
        "import sys, tpm2_pytss, cryptography, cffi, click, pyudev, pefile; "
        "print(sys.executable, sys.version_info[:2], cryptography.__version__)",
    ).stdout.split()
    assert out[0] == "/usr/lib/sealer/bin/python3"
    assert int(out[-1].split(".")[0]) >= 45
    linked = in_root(root, "sh", "-c", f"ldd /{SITE}/tpm2_pytss/_libtpm2_pytss*.so").stdout
    assert "libtss2-esys" in linked and "fapi" not in linked and "not found" not in linked


def test_postinst_compiled_the_bytecode(root: Path) -> None:
    assert list((root / SITE / "sealer").glob("__pycache__/*.cpython-311.pyc"))


def test_boot_enable_finds_the_packaged_hook_files(root: Path) -> None:
    target = root / "tmp" / "target"
    (target / "etc").mkdir(parents=True)
    (target / "etc" / "crypttab").write_text(CRYPTTAB)
    (target / "etc" / "crypttab").chmod(0o600)
    out = in_root(
        root, "sealer", "boot", "enable", "--dry-run", "--root", "/tmp/target",
        "--name", "cryptroot",
    ).stdout
    keyscript = (bootwire.HOOK_FILES / "initramfs-tools" / "keyscript").read_text()
    assert "".join(f"+{line}\n" for line in keyscript.splitlines()) in out
    assert "+SEALER_PYTHON=/usr/lib/sealer/bin/python3\n" in out
    assert "+++ /tmp/target/etc/systemd/system/sealer-prune.service\n" in out
    assert out.endswith("Dry run: nothing was changed.\n")


def test_the_initramfs_bundle_is_made_from_the_package(root: Path) -> None:
    # What the initramfs hook runs: the trimmed runtime for the boot-time unlocker.
    out = in_root(
        root, "/usr/lib/sealer/bin/python3", "-I", "-m", "sealer.install.bundle",
        "--destdir", "/tmp/bundle",
    ).stdout
    hookfiles = f"/{SITE}/sealer/install/hookfiles/initramfs-tools"
    assert f"exec {hookfiles}/keyscript /usr/lib/sealer/keyscript\n" in out
    assert f"exec {hookfiles}/cap /usr/lib/sealer/cap\n" in out
    assert "exec /usr/bin/python3.11 /usr/lib/sealer/python/bin/python3\n" in out
    stdlib = root / "tmp/bundle/usr/lib/sealer/python/lib/python3.11"
    assert (stdlib / "sealer/boot/keyscript.pyc").is_file()
    # Codecs are imported by name on first use, which no import statement shows: Debian's
    # python3.11 does not load ascii at startup, and the initramfs lacked it (found at boot).
    missing = [m for m in codec_modules_named_in_sealer() if not (stdlib / f"{m}.pyc").is_file()]
    assert not missing, missing


def codec_modules_named_in_sealer() -> set[str]:
    """``encodings/NAME`` for every codec sealer's code names (encoding=, encode, decode)."""
    named = re.compile(r"""(?:encoding=|\.(?:en|de)code\()\s*["']([\w-]+)["']""")
    found: set[str] = set()
    for path in (CHECKOUT / "sealer").rglob("*.py"):
        for name in named.findall(path.read_text()):
            normal = encodings.normalize_encoding(name).lower()
            found.add("encodings/" + encodings.aliases.aliases.get(normal, normal))
    assert "encodings/ascii" in found  # the scan works
    return found


def test_removing_the_package_leaves_nothing_behind(root: Path) -> None:
    # Last in this file: the root is shared by the tests above.
    in_root(root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "remove", "-y", "-q",
            "sealer")
    assert not (root / VENV).exists()
    assert not (root / "usr/bin/sealer").exists()
