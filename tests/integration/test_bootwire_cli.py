"""``sealer boot enable|disable`` run as a user would, always under --root (never this host's
/etc), with a fake hook source; the default choice of entries against real enrolled images."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PASSPHRASE, Result, SealerCli
from luks_image import make_luks_image

from sealer.install.crypttab import KEYSCRIPT_OPTION

HOOK = b"#!/bin/sh\n# fake hook\nexit 0\n"
CAP_SCRIPT = b"#!/bin/sh\n# fake init-bottom capping script\n"
PANIC_SCRIPT = b"#!/bin/sh\n# fake panic capping script\n"
CAP_PROGRAM = b"#!/bin/sh\n# fake cap-or-power-off program\n"
KEYSCRIPT = b"#!/bin/sh\nexec /lib/cryptsetup/askpass x\n"
CRYPTTAB = (
    "# /etc/crypttab\n"
    "\n"
    "cryptroot UUID=8a6d3d5e-0000-4000-8000-000000000001 none luks,discard\n"
    "swap\t/dev/sda3\t/dev/urandom\tswap\n"
)


def boot(*args: str) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "sealer", "boot", *args], capture_output=True, timeout=120
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_line_error(result: Result, code: int, expected: str) -> None:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sealer: "), result.stderr
    assert expected in lines[0], result.stderr


@pytest.fixture
def source(tmp_path: Path) -> Path:
    tools = tmp_path / "hookfiles" / "initramfs-tools"
    (tools / "hooks").mkdir(parents=True)
    (tools / "hooks" / "sealer").write_bytes(HOOK)
    (tools / "keyscript").write_bytes(KEYSCRIPT)
    (tools / "scripts" / "init-bottom").mkdir(parents=True)
    (tools / "scripts" / "init-bottom" / "sealer").write_bytes(CAP_SCRIPT)
    (tools / "scripts" / "panic").mkdir(parents=True)
    (tools / "scripts" / "panic" / "sealer").write_bytes(PANIC_SCRIPT)
    (tools / "cap").write_bytes(CAP_PROGRAM)
    # The update hook and prune unit are the checkout's own: their content is tested here.
    checkout = Path(__file__).resolve().parents[2] / "sealer" / "install" / "hookfiles"
    for part in ("update/reseal-hook", "systemd/sealer-prune.service"):
        (tools.parent / part).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkout / part, tools.parent / part)
    return tmp_path / "hookfiles"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "crypttab").write_text(CRYPTTAB)
    (root / "etc" / "crypttab").chmod(0o640)
    return root


def test_dry_run_prints_the_diffs_and_changes_nothing(root: Path, source: Path) -> None:
    before = tree(root)
    crypttab = root / "etc" / "crypttab"
    result = boot(
        "enable", "--root", str(root), "--crypttab", str(crypttab), "--name", "cryptroot",
        "--hook-source", str(source), "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert tree(root) == before
    out = result.stdout
    assert f"--- /dev/null\n+++ {root}/usr/lib/sealer/keyscript\n" in out
    assert f"+++ {root}/etc/initramfs-tools/hooks/sealer\n" in out
    assert f"+++ {root}/etc/sealer/initramfs.conf\n" in out
    assert f"+SEALER_PYTHON={sys.executable}\n" in out
    assert out.count("new file mode 100755\n") == 7  # keyscript, 3 initramfs + 3 update hooks
    assert f"--- {crypttab}\n+++ {crypttab}\n" in out
    old = "cryptroot UUID=8a6d3d5e-0000-4000-8000-000000000001 none luks,discard"
    assert f"-{old}\n+{old},{KEYSCRIPT_OPTION}\n" in out
    assert out.endswith("Dry run: nothing was changed.\n")
    assert "update-initramfs is not run under --root" in result.stderr
    assert "Traceback" not in result.stderr


def test_dry_run_json_is_the_plan(root: Path, source: Path) -> None:
    result = boot(
        "enable", "--root", str(root), "--name", "cryptroot", "--hook-source", str(source),
        "--dry-run", "--json",
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["action"] == "enable" and doc["dry_run"] is True
    assert doc["crypttab"] == str(root / "etc" / "crypttab")
    assert doc["commands"] == []
    assert [(f["path"], f["change"], f["mode"]) for f in doc["files"]] == [
        (str(root / "usr/lib/sealer/keyscript"), "create", "0755"),
        (str(root / "etc/initramfs-tools/hooks/sealer"), "create", "0755"),
        (str(root / "etc/initramfs-tools/scripts/init-bottom/sealer"), "create", "0755"),
        (str(root / "etc/initramfs-tools/scripts/panic/sealer"), "create", "0755"),
        (str(root / "etc/sealer/initramfs.conf"), "create", "0644"),
        (str(root / "etc/kernel/postinst.d/zzz-sealer"), "create", "0755"),
        (str(root / "etc/kernel/postrm.d/zzz-sealer"), "create", "0755"),
        (str(root / "etc/initramfs/post-update.d/sealer"), "create", "0755"),
        (str(root / "etc/systemd/system/sealer-prune.service"), "create", "0644"),
        (str(root / "etc/crypttab"), "update", "0640"),
    ]
    assert all(f["diff"] for f in doc["files"])
    (entry,) = doc["entries"]
    assert entry["name"] == "cryptroot" and entry["line"] == 3 and entry["changed"] is True
    assert entry["after"].endswith(f"luks,discard,{KEYSCRIPT_OPTION}")
    assert any("--root" in note for note in doc["notes"])


def test_enable_then_again_then_disable_under_root(root: Path, source: Path) -> None:
    original = tree(root)
    args = ("--root", str(root), "--name", "cryptroot")
    enabled = boot("enable", *args, "--hook-source", str(source))
    assert enabled.returncode == 0, enabled.stderr
    assert "cryptroot (line 3) now uses" in enabled.stdout
    assert "passphrase prompt stays as the fallback" in enabled.stdout
    files = tree(root)
    assert files["usr/lib/sealer/keyscript"] == (KEYSCRIPT, 0o755)
    assert files["etc/initramfs-tools/hooks/sealer"] == (HOOK, 0o755)
    assert files["etc/initramfs-tools/scripts/init-bottom/sealer"] == (CAP_SCRIPT, 0o755)
    assert files["etc/initramfs-tools/scripts/panic/sealer"] == (PANIC_SCRIPT, 0o755)
    assert files["etc/sealer/initramfs.conf"][1] == 0o644
    hook = (source / "update/reseal-hook").read_bytes()
    assert files["etc/kernel/postinst.d/zzz-sealer"] == (hook, 0o755)
    assert files["etc/initramfs/post-update.d/sealer"] == (hook, 0o755)
    unit, unit_mode = files["etc/systemd/system/sealer-prune.service"]
    assert f"ExecStart={sys.executable} -m sealer prune\n".encode() in unit and unit_mode == 0o644
    assert "enable pruning in that root: 'systemctl enable sealer-prune.service'" in (
        enabled.stdout + enabled.stderr
    )
    conf = str(root / "etc/sealer/initramfs.conf")
    shown = subprocess.run(
        ["sh", "-c", '. "$1"; printf %s "$SEALER_PYTHON"', "sh", conf],
        capture_output=True, text=True, check=True,
    )
    assert shown.stdout == sys.executable
    crypttab, mode = files["etc/crypttab"]
    assert mode == 0o640
    assert crypttab.decode() == CRYPTTAB.replace("discard\n", f"discard,{KEYSCRIPT_OPTION}\n")

    again = boot("enable", *args, "--hook-source", str(source), "--json")
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert {f["change"] for f in doc["files"]} == {"unchanged"}
    assert tree(root) == files

    disabled = boot("disable", "--root", str(root))
    assert disabled.returncode == 0, disabled.stderr
    assert "no longer uses" in disabled.stdout
    assert tree(root) == original


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--name", "nope"], "has no entry named 'nope': its entries are: cryptroot, swap"),
        (["--name", "cryptroot", "--hook-source", "/nonexistent"], "--hook-source /nonexistent"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(
    root: Path, source: Path, args: list[str], expected: str
) -> None:
    before = tree(root)
    if "--hook-source" not in args:
        args = [*args, "--hook-source", str(source)]
    result = boot("enable", "--root", str(root), *args)
    one_line_error(result, 2, expected)
    assert tree(root) == before


def test_another_keyscript_is_refused(root: Path, source: Path) -> None:
    (root / "etc/crypttab").write_text(CRYPTTAB + "vault /dev/sdc1 none luks,keyscript=passdev\n")
    before = tree(root)
    result = boot("enable", "--root", str(root), "--name", "vault", "--hook-source", str(source),
                  "--json")
    one_line_error(result, 2, "'vault' (line 5) already uses keyscript=/lib/cryptsetup/scripts/")
    assert json.loads(result.stdout)["exit_code"] == 2
    assert tree(root) == before


def test_default_choice_is_the_enrolled_volumes(
    sealer: SealerCli, luks_image: Path, root: Path, source: Path, tmp_path: Path
) -> None:
    other = make_luks_image(tmp_path / "other.img", PASSPHRASE)
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    crypttab = root / "etc" / "crypttab"
    crypttab.write_text(
        f"# test\nvolume {luks_image} none luks\nother {other} none\nplain {plain}\n"
    )
    args = ("enable", "--root", str(root), "--hook-source", str(source))

    nothing = sealer("boot", *args)
    one_line_error(nothing, 2, f"volume: {luks_image} has no sealer enrollment")
    assert "sealer enroll" in nothing.stderr and "--name" in nothing.stderr

    assert sealer.enroll(luks_image).returncode == 0
    result = sealer("boot", *args, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(e["name"], e["changed"]) for e in doc["entries"]] == [("volume", True)]
    assert crypttab.read_text() == (
        f"# test\nvolume {luks_image} none luks,{KEYSCRIPT_OPTION}\n"
        f"other {other} none\nplain {plain}\n"
    )
    notes = " ".join(doc["notes"])
    assert f"left out other: {other} has no sealer enrollment" in notes
    assert f"left out plain: {plain} is not a LUKS volume" in notes


def test_a_file_that_cannot_be_written_is_exit_13_and_crypttab_stays(
    root: Path, source: Path
) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "usr" / "lib" / "sealer").write_text("a file where a folder must go\n")
    crypttab_before = (root / "etc" / "crypttab").read_bytes()
    result = boot(
        "enable", "--root", str(root), "--name", "cryptroot", "--hook-source", str(source)
    )
    one_line_error(result, 13, "usr/lib/sealer")
    # crypttab is written last: it never names a keyscript that is not in place.
    assert (root / "etc" / "crypttab").read_bytes() == crypttab_before


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A virtualenv at tmp_path/venv whose python is this one's base interpreter, whose
    site-packages loads this checkout's (through a .pth), and a copy of the sealer package
    ahead of it: (its python, the copied sealer package). Everything root-owned, 0755."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = "
                                     "false\n")
    (venv / "bin" / "python3").symlink_to(base)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    packages = tmp_path / "packages"
    shutil.copytree(Path(__file__).resolve().parents[2] / "sealer", packages / "sealer",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ours = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    (site_packages / "zz-test.pth").write_text(
        f"import site, sys; site.addsitedir({str(ours)!r}); sys.path.insert(0, "
        f"{str(packages)!r})\n"
    )
    for path in [tmp_path, *tmp_path.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755)
    return venv / "bin" / "python3", packages / "sealer"


def _other_owner(python: Path, package: Path) -> None:
    os.chown(python.parent, 65534, 65534)  # the venv's bin/: nobody's


def _world_writable_site_packages(python: Path, package: Path) -> None:
    next(python.parents[1].glob("lib/python3*/site-packages")).chmod(0o777)


def _group_writable_package(python: Path, package: Path) -> None:
    package.chmod(0o775)


UNSAFE: dict[str, Callable[[Path, Path], None]] = {
    "venv owned by another user": _other_owner,
    "site-packages world-writable": _world_writable_site_packages,
    "sealer package group-writable": _group_writable_package,
}


@pytest.mark.parametrize("fault", sorted(UNSAFE))
def test_enable_refuses_an_install_others_can_write(
    fault: str, root: Path, source: Path, tmp_path: Path
) -> None:
    """Issue 15: the initramfs and the prune unit run this Python as root: refuse one that
    anyone but root could change (and show that the same root-owned install is accepted)."""
    python, package = _fake_venv(tmp_path / "install")
    args = ("boot", "enable", "--root", str(root), "--name", "cryptroot", "--hook-source",
            str(source))

    def run_it() -> Result:
        proc = subprocess.run([str(python), "-m", "sealer", *args], capture_output=True,
                              timeout=120, cwd=tmp_path)
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    where = subprocess.run([str(python), "-c", "import sealer, sys; print(sealer.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.strip() == str(package / "__init__.py")  # the copy is what runs
    before = tree(root)
    UNSAFE[fault](python, package)
    refused = run_it()
    one_line_error(refused, 13, "the initramfs and the prune unit would run the Python")
    assert tree(root) == before  # nothing written: no conf naming that interpreter
    # The same install made root's again is accepted, and recorded.
    for path in [tmp_path / "install", *(tmp_path / "install").rglob("*")]:
        if not path.is_symlink():
            os.chown(path, 0, 0)
            path.chmod(0o755)
    accepted = run_it()
    assert accepted.returncode == 0, accepted.stderr
    conf = (root / "etc" / "sealer" / "initramfs.conf").read_text()
    assert f"SEALER_PYTHON={python}\n" in conf


def test_enable_says_what_the_command_line_means_for_the_unlock(root: Path, source: Path) -> None:
    # Under --root the image's own command line (etc/kernel/cmdline) is judged.
    (root / "etc" / "kernel").mkdir()
    (root / "etc" / "kernel" / "cmdline").write_text("root=/dev/mapper/cryptroot rdinit=/bin/sh\n")
    argv = ["enable", "--root", str(root), "--name", "cryptroot", "--hook-source", str(source)]
    text = boot(*argv, "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "sealer: boot option rdinit=/bin/sh: the kernel runs this program" in text.stderr
    assert "sealer: boot option panic=: not set" in text.stderr
    doc = json.loads(boot(*argv, "--dry-run", "--json").stdout)
    assert [(f["option"], f["level"]) for f in doc["boot_options"]] == [
        ("rdinit=/bin/sh", "risk"),
        ("panic=", "capped"),
    ]


# ---------------------------------------------------------------------------------------------
# dracut (issue 18): which generator a Debian tree uses decides what is wired

CHECKOUT = Path(__file__).resolve().parents[2] / "sealer" / "install" / "hookfiles"
DEBIAN_WITH_DRACUT = (
    # Installing Debian's dracut package removes initramfs-tools (they conflict); its kernel
    # hook stays as a conffile until purged.
    "Package: initramfs-tools\nStatus: deinstall ok config-files\nVersion: 0.142+deb12u3\n\n"
    "Package: dracut-core\nStatus: install ok installed\nVersion: 059-4\n\n"
    "Package: dracut\nStatus: install ok installed\nVersion: 059-4\n"
)
DEBIAN_WITH_DRACUT_CORE = (
    "Package: initramfs-tools\nStatus: install ok installed\nVersion: 0.142+deb12u3\n\n"
    "Package: dracut-core\nStatus: install ok installed\nVersion: 059-4\n"
)


def debian_tree(root: Path, status: str) -> None:
    """dpkg's record plus the files Debian's packages put where the detection looks."""
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    for path in ("etc/kernel/postinst.d/initramfs-tools", "usr/bin/dracut",
                 "usr/sbin/update-initramfs", "usr/lib/dracut/modules.d/90crypt/module-setup.sh"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("#!/bin/sh\n")
    if "Package: dracut\n" in status:
        (root / "etc/kernel/postinst.d/dracut").write_text("#!/bin/sh\n")


@pytest.fixture
def dracut_source(source: Path) -> Path:
    """The fake hook source plus the checkout's own dracut module."""
    shutil.copytree(CHECKOUT / "dracut", source / "dracut")
    return source


def test_a_debian_tree_with_dracut_gets_the_dracut_module_and_loses_it_again(
    root: Path, dracut_source: Path
) -> None:
    debian_tree(root, DEBIAN_WITH_DRACUT)
    original = tree(root)
    args = ("--root", str(root), "--hook-source", str(dracut_source))
    dry = boot("enable", *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    doc = json.loads(dry.stdout)
    assert doc["initramfs"]["generator"] == "dracut"
    assert "records the dracut package as installed" in doc["initramfs"]["reason"]
    module = root / "usr/lib/dracut/modules.d/90sealer"
    assert [(f["path"], f["change"]) for f in doc["files"]] == [
        (str(root / "etc/sealer/initramfs.conf"), "create"),
        *((str(module / p.name), "create") for p in [
            module / "module-setup.sh", module / "sealer-ask-password.path",
            module / "sealer-ask-password.service", module / "sealer-cap.service",
            module / "sealer-cap-before-shell.conf",
        ]),
        (str(root / "etc/kernel/postinst.d/zzz-sealer"), "create"),
        (str(root / "etc/kernel/postrm.d/zzz-sealer"), "create"),
        (str(root / "etc/systemd/system/sealer-prune.service"), "create"),
        (str(root / "etc/dracut.conf.d/90-sealer.conf"), "create"),
        (str(root / "etc/crypttab"), "unchanged"),
    ]
    assert any("dracut is not run under --root" in n and "dracut --force" in n
               for n in doc["notes"])
    assert tree(root) == original
    text = boot("enable", *args, "--dry-run")
    assert "Initramfs generator: dracut (" in text.stdout
    assert f"+++ {root}/etc/dracut.conf.d/90-sealer.conf\n" in text.stdout

    enabled = boot("enable", *args)
    assert enabled.returncode == 0, enabled.stderr
    files = tree(root)
    for path in sorted((CHECKOUT / "dracut/90sealer").iterdir()):
        installed = files[f"usr/lib/dracut/modules.d/90sealer/{path.name}"]
        assert installed == (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
    conf, mode = files["etc/dracut.conf.d/90-sealer.conf"]
    assert b'\nadd_dracutmodules+=" sealer "\n' in conf and mode == 0o644
    assert files["etc/kernel/postinst.d/zzz-sealer"][0] == (CHECKOUT / "update/reseal-hook"
                                                             ).read_bytes()
    assert "etc/initramfs/post-update.d/sealer" not in files  # Debian's dracut runs none
    assert files["etc/crypttab"][0].decode() == CRYPTTAB  # systemd-cryptsetup runs no keyscript
    assert "usr/lib/sealer/keyscript" not in files

    named = boot("enable", *args, "--name", "cryptroot")
    one_line_error(named, 2, "--name chooses crypttab entries for initramfs-tools")

    disabled = boot("disable", "--root", str(root), "--json")
    assert disabled.returncode == 0, disabled.stderr
    assert json.loads(disabled.stdout)["removed_directories"] == [str(module)]
    assert tree(root) == original
    assert not module.exists()


def test_initramfs_tools_with_dracut_core_beside_it_stays_initramfs_tools(
    root: Path, dracut_source: Path
) -> None:
    debian_tree(root, DEBIAN_WITH_DRACUT_CORE)
    original = tree(root)
    args = ("--root", str(root), "--name", "cryptroot", "--hook-source", str(dracut_source))
    enabled = boot("enable", *args)
    assert enabled.returncode == 0, enabled.stderr
    assert "Initramfs generator: initramfs-tools (" in enabled.stdout
    assert "dracut-core is installed too" in enabled.stdout
    assert "cryptroot (line 3) now uses" in enabled.stdout
    files = tree(root)
    assert "etc/initramfs-tools/hooks/sealer" in files
    assert not any(name.startswith("usr/lib/dracut/modules.d/90sealer") for name in files)
    assert KEYSCRIPT_OPTION in files["etc/crypttab"][0].decode()
    # Asked for dracut all the same: that is what is wired, and said.
    dry = json.loads(boot("enable", "--root", str(root), "--hook-source", str(dracut_source),
                          "--initramfs", "dracut", "--dry-run", "--json").stdout)
    assert dry["initramfs"] == {"generator": "dracut", "reason": "chosen with --initramfs"}
    disabled = boot("disable", "--root", str(root))
    assert disabled.returncode == 0, disabled.stderr
    assert tree(root) == original


def test_real_dracut_includes_the_module_the_wired_tree_configures(
    root: Path, tmp_path: Path
) -> None:
    """dracut itself, with the tree's dracut.conf.d and module (no --add sealer): the conf
    file that 'boot enable' writes is what brings sealer's agent and cap into the image, and
    after 'boot disable' the same build has none of it."""
    from bootimage import installed_kernel
    from dracut_image import DRACUT_BASE, DRACUT_MODULES, missing_dracut

    if (why := missing_dracut()) is not None:
        pytest.skip(why)
    kernel = installed_kernel()
    debian_tree(root, DEBIAN_WITH_DRACUT)
    (root / "usr/lib/dracut/modules.d/90crypt").joinpath("module-setup.sh").unlink()
    (root / "usr/lib/dracut/modules.d/90crypt").rmdir()
    enabled = boot("enable", "--root", str(root))  # the checkout's own hook source
    assert enabled.returncode == 0, enabled.stderr
    # dracut takes its modules from $dracutbasedir/modules.d only: the system's, plus the
    # tree's 90sealer (the system has none).
    base = tmp_path / "dracut-base"
    (base / "modules.d").mkdir(parents=True)
    for entry in DRACUT_BASE.iterdir():
        if entry.name != "modules.d":
            (base / entry.name).symlink_to(entry)
    for module in [*(DRACUT_BASE / "modules.d").iterdir(),
                   root / "usr/lib/dracut/modules.d/90sealer"]:
        (base / "modules.d" / module.name).symlink_to(module)
    env = dict(os.environ, dracutbasedir=str(base),
               SEALER_INITRAMFS_CONF=str(root / "etc/sealer/initramfs.conf"))

    def build(image: Path) -> tuple[list[str], str]:
        """The image's dracut modules, and its file listing."""
        built = subprocess.run(
            ["dracut", "--force", "--quiet", "--conf", "/dev/null",
             "--confdir", str(root / "etc/dracut.conf.d"), "--no-hostonly",
             "--no-hostonly-cmdline", "--compress", "zstd", "--modules",
             " ".join(DRACUT_MODULES), "--kver", kernel.version, str(image)],
            capture_output=True, text=True, env=env, timeout=600,
        )
        assert built.returncode == 0, built.stderr[-3000:]
        # lsinitrd prints the image's early bytes too: not all of it is UTF-8.
        listing = subprocess.run(["lsinitrd", str(image)], capture_output=True,
                                 timeout=300).stdout.decode("utf-8", "replace")
        return listing.split("dracut modules:")[1].split("=====")[0].split(), listing

    ours = ("usr/lib/systemd/system/sealer-ask-password.service",
            "usr/lib/systemd/system/sealer-cap.service",
            "etc/systemd/system/sysinit.target.wants/sealer-ask-password.path",
            "etc/systemd/system/initrd.target.wants/sealer-cap.service",
            "usr/lib/sealer/cap", "usr/lib/sealer/python/bin/python3")
    modules, listing = build(tmp_path / "enabled.img")
    assert "sealer" in modules and "crypt" in modules
    for path in ours:
        assert f" {path}" in listing, path

    disabled = boot("disable", "--root", str(root))
    assert disabled.returncode == 0, disabled.stderr
    (base / "modules.d/90sealer").unlink()  # its target is gone with the module
    modules, listing = build(tmp_path / "disabled.img")
    assert "sealer" not in modules and "crypt" in modules
    assert not any(f" {path}" in listing for path in ours)
