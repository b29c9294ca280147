"""What the kernel command line's options mean for the TPM unlock (sealer.install.bootopts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealer.install.bootopts import boot_option_findings, cmdline_findings

DEBIAN = "BOOT_IMAGE=/boot/vmlinuz-6.1.0-57-cloud-amd64 root=/dev/mapper/cryptroot ro quiet"


def levels(cmdline: str) -> dict[str, str]:
    return {f.option: f.level for f in boot_option_findings(cmdline)}


def test_a_stock_debian_command_line_only_lacks_panic() -> None:
    (finding,) = boot_option_findings(DEBIAN)
    assert finding.option == "panic=" and finding.level == "capped"
    assert "caps the PCRs first" in finding.text and "panic=N reboots" in finding.text


def test_rdinit_skips_the_initramfs_init_and_is_the_one_risk() -> None:
    found = boot_option_findings(f"{DEBIAN} panic=10 rdinit=/bin/sh")
    assert [(f.option, f.level) for f in found] == [("rdinit=/bin/sh", "risk")]
    assert "bind the command line" in found[0].text


@pytest.mark.parametrize(
    "option",
    [
        "break=premount", "break", "rd.break", "rd.break=pre-mount", "rd.shell",
        "rd.shell=1", "systemd.debug_shell", "rd.systemd.debug_shell=1",
        "systemd.unit=rescue.target", "rd.systemd.unit=emergency.target", "single", "emergency",
        "-b", "S",
    ],
)
def test_every_way_to_a_shell_is_reported_as_capped_first(option: str) -> None:
    assert levels(f"{DEBIAN} panic=1 {option}") == {option: "capped"}


@pytest.mark.parametrize(
    "option", ["rd.shell=0", "systemd.debug_shell=0", "systemd.unit=multi-user.target", "ro"]
)
def test_options_that_reach_no_shell_are_not_reported(option: str) -> None:
    assert levels(f"{DEBIAN} panic=1 {option}") == {}


def test_init_runs_after_the_cap_and_is_only_a_note() -> None:
    assert levels(f"{DEBIAN} panic=1 init=/bin/sh") == {"init=/bin/sh": "note"}


def test_an_image_tree_is_judged_by_its_etc_kernel_cmdline(tmp_path: Path) -> None:
    assert cmdline_findings(tmp_path) == []  # no command line to read: nothing to say
    (tmp_path / "etc" / "kernel").mkdir(parents=True)
    (tmp_path / "etc" / "kernel" / "cmdline").write_text("root=UUID=1 rdinit=/bin/sh panic=1\n")
    assert [f.to_json()["option"] for f in cmdline_findings(tmp_path)] == ["rdinit=/bin/sh"]


def test_after_a_double_dash_only_init_s_runlevel_words_count() -> None:
    found = levels(f"{DEBIAN} -- rdinit=/x panic=1 single")
    assert found == {"panic=": "capped", "single": "capped"}
