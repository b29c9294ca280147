"""Which image boots next: version order, update.conf, and the newest kernel in /boot."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from sealer.errors import MeasurementError
from sealer.services.nextboot import (
    UpdateConf,
    compare_versions,
    find_next_boot,
    installed_versions,
    parse_update_conf,
    render_next_boot,
    unpredictable_reason,
    version_key,
)

VERSIONS = [
    "5.10.0-30-amd64",
    "6.1.0~rc1",
    "6.1.0",
    "6.1.0a",  # letters sort before other signs
    "6.1.0-9-amd64",
    "6.1.0-10-amd64",
    "6.1.0-10-cloud-amd64",
    "6.1.0-28-amd64",
    "6.1.01-1",
    "6.10.1",
    "6.10.1+deb12",
]


def test_versions_sort_by_numbers_not_by_characters() -> None:
    shuffled = VERSIONS[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=version_key) == VERSIONS
    assert compare_versions("6.1.0-10-amd64", "6.1.0-9-amd64") > 0
    assert compare_versions("6.1.0-010", "6.1.0-10") == 0  # leading zeros do not count
    assert compare_versions("6.1.0~rc1", "6.1.0") < 0  # '~' sorts before the end


@pytest.mark.skipif(shutil.which("sort") is None, reason="no sort(1)")
def test_the_order_is_the_one_of_sort_dash_v() -> None:
    shuffled = VERSIONS[::-1]
    ran = subprocess.run(
        ["sort", "-V"], input="\n".join(shuffled) + "\n", capture_output=True, text=True,
        check=True, env={"LC_ALL": "C"},
    )
    assert ran.stdout.splitlines() == sorted(shuffled, key=version_key)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", UpdateConf("kernel", "")),
        ("SEALER_BOOT=uki\nSEALER_UKI=/boot/efi/EFI/Linux/debian-%v.efi\n",
         UpdateConf("uki", "/boot/efi/EFI/Linux/debian-%v.efi")),
        ("# how this machine boots\n  SEALER_BOOT='uki'  # a UKI\n"
         'export SEALER_UKI="/efi/my linux %v.efi"\nOTHER=1\n',
         UpdateConf("uki", "/efi/my linux %v.efi")),
        ("SEALER_BOOT=kernel # the default\n", UpdateConf("kernel", "")),
        ("SEALER_BOOT=\n", UpdateConf("kernel", "")),
        ("#SEALER_BOOT=uki\n", UpdateConf("kernel", "")),
        ("SEALER_BOOT=uki\nSEALER_BOOT=kernel\n", UpdateConf("kernel", "")),  # the last wins
    ],
)
def test_update_conf_is_read_as_the_hook_sources_it(text: str, expected: UpdateConf) -> None:
    assert parse_update_conf(text) == expected


def test_update_conf_with_shell_expansion_is_refused_not_run() -> None:
    with pytest.raises(MeasurementError, match=r"SEALER_UKI in update\.conf uses shell expansion"):
        parse_update_conf("SEALER_UKI=$(touch /tmp/x)/%v.efi\n")


def _tree(tmp_path: Path, conf: str | None, kernels: list[str]) -> tuple[Path, Path]:
    etc, boot = tmp_path / "etc", tmp_path / "boot"
    etc.mkdir()
    boot.mkdir()
    if conf is not None:
        (etc / "update.conf").write_text(conf)
    for version in kernels:
        (boot / f"vmlinuz-{version}").write_bytes(b"MZ")
        (boot / f"initrd.img-{version}").write_bytes(b"initrd")
    return etc, boot


def test_the_newest_kernel_in_boot_is_the_next_boot(tmp_path: Path) -> None:
    etc, boot = _tree(tmp_path, None, ["6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"])
    (boot / "vmlinuz-6.1.0-99-amd64.dpkg-new").write_bytes(b"half unpacked")
    (boot / "config-6.1.0-11-amd64").write_text("")
    assert installed_versions(boot) == ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]
    found = find_next_boot(etc, boot)
    assert found.kernel == boot / "vmlinuz-6.1.0-10-amd64"
    assert found.initrd == boot / "initrd.img-6.1.0-10-amd64"
    assert found.uki is None


def test_a_uki_machine_gets_the_uki_of_the_newest_kernel(tmp_path: Path) -> None:
    conf = "SEALER_BOOT=uki\nSEALER_UKI=/efi/Linux/debian-%v.efi\n"
    etc, boot = _tree(tmp_path, conf, ["6.1.0-9-amd64", "6.1.0-10-amd64"])
    assert find_next_boot(etc, boot).uki == Path("/efi/Linux/debian-6.1.0-10-amd64.efi")


@pytest.mark.parametrize(
    ("conf", "kernels", "message"),
    [
        ("SEALER_BOOT=uki\n", ["6.1.0"], "SEALER_BOOT=uki in {etc}/update.conf but SEALER_UKI"),
        (None, [], "no kernel is installed in {boot} (no vmlinuz-VERSION)"),
    ],
)
def test_no_next_boot_image_is_one_line(
    tmp_path: Path, conf: str | None, kernels: list[str], message: str
) -> None:
    etc, boot = _tree(tmp_path, conf, kernels)
    with pytest.raises(MeasurementError) as raised:
        find_next_boot(etc, boot)
    assert raised.value.message.startswith(message.format(etc=etc, boot=boot))
    assert "\n" not in raised.value.one_line()


def test_a_missing_boot_directory_is_a_measurement_error(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match="cannot list"):
        installed_versions(tmp_path / "missing")


@pytest.mark.parametrize(
    ("unlocks", "approval", "line"),
    [
        (True, 1, "next boot (UKI /x.efi): unlocks by TPM (approval 1)"),
        (False, None, "next boot (UKI /x.efi): will ask for the passphrase: why"),
        (None, None, "next boot (UKI /x.efi): unknown: why"),
    ],
)
def test_the_status_line(unlocks: bool | None, approval: int | None, line: str) -> None:
    doc = {"image": "UKI /x.efi", "unlocks": unlocks, "approval": approval, "reason": "why"}
    assert render_next_boot(doc) == line
    assert render_next_boot({**doc, "image": None}).startswith("next boot: ")


def test_a_reason_shared_by_several_pcrs_is_said_once() -> None:
    grub = "the new grub.cfg makes GRUB run 'set timeout=2' where this boot ran 'set timeout=1'"
    reason = unpredictable_reason({9: grub, 4: grub, 7: "the new kernel is not signed", 8: grub})
    assert reason == (
        f"PCRs 4,8,9 cannot be predicted: {grub}; "
        "PCR 7 cannot be predicted: the new kernel is not signed"
    )
