"""Which PCRs measure the kernel, the initrd and the command line in this boot.

Read from the event log, because it depends on the boot chain:

- a UKI carries all three inside the image the firmware measures into PCR 4 (and
  systemd-stub measures each section into PCR 11 too);
- a kernel started through its EFI stub lands in PCR 4, its initrd and command line in
  PCR 9 (Linux's own tagged events);
- GRUB (Debian's shim + GRUB chain) measures every command it runs into PCR 8, the kernel
  command line among them, and every file it reads into PCR 9: the kernel (also measured
  into PCR 4 as shim loads it) and the initrd, each named by the argument of the ``linux``
  and ``initrd`` commands.

A binding that selects none of the PCRs that measure one of them leaves it free to change:
an attacker could boot the signed kernel with an initrd or a command line of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealer.measure import eventlog
from sealer.measure.eventlog import EventLog
from sealer.pcrs import format_pcrs

# The boot chains told apart, and the binding each gets by default: the PCRs that measure
# its kernel, initrd and command line (with PCR 7, the Secure Boot policy).
UKI = "uki"
EFI_STUB = "efi-stub"
GRUB = "grub"
UNKNOWN = "unknown"
DEFAULT_PCRS: dict[str, tuple[int, ...]] = {
    UKI: (4, 7),
    EFI_STUB: (4, 7, 9),
    GRUB: (4, 7, 8, 9),
    UNKNOWN: (4, 7),
}
CHAIN_NAMES = {
    UKI: "a unified kernel image (UKI)",
    EFI_STUB: "a kernel started through its EFI stub",
    GRUB: "GRUB",
    UNKNOWN: "an unrecognised boot chain",
}

_GRUB_COMMAND = "grub_cmd: "


@dataclass(frozen=True)
class Coverage:
    """Which PCRs measure the kernel, the initrd and the kernel command line in a boot."""

    kernel: tuple[int, ...]  # PCRs that measure it in this boot; () when none does
    initrd: tuple[int, ...]
    cmdline: tuple[int, ...]
    chain: str = UNKNOWN  # UKI, EFI_STUB, GRUB or UNKNOWN

    def items(self) -> list[tuple[str, tuple[int, ...]]]:
        return [
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("kernel command line", self.cmdline),
        ]


def _text(event: eventlog.Event) -> str:
    return event.data.rstrip(b"\0").decode("utf-8", "replace")


def _grub_files(log: EventLog) -> tuple[set[str], set[str], set[str], bool]:
    """GRUB's view of this boot: the files ``linux`` and ``initrd`` named, the files it
    measured into PCR 9, and whether it measured any command into PCR 8."""
    kernels: set[str] = set()
    initrds: set[str] = set()
    files: set[str] = set()
    commands = False
    for event in log.events:
        if event.type != eventlog.EV_IPL:
            continue
        text = _text(event)
        if event.pcr == 8 and text.startswith(_GRUB_COMMAND):
            commands = True
            words = text[len(_GRUB_COMMAND) :].split()
            if words[:1] == ["linux"] and len(words) > 1:
                kernels.add(words[1])
            elif words[:1] == ["initrd"]:
                initrds.update(words[1:])
        elif event.pcr == 9:
            files.add(text)
    return kernels, initrds, files, commands


def coverage(log: EventLog) -> Coverage:
    """Which PCRs measured the kernel, the initrd and the command line in the boot ``log``
    records, and which chain booted it.
    """
    events = log.events
    application = any(
        e.pcr == 4 and e.type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION for e in events
    )
    sections = {e.description for e in events if e.pcr == 11 and e.type == eventlog.EV_IPL}
    tags = {e.tag for e in events if e.pcr == 9}
    kernels, initrds, files, grub = _grub_files(log)

    def where(in_uki: str, tag: int | None, extra: tuple[int, ...] = ()) -> tuple[int, ...]:
        pcrs: set[int] = set(extra)
        if in_uki in sections:
            pcrs |= {4, 11} if application else {11}
        if tag is not None and tag in tags:
            pcrs.add(9)
        return tuple(sorted(pcrs))

    # GRUB measures each file it reads into PCR 9 under the path it was given.
    kernel_file = (9,) if kernels & files else ()
    initrd_file = (9,) if initrds and initrds <= files else ()
    if ".linux" in sections:
        chain = UKI
    elif grub:
        chain = GRUB
    elif eventlog.LINUX_INITRD_TAG in tags:
        chain = EFI_STUB
    else:
        chain = UNKNOWN
    return Coverage(
        kernel=where(".linux", None, ((4,) if application else ()) + kernel_file),
        initrd=where(".initrd", eventlog.LINUX_INITRD_TAG, initrd_file),
        cmdline=where(".cmdline", eventlog.LINUX_LOAD_OPTIONS_TAG, (8,) if grub else ()),
        chain=chain,
    )


@dataclass(frozen=True)
class Gap:
    """A boot component that a binding leaves free to change in this boot."""

    what: str  # "kernel", "initrd", "kernel command line"
    measured_in: tuple[int, ...]  # () when this boot measures it into no PCR at all
    add: int | None  # the PCR to add to bind it; None when no PCR can

    @property
    def unmeasured(self) -> bool:
        return not self.measured_in


def gaps(found: Coverage, pcrs: Sequence[int]) -> list[Gap]:
    """What the selected ``pcrs`` leave free in the boot ``found`` describes."""
    preferred = DEFAULT_PCRS[found.chain]
    result = []
    for what, measured_in in found.items():
        if not measured_in:
            result.append(Gap(what, (), None))
        elif not set(measured_in) & set(pcrs):
            add = next((p for p in measured_in if p in preferred), measured_in[0])
            result.append(Gap(what, measured_in, add))
    return result


def _who(chain: str, what: str) -> str:
    if chain == GRUB:
        return "shim and GRUB measure" if what == "kernel" else "GRUB measures"
    if chain == UKI:
        return "the firmware and systemd-stub measure"
    if chain == EFI_STUB:
        return "the firmware measures" if what == "kernel" else "the kernel's EFI stub measures"
    return "it is measured"


def gap_message(found: Coverage, pcrs: Sequence[int], gap: Gap, *, refusal: bool) -> str:
    """One sentence about ``gap``: what is free, where this boot measures it, what to do."""
    if gap.unmeasured:
        return f"this boot measures the {gap.what} into no PCR, so no binding can protect it"
    where = f"PCR {format_pcrs(gap.measured_in)}"
    who = _who(found.chain, gap.what)
    claim = f"into {where}" if who == "it is measured" else f"it into {where}"
    text = (
        f"--pcrs {format_pcrs(pcrs)} leaves the {gap.what} unmeasured: on this boot {who} "
        f"{claim}"
    )
    return f"{text}; add PCR {gap.add}" + ("" if refusal else " to bind it")


def coverage_warnings(log: EventLog, pcrs: Sequence[int]) -> list[str]:
    """One warning per boot component that the selected ``pcrs`` leave unmeasured."""
    found = coverage(log)
    return [gap_message(found, pcrs, g, refusal=False) for g in gaps(found, pcrs)]
