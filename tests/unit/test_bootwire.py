"""Unit tests for sealer.install.bootwire: planning and applying ``sealer boot``.

Everything happens under a temporary --root with a fake hook source; no real /etc is read
or written, and update-initramfs is never run.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from sealer.errors import SealerError, UsageError
from sealer.host.proc import Completed
from sealer.install import bootwire
from sealer.install.bootwire import (
    FileChange,
    Plan,
    WireRequest,
    apply,
    enrollment_problem,
    find_hook_source,
    initramfs_conf,
    plan_disable,
    plan_enable,
    resolve_source,
)
from sealer.install.crypttab import KEYSCRIPT_OPTION

HOOK = b"#!/bin/sh\n# fake initramfs-tools hook\nexit 0\n"
CAP_SCRIPT = b"#!/bin/sh\n# fake init-bottom capping script\n"
PANIC_SCRIPT = b"#!/bin/sh\n# fake panic capping script\n"
CAP_PROGRAM = b"#!/bin/sh\n# fake cap-or-power-off program\n"
UPDATE_HOOK = b"#!/bin/sh\n# fake update hook\n"
PRUNE_UNIT = b"ExecStart=@SEALER_PYTHON@ -m sealer prune\n"
KEYSCRIPT = b"#!/bin/sh\n# fake keyscript\nexec /lib/cryptsetup/askpass x\n"
CRYPTTAB = (
    "# <target> <source> <key> <options>\n"
    "\n"
    "cryptroot\tUUID=1111\tnone\tluks,discard\n"
    "swap /dev/sda3 /dev/urandom swap,cipher=aes-xts-plain64\n"
    "data /dev/sdb1\n"
)


def fake_hook_source(where: Path) -> Path:
    """A hook files directory laid out like sealer/install/hookfiles."""
    tools = where / "initramfs-tools"
    (tools / "hooks").mkdir(parents=True)
    (tools / "hooks" / "sealer").write_bytes(HOOK)
    (tools / "keyscript").write_bytes(KEYSCRIPT)
    (tools / "scripts" / "init-bottom").mkdir(parents=True)
    (tools / "scripts" / "init-bottom" / "sealer").write_bytes(CAP_SCRIPT)
    (tools / "scripts" / "panic").mkdir(parents=True)
    (tools / "scripts" / "panic" / "sealer").write_bytes(PANIC_SCRIPT)
    (tools / "cap").write_bytes(CAP_PROGRAM)
    (where / "update").mkdir()
    (where / "update" / "reseal-hook").write_bytes(UPDATE_HOOK)
    (where / "systemd").mkdir()
    (where / "systemd" / "sealer-prune.service").write_bytes(PRUNE_UNIT)
    return where


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    crypttab = root / "etc" / "crypttab"
    crypttab.write_text(CRYPTTAB)
    crypttab.chmod(0o600)
    # cryptsetup-initramfs is "installed" in this root, so no warning about it by default.
    cryptroot = root / "usr/share/initramfs-tools/hooks/cryptroot"
    cryptroot.parent.mkdir(parents=True)
    cryptroot.write_text("#!/bin/sh\n")
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return fake_hook_source(tmp_path / "hookfiles")


def request(root: Path, source: Path, *names: str) -> WireRequest:
    return WireRequest(names=names, root=root, hook_source=source, python="/opt/py/bin/python")


def enrolled_only(*sources: str) -> bootwire.EnrollmentCheck:
    """A stand-in for the LUKS header check: only ``sources`` are enrolled volumes."""

    def check(source: str) -> str | None:
        return None if source in sources else f"{source} has no sealer enrollment"

    return check


# The volumes of CRYPTTAB that count as enrolled unless a test says otherwise: unit tests never
# read a real device (a /dev/sdb1 may exist on the machine running them).
ENROLLED = enrolled_only("UUID=1111", "/dev/sdb1")


def enable_plan(request: WireRequest, check: bootwire.EnrollmentCheck = ENROLLED) -> Plan:
    return plan_enable(request, check)


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its content and mode."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def silent(message: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Planning enable


def test_enable_moves_the_kernel_hook_after_update_grub(root: Path, source: Path) -> None:
    # An earlier sealer installed it as zz-sealer, which runs before Debian's zz-update-grub
    # and so predicted a GRUB machine's next boot from the old grub.cfg.
    old = root / "etc/kernel/postinst.d/zz-sealer"
    old.parent.mkdir(parents=True)
    old.write_bytes(UPDATE_HOOK)
    plan = enable_plan(request(root, source, "cryptroot"))
    changes = {f.path: f.change for f in plan.files}
    assert changes[old] == "remove"
    assert changes[root / "etc/kernel/postinst.d/zzz-sealer"] == "create"
    assert sorted(["zz-update-grub", "zzz-sealer"])[-1] == "zzz-sealer"  # run-parts order


def test_plan_enable_lists_every_file_in_order_and_writes_nothing(
    root: Path, source: Path
) -> None:
    before = tree(root)
    plan = enable_plan(request(root, source, "cryptroot"))
    assert tree(root) == before
    assert [(f.path, f.change, f.mode) for f in plan.files] == [
        (root / "usr/lib/sealer/keyscript", "create", 0o755),
        (root / "etc/initramfs-tools/hooks/sealer", "create", 0o755),
        (root / "etc/initramfs-tools/scripts/init-bottom/sealer", "create", 0o755),
        (root / "etc/initramfs-tools/scripts/panic/sealer", "create", 0o755),
        (root / "etc/sealer/initramfs.conf", "create", 0o644),
        (root / "etc/kernel/postinst.d/zzz-sealer", "create", 0o755),
        (root / "etc/kernel/postrm.d/zzz-sealer", "create", 0o755),
        (root / "etc/initramfs/post-update.d/sealer", "create", 0o755),
        (root / "etc/systemd/system/sealer-prune.service", "create", 0o644),
        (root / "etc/crypttab", "update", 0o600),  # last: it names the keyscript
    ]
    assert plan.files[3].after == PANIC_SCRIPT
    assert plan.files[5].after == UPDATE_HOOK and plan.files[6].after == UPDATE_HOOK
    assert plan.files[7].after == UPDATE_HOOK
    assert plan.files[8].after == b"ExecStart=/opt/py/bin/python -m sealer prune\n"
    assert plan.files[0].after == KEYSCRIPT and plan.files[1].after == HOOK
    assert plan.crypttab == root / "etc/crypttab"
    assert [(e.name, e.line, e.changed) for e in plan.entries] == [("cryptroot", 3, True)]
    assert plan.entries[0].after == f"cryptroot\tUUID=1111\tnone\tluks,discard,{KEYSCRIPT_OPTION}"
    assert plan.commands == ()  # --root: update-initramfs is left to the image builder
    assert any("update-initramfs is not run under --root" in n for n in plan.notes)
    assert plan.warnings == ()


def test_plan_enable_without_names_chooses_the_enrolled_volumes(
    root: Path, source: Path
) -> None:
    plan = plan_enable(request(root, source), check=enrolled_only("UUID=1111", "/dev/sdb1"))
    assert [(e.name, e.changed) for e in plan.entries] == [("cryptroot", True), ("data", True)]
    after = plan.files[-1].after
    assert after is not None
    assert after.decode().splitlines() == [
        "# <target> <source> <key> <options>",
        "",
        f"cryptroot\tUUID=1111\tnone\tluks,discard,{KEYSCRIPT_OPTION}",
        "swap /dev/sda3 /dev/urandom swap,cipher=aes-xts-plain64",
        f"data /dev/sdb1 none luks,{KEYSCRIPT_OPTION}",
    ]
    # The entries left out are explained.
    assert any("left out swap: /dev/sda3 has no sealer enrollment" in n for n in plan.notes)


def test_plan_enable_with_nothing_enrolled_says_to_enroll_or_name(
    root: Path, source: Path
) -> None:
    with pytest.raises(UsageError) as info:
        plan_enable(request(root, source), check=enrolled_only())
    assert "no entry of" in info.value.message
    assert "cryptroot: UUID=1111 has no sealer enrollment" in info.value.message
    assert info.value.hint is not None
    assert "sealer enroll" in info.value.hint and "--name" in info.value.hint


def test_plan_enable_of_an_empty_crypttab_fails_clearly(root: Path, source: Path) -> None:
    (root / "etc/crypttab").write_text("# nothing here\n")
    with pytest.raises(UsageError, match="it has no entries"):
        plan_enable(request(root, source), check=enrolled_only())


def test_named_entries_that_are_not_enrolled_get_a_warning(root: Path, source: Path) -> None:
    plan = plan_enable(request(root, source, "data"), check=enrolled_only())
    assert [e.name for e in plan.entries] == ["data"]
    (warning,) = plan.warnings
    assert "'data'" in warning and "has no sealer enrollment" in warning
    assert "passphrase prompt" in warning


def test_an_unknown_name_is_refused_with_the_known_ones(root: Path, source: Path) -> None:
    with pytest.raises(UsageError) as info:
        enable_plan(request(root, source, "cryptroot", "nope"))
    assert "no entry named 'nope'" in info.value.message
    assert info.value.hint == "its entries are: cryptroot, swap, data"


def test_an_entry_with_another_keyscript_is_refused_and_nothing_written(
    root: Path, source: Path
) -> None:
    crypttab = root / "etc/crypttab"
    crypttab.write_text(CRYPTTAB + "vault /dev/sdc1 none luks,keyscript=decrypt_keyctl\n")
    before = tree(root)
    with pytest.raises(UsageError) as info:
        enable_plan(request(root, source, "cryptroot", "vault"))
    assert "'vault'" in info.value.message and "line 6" in info.value.message
    assert "keyscript=/lib/cryptsetup/scripts/decrypt_keyctl" in info.value.message
    assert tree(root) == before


def test_a_missing_crypttab_is_a_clear_error(tmp_path: Path, source: Path) -> None:
    with pytest.raises(UsageError) as info:
        plan_enable(WireRequest(names=("x",), root=tmp_path, hook_source=source))
    assert info.value.message == f"{tmp_path}/etc/crypttab does not exist"
    assert info.value.hint is not None and "--crypttab" in info.value.hint


def test_an_explicit_crypttab_is_not_put_under_root(
    root: Path, source: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "crypttab.test"
    elsewhere.write_text("t /dev/x none luks\n")
    plan = enable_plan(
        WireRequest(names=("t",), root=root, crypttab=elsewhere, hook_source=source)
    )
    assert plan.crypttab == elsewhere
    assert plan.files[-1].path == elsewhere
    assert plan.files[0].path == root / "usr/lib/sealer/keyscript"


def test_update_initramfs_runs_only_without_root_and_when_asked(
    root: Path, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crypttab = root / "etc/crypttab"
    # No --root: only read the plan (never apply it here: it would write the real /usr/lib).
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    host = enable_plan(WireRequest(names=("data",), crypttab=crypttab, hook_source=source))
    assert host.commands == (
        ("update-initramfs", "-u"),
        ("systemctl", "enable", "sealer-prune.service"),
    )
    assert host.files[0].path == Path("/usr/lib/sealer/keyscript")
    skipped = enable_plan(
        WireRequest(
            names=("data",), crypttab=crypttab, hook_source=source, update_initramfs=False
        )
    )
    assert skipped.commands == ()
    assert any("--no-update-initramfs" in n for n in skipped.notes)


def test_missing_cryptsetup_initramfs_is_warned_about(root: Path, source: Path) -> None:
    (root / "usr/share/initramfs-tools/hooks/cryptroot").unlink()
    plan = enable_plan(request(root, source, "cryptroot"))
    assert any("cryptsetup-initramfs" in w for w in plan.warnings)


# ---------------------------------------------------------------------------------------------
# The hook source


def test_hook_source_accepts_the_initramfs_hook_dir_or_its_initramfs_tools_dir(
    source: Path,
) -> None:
    assert find_hook_source(source) == source / "initramfs-tools"
    assert find_hook_source(source / "initramfs-tools") == source / "initramfs-tools"


def test_a_hook_source_without_the_scripts_is_refused(source: Path) -> None:
    (source / "initramfs-tools" / "keyscript").unlink()
    with pytest.raises(UsageError) as info:
        find_hook_source(source)
    assert f"--hook-source {source}" in info.value.message


def test_the_default_hook_source_is_the_packages_own_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real one: shipped inside the package, so an installed wheel finds it too.
    assert find_hook_source(None) == bootwire.HOOK_FILES / "initramfs-tools"
    assert Path(bootwire.__file__).resolve().parent / "hookfiles" == bootwire.HOOK_FILES
    monkeypatch.setattr(bootwire, "HOOK_FILES", tmp_path / "hookfiles")
    with pytest.raises(UsageError) as info:
        find_hook_source(None)
    assert "the sealer package's hook files are incomplete" in info.value.message
    assert str(tmp_path / "hookfiles") in info.value.message
    assert info.value.hint is not None and "--hook-source DIR" in info.value.hint
    fake_hook_source(tmp_path / "hookfiles")
    assert find_hook_source(None) == tmp_path / "hookfiles" / "initramfs-tools"


# ---------------------------------------------------------------------------------------------
# initramfs.conf


@pytest.mark.parametrize(
    "python", ["/usr/bin/python3", "/opt/my venv/bin/python", "/opt/it's $HOME/`x`/python"]
)
def test_initramfs_conf_is_shell_sourceable(python: str, tmp_path: Path) -> None:
    conf = tmp_path / "initramfs.conf"
    conf.write_bytes(initramfs_conf(python))
    text = conf.read_text()
    assert text.startswith("# ")  # says what it is for
    assert "sealer boot disable" in text
    shown = subprocess.run(
        ["sh", "-c", '. "$1" && printf %s "$SEALER_PYTHON"', "sh", str(conf)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout == python


def test_initramfs_conf_makes_a_relative_interpreter_absolute() -> None:
    text = initramfs_conf(".venv/bin/python").decode()
    assert f"SEALER_PYTHON={os.getcwd()}/.venv/bin/python\n" in text


# ---------------------------------------------------------------------------------------------
# Applying


def test_apply_writes_the_files_with_their_modes_and_keeps_crypttab_mode(
    root: Path, source: Path
) -> None:
    plan = enable_plan(request(root, source, "cryptroot"))
    apply(plan, silent)
    files = tree(root)
    assert files["usr/lib/sealer/keyscript"] == (KEYSCRIPT, 0o755)
    assert files["etc/initramfs-tools/hooks/sealer"] == (HOOK, 0o755)
    assert files["etc/initramfs-tools/scripts/init-bottom/sealer"] == (CAP_SCRIPT, 0o755)
    assert files["etc/initramfs-tools/scripts/panic/sealer"] == (PANIC_SCRIPT, 0o755)
    conf, conf_mode = files["etc/sealer/initramfs.conf"]
    assert conf_mode == 0o644 and b"SEALER_PYTHON=/opt/py/bin/python\n" in conf
    crypttab, crypttab_mode = files["etc/crypttab"]
    assert crypttab_mode == 0o600
    assert crypttab.decode() == CRYPTTAB.replace(
        "luks,discard\n", f"luks,discard,{KEYSCRIPT_OPTION}\n"
    )
    # No temporary file is left behind.
    assert not [p for p in root.rglob(".*") if p.is_file()]


def test_enable_twice_changes_nothing_the_second_time(root: Path, source: Path) -> None:
    apply(enable_plan(request(root, source, "cryptroot", "data")), silent)
    after_first = tree(root)
    again = enable_plan(request(root, source, "cryptroot", "data"))
    assert [f.change for f in again.files] == ["unchanged"] * 10
    assert not again.changed_files
    assert not any(e.changed for e in again.entries)
    apply(again, silent)
    assert tree(root) == after_first


def test_a_changed_source_or_mode_is_an_update(root: Path, source: Path) -> None:
    apply(enable_plan(request(root, source, "cryptroot")), silent)
    (root / "usr/lib/sealer/keyscript").chmod(0o644)
    (source / "initramfs-tools" / "hooks" / "sealer").write_bytes(HOOK + b"# v2\n")
    plan = enable_plan(request(root, source, "cryptroot"))
    assert [f.change for f in plan.files] == ["update", "update"] + ["unchanged"] * 8
    assert plan.files[0].diff().startswith("old mode 100644\nnew mode 100755\n")
    assert "+# v2\n" in plan.files[1].diff()


def test_disable_undoes_enable_exactly(root: Path, source: Path) -> None:
    original = tree(root)
    apply(enable_plan(request(root, source, "cryptroot")), silent)
    plan = plan_disable(WireRequest(root=root))
    assert [(e.name, e.changed) for e in plan.entries] == [("cryptroot", True)]
    assert [(f.path, f.change) for f in plan.files] == [
        (root / "etc/crypttab", "update"),  # first: never name a keyscript that is gone
        (root / "etc/initramfs-tools/hooks/sealer", "remove"),
        (root / "etc/initramfs-tools/scripts/init-bottom/sealer", "remove"),
        (root / "etc/initramfs-tools/scripts/panic/sealer", "remove"),
        (root / "etc/sealer/initramfs.conf", "remove"),
        (root / "usr/lib/sealer/keyscript", "remove"),
        (root / "etc/kernel/postinst.d/zzz-sealer", "remove"),
        (root / "etc/kernel/postrm.d/zzz-sealer", "remove"),
        (root / "etc/initramfs/post-update.d/sealer", "remove"),
        (root / "etc/systemd/system/sealer-prune.service", "remove"),
    ]
    apply(plan, silent)
    assert tree(root) == original


@pytest.mark.parametrize("unit_left", [True, False])
def test_disable_removes_the_link_systemctl_enable_made(
    root: Path, source: Path, unit_left: bool
) -> None:
    # 'systemctl enable sealer-prune.service' (run by enable on a machine) links the unit
    # into multi-user.target.wants; a disable that left the link would leave it dangling.
    original = tree(root)
    apply(enable_plan(request(root, source, "cryptroot")), silent)
    wants = root / "etc/systemd/system/multi-user.target.wants/sealer-prune.service"
    wants.parent.mkdir(parents=True)
    wants.symlink_to("../sealer-prune.service")  # resolves inside the test root
    if not unit_left:  # already gone, as after an older sealer's disable: a dangling link
        (root / "etc/systemd/system/sealer-prune.service").unlink()
    plan = plan_disable(WireRequest(root=root))
    assert (wants, "remove") in [(f.path, f.change) for f in plan.files]
    apply(plan, silent)
    assert not wants.is_symlink()
    wants.parent.rmdir()
    assert tree(root) == original


def test_disable_of_one_entry_keeps_the_files_the_other_needs(
    root: Path, source: Path
) -> None:
    apply(enable_plan(request(root, source, "cryptroot", "data")), silent)
    plan = plan_disable(WireRequest(names=("data",), root=root))
    assert [f.change for f in plan.files] == ["update"]
    assert any("still used by cryptroot" in n for n in plan.notes)
    apply(plan, silent)
    text = (root / "etc/crypttab").read_text()
    assert "data /dev/sdb1 none luks\n" in text
    assert f"luks,discard,{KEYSCRIPT_OPTION}" in text
    assert (root / "usr/lib/sealer/keyscript").exists()


def test_disable_when_nothing_is_enabled_changes_nothing(root: Path) -> None:
    plan = plan_disable(WireRequest(root=root))
    assert plan.entries == ()
    assert [f.change for f in plan.files] == ["unchanged"]


def test_disable_of_an_unknown_name_is_refused(root: Path) -> None:
    with pytest.raises(UsageError, match="no entry named 'nope'"):
        plan_disable(WireRequest(names=("nope",), root=root))


def file_plan(change: FileChange, commands: tuple[tuple[str, ...], ...] = ()) -> Plan:
    return Plan("enable", change.path, (), (change,), commands)


def test_apply_checks_the_commands_exist_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    target = tmp_path / "new"
    plan = file_plan(FileChange(target, "create", None, b"x", 0o644, None), (("nope", "-u"),))
    with pytest.raises(SealerError) as info:
        apply(plan, silent)
    assert "nope is not installed" in info.value.message
    assert info.value.hint is not None and "--no-update-initramfs" in info.value.hint
    assert not target.exists()


def test_apply_runs_the_commands_and_reports_their_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, ...]] = []

    def fake_run(argv: tuple[str, ...]) -> Completed:
        ran.append(tuple(argv))
        return Completed(tuple(argv), 1, b"", "W: something\nE: no space left on /boot\n")

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")
    monkeypatch.setattr(bootwire, "run", fake_run)
    said: list[str] = []
    target = tmp_path / "new"
    plan = file_plan(
        FileChange(target, "create", None, b"x", 0o644, None), (("update-initramfs", "-u"),)
    )
    with pytest.raises(SealerError) as info:
        apply(plan, said.append)
    assert ran == [("update-initramfs", "-u")]
    assert said == ["running update-initramfs -u"]
    assert info.value.message == "update-initramfs -u failed: E: no space left on /boot"
    assert info.value.hint is not None and "sealer boot disable" in info.value.hint
    assert target.read_bytes() == b"x"  # written before the command, as planned


def test_apply_writes_through_a_symlinked_crypttab(tmp_path: Path) -> None:
    real = tmp_path / "real-crypttab"
    real.write_text("a /dev/x none luks\n")
    real.chmod(0o640)
    link = tmp_path / "crypttab"
    link.symlink_to(real)
    change = FileChange(
        link, "update", b"", b"a /dev/x none luks,k\n", 0o640, 0o640, follow_symlink=True
    )
    apply(file_plan(change), silent)
    assert link.is_symlink()
    assert real.read_text() == "a /dev/x none luks,k\n"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640


def test_apply_reports_an_unwritable_directory_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    change = FileChange(blocker / "sub" / "x", "create", None, b"x", 0o644, None)
    with pytest.raises(SealerError) as info:
        apply(file_plan(change), silent)
    assert info.value.message.startswith(f"cannot write {blocker}/sub/x: ")


# ---------------------------------------------------------------------------------------------
# Diffs


def test_diffs_show_creation_removal_and_a_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "f"
    created = FileChange(path, "create", None, b"one\ntwo", 0o755, None).diff()
    assert created.splitlines() == [
        "new file mode 100755",
        "--- /dev/null",
        f"+++ {path}",
        "@@ -0,0 +1,2 @@",
        "+one",
        "+two",
        "\\ No newline at end of file",
    ]
    removed = FileChange(path, "remove", b"x\n", None, None, 0o644).diff()
    assert removed.splitlines()[:3] == ["deleted file mode 100644", f"--- {path}", "+++ /dev/null"]
    assert FileChange(path, "unchanged", b"x", b"x", 0o644, 0o644).diff() == ""


def test_a_diff_of_bytes_that_are_not_utf8_is_still_printable(tmp_path: Path) -> None:
    diff = FileChange(tmp_path / "f", "update", b"\xff\n", b"\xfe\n", 0o644, 0o644).diff()
    diff.encode("utf-8")  # no lone surrogates


# ---------------------------------------------------------------------------------------------
# Sources


def test_resolve_source_follows_udev_links(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    disk = tmp_path / "disk"
    dev.mkdir()
    (dev / "sda2").write_text("")
    for kind, name in [
        ("by-uuid", "8a6d3d5e-aaaa"),
        ("by-partuuid", "0011-22"),
        ("by-label", "Root"),
        ("by-partlabel", "root part"),
    ]:
        (disk / kind).mkdir(parents=True)
        (disk / kind / name).symlink_to(dev / "sda2")
    assert resolve_source("UUID=8a6d3d5e-aaaa", disk) == disk / "by-uuid" / "8a6d3d5e-aaaa"
    assert resolve_source("UUID=8A6D3D5E-AAAA", disk) == disk / "by-uuid" / "8a6d3d5e-aaaa"
    assert resolve_source("PARTUUID=0011-22", disk) == disk / "by-partuuid" / "0011-22"
    assert resolve_source("LABEL=Root", disk) == disk / "by-label" / "Root"
    assert resolve_source("LABEL=root", disk) is None  # labels are case-sensitive
    assert resolve_source("PARTLABEL=root part", disk) == disk / "by-partlabel" / "root part"
    assert resolve_source(str(dev / "sda2"), disk) == dev / "sda2"
    for missing in ["UUID=nope", "UUID=", "UUID=../by-label/Root", str(dev / "sdz"), "LABEL=.."]:
        assert resolve_source(missing, disk) is None, missing


def test_enrollment_problem_names_what_is_wrong(tmp_path: Path) -> None:
    assert enrollment_problem("UUID=nope", tmp_path) == "UUID=nope was not found"
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\0" * 4096)
    assert enrollment_problem(str(plain), tmp_path) == f"{plain} is not a LUKS volume"


def test_an_unknown_name_in_an_empty_crypttab_says_it_is_empty(root: Path) -> None:
    (root / "etc/crypttab").write_text("# nothing\n")
    with pytest.raises(UsageError) as info:
        plan_disable(WireRequest(names=("x",), root=root))
    assert info.value.hint == "it has no entries"


# ---------------------------------------------------------------------------------------------
# dracut (issue 18): the generator is detected, the module wired instead of the keyscript

DRACUT_MODULE = {
    "module-setup.sh": b"#!/bin/bash\n# fake dracut module\n",
    "sealer-ask-password.path": b"[Path]\n",
    "sealer-ask-password.service": b"[Service]\n",
    "sealer-cap.service": b"[Service]\n# cap\n",
    "sealer-cap-before-shell.conf": b"[Unit]\n",
}
MODULE = "usr/lib/dracut/modules.d/90sealer"


def with_dracut(root: Path, source: Path) -> None:
    """Make root a Debian system whose initramfs dracut builds; give source its module."""
    status = root / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: dracut\nStatus: install ok installed\n\n"
        "Package: initramfs-tools\nStatus: deinstall ok config-files\n"
    )
    (root / "usr/lib/dracut/modules.d").mkdir(parents=True)
    module = source / "dracut" / "90sealer"
    module.mkdir(parents=True)
    for name, data in DRACUT_MODULE.items():
        (module / name).write_bytes(data)


def test_plan_enable_for_dracut_installs_the_module_and_leaves_crypttab(
    root: Path, source: Path
) -> None:
    with_dracut(root, source)
    before = tree(root)
    plan = enable_plan(request(root, source))
    assert tree(root) == before
    assert plan.initramfs.generator == "dracut"
    assert "records the dracut package as installed" in plan.initramfs.reason
    assert [(f.path, f.change, f.mode) for f in plan.files] == [
        (root / "etc/sealer/initramfs.conf", "create", 0o644),  # the module reads it
        (root / MODULE / "module-setup.sh", "create", 0o755),
        (root / MODULE / "sealer-ask-password.path", "create", 0o644),
        (root / MODULE / "sealer-ask-password.service", "create", 0o644),
        (root / MODULE / "sealer-cap.service", "create", 0o644),
        (root / MODULE / "sealer-cap-before-shell.conf", "create", 0o644),
        (root / "etc/kernel/postinst.d/zzz-sealer", "create", 0o755),
        (root / "etc/kernel/postrm.d/zzz-sealer", "create", 0o755),
        (root / "etc/systemd/system/sealer-prune.service", "create", 0o644),
        (root / "etc/dracut.conf.d/90-sealer.conf", "create", 0o644),  # last: it adds the rest
        (root / "etc/crypttab", "unchanged", 0o600),
    ]
    assert plan.files[1].after == DRACUT_MODULE["module-setup.sh"]
    assert b'\nadd_dracutmodules+=" sealer "\n' in (plan.files[9].after or b"")
    # No post-update.d hook: Debian's dracut runs none; the kernel hook comes after its own.
    assert sorted(["dracut", "zzz-sealer"])[-1] == "zzz-sealer"
    assert [(e.name, e.changed) for e in plan.entries] == [("cryptroot", False), ("data", False)]
    assert any("dracut is not run under --root" in n for n in plan.notes)
    assert any("generic initramfs" in n and "rd.luks.uuid" in n for n in plan.notes)
    assert plan.warnings == ()


def test_dracut_enable_warns_when_nothing_is_enrolled(root: Path, source: Path) -> None:
    with_dracut(root, source)
    plan = enable_plan(request(root, source), enrolled_only())
    assert plan.entries == ()
    (warning,) = plan.warnings
    assert "no entry of" in warning and "until 'sealer enroll DEVICE'" in warning


def test_dracut_refuses_names(root: Path, source: Path) -> None:
    with_dracut(root, source)
    for plan in (enable_plan, plan_disable):
        with pytest.raises(UsageError) as info:
            plan(request(root, source, "cryptroot"))
        assert "--name chooses crypttab entries for initramfs-tools" in info.value.message
        assert info.value.hint is not None and "--initramfs" in info.value.hint


def test_dracut_rebuilds_the_newest_kernel_then_approves_it(
    root: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_dracut(root, source)
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(bootwire, "newest_kernel", lambda root: "6.1.0-10-amd64")
    crypttab = root / "etc/crypttab"
    host = enable_plan(WireRequest(crypttab=crypttab, hook_source=source, initramfs="dracut"))
    assert host.initramfs.reason == "chosen with --initramfs"
    assert host.commands == (
        ("dracut", "--force", "/boot/initrd.img-6.1.0-10-amd64", "6.1.0-10-amd64"),
        ("/etc/kernel/postinst.d/zzz-sealer", "6.1.0-10-amd64", "/boot/vmlinuz-6.1.0-10-amd64"),
        ("systemctl", "enable", "sealer-prune.service"),
    )
    assert host.files[1].path == Path("/usr/lib/dracut/modules.d/90sealer/module-setup.sh")
    # The hook is not looked up in PATH: the plan installs it.
    assert not any("zzz-sealer" in w for w in host.warnings)
    off = plan_disable(WireRequest(crypttab=crypttab, initramfs="dracut"))
    assert off.commands == (
        ("dracut", "--force", "/boot/initrd.img-6.1.0-10-amd64", "6.1.0-10-amd64"),
    )
    monkeypatch.setattr(bootwire, "newest_kernel", lambda root: None)
    none = enable_plan(WireRequest(crypttab=crypttab, hook_source=source, initramfs="dracut"))
    assert none.commands == ()
    assert any("/boot has no vmlinuz-VERSION" in n for n in none.notes)


def test_dracut_disable_undoes_enable_exactly(root: Path, source: Path) -> None:
    with_dracut(root, source)
    original = tree(root)
    apply(enable_plan(request(root, source)), silent)
    assert (root / MODULE / "module-setup.sh").stat().st_mode & 0o777 == 0o755
    assert (root / "etc/crypttab").read_text() == CRYPTTAB
    again = enable_plan(request(root, source))
    assert {f.change for f in again.files} == {"unchanged"}
    plan = plan_disable(WireRequest(root=root))
    assert [(f.path, f.change) for f in plan.files] == [
        (root / "etc/crypttab", "unchanged"),
        (root / "etc/dracut.conf.d/90-sealer.conf", "remove"),  # before the module it names
        (root / "etc/sealer/initramfs.conf", "remove"),
        (root / "etc/kernel/postinst.d/zzz-sealer", "remove"),
        (root / "etc/kernel/postrm.d/zzz-sealer", "remove"),
        (root / "etc/systemd/system/sealer-prune.service", "remove"),
        *((root / MODULE / name, "remove") for name in DRACUT_MODULE),
    ]
    assert plan.remove_dirs == (root / MODULE,)
    apply(plan, silent)
    assert tree(root) == original
    assert not (root / MODULE).exists()


def test_disable_keeps_a_module_directory_holding_someone_elses_file(
    root: Path, source: Path
) -> None:
    with_dracut(root, source)
    apply(enable_plan(request(root, source)), silent)
    (root / MODULE / "local.sh").write_text("# the admin's\n")
    apply(plan_disable(WireRequest(root=root)), silent)
    assert [p.name for p in (root / MODULE).iterdir()] == ["local.sh"]


def test_disable_after_switching_generators_removes_both_wirings(
    root: Path, source: Path
) -> None:
    # Wired for initramfs-tools, then (the dracut package installed) for dracut: the
    # crypttab option and every file of both go, and the tree is as before.
    original = tree(root)
    apply(enable_plan(request(root, source, "cryptroot")), silent)
    with_dracut(root, source)
    original.update({k: v for k, v in tree(root).items() if k.startswith("var/")})
    plan = enable_plan(request(root, source))
    assert any(f"still carry {KEYSCRIPT_OPTION}" in n for n in plan.notes)
    apply(plan, silent)
    disabled = plan_disable(WireRequest(root=root))
    assert [(e.name, e.changed) for e in disabled.entries] == [("cryptroot", True)]
    apply(disabled, silent)
    assert tree(root) == original
