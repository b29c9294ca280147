"""Debian's own boot chain: Microsoft-keyed OVMF -> signed shim -> signed GRUB -> Debian's
signed kernel, with /boot/grub/grub.cfg from the real grub-mkconfig (swtpm-fixtures/
grubchain.py), a LUKS2 root and initramfs-tools with sealer's hook.

The first boot asks for the passphrase (nothing enrolled yet); what its event log holds is
what sealer's GRUB support reads: PCR 4 shim, GRUB and the kernel twice; PCR 7 shim's
``SbatLevel`` and ``MokListRT`` after the db authority that verified shim; PCR 8 every GRUB
command and the kernel command line; PCR 9 every file GRUB read.

Then one machine (one disk set, one swtpm state) is taken through its life, four boots in
all, in order:

1. the first boot, by passphrase (above);
2. enrolled on the host from that boot's log with the default binding (no ``--pcrs``),
   which for GRUB is PCRs 4, 7, 8, 9; the second boot unlocks by TPM with nothing typed;
3. a kernel update (the next ABI version, a new initrd, a new grub.cfg from grub-mkconfig),
   approved ahead by the REAL update hook (sealer/install/hookfiles/update/reseal-hook) run on the
   host; the third boot, the updated kernel's first, unlocks with nothing typed and PCRs 4,
   7, 8, 9 are what ``sealer predict --grub-cfg`` said;
4. the default entry edited at GRUB's menu to add ``break=bottom``: the TPM refuses, the
   passphrase is asked for, and ``sealer explain`` names PCR 8 and the edited ``linux``.
   The control, without a boot: a copy of the machine from before step 2 enrolled with
   ``--pcrs 4,7 --allow-unbound`` would release the key to that edited entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from grubchain import (
    INITRAMFS_SHELL,
    PASSPHRASE,
    PROMPT,
    GrubChainMachine,
    make_grub_chain_machine,
    menu_edit_answers,
    missing_grub_chain_parts,
)
from qemu import Answer, Boot
from swtpm import Swtpm

from sealer.boot.pcrcap import CAP_EVENT, capped_value
from sealer.install.bootwire import HOOK_FILES, UPDATE_HOOK_SOURCE
from sealer.measure.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_IPL,
    EV_SEPARATOR,
    Event,
    EventLog,
    parse,
    variable_data,
)
from sealer.measure.pe import authenticode_digest
from sealer.pcrs import BANKS

ROOT_UP = "SEALER-E2E: root file system is up"
TPM_UNLOCKED = "sealer: cryptroot: key released by the TPM in"
SHA256 = BANKS["sha256"]
GRUB_BINDING = (4, 7, 8, 9)  # shim, GRUB and the kernel; Secure Boot; GRUB's commands; files
HOOK = HOOK_FILES / UPDATE_HOOK_SOURCE


@pytest.fixture(scope="module")
def grub_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrubChainMachine, Boot]]:
    reason = missing_grub_chain_parts()
    if reason is not None:
        # The README's test command installs every part: a missing one is a broken setup.
        pytest.fail(f"no Debian shim + GRUB chain on this machine: {reason}")
    chain = make_grub_chain_machine(tmp_path_factory.mktemp("grubchain"))
    first = chain.boot("first")
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    yield chain, first
    # How long each boot of the machine took (TCG, about a minute each): kept with its files.
    (chain.work / "boot-seconds.txt").write_text(
        "".join(f"{name} {boot.seconds:.1f}\n" for name, boot in chain.boots)
    )


def _log(boot: Boot) -> EventLog:
    return parse(boot.event_log())


def _strings(log: EventLog, pcr: int) -> list[str]:
    """The text of GRUB's EV_IPL events in ``pcr``, without the terminating NUL."""
    return [
        e.data.removesuffix(b"\0").decode()
        for e in log.events
        if e.pcr == pcr and e.type == EV_IPL
    ]


def _authenticode(path: Path) -> bytes:
    return authenticode_digest(path.read_bytes(), SHA256)


def test_first_boot_asks_for_the_passphrase(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    _, first = grub_chain
    assert PROMPT in first.transcript
    assert "has no sealer TPM enrollment" in first.transcript
    assert first.pcrs()[15] == capped_value()


def test_the_log_replays_to_the_firmware_pcrs(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    _, first = grub_chain
    live = {pcr: value for pcr, value in first.pcrs().items() if pcr <= 9}
    assert _log(first).mismatches(SHA256, live) == []


def test_pcr4_holds_shim_grub_and_the_kernel_twice(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    chain, first = grub_chain
    images = [
        e for e in _log(first).events
        if e.pcr == 4 and e.type == EV_EFI_BOOT_SERVICES_APPLICATION
    ]
    kernel = _authenticode(chain.tree / f"vmlinuz-{chain.version}")
    assert [e.digests["sha256"] for e in images] == [
        _authenticode(chain.loaders.shim),
        _authenticode(chain.loaders.grub),
        kernel,
        kernel,
    ]
    assert "BOOTX64.EFI" in images[0].description
    assert "grubx64.efi" in images[1].description
    assert " at " not in images[2].description  # the kernel's events name no device path


def test_pcr7_holds_shims_events_after_the_db_authority(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    _, first = grub_chain
    events = [e for e in _log(first).events if e.pcr == 7]
    names = [
        "separator" if e.type == EV_SEPARATOR else (variable_data(e) or ("?", b""))[0]
        for e in events
    ]
    assert names == [
        "SecureBoot", "PK", "KEK", "db", "dbx", "separator", "db", "SbatLevel", "MokListRT",
    ]
    authorities = [e for e in events if e.type == EV_EFI_VARIABLE_AUTHORITY]
    assert len(authorities) == 3


def _grub_event_digest_is_its_text(event: Event) -> bool:
    """GRUB hashes the command or command line without its ``grub_cmd: `` (or
    ``kernel_cmdline: ``) prefix and without the NUL the event's text ends with."""
    text = event.data.removesuffix(b"\0")
    _, _, measured = text.partition(b": ")
    return hashlib.sha256(measured).digest() == event.digests["sha256"]


def test_pcr8_holds_every_grub_command_and_the_kernel_command_line(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    chain, first = grub_chain
    log = _log(first)
    pcr8 = [e for e in log.events if e.pcr == 8]
    assert all(e.type == EV_IPL and e.data.endswith(b"\0") for e in pcr8)
    assert all(_grub_event_digest_is_its_text(e) for e in pcr8)
    strings = _strings(log, 8)
    kernel = f"/vmlinuz-{chain.version}"
    assert "grub_cmd: source (hd0)/EFI/debian/grub.cfg" in strings
    assert "grub_cmd: load_env" in strings
    assert "grub_cmd: setparams Debian GNU/Linux" in strings
    # The whole default entry is one command (its definition), then each command it runs.
    entry = next(s for s in strings if s.startswith("grub_cmd: menuentry Debian GNU/Linux "))
    assert f"\tlinux\t{kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet\n" in entry
    linux = f"grub_cmd: linux {kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet"
    assert linux in strings
    cmdline = f"kernel_cmdline: {kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet"
    assert strings.index(cmdline) > strings.index(linux)
    assert strings[-1] == f"grub_cmd: initrd /initrd.img-{chain.version}"
    assert f"SEALER-E2E: cmdline BOOT_IMAGE={kernel} " in first.transcript


def test_pcr9_holds_every_file_grub_read(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    chain, first = grub_chain
    log = _log(first)
    read = [
        (e.data.removesuffix(b"\0").decode(), e.digests["sha256"])
        for e in log.events
        if e.pcr == 9
    ]

    def sha256(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    def on_boot(name: str) -> bytes:
        return sha256((chain.tree / name).read_bytes())

    kernel, initrd = f"vmlinuz-{chain.version}", f"initrd.img-{chain.version}"
    assert read == [
        ("(hd0)/EFI/debian/grub.cfg", sha256(chain.esp_cfg.encode())),
        ("(hd1)/grub/grub.cfg", on_boot("grub/grub.cfg")),
        ("(hd1)/grub/grubenv", on_boot("grub/grubenv")),  # [ -s $prefix/grubenv ] opens it
        ("(hd1)/grub/grubenv", on_boot("grub/grubenv")),  # load_env
        (f"/{kernel}", on_boot(kernel)),
        (f"/{initrd}", on_boot(initrd)),
    ]


# ---------------------------------------------------------------------------------------
# The machine's life: enrolled, unlocked, updated, edited at the menu


def sealer_on_host(
    *args: str, tcti: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    tpm = ["--tcti", tcti] if tcti else []
    return subprocess.run(
        [sys.executable, "-m", "sealer", *tpm, *args],
        input=stdin, capture_output=True, text=True, timeout=300,
    )


def status_json(chain: GrubChainMachine, disk: Path) -> dict[str, object]:
    """``sealer status --json`` of the root disk against the machine's swtpm state."""
    with Swtpm(chain.machine.tpm_state) as tpm:
        result = sealer_on_host("status", "--json", str(disk), tcti=tpm.tcti)
    assert result.returncode == 0, result.stderr
    volume = json.loads(result.stdout)  # one device: its report, not a list
    assert isinstance(volume, dict) and volume["device"] == str(disk), result.stdout
    return volume


def the_enrollment(status: dict[str, object]) -> dict[str, object]:
    enrollments = status["enrollments"]
    assert isinstance(enrollments, list) and len(enrollments) == 1, enrollments
    enrollment = enrollments[0]
    assert isinstance(enrollment, dict)
    return enrollment


def boot_states(status: dict[str, object]) -> list[int]:
    approvals = the_enrollment(status)["approvals"]
    assert isinstance(approvals, list)
    return [a["boot_states"] for a in approvals]


def write_log(boot: Boot, path: Path) -> Path:
    path.write_bytes(boot.event_log())
    return path


def assert_unlocked_by_tpm(boot: Boot) -> None:
    assert boot.powered_off, "stopped at the passphrase prompt:\n" + boot.transcript[-3000:]
    assert TPM_UNLOCKED in boot.transcript, boot.transcript[-3000:]
    assert PROMPT not in boot.transcript  # not even briefly
    assert ROOT_UP in boot.transcript
    assert boot.pcrs()[15] == capped_value()


@dataclass
class Enrolled:
    chain: GrubChainMachine
    first: Boot
    first_log: Path
    state: Path  # the machine's policy key (sealer's state directory)
    enroll: dict[str, object]  # enroll --json
    status: dict[str, object]  # sealer status --json right after enrolling
    second: Boot  # the next boot, nothing typed
    control: Path  # a copy of the machine before enrolling: its root disk and TPM state


@pytest.fixture(scope="module")
def enrolled(
    grub_chain: tuple[GrubChainMachine, Boot], tmp_path_factory: pytest.TempPathFactory
) -> Enrolled:
    chain, first = grub_chain
    directory = tmp_path_factory.mktemp("grub-life")
    first_log = write_log(first, directory / "first.log")
    state = directory / "state"
    disk = chain.disks.root_image
    control = directory / "control"
    control.mkdir()
    shutil.copyfile(disk, control / "root.img")
    shutil.copytree(chain.machine.tpm_state, control / "tpm")
    # No --pcrs: the default binding, chosen from the first boot's log (GRUB: 4,7,8,9).
    enrolled = enroll_on_host(
        chain.machine.tpm_state, disk, first, first_log, state, expect=GRUB_BINDING
    )
    status = status_json(chain, disk)
    second = chain.boot("tpm", answers=[], stop_at=PROMPT)
    return Enrolled(chain, first, first_log, state, enrolled, status, second, control)


def enroll_on_host(
    tpm_state: Path, disk: Path, boot: Boot, log: Path, state: Path,
    *options: str, expect: tuple[int, ...],
) -> dict[str, object]:
    """Enroll ``disk`` against the machine's swtpm state with ``options``, giving ``boot``'s
    values of the PCRs in ``expect`` (the host's swtpm has none of the guest's PCR values);
    return enroll's JSON."""
    expected = [arg for p in expect for arg in ("--pcr", f"{p}=sha256:{boot.pcrs()[p].hex()}")]
    with Swtpm(tpm_state) as tpm:
        result = sealer_on_host(
            "enroll", "--json", "--unlock-key-file", "-", "--state-dir", str(state),
            "--eventlog", str(log), *options, *expected, str(disk),
            tcti=tpm.tcti, stdin=PASSPHRASE,
        )
    assert result.returncode == 0, result.stderr
    enrolled = json.loads(result.stdout)
    assert isinstance(enrolled, dict), result.stdout
    return enrolled


def test_the_enrollment_binds_grubs_pcrs(enrolled: Enrolled) -> None:
    binding = enrolled.enroll["binding"]
    assert isinstance(binding, dict)
    assert (binding["source"], binding["boot_chain"], binding["pcrs"]) == (
        "default", "grub", list(GRUB_BINDING),
    )
    assert enrolled.enroll["warnings"] == []
    enrollment = the_enrollment(enrolled.status)
    assert enrollment["pcrs"] == list(GRUB_BINDING)
    assert boot_states(enrolled.status) == [1]


def test_the_enrolled_machine_unlocks_by_tpm(enrolled: Enrolled) -> None:
    assert_unlocked_by_tpm(enrolled.second)
    first = enrolled.first.pcrs()
    assert {p: enrolled.second.pcrs()[p] for p in GRUB_BINDING} == {
        p: first[p] for p in GRUB_BINDING
    }


@dataclass
class Updated:
    enrolled: Enrolled
    version: str
    hook: subprocess.CompletedProcess[str]
    status: dict[str, object]  # after the hook
    predicted: dict[int, bytes]
    third: Boot  # the updated kernel's first boot, nothing typed


def hook_etc(directory: Path, log: Path, state: Path, disk: Path) -> Path:
    """An /etc/sealer whose SEALER_PYTHON runs this venv's sealer as the hook asks, plus
    what the host needs: this boot's log (--offline), the state directory and the disk."""
    etc = directory / "etc-sealer"
    etc.mkdir()
    wrapper = directory / "sealer-python"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'exec {sys.executable} "$@" --offline --eventlog {log} --state-dir {state} {disk}\n'
    )
    wrapper.chmod(0o755)
    (etc / "initramfs.conf").write_text(f"SEALER_PYTHON={wrapper}\n")
    return etc


@pytest.fixture(scope="module")
def updated(enrolled: Enrolled, tmp_path_factory: pytest.TempPathFactory) -> Updated:
    chain = enrolled.chain
    directory = tmp_path_factory.mktemp("grub-update")
    # The log of the boot that runs the update: the TPM-unlocked second boot.
    log = write_log(enrolled.second, directory / "second.log")
    disk = chain.disks.root_image
    old_version = chain.version
    version = chain.kernel_update()
    assert version != old_version and f"/vmlinuz-{version}" in chain.grub_cfg
    etc = hook_etc(directory, log, enrolled.state, disk)
    hook = subprocess.run(
        ["sh", str(HOOK), version], capture_output=True, text=True, timeout=300,
        env={**os.environ, "SEALER_HOOK_BOOT": str(chain.tree), "SEALER_HOOK_ETC": str(etc)},
    )
    status = status_json(chain, disk)
    grub_cfg = chain.tree / "grub" / "grub.cfg"
    predicted = sealer_on_host(
        "predict", "--offline", "--eventlog", str(log), "--grub-cfg", str(grub_cfg),
        "--pcrs", ",".join(map(str, GRUB_BINDING)), "--json",
    )
    assert predicted.returncode == 0, predicted.stderr
    prediction = json.loads(predicted.stdout)[0]["pcrs"]
    third = chain.boot("updated", answers=[], stop_at=PROMPT)
    return Updated(
        enrolled, version, hook, status,
        {int(p): bytes.fromhex(v["predicted"]) for p, v in prediction.items()}, third,
    )


def test_the_update_hook_approves_the_new_kernel(updated: Updated) -> None:
    hook = updated.hook
    assert hook.returncode == 0  # it never fails; what it says is the verdict
    assert "WARNING" not in hook.stderr and "cannot approve" not in hook.stderr, hook.stderr
    # One approval: this (second) boot's state and the predicted one of the update.
    assert boot_states(updated.status) == [2]
    assert the_enrollment(updated.status)["pcrs"] == list(GRUB_BINDING)


def test_the_updated_kernel_unlocks_by_tpm_at_its_first_boot(updated: Updated) -> None:
    third = updated.third
    assert_unlocked_by_tpm(third)
    assert third.lines_with("SEALER-E2E: cmdline ")[0].split()[2] == (
        f"BOOT_IMAGE=/vmlinuz-{updated.version}"
    )


def test_the_updated_boots_pcrs_are_what_predict_said(updated: Updated) -> None:
    reported = updated.third.pcrs()
    assert sorted(updated.predicted) == list(GRUB_BINDING)
    for pcr in GRUB_BINDING:
        assert reported[pcr] == updated.predicted[pcr], f"PCR {pcr}"
    # The update changed what it should: GRUB's commands and the files it read; the kernel
    # image (PCR 4) and Secure Boot's events (PCR 7) are the same bytes as before.
    before = updated.enrolled.second.pcrs()
    assert [p for p in GRUB_BINDING if reported[p] != before[p]] == [8, 9]


@dataclass
class MenuEdited:
    updated: Updated
    boot: Boot
    log: Path
    explained: subprocess.CompletedProcess[str]
    explained_json: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def menu_edited(updated: Updated, tmp_path_factory: pytest.TempPathFactory) -> MenuEdited:
    chain = updated.enrolled.chain
    directory = tmp_path_factory.mktemp("grub-menu-edit")
    boot = chain.boot(
        "menu-edit",
        answers=[
            *menu_edit_answers(chain.grub_cfg, "break=bottom"),
            Answer(PROMPT, PASSPHRASE + "\n"),
            Answer(INITRAMFS_SHELL, "exit\n"),  # sealer's panic hook capped PCR 15 first
        ],
    )
    assert ROOT_UP in boot.transcript, boot.transcript[-3000:]
    log = write_log(boot, directory / "menu-edit.log")
    disk = str(chain.disks.root_image)
    explained = sealer_on_host("explain", "--offline", "--eventlog", str(log), disk)
    explained_json = sealer_on_host(
        "explain", "--offline", "--eventlog", str(log), "--json", disk
    )
    return MenuEdited(updated, boot, log, explained, explained_json)


def test_an_entry_edited_at_the_menu_falls_back_to_the_passphrase(
    menu_edited: MenuEdited,
) -> None:
    boot = menu_edited.boot
    assert boot.lines_with("SEALER-E2E: cmdline ")[0].endswith(" break=bottom")
    assert TPM_UNLOCKED not in boot.transcript
    assert PROMPT in boot.transcript
    # Capped twice: break=bottom's shell comes from panic(), whose sealer script caps before
    # it, and init-bottom (after the shell) caps again.
    assert boot.pcrs()[15] == SHA256.extend(capped_value(), SHA256.hash(CAP_EVENT))


def test_an_entry_edited_at_the_menu_changes_only_pcr8(menu_edited: MenuEdited) -> None:
    updated = menu_edited.updated
    before, after = updated.third.pcrs(), menu_edited.boot.pcrs()
    assert {pcr for pcr in range(10) if before[pcr] != after[pcr]} == {8}
    changed = [
        a
        for b, a in zip(
            _strings(_log(updated.third), 8), _strings(_log(menu_edited.boot), 8), strict=True
        )
        if b != a
    ]
    assert [s.split(" ", 2)[1] for s in changed] == ["linux", f"/vmlinuz-{updated.version}"]


def test_explain_names_pcr8_and_the_edited_linux_command(menu_edited: MenuEdited) -> None:
    text, result = menu_edited.explained, menu_edited.explained_json
    version = menu_edited.updated.version
    assert text.returncode == 0, text.stderr
    assert "the TPM refuses" in text.stdout, text.stdout
    assert "PCR 8 differ\n" in text.stdout, text.stdout  # the update's state: only PCR 8
    assert f"GRUB command 'linux': linux /vmlinuz-{version} " in text.stdout, text.stdout
    assert result.returncode == 0, result.stderr
    [volume] = json.loads(result.stdout)
    assert volume["unlocks"] is False
    # The closest approved state is the update's: only PCR 8 differs, by the edited linux
    # command and the kernel command line GRUB measured after it.
    closest = volume["approved_states"][0]
    assert [d["pcr"] for d in closest["differing"]] == [8], closest
    events = closest["differing"][0]["unapproved_events"]
    assert [(e["grub"]["kind"], e["grub"]["name"]) for e in events] == [
        ("command", "linux"), ("kernel_cmdline", "kernel_cmdline"),
    ]
    assert events[0]["description"].startswith(f"grub_cmd: linux /vmlinuz-{version} ")
    assert all(e["grub"]["summary"].endswith(" break=bottom") for e in events), events


def test_without_pcr8_the_edited_entry_would_unlock(menu_edited: MenuEdited) -> None:
    """The control: the same machine enrolled with the old default, PCRs 4 and 7, would
    release the key to the edited entry (``explain`` on that boot's log says so)."""
    enrolled = menu_edited.updated.enrolled
    control = enrolled.control
    disk = control / "root.img"
    enroll_on_host(
        control / "tpm", disk, enrolled.first, enrolled.first_log, control / "state",
        "--pcrs", "4,7", "--allow-unbound", expect=(4, 7),
    )
    result = sealer_on_host(
        "explain", "--offline", "--eventlog", str(menu_edited.log), str(disk)
    )
    assert result.returncode == 0, result.stderr
    assert "the TPM releases the key" in result.stdout, result.stdout
