"""A signed update approved ahead of its reboot, proven on the real Secure Boot chain.

One machine, three UKIs signed by the same db key:
- v1, the provisioned one: the first boot asks for the passphrase, the volume is enrolled;
- v2, another initramfs and another command line: approved from v1's event log by
  ``sealer reseal --offline`` on the host (the guest's root has no Python), then booted: it
  unlocks with nothing typed, and every bound PCR equals what ``sealer predict`` said;
- v3, never approved: the passphrase is asked for, and ``sealer explain`` on v3's event log
  names PCR 4 and the boot application event.
"""

from __future__ import annotations

import json
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

from sealer.measure.eventlog import LINUX_INITRD_TAG, LINUX_LOAD_OPTIONS_TAG, parse
from sealer.measure.pe import (
    authenticode_digest,
    linux_load_options_digest,
    stub_sections,
    uki_pcr11_events,
)
from sealer.pcrs import BANKS

SHA256 = BANKS["sha256"]
BIND = (4, 7, 9, 11)  # the UKI, Secure Boot, the kernel's initrd and command line, the sections


@dataclass
class Updated:
    directory: Path
    disk: Path
    first: Boot
    v2_uki: Path
    predicted: dict[int, bytes]
    resealed: dict[str, object]
    second: Boot


def sealer_on_host(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sealer", *args], capture_output=True, text=True, timeout=300
    )


def write_log(boot: Boot, path: Path) -> Path:
    path.write_bytes(boot.event_log())
    return path


@pytest.fixture(scope="module")
def updated(boot_kit: BootKit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Updated]:
    directory = tmp_path_factory.mktemp("update")
    disk = boot_kit.new_root(directory)
    keys = boot_kit.owner
    machine = Machine(directory, keys.vars_template, [boot_kit.esp(keys=keys), disk])
    first = machine.boot(answers=type_passphrase())
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    state = directory / "state"
    enroll_on_host(machine, disk, first.pcrs(), state, bind=BIND)

    v1_log = write_log(first, directory / "v1.log")
    v2_initrd = extended_initramfs(
        directory / "initrd-v2.img", boot_kit.initrd, {"etc/sealer-e2e-release": b"v2\n"}
    )
    v2_cmdline = boot_kit.cmdline("sealer.e2e=v2")
    v2_uki = boot_kit.uki(keys=keys, cmdline=v2_cmdline, initrd=v2_initrd)
    pcrs = ",".join(str(p) for p in BIND)
    predicted = sealer_on_host(
        "predict", "--offline", "--eventlog", str(v1_log), "--uki", str(v2_uki),
        "--pcrs", pcrs, "--json",
    )
    assert predicted.returncode == 0, predicted.stderr
    prediction = json.loads(predicted.stdout)[0]["pcrs"]
    resealed = sealer_on_host(
        "reseal", "--offline", "--eventlog", str(v1_log), "--uki", str(v2_uki),
        "--state-dir", str(state), "--json", str(disk),
    )
    assert resealed.returncode == 0, resealed.stderr

    updated_machine = Machine(
        directory,
        keys.vars_template,
        [boot_kit.esp(keys=keys, cmdline=v2_cmdline, initrd=v2_initrd), disk],
    )
    second = updated_machine.boot()
    yield Updated(
        directory=directory,
        disk=disk,
        first=first,
        v2_uki=v2_uki,
        predicted={int(p): bytes.fromhex(v["predicted"]) for p, v in prediction.items()},
        resealed=json.loads(resealed.stdout)[0],
        second=second,
    )


def test_the_approval_holds_this_boot_and_the_update(updated: Updated) -> None:
    states = updated.resealed["approved_states"]
    assert isinstance(states, list)
    assert [s["label"] for s in states] == ["this boot", f"next boot: UKI {updated.v2_uki}"]
    assert updated.resealed["warnings"] == [
        "the event log was not checked against a TPM (--offline)"
    ]


def test_the_updated_uki_unlocks_at_its_first_boot(updated: Updated) -> None:
    second = updated.second
    assert second.powered_off, "stopped at the passphrase prompt:\n" + second.transcript[-3000:]
    assert TPM_UNLOCKED in second.transcript
    assert PROMPT not in second.transcript
    assert ROOT_UP in second.transcript


def test_every_bound_pcr_is_what_predict_said(updated: Updated) -> None:
    reported = updated.second.pcrs()
    for pcr in BIND:
        assert reported[pcr] == updated.predicted[pcr], f"PCR {pcr}"
    # And the update really changed what it should: the UKI, its sections, the kernel's view.
    first = updated.first.pcrs()
    assert [p for p in BIND if reported[p] != first[p]] == [4, 9, 11]


def test_the_firmware_and_the_stubs_measured_what_sealer_computes(updated: Updated) -> None:
    """Event by event, in the log of the updated boot: PCR 4's boot application is the UKI's
    Authenticode hash (firmware), PCR 11 its sections (systemd-stub), PCR 9 its initrd and
    command line (the Linux EFI stub)."""
    log = parse(updated.second.event_log())
    uki = updated.v2_uki.read_bytes()
    by_pcr = {p: [e for e in log.events if e.pcr == p] for p in (4, 9, 11)}
    [application] = [e for e in by_pcr[4] if e.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"]
    assert application.digests["sha256"] == authenticode_digest(uki, SHA256)
    assert [e.digests["sha256"] for e in by_pcr[11]] == [
        d for _, d in uki_pcr11_events(uki, SHA256)
    ]
    sections = stub_sections(uki)
    tagged = {e.tag: e.digests["sha256"] for e in by_pcr[9]}
    assert tagged[LINUX_INITRD_TAG] == SHA256.hash(sections[".initrd"].data)
    assert tagged[LINUX_LOAD_OPTIONS_TAG] == linux_load_options_digest(
        sections[".cmdline"].data, SHA256
    )


def test_an_unapproved_uki_falls_back_and_explain_names_the_boot_application(
    updated: Updated, boot_kit: BootKit
) -> None:
    directory = updated.directory
    v3 = boot_kit.esp(keys=boot_kit.owner, cmdline=boot_kit.cmdline("sealer.e2e=v3"))
    machine = Machine(directory, boot_kit.owner.vars_template, [v3, updated.disk])
    third = machine.boot(answers=type_passphrase())
    assert TPM_UNLOCKED not in third.transcript
    assert PROMPT in third.transcript and ROOT_UP in third.transcript
    assert any("sealer explain" in line for line in third.lines_with("sealer: cryptroot:"))

    v3_log = write_log(third, directory / "v3.log")
    result = sealer_on_host("explain", "--offline", "--eventlog", str(v3_log), str(updated.disk))
    assert result.returncode == 0, result.stderr
    assert "the TPM refuses" in result.stdout
    assert "EV_EFI_BOOT_SERVICES_APPLICATION" in result.stdout
    explained = sealer_on_host(
        "explain", "--offline", "--eventlog", str(v3_log), "--json", str(updated.disk)
    )
    [volume] = json.loads(explained.stdout)
    closest = volume["approved_states"][0]
    differing = {d["pcr"]: d for d in closest["differing"]}
    assert 4 in differing
    [application] = differing[4]["unapproved_events"]
    assert application["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert application["description"].endswith("at \\EFI\\BOOT\\BOOTX64.EFI")
