"""enroll's binding, chosen and checked against a boot's event log (Debian's shim + GRUB).

A binding that leaves this boot's kernel, initrd or command line free is refused before any
prompt and any change; with no --pcrs, the PCRs that cover the boot's chain are bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import eventlogs
import pytest
from conftest import PASSPHRASE, SealerCli

pytestmark = pytest.mark.integration
EXIT_USAGE = 2
GRUB_LOG = str(eventlogs.EVENTLOGS / "debian-shim-grub-boot1.bin")
UKI_LOG = str(eventlogs.UKI_BOOT_LOG)


def _tokens(sealer: SealerCli, image: Path) -> list[object]:
    report = json.loads(sealer("status", "--json", str(image)).stdout)
    enrollments: list[object] = report["enrollments"]
    return enrollments


def test_4_7_on_a_grub_boot_is_refused_before_the_prompt(
    sealer: SealerCli, luks_image: Path
) -> None:
    # No --unlock-key-file and nothing on stdin: reaching the prompt would fail otherwise.
    refused = sealer(
        "enroll", "--pcrs", "4,7", "--eventlog", GRUB_LOG, "--state-dir",
        str(sealer.state_dir), str(luks_image),
    )
    assert refused.returncode == EXIT_USAGE, refused.stderr
    assert (
        "--pcrs 4,7 leaves the kernel command line unmeasured: on this boot GRUB measures it "
        "into PCR 8; add PCR 8, or pass --allow-unbound"
    ) in refused.stderr
    assert "GRUB measures it into PCR 9; add PCR 9" in refused.stderr
    assert "--pcrs 4,7,8,9" in refused.stderr
    assert "Passphrase" not in refused.stderr + refused.stdout
    assert not sealer.state_dir.exists()  # no policy key made
    assert _tokens(sealer, luks_image) == []


def test_the_default_binding_on_a_grub_boot_is_4_7_8_9(
    sealer: SealerCli, luks_image: Path
) -> None:
    enrolled = sealer.enroll(luks_image, "--eventlog", GRUB_LOG, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    assert sorted(doc["approved_pcrs"], key=int) == ["4", "7", "8", "9", "15"]
    binding = doc["binding"]
    assert (binding["pcrs"], binding["source"], binding["boot_chain"]) == (
        [4, 7, 8, 9], "default", "grub",
    )
    assert "GRUB" in binding["reason"]
    assert not any("unmeasured" in w or "no PCR" in w for w in doc["warnings"])


def test_allow_unbound_enrolls_with_warnings(sealer: SealerCli, luks_image: Path) -> None:
    enrolled = sealer.enroll(
        luks_image, "--pcrs", "4,7", "--eventlog", GRUB_LOG, "--allow-unbound", "--json"
    )
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    assert doc["binding"]["source"] == "--pcrs"
    assert (
        "warning: --pcrs 4,7 leaves the initrd unmeasured: on this boot GRUB measures it into "
        "PCR 9; add PCR 9 to bind it"
    ) in enrolled.stderr


def test_a_uki_boot_keeps_4_7_and_says_why(sealer: SealerCli, luks_image: Path) -> None:
    enrolled = sealer.enroll(luks_image, "--eventlog", UKI_LOG)
    assert enrolled.returncode == 0, enrolled.stderr
    assert "PCRs 4,7 (+ cap PCR 15)" in enrolled.stdout
    assert "Binding: PCRs 4,7, this boot was started by a unified kernel image" in (
        enrolled.stdout
    )


def test_without_an_event_log_the_default_stays_4_7(sealer: SealerCli, luks_image: Path) -> None:
    enrolled = sealer.enroll(luks_image, "--json", passphrase=PASSPHRASE)
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    assert sorted(doc["approved_pcrs"], key=int) == ["4", "7", "15"]
    assert doc["binding"]["boot_chain"] is None
