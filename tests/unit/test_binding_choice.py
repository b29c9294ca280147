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

from sealer.errors import UsageError
from sealer.measure import coverage as cov
from sealer.measure.coverage import coverage, coverage_warnings
from sealer.measure.eventlog import EventLog, parse
from sealer.services.enroll import DEFAULT_BINDING, check_binding, choose_binding

EVENTLOGS = Path(__file__).resolve().parents[2] / "swtpm-fixtures/eventlogs"
GRUB = parse((EVENTLOGS / "debian-shim-grub-boot1.bin").read_bytes())
GRUB_BOOT2 = parse((EVENTLOGS / "debian-shim-grub-boot2.bin").read_bytes())
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
