"""A vendor-approved release and a revocation, proven on the real Secure Boot chain.

The vendor (this test on the host, no TPM) signs release 1's UKI from the event log of the
machine's first boot, used as the reference log of the hardware model. The machine only
installs the approval file into its LUKS2 header: nothing is re-sealed, no machine key signs.
Release 1 then unlocks at its first boot. After the vendor revokes every release below 1, the
provisioned image (the machine's own approval, release 0) falls back to the passphrase and
says that it was revoked.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from bootimage import extended_initramfs
from bootkit import PROMPT, TPM_UNLOCKED, BootKit, enroll_on_host, type_passphrase
from qemu import Boot, Machine
from rootdisk import ROOT_UP
from swtpm import Swtpm


@dataclass
class Released:
    directory: Path
    disk: Path
    release_boot: Boot
    rollback_boot: Boot
    revoke_output: str


def sealer_on_host(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sealer", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def released(boot_kit: BootKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Released]:
    directory = tmp_path_factory.mktemp("vendor")
    keys = boot_kit.owner
    disk = boot_kit.new_root(directory)
    v1_esp = boot_kit.esp(keys=keys)
    first = Machine(directory, keys.vars_template, [v1_esp, disk]).boot(answers=type_passphrase())
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    reference_log = directory / "reference.log"
    reference_log.write_bytes(first.event_log())

    # The vendor: a key, and release 1 signed from the hardware model's reference log.
    vendor = directory / "vendor.pem"
    sealer_on_host("policy", "keygen", "--out", str(vendor))
    enroll_on_host(
        Machine(directory, keys.vars_template, [v1_esp, disk]), disk, first.pcrs(),
        directory / "state", extra=("--trust-vendor-key", str(directory / "vendor.pub.pem")),
    )
    initrd = extended_initramfs(
        directory / "initrd-r1.img", boot_kit.initrd, {"etc/sealer-e2e-release": b"1\n"}
    )
    cmdline = boot_kit.cmdline("sealer.e2e=release-1")
    uki = boot_kit.uki(keys=keys, cmdline=cmdline, initrd=initrd)
    approval = directory / "release-1.approval"
    sealer_on_host(
        "policy", "sign", "--key", str(vendor), "--uki", str(uki), "--eventlog",
        str(reference_log), "--release", "1", "--pcrs", "4,7", "--out", str(approval),
    )
    # The machine: the approval file goes into the header; that is all.
    sealer_on_host("policy", "install", str(approval), str(disk))
    release_esp = boot_kit.esp(keys=keys, cmdline=cmdline, initrd=initrd)
    release_boot = Machine(directory, keys.vars_template, [release_esp, disk]).boot()

    statement = directory / "below-1.revocation"
    sealer_on_host(
        "policy", "revoke", "--key", str(vendor), "--below", "1", "--out", str(statement)
    )
    with Swtpm(directory / "tpm") as tpm:  # the machine's own TPM state, NV memory included
        revoked = sealer_on_host(
            "--tcti", tpm.tcti, "revoke", "--statement", str(statement), str(disk)
        )
    rollback = Machine(directory, keys.vars_template, [v1_esp, disk])
    rollback_boot = rollback.boot(answers=type_passphrase())
    yield Released(directory, disk, release_boot, rollback_boot, revoked.stdout)


def test_a_vendor_approved_release_unlocks_at_its_first_boot(released: Released) -> None:
    boot = released.release_boot
    assert boot.powered_off, "stopped at the passphrase prompt:\n" + boot.transcript[-3000:]
    assert TPM_UNLOCKED in boot.transcript and PROMPT not in boot.transcript
    assert ROOT_UP in boot.transcript


def test_after_revocation_the_old_release_falls_back_and_says_it_was_revoked(
    released: Released,
) -> None:
    assert "releases below 1 are revoked (before: below 0)" in released.revoke_output
    boot = released.rollback_boot
    assert TPM_UNLOCKED not in boot.transcript
    reasons = boot.lines_with("sealer: cryptroot:")
    assert any("this boot image was revoked" in line for line in reasons), reasons
    assert PROMPT in boot.transcript and ROOT_UP in boot.transcript
