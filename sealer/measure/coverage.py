"""Which PCRs measure the kernel, the initrd and the command line in this boot.

Read from the event log, because it depends on the boot chain: a UKI carries all three
inside the image the firmware measures into PCR 4 (and systemd-stub measures each section
into PCR 11 too); a kernel started through its EFI stub lands in PCR 4, but its initrd and
command line only in PCR 9 (Linux's own tagged events) or PCR 8 (GRUB's command records).
A binding that selects none of the PCRs that measure one of them leaves it free to change:
an attacker could boot the signed kernel with an initrd or a command line of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealer.measure import eventlog
from sealer.measure.eventlog import EventLog
from sealer.pcrs import format_pcrs


@dataclass(frozen=True)
class Coverage:
    """Which PCRs measure the kernel, the initrd and the kernel command line in a boot."""

    kernel: tuple[int, ...]  # PCRs that measure it in this boot; () when none does
    initrd: tuple[int, ...]
    cmdline: tuple[int, ...]

    def items(self) -> list[tuple[str, tuple[int, ...]]]:
        return [
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("kernel command line", self.cmdline),
        ]


def coverage(log: EventLog) -> Coverage:
    """Which PCRs measured the kernel, the initrd and the command line in the boot ``log``
    records.
    """
    events = log.events
    application = any(
        e.pcr == 4 and e.type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION for e in events
    )
    sections = {e.description for e in events if e.pcr == 11 and e.type == eventlog.EV_IPL}
    tags = {e.tag for e in events if e.pcr == 9}
    grub = any(e.pcr == 8 and e.type == eventlog.EV_IPL for e in events)

    def where(in_uki: str, tag: int | None, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
        pcrs: set[int] = set(extra)
        if in_uki in sections:
            pcrs |= {4, 11} if application else {11}
        if tag is not None and tag in tags:
            pcrs.add(9)
        return tuple(sorted(pcrs))

    return Coverage(
        kernel=where(".linux", None, (4,) if application else ()),
        initrd=where(".initrd", eventlog.LINUX_INITRD_TAG),
        cmdline=where(".cmdline", eventlog.LINUX_LOAD_OPTIONS_TAG, (8,) if grub else ()),
    )


def coverage_warnings(log: EventLog, pcrs: Sequence[int]) -> list[str]:
    """One warning per boot component that the selected ``pcrs`` leave unmeasured."""
    warnings = []
    for what, measured_in in coverage(log).items():
        if not measured_in:
            warnings.append(
                f"this boot measures the {what} into no PCR, so no binding can protect it"
            )
        elif not set(measured_in) & set(pcrs):
            warnings.append(
                f"--pcrs {format_pcrs(pcrs)} leaves the {what} unmeasured: in this boot it is "
                f"measured into PCR {format_pcrs(measured_in)}; add PCR {measured_in[0]} "
                "to bind it"
            )
    return warnings
