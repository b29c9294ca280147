"""The TCG PC Client crypto-agile event log: parse it, decode its events, replay its PCRs.

The log the firmware hands to Linux (``/sys/kernel/security/tpm0/binary_bios_measurements``)
starts with one event in the old SHA-1 format whose data is the "Spec ID Event03" header:
it lists the hash algorithms and their digest sizes. Every later event (TCG_PCR_EVENT2) has
one digest per algorithm. Replaying the log extends, per bank, each event's digest into its
PCR; the result must equal the TPM's live PCRs, or the log does not tell the truth about
that PCR and must not be used to predict it.

Everything here is plain data: the input may be hostile (a corrupted or forged log), so every
length is checked against the bytes that remain before anything is read or allocated.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sealer.errors import MeasurementError
from sealer.pcrs import BANKS, Bank

# Where Linux exposes the firmware's log (securityfs, mounted by systemd or the initramfs).
FIRMWARE_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
# A log is a few kilobytes to a few hundred; refuse absurd files instead of reading them whole.
MAX_LOG_BYTES = 16 * 1024 * 1024

EV_NO_ACTION = 0x3
EV_SEPARATOR = 0x4
EV_EVENT_TAG = 0x6
EV_IPL = 0xD
EV_EFI_ACTION = 0x80000007
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"

EVENT_TYPES = {
    0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x3: "EV_NO_ACTION",
    0x4: "EV_SEPARATOR", 0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS",
    0x8: "EV_S_CRTM_VERSION", 0x9: "EV_CPU_MICROCODE", 0xA: "EV_PLATFORM_CONFIG_FLAGS",
    0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH", 0xD: "EV_IPL",
    0xE: "EV_IPL_PARTITION_DATA", 0xF: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG",
    0x11: "EV_NONHOST_INFO", 0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION", 0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT",
    0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES", 0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2", 0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}
_VARIABLE_EVENTS = {0x80000001, 0x80000002, 0x8000000C, 0x800000E0}
_IMAGE_EVENTS = {0x80000003, 0x80000004, 0x80000005}
_UTF16_EVENTS = {0x8}  # EV_S_CRTM_VERSION
_ASCII_EVENTS = {0x5, 0x80000007}  # EV_ACTION, EV_EFI_ACTION
# The Linux EFI stub's tags for what it measures into PCR 9 (EV_EVENT_TAG).
LINUX_INITRD_TAG = 0x8F3B22EC
LINUX_LOAD_OPTIONS_TAG = 0x8F3B22ED


class EventLogError(MeasurementError):
    """The event log is truncated, corrupted, or not a crypto-agile TCG log."""


@dataclass(frozen=True)
class Event:
    """One event of the TCG event log: the PCR it extends, its type, its digests and its data."""

    number: int  # position in the log, the Spec ID event being 0
    pcr: int
    type: int
    digests: Mapping[str, bytes]  # bank name -> digest
    data: bytes

    @property
    def type_name(self) -> str:
        return EVENT_TYPES.get(self.type, f"0x{self.type:08x}")

    @property
    def description(self) -> str:
        return describe(self.type, self.data)

    @property
    def tag(self) -> int | None:
        """The tag of an EV_EVENT_TAG event (the Linux EFI stub's PCR 9 events), else None."""
        if self.type != EV_EVENT_TAG or len(self.data) < 8:
            return None
        return int(struct.unpack("<I", self.data[:4])[0])


@dataclass(frozen=True)
class EventLog:
    """A parsed crypto-agile TCG event log: the banks it records and its events."""

    algorithms: Mapping[str, int]  # bank name -> digest size, as the Spec ID event lists them
    events: tuple[Event, ...]
    startup_locality: int = 0
    unknown_algorithms: tuple[int, ...] = field(default=())

    def replay(self, bank: Bank) -> dict[int, bytes]:
        """Every PCR the log extends in ``bank``, replayed from its reset value."""
        if bank.name not in self.algorithms:
            raise EventLogError(
                f"the event log has no {bank.name} digests",
                f"it records {', '.join(self.algorithms) or 'no known bank'}; choose one of those",
            )
        extended = [(e.pcr, e.digests[bank.name]) for e in self.events if e.type != EV_NO_ACTION]
        return replay_digests(extended, bank, self.startup_locality)

    def mismatches(self, bank: Bank, live: Mapping[int, bytes]) -> list[int]:
        """PCRs whose live value differs from the log's replay: the log cannot predict them."""
        replayed = self.replay(bank)
        return sorted(
            pcr for pcr, value in live.items()
            if replayed.get(pcr, bank.initial_value(pcr)) != value
        )


def replay_digests(
    extended: Iterable[tuple[int, bytes]], bank: Bank, startup_locality: int = 0
) -> dict[int, bytes]:
    """Extend each (PCR, digest) in order from the PCRs' reset values."""
    values: dict[int, bytes] = {}
    for pcr, digest in extended:
        start = bank.initial_value(pcr)
        if pcr == 0 and startup_locality:
            # The firmware started the TPM from a higher locality: PCR 0 resets to it.
            start = start[:-1] + bytes([startup_locality])
        values[pcr] = bank.extend(values.get(pcr, start), digest)
    return values


def variable_data(event: Event) -> tuple[str, bytes] | None:
    """(variable name, variable data) of an EFI variable event, or None if it is not one."""
    if event.type not in _VARIABLE_EVENTS or len(event.data) < 32:
        return None
    reader = _Reader(event.data)
    reader.take(16, "variable GUID")
    name_chars = int(struct.unpack("<Q", reader.take(8, "name length"))[0])
    data_size = int(struct.unpack("<Q", reader.take(8, "data length"))[0])
    try:
        name = _utf16(reader.take(2 * name_chars, "variable name"))
        return name, reader.take(data_size, "variable data")
    except EventLogError:
        return None


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise EventLogError(
                f"the event log is truncated or corrupted: {what} at byte {self.offset} "
                f"needs {size} bytes, {len(self.data) - self.offset} remain"
            )
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    @property
    def done(self) -> bool:
        return self.offset >= len(self.data)


def read_event_log(path: Path | None = None) -> EventLog:
    """Read and parse the event log at ``path`` (default: the firmware's log of this boot)."""
    path = path or FIRMWARE_LOG
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LOG_BYTES + 1)
    except FileNotFoundError:
        if path == FIRMWARE_LOG:
            raise EventLogError(
                f"this boot has no TPM event log ({path} does not exist)",
                "mount securityfs (mount -t securityfs securityfs /sys/kernel/security), or "
                "give a log file with --eventlog",
            ) from None
        raise EventLogError(f"cannot read the event log {path}: no such file") from None
    except OSError as exc:
        raise EventLogError(
            f"cannot read the event log {path}: {exc.strerror}",
            "the firmware's log is readable by root only: run as root" if exc.errno == 13
            else None,
        ) from exc
    if len(data) > MAX_LOG_BYTES:
        raise EventLogError(f"{path} is larger than {MAX_LOG_BYTES // 2**20} MiB: not an event log")
    try:
        return parse(data)
    except EventLogError as exc:
        raise EventLogError(f"{path}: {exc.message}", exc.hint) from None


def _spec_id(data: bytes) -> tuple[dict[int, int], int]:
    """The algorithms (id -> digest size) of a Spec ID Event03 payload."""
    reader = _Reader(data)
    if reader.take(16, "Spec ID signature") != SPEC_ID_SIGNATURE:
        raise EventLogError(
            "the event log is not crypto-agile (no 'Spec ID Event03' header)",
            "sealer reads TPM 2.0 logs only; check that the firmware's TPM is a TPM 2.0",
        )
    reader.take(4 + 1 + 1 + 1 + 1, "Spec ID header")  # class, version, errata, uintn size
    count = reader.u32("number of algorithms")
    algorithms: dict[int, int] = {}
    for _ in range(count):
        alg = reader.u16("algorithm id")
        algorithms[alg] = reader.u16("digest size")
    return algorithms, count


def parse(data: bytes) -> EventLog:
    """Parse a whole crypto-agile event log."""
    reader = _Reader(data)
    pcr = reader.u32("first event's PCR")
    kind = reader.u32("first event's type")
    reader.take(20, "first event's SHA-1 digest")
    first = reader.take(reader.u32("first event's size"), "Spec ID event")
    if pcr != 0 or kind != EV_NO_ACTION:
        raise EventLogError("the event log does not start with the Spec ID event")
    algorithms, _ = _spec_id(first)
    by_id = {bank.alg_id: bank for bank in BANKS.values()}
    for alg, size in algorithms.items():
        if alg in by_id and by_id[alg].size != size:
            raise EventLogError(f"the event log gives {by_id[alg].name} digests {size} bytes")
    events: list[Event] = []
    locality = 0
    while not reader.done:
        number = len(events) + 1
        pcr = reader.u32(f"event {number}'s PCR")
        kind = reader.u32(f"event {number}'s type")
        count = reader.u32(f"event {number}'s digest count")
        if count != len(algorithms):
            raise EventLogError(
                f"event {number} has {count} digests; the log's header announces {len(algorithms)}"
            )
        digests: dict[str, bytes] = {}
        seen: set[int] = set()
        for _ in range(count):
            alg = reader.u16(f"event {number}'s algorithm")
            if alg not in algorithms:
                raise EventLogError(f"event {number} has a digest of unannounced algorithm {alg}")
            # The count matches the header's, so a repeated algorithm means another one is
            # missing, and replaying that bank would find no digest for this event.
            if alg in seen:
                raise EventLogError(f"event {number} has two digests of algorithm {alg}")
            seen.add(alg)
            digest = reader.take(algorithms[alg], f"event {number}'s digest")
            if alg in by_id:
                digests[by_id[alg].name] = digest
        payload = reader.take(reader.u32(f"event {number}'s size"), f"event {number}'s data")
        if pcr >= 24:
            raise EventLogError(f"event {number} names PCR {pcr}")
        if kind == EV_NO_ACTION and payload.startswith(STARTUP_LOCALITY_SIGNATURE):
            locality = payload[len(STARTUP_LOCALITY_SIGNATURE)] if len(payload) > 16 else 0
        events.append(Event(number, pcr, kind, digests, payload))
    return EventLog(
        algorithms={by_id[a].name: s for a, s in algorithms.items() if a in by_id},
        events=tuple(events),
        startup_locality=locality,
        unknown_algorithms=tuple(a for a in algorithms if a not in by_id),
    )


def _utf16(data: bytes) -> str:
    return data.decode("utf-16-le", "replace").rstrip("\0")


def _file_path(device_path: bytes) -> str:
    """The file path nodes (media type 4, subtype 4) of a UEFI device path, joined."""
    parts = []
    offset = 0
    while offset + 4 <= len(device_path):
        kind, subtype, length = struct.unpack("<BBH", device_path[offset : offset + 4])
        if length < 4 or kind == 0x7F:  # malformed, or the end-of-path node
            break
        if kind == 4 and subtype == 4:
            parts.append(_utf16(device_path[offset + 4 : offset + length]))
        offset += length
    return "".join(parts)


def _guid(data: bytes) -> str:
    a, b, c = struct.unpack("<IHH", data[:8])
    rest = data[8:16].hex()
    return f"{a:08x}-{b:04x}-{c:04x}-{rest[:4]}-{rest[4:]}"


def describe(kind: int, data: bytes) -> str:
    """A one-line description of an event's data for a person; never raises."""
    try:
        return _describe(kind, data)
    except (struct.error, IndexError, ValueError, EventLogError):
        return f"{len(data)} bytes (undecodable)"


def _describe(kind: int, data: bytes) -> str:
    if kind in _VARIABLE_EVENTS and len(data) >= 32:
        reader = _Reader(data)
        guid = _guid(reader.take(16, "variable GUID"))
        name_chars = int(struct.unpack("<Q", reader.take(8, "name length"))[0])
        data_size = int(struct.unpack("<Q", reader.take(8, "data length"))[0])
        name = _utf16(reader.take(2 * name_chars, "variable name"))
        return f"{name} ({guid}), {data_size} bytes"
    if kind in _IMAGE_EVENTS and len(data) >= 32:
        length, _, path_size = struct.unpack("<QQQ", data[8:32])
        path = _file_path(data[32 : 32 + path_size])
        return f"image of {length} bytes" + (f" at {path}" if path else "")
    if kind == EV_EVENT_TAG and len(data) >= 8:
        tag, size = struct.unpack("<II", data[:8])
        text = data[8 : 8 + size].rstrip(b"\0").decode("ascii", "replace")
        return f"tag 0x{tag:08x}: {text}"
    if kind in _UTF16_EVENTS:
        return _utf16(data)
    if kind == EV_IPL:  # systemd-stub's section names are UTF-16, others ASCII
        if len(data) >= 2 and data[1:2] == b"\0":
            return _utf16(data)
        return data.rstrip(b"\0").decode("ascii", "replace")
    if kind in _ASCII_EVENTS:
        return data.rstrip(b"\0").decode("ascii", "replace")
    if kind == EV_SEPARATOR:
        return "separator" if data in (b"\0" * 4, b"") else f"separator (error {data.hex()})"
    if kind == EV_NO_ACTION:
        return data[:16].rstrip(b"\0").decode("ascii", "replace")
    return f"{len(data)} bytes"
