"""Unit tests for sealer.install.initramfs: which initramfs generator a Debian tree uses.

Each test builds the few files that decide it under a temporary root (dpkg's status file,
the kernel hooks, dracut's configuration); nothing of this machine is read.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sealer.errors import UsageError
from sealer.install.initramfs import (
    DRACUT_MODULE_FILES,
    DRACUT_MODULE_NAME,
    detect,
    dpkg_installed,
    dracut_hostonly,
    dracut_module_source,
    newest_kernel,
)

REPO = Path(__file__).resolve().parents[2]
HOOK_FILES = REPO / "sealer" / "install" / "hookfiles"


def package(name: str, status: str = "install ok installed") -> str:
    return (
        f"Package: {name}\nStatus: {status}\nPriority: optional\nVersion: 1\n"
        "Description: something\n a continuation line: Status: install ok installed\n"
    )


def write(root: Path, path: str, text: str = "#!/bin/sh\n") -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def dpkg(root: Path, *paragraphs: str) -> None:
    write(root, "/var/lib/dpkg/status", "\n".join(paragraphs))


def debian_with_dracut(root: Path) -> None:
    """What installing Debian 12's dracut leaves: the dracut package replaced
    initramfs-tools, whose conffile (its kernel hook) stays until a purge."""
    dpkg(
        root,
        package("dracut"),
        package("dracut-core"),
        package("initramfs-tools", "deinstall ok config-files"),
    )
    write(root, "/etc/kernel/postinst.d/dracut")
    write(root, "/etc/kernel/postinst.d/initramfs-tools")
    write(root, "/usr/bin/dracut")


def debian_with_dracut_core(root: Path) -> None:
    """initramfs-tools with dracut-core beside it (as on the machine these tests run on)."""
    dpkg(root, package("initramfs-tools"), package("initramfs-tools-core"),
         package("dracut-core"))
    write(root, "/etc/kernel/postinst.d/initramfs-tools")
    write(root, "/usr/sbin/update-initramfs")
    write(root, "/usr/bin/dracut")


def test_the_dracut_package_means_dracut(tmp_path: Path) -> None:
    debian_with_dracut(tmp_path)
    choice = detect(tmp_path)
    assert choice.generator == "dracut"
    assert f"{tmp_path}/var/lib/dpkg/status records the dracut package" in choice.reason


def test_dracut_core_beside_initramfs_tools_means_initramfs_tools(tmp_path: Path) -> None:
    debian_with_dracut_core(tmp_path)
    choice = detect(tmp_path)
    assert choice.generator == "initramfs-tools"
    assert "initramfs-tools package as installed" in choice.reason
    assert "dracut-core is installed too" in choice.reason


def test_a_removed_dracut_leaves_initramfs_tools(tmp_path: Path) -> None:
    # dracut removed (not purged): its kernel hook is still there, dracut-core too.
    debian_with_dracut_core(tmp_path)
    dpkg(tmp_path, package("dracut", "deinstall ok config-files"), package("dracut-core"),
         package("initramfs-tools"))
    write(tmp_path, "/etc/kernel/postinst.d/dracut")
    assert detect(tmp_path).generator == "initramfs-tools"


def test_without_dpkg_the_kernel_hook_decides(tmp_path: Path) -> None:
    write(tmp_path, "/etc/kernel/postinst.d/dracut")
    write(tmp_path, "/usr/bin/dracut")
    choice = detect(tmp_path)
    assert choice.generator == "dracut"
    assert "no dpkg record" in choice.reason and "/usr/bin/dracut" in choice.reason
    # A hook whose program is gone runs nothing (it exits 0 first).
    (tmp_path / "usr/bin/dracut").unlink()
    write(tmp_path, "/etc/kernel/postinst.d/initramfs-tools")
    write(tmp_path, "/usr/sbin/update-initramfs")
    assert detect(tmp_path).generator == "initramfs-tools"


def test_without_dpkg_both_hooks_is_refused_with_the_way_out(tmp_path: Path) -> None:
    for path in ("/etc/kernel/postinst.d/dracut", "/usr/bin/dracut",
                 "/etc/kernel/postinst.d/initramfs-tools", "/usr/sbin/update-initramfs"):
        write(tmp_path, path)
    with pytest.raises(UsageError) as info:
        detect(tmp_path)
    assert "cannot tell whether" in info.value.message
    assert info.value.hint is not None and "--initramfs dracut" in info.value.hint
    assert detect(tmp_path, "dracut").generator == "dracut"


def test_a_bare_tree_keeps_the_old_default(tmp_path: Path) -> None:
    choice = detect(tmp_path)
    assert choice.generator == "initramfs-tools" and "--initramfs" in choice.reason


@pytest.mark.parametrize("asked", ["initramfs-tools", "dracut"])
def test_asking_overrides_what_is_installed(tmp_path: Path, asked: str) -> None:
    # Each against what is installed.
    if asked == "initramfs-tools":
        debian_with_dracut(tmp_path)
    else:
        debian_with_dracut_core(tmp_path)
    choice = detect(tmp_path, asked)
    assert (choice.generator, choice.reason) == (asked, "chosen with --initramfs")


def test_dpkg_states_that_count_as_installed() -> None:
    status = "\n".join([
        package("dracut", "install ok half-installed"),
        package("initramfs-tools", "install ok triggers-pending"),
        package("dracut-core", "hold ok installed"),
        "Package: other\nStatus: install ok installed\n",
    ])
    assert dpkg_installed(status, ("dracut", "initramfs-tools", "dracut-core")) == {
        "initramfs-tools", "dracut-core"
    }


def test_hostonly_is_read_in_dracuts_order(tmp_path: Path) -> None:
    assert dracut_hostonly(tmp_path) is False  # Debian's dracut builds generic images
    write(tmp_path, "/etc/dracut.conf", 'hostonly="yes"\n')
    assert dracut_hostonly(tmp_path) is True
    write(tmp_path, "/usr/lib/dracut/dracut.conf.d/10-debian.conf", "hostonly=no  # generic\n")
    assert dracut_hostonly(tmp_path) is False
    # A file of the same name in /etc replaces the one in /usr/lib.
    write(tmp_path, "/etc/dracut.conf.d/10-debian.conf", "  hostonly='yes'\n")
    assert dracut_hostonly(tmp_path) is True
    write(tmp_path, "/etc/dracut.conf.d/20-later.conf", "# hostonly=no\nhostonly_cmdline=no\n")
    assert dracut_hostonly(tmp_path) is True


def test_the_newest_kernel_compares_numbers_as_numbers(tmp_path: Path) -> None:
    assert newest_kernel(tmp_path) is None
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        write(tmp_path, f"/boot/vmlinuz-{version}", "")
    write(tmp_path, "/boot/initrd.img-6.1.0-99-amd64", "")
    assert newest_kernel(tmp_path) == "6.1.0-10-amd64"


def test_the_module_file_list_is_the_checkouts_module() -> None:
    """disable removes exactly DRACUT_MODULE_FILES: a file added to the module must be
    listed, or enable would not install it and disable would leave it."""
    module = HOOK_FILES / "dracut" / DRACUT_MODULE_NAME
    on_disk = {p.name: stat.S_IMODE(p.stat().st_mode) & 0o111 != 0 for p in module.iterdir()}
    listed = {name: mode & 0o111 != 0 for name, mode in DRACUT_MODULE_FILES}
    assert listed == on_disk
    assert dracut_module_source(HOOK_FILES / "initramfs-tools") == module


def test_an_incomplete_module_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dracut" / DRACUT_MODULE_NAME).mkdir(parents=True)
    write(tmp_path, f"/dracut/{DRACUT_MODULE_NAME}/module-setup.sh")
    with pytest.raises(UsageError, match=r"is incomplete \(missing sealer-ask-password\.path"):
        dracut_module_source(tmp_path / "initramfs-tools")
