"""Coverage and the default binding on each boot chain, from real captured event logs.

Debian's shim + GRUB chain (swtpm-fixtures/eventlogs/debian-shim-grub-*.bin), a UKI
(ovmf-secureboot-uki.bin), and a kernel started through its EFI stub (the UKI's log without
systemd-stub's PCR 11 events: Linux's tagged PCR 9 events remain), and a kernel booted
without any initrd or command line event (the UKI's log without PCRs 9 and 11).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sealer.errors import UsageError
from sealer.measure import coverage as cov
from sealer.measure.coverage import coverage, coverage_warnings
from sealer.measure.difference import (
    GrubEvent,
    PcrDifference,
    StateDifference,
    explain,
    grub_event,
)
from sealer.measure.eventlog import EventLog, parse
from sealer.measure.measurements import event_record, measurements_of, replay
from sealer.pcrs import BANKS
from sealer.policy.approval import parse_approval, sign_approval
from sealer.services.enroll import DEFAULT_BINDING, check_binding, choose_binding

EVENTLOGS = Path(__file__).resolve().parents[2] / "swtpm-fixtures/eventlogs"
GRUB = parse((EVENTLOGS / "debian-shim-grub-boot1.bin").read_bytes())
GRUB_BOOT2 = parse((EVENTLOGS / "debian-shim-grub-boot2.bin").read_bytes())
MENU_BREAK = parse((EVENTLOGS / "debian-shim-grub-boot2-menu-break.bin").read_bytes())
SHA256 = BANKS["sha256"]
UKI = parse((EVENTLOGS / "ovmf-secureboot-uki.bin").read_bytes())
UKI_V2 = parse((EVENTLOGS / "ovmf-secureboot-uki-v2.bin").read_bytes())


def _without_pcrs(log: EventLog, pcrs: set[int]) -> EventLog:
    return replace(log, events=tuple(e for e in log.events if e.pcr not in pcrs))


EFI_STUB = _without_pcrs(UKI, {11})  # the kernel's own EFI stub: tagged PCR 9 events
DIRECT = _without_pcrs(UKI, {9, 11})  # nothing measures the initrd or the command line


# ---------------------------------------------------------------------------------------------
# Coverage, chain by chain


@pytest.mark.parametrize("log", [GRUB, GRUB_BOOT2], ids=["boot1", "boot2"])
def test_grub_measures_the_kernel_into_4_and_9_the_initrd_into_9_the_cmdline_into_8(
    log: EventLog,
) -> None:
    found = coverage(log)
    assert found.chain == cov.GRUB
    assert (found.kernel, found.initrd, found.cmdline) == ((4, 9), (9,), (8,))


def test_on_grub_no_warning_says_the_initrd_is_measured_nowhere() -> None:
    warnings = coverage_warnings(GRUB, (4, 7))
    assert not any("into no PCR" in w for w in warnings)
    assert warnings == [
        "--pcrs 4,7 leaves the initrd unmeasured: on this boot GRUB measures it into PCR 9; "
        "add PCR 9 to bind it",
        "--pcrs 4,7 leaves the kernel command line unmeasured: on this boot GRUB measures it "
        "into PCR 8; add PCR 8 to bind it",
    ]
    assert coverage_warnings(GRUB, (4, 7, 8, 9)) == []


@pytest.mark.parametrize("log", [UKI, UKI_V2], ids=["uki", "uki-v2"])
def test_a_uki_is_covered_as_before(log: EventLog) -> None:
    found = coverage(log)
    assert found.chain == cov.UKI
    assert (found.kernel, found.initrd, found.cmdline) == ((4, 11), (4, 9, 11), (4, 9, 11))
    assert coverage_warnings(log, (4, 7)) == []


def test_a_kernel_efi_stub_measures_initrd_and_cmdline_into_9() -> None:
    found = coverage(EFI_STUB)
    assert found.chain == cov.EFI_STUB
    assert (found.kernel, found.initrd, found.cmdline) == ((4,), (9,), (9,))


def test_a_boot_measuring_no_initrd_is_unknown() -> None:
    found = coverage(DIRECT)
    assert found.chain == cov.UNKNOWN
    assert (found.kernel, found.initrd, found.cmdline) == ((4,), (), ())


# ---------------------------------------------------------------------------------------------
# The default binding


@pytest.mark.parametrize(
    ("log", "pcrs", "chain"),
    [
        (UKI, (4, 7), cov.UKI),
        (EFI_STUB, (4, 7, 9), cov.EFI_STUB),
        (GRUB, (4, 7, 8, 9), cov.GRUB),
    ],
    ids=["uki", "efi-stub", "grub"],
)
def test_the_default_binding_is_chosen_from_the_boot_chain(
    log: EventLog, pcrs: tuple[int, ...], chain: str
) -> None:
    choice = choose_binding(None, log, allow_unbound=False)
    assert (choice.pcrs, choice.source, choice.chain) == (pcrs, "default", chain)
    assert choice.to_json()["pcrs"] == list(pcrs)
    assert cov.CHAIN_NAMES[chain] in choice.reason


def test_without_an_event_log_the_default_is_4_7_unchecked() -> None:
    choice = choose_binding(None, None, allow_unbound=False)
    assert choice.pcrs == DEFAULT_BINDING == (4, 7)
    assert (choice.source, choice.chain) == ("default", None)
    given = choose_binding((7,), None, allow_unbound=False)  # nothing to check it against
    assert (given.pcrs, given.source) == ((7,), "--pcrs")


def test_given_pcrs_are_kept() -> None:
    choice = choose_binding((4, 7, 8, 9, 11), GRUB, allow_unbound=False)
    assert (choice.pcrs, choice.source, choice.chain) == ((4, 7, 8, 9, 11), "--pcrs", cov.GRUB)


# ---------------------------------------------------------------------------------------------
# Refusing an unbound binding


def test_4_7_on_grub_is_refused_naming_pcrs_8_and_9() -> None:
    with pytest.raises(UsageError) as refused:
        choose_binding((4, 7), GRUB, allow_unbound=False)
    assert refused.value.message == (
        "--pcrs 4,7 leaves the initrd unmeasured: on this boot GRUB measures it into PCR 9; "
        "add PCR 9; --pcrs 4,7 leaves the kernel command line unmeasured: on this boot GRUB "
        "measures it into PCR 8; add PCR 8, or pass --allow-unbound"
    )
    assert refused.value.hint is not None and "--pcrs 4,7,8,9" in refused.value.hint
    assert refused.value.exit_code == 2


def test_allow_unbound_makes_it_a_warning() -> None:
    choice = choose_binding((4, 7), GRUB, allow_unbound=True)
    assert choice.pcrs == (4, 7)
    check_binding(GRUB, (4, 7), allow_unbound=True)  # no refusal
    assert len(coverage_warnings(GRUB, (4, 7))) == 2


@pytest.mark.parametrize(
    ("log", "pcrs", "add"),
    [(UKI, (7,), "4,7"), (EFI_STUB, (4, 7), "4,7,9"), (GRUB, (7, 8), "4,7,8,9")],
    ids=["uki", "efi-stub", "grub-kernel"],
)
def test_each_chain_refuses_what_it_leaves_free(
    log: EventLog, pcrs: tuple[int, ...], add: str
) -> None:
    with pytest.raises(UsageError) as refused:
        check_binding(log, pcrs, allow_unbound=False)
    assert refused.value.message.endswith(", or pass --allow-unbound")
    assert refused.value.hint is not None and f"--pcrs {add} " in refused.value.hint


def test_what_no_pcr_measures_is_refused_even_by_default() -> None:
    with pytest.raises(UsageError) as refused:
        choose_binding(None, DIRECT, allow_unbound=False)
    assert "this boot measures the initrd into no PCR, so no binding can protect it" in (
        refused.value.message
    )
    assert refused.value.hint is not None and "--allow-unbound" in refused.value.hint
    assert choose_binding(None, DIRECT, allow_unbound=True).pcrs == (4, 7)


# ---------------------------------------------------------------------------------------------
# explain on GRUB: the commands and files that differ, named


def _grub_explained(approved: EventLog, current: EventLog) -> list[PcrDifference]:
    pcrs = (4, 7, 8, 9)
    recorded = measurements_of(approved, SHA256)
    values = replay(recorded, SHA256, approved.startup_locality)
    key = ec.generate_private_key(ec.SECP256R1())
    signed = sign_approval(
        key, b"\0\x0b" + b"k" * 32, SHA256, [{p: values[p] for p in pcrs}], "enroll",
        events=[event_record(recorded, pcrs)],
    )
    approval = parse_approval(signed.to_json())  # through JSON, as the token keeps it
    measurements = measurements_of(current, SHA256)
    replayed = replay(measurements, SHA256, current.startup_locality)
    [state] = explain([approval], {p: replayed[p] for p in pcrs}, measurements, replayed, SHA256)
    return list(state.differences)


def _named(difference: PcrDifference) -> list[GrubEvent]:
    return [g for m in difference.unapproved if (g := grub_event(m)) is not None]


def test_explain_names_the_grub_command_edited_at_the_menu() -> None:
    differences = _grub_explained(GRUB_BOOT2, MENU_BREAK)
    assert [d.pcr for d in differences] == [8]
    named = _named(differences[0])
    linux = [g for g in named if g.kind == "command" and g.name == "linux"]
    assert len(linux) == 1 and linux[0].summary.endswith("break=bottom")
    assert linux[0].label().startswith("GRUB command 'linux': linux /vmlinuz-")
    [cmdline] = [g for g in named if g.kind == "kernel_cmdline"]
    assert cmdline.summary.endswith("break=bottom")


def test_explain_against_another_grub_boot_names_commands_and_files() -> None:
    differences = {d.pcr: d for d in _grub_explained(GRUB, MENU_BREAK)}
    assert sorted(differences) == [8, 9]
    commands = _named(differences[8])
    linux = [g.summary for g in commands if g.name == "linux"]
    assert len(linux) == 1 and "break=bottom" in linux[0]
    # A menu entry's event holds its whole text: named by its first line only.
    [entry] = [g for g in commands if g.name == "menuentry"]
    assert "\n" not in entry.summary and entry.summary.startswith("menuentry Debian GNU/Linux")
    assert entry.summary.endswith(" ...") and len(entry.summary) <= 104
    files = [g.name for g in _named(differences[9])]
    assert "/initrd.img-6.1.0-58-cloud-amd64" in files
    assert all(g.kind == "file" for g in _named(differences[9]))


def test_explain_prints_grub_events_one_line_each(capsys: pytest.CaptureFixture[str]) -> None:
    from sealer.cli.measured import _print_explanation
    from sealer.services.explain import Explanation

    differences = _grub_explained(GRUB, MENU_BREAK)
    state = StateDifference(0, 0, "2026-12-01T00:00:00Z", "enroll", tuple(differences))
    _print_explanation(Explanation("/dev/vda3", 1, "sha256", False, True, (state,)))
    lines = capsys.readouterr().out.splitlines()
    linux = [line for line in lines if "GRUB command 'linux': linux /vmlinuz-" in line]
    assert len(linux) == 1 and linux[0].endswith("break=bottom")
    assert "PCR 8 " in linux[0] and "not approved:" in linux[0]
    [entry] = [line for line in lines if "GRUB command 'menuentry'" in line]
    assert entry.endswith(" ...")
    assert not any(line.startswith("\t") or "load_video" in line for line in lines)
    assert any("GRUB read file /initrd.img-6.1.0-58-cloud-amd64" in line for line in lines)
