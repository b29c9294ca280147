"""Debian's shim + GRUB chain: what this boot's log says about GRUB, and GRUB's next boot.

On this chain the firmware starts shim (PCR 4), shim starts GRUB (PCR 4) and GRUB starts the
kernel through shim, which the firmware measures into PCR 4 (twice: shim's load and the
firmware's). GRUB itself measures its commands into PCR 8 and the files it reads into PCR 9
(see sealer.measure.grubscript). The kernel, the initrd and the command line a kernel update
changes are all in there, so predicting a boot after an update means running the new
``grub.cfg`` as GRUB would and replacing this boot's GRUB events with the result.

What happens before GRUB reads its main config (the ESP's stub config that finds /boot) is
taken from this boot's log as it is: ``update-grub`` does not change it. The prediction is
checked against this boot's events: the new run must make the same commands in the same order
as this boot, except the ones a kernel update changes (the menu entries' text, ``echo``,
``linux``, ``initrd`` and the kernel command line). Anything else is reported as
unpredictable, with the first difference, rather than guessed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sealer.errors import MeasurementError
from sealer.measure import eventlog, pe
from sealer.measure.eventlog import EventLog
from sealer.measure.grubscript import GrubFiles, GrubRun, Measured, UnsupportedScript, parse_script
from sealer.measure.images import read_image
from sealer.measure.measurements import Measurement
from sealer.pcrs import BANKS, Bank

DEFAULT_GRUB_CFG = Path("/boot/grub/grub.cfg")
_COMMAND = "grub_cmd: "
_CMDLINE = "kernel_cmdline: "
# Commands whose words a kernel update changes: the version is in them.
_UPDATED_COMMANDS = {"menuentry", "submenu", "echo", "linux", "initrd"}
# GRUB's own variables that grub-mkconfig's templates test (grub-core/normal/main.c's
# features list, and the platform it was built for).
_GRUB_VARIABLES = {
    "grub_platform": "efi",
    "grub_cpu": "x86_64",
    **dict.fromkeys(
        (
            "feature_chainloader_bpb", "feature_ntldr", "feature_platform_search_hint",
            "feature_default_font_path", "feature_all_video_module", "feature_menuentry_id",
            "feature_menuentry_options", "feature_200_final", "feature_nativedisk_cmd",
            "feature_timeout_style",
        ),
        "y",
    ),
}


def is_grub_boot(log: EventLog) -> bool:
    """Whether GRUB measured its commands in this boot (PCR 8 ``grub_cmd:`` events)."""
    return any(_command_of(e) is not None for e in log.events)


def _command_of(event: eventlog.Event) -> str | None:
    if event.pcr != 8 or event.type != eventlog.EV_IPL:
        return None
    text = event.data.rstrip(b"\0").decode("utf-8", "replace")
    return text[len(_COMMAND) :] if text.startswith(_COMMAND) else None


@dataclass(frozen=True)
class GrubBoot:
    """What this boot's log says about GRUB: its main config, devices, and its events."""

    config: str  # the main config's GRUB path: "(hd1)/grub/grub.cfg"
    prefix: str  # "(hd1)/grub"
    devices: dict[str, str]  # file system UUID -> GRUB device, from the ESP stub's search
    first_event: int  # the log's number of GRUB's first command
    config_event: int  # the log's number of the command that runs the main config
    kernel_events: tuple[int, ...]  # PCR 4: the kernel image, as loaded through shim

    @property
    def device(self) -> str:
        return self.config[1 : self.config.index(")")]

    @property
    def relative_config(self) -> str:
        return self.config[self.config.index(")") + 1 :]


def read_grub_boot(log: EventLog) -> GrubBoot:
    """Find GRUB's stages in this boot's log; MeasurementError when they are not there."""
    commands = [(e, c) for e in log.events if (c := _command_of(e)) is not None]
    if not commands:
        raise MeasurementError("GRUB measured no command in this boot")
    prefix, devices, config = "", {}, None
    for event, command in commands:
        words = command.split()
        if words[:1] == ["set"] and len(words) == 2 and words[1].startswith("prefix="):
            prefix = words[1].split("=", 1)[1]
        elif words[:1] == ["search.fs_uuid"] and len(words) >= 3:
            devices[words[1]] = ""  # resolved below, from the prefix it leads to
        elif words[:1] == ["configfile"] and len(words) == 2:
            config = (event.number, words[1])
            break
    if config is None or not prefix.startswith("("):
        raise MeasurementError(
            "cannot find where GRUB read its main config in this boot's log (no 'configfile' "
            "after a 'set prefix=(...)')"
        )
    device = prefix[1 : prefix.index(")")]
    first = commands[0][0].number
    kernels = tuple(
        e.number
        for e in log.events
        if e.pcr == 4 and e.type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION and e.number > first
    )
    return GrubBoot(
        config=config[1],
        prefix=prefix,
        devices=dict.fromkeys(devices, device),
        first_event=first,
        config_event=config[0],
        kernel_events=kernels,
    )


class HostGrubFiles(GrubFiles):
    """GRUB's view of the file system that holds its config, on this host.

    GRUB names that file system's files from its own root (``(hd1)/grub/grub.cfg`` on a
    separate /boot); here they are under the directory the config's path leads to.
    """

    def __init__(self, device: str, mount: Path) -> None:
        self.device = device
        self.mount = mount
        # A kernel is read for PCR 9, hashed twice for PCR 4 and checked for its signer:
        # each file is read, and each image hashed, once.
        self._data: dict[str, bytes] = {}
        self._image_digests: dict[tuple[str, str], bytes] = {}

    @classmethod
    def for_config(cls, boot: GrubBoot, host_config: Path) -> HostGrubFiles:
        relative = PurePosixPath(boot.relative_config)
        parts = host_config.parts
        if parts[len(parts) - len(relative.parts) + 1 :] != relative.parts[1:]:
            raise MeasurementError(
                f"{host_config} is not where this boot's GRUB config is: GRUB read "
                f"{boot.config}",
                "give the file GRUB reads with --grub-cfg",
            )
        mount = Path(*parts[: len(parts) - len(relative.parts) + 1])
        return cls(boot.device, mount)

    def host_path(self, path: str) -> Path:
        device, _, rest = path[1:].partition(")")
        if device != self.device or not rest.startswith("/"):
            raise UnsupportedScript(f"GRUB reads {path}, which is not on its /boot file system")
        return self.mount / rest.lstrip("/")

    def exists(self, path: str) -> bool:
        return self.host_path(path).is_file()

    def read(self, path: str) -> bytes:
        if path not in self._data:
            self._data[path] = read_image(self.host_path(path))
        return self._data[path]

    def read_text(self, path: str) -> str:
        return self.read(path).decode("utf-8", "replace")

    def digest(self, path: str, bank: Bank) -> bytes:
        """The digest GRUB extends for reading the file at ``path``."""
        return bank.hash(self.read(path))

    def image_digest(self, path: str, bank: Bank) -> bytes:
        """The Authenticode digest the firmware extends for the kernel image at ``path``."""
        key = (path, bank.name)
        if key not in self._image_digests:
            source = str(self.host_path(path))
            self._image_digests[key] = pe.authenticode_digest(self.read(path), bank, source=source)
        return self._image_digests[key]


@dataclass(frozen=True)
class GrubPrediction:
    """GRUB's next boot: the measurements of PCRs 4, 8 and 9 from GRUB's start on."""

    measurements: dict[int, list[Measurement]]  # PCR -> the new run of events GRUB causes
    replaced: dict[int, list[int]]  # PCR -> this boot's event numbers that they replace
    kernel: Path
    initrds: tuple[Path, ...]
    boot: GrubBoot  # what this boot's log says about GRUB
    files: HostGrubFiles  # the files the run read (each read once)
    kernel_path: str  # the kernel's GRUB path, for files.read


def predict_grub(
    log: EventLog,
    bank: Bank,
    measurements: Sequence[Measurement],
    host_config: Path,
    files: HostGrubFiles | None = None,
) -> GrubPrediction:
    """Run ``host_config`` as this boot's GRUB would and give what it measures; checked
    against this boot's events. UnsupportedScript or MeasurementError when it cannot be
    predicted. ``files`` replaces the host's files (tests use recorded digests)."""
    boot = read_grub_boot(log)
    files = files or HostGrubFiles.for_config(boot, host_config)
    _check_hashing(log, bank)
    run = GrubRun(
        files=files,
        env={
            **_GRUB_VARIABLES,
            "prefix": boot.prefix,
            "root": boot.device,
            "config_directory": boot.config.rsplit("/", 1)[0],
            "config_file": boot.config,
        },
        devices=boot.devices,
        kernel_loads=len(boot.kernel_events),
    )
    run.measured.append(Measured("file", boot.config))
    run.run(parse_script(files.read_text(boot.config)))
    run.run_default_entry()
    if run.kernel is None:
        raise UnsupportedScript("GRUB's default entry loads no kernel")
    if not boot.kernel_events:
        raise UnsupportedScript("this boot's log has no kernel image in PCR 4 after GRUB")
    replaced = _replaced_events(log, measurements, boot)
    _check_against_this_boot(measurements, replaced, run.measured)
    new: dict[int, list[Measurement]] = {4: [], 8: [], 9: []}
    for measured in run.measured:
        new[measured.pcr].append(_measurement(measured, bank, files, run))
    return GrubPrediction(
        measurements=new,
        replaced=replaced,
        kernel=files.host_path(run.kernel),
        initrds=tuple(files.host_path(i) for i in run.initrds),
        boot=boot,
        files=files,
        kernel_path=run.kernel,
    )


def _measurement(
    measured: Measured, bank: Bank, files: HostGrubFiles, run: GrubRun
) -> Measurement:
    if measured.kind in ("command", "cmdline"):
        digest = bank.hash(measured.text.encode())
        return Measurement(measured.pcr, digest, "EV_IPL", measured.description, None)
    path = run.path(measured.text)
    if measured.kind == "kernel-image":
        return Measurement(
            4,
            files.image_digest(path, bank),
            "EV_EFI_BOOT_SERVICES_APPLICATION",
            f"kernel {measured.text}",
            None,
        )
    return Measurement(9, files.digest(path, bank), "EV_IPL", measured.text, None)


def _check_hashing(log: EventLog, bank: Bank) -> None:
    """GRUB 2.06 hashes a command without its prefix and NUL; another GRUB may not."""
    for event in log.events:
        command = _command_of(event)
        if (
            command is not None
            and bank.name in event.digests
            and bank.hash(command.encode()) != event.digests[bank.name]
        ):
            raise UnsupportedScript(
                    f"this boot's GRUB measured event {event.number} ({command[:40]!r}) in a "
                    "way sealer does not know"
                )


def _replaced_events(
    log: EventLog, measurements: Sequence[Measurement], boot: GrubBoot
) -> dict[int, list[int]]:
    """This boot's events, per PCR, that the main config's run makes."""
    by_number = {e.number: e for e in log.events}
    config_file = next(
        (
            e.number
            for e in log.events
            if e.pcr == 9 and e.number > boot.config_event
            and e.data.rstrip(b"\0").decode("utf-8", "replace") == boot.config
        ),
        None,
    )
    if config_file is None:
        raise UnsupportedScript(f"this boot's GRUB did not measure {boot.config} into PCR 9")
    replaced: dict[int, list[int]] = {4: list(boot.kernel_events), 8: [], 9: []}
    for m in measurements:
        if m.event is None or m.event not in by_number:
            continue
        if m.pcr == 8 and m.event > boot.config_event:
            replaced[8].append(m.event)
        elif m.pcr == 9 and m.event >= config_file:
            replaced[9].append(m.event)
    return replaced


def _check_against_this_boot(
    measurements: Sequence[Measurement],
    replaced: dict[int, list[int]],
    measured: Sequence[Measured],
) -> None:
    by_event = {m.event: m for m in measurements if m.event is not None}
    for pcr in (8, 9, 4):
        old = [by_event[n] for n in replaced[pcr]]
        new = [m.description for m in measured if m.pcr == pcr]
        if len(old) != len(new):
            raise UnsupportedScript(
                f"the new grub.cfg makes GRUB measure {len(new)} events into PCR {pcr}, "
                f"this boot measured {len(old)}: it runs other commands than this boot did"
            )
        for before, after in zip(old, new, strict=True):
            if before.description == after or pcr != 8:
                continue  # PCR 9 and 4: the files the commands below name
            if _name(before.description) == _name(after) in _UPDATED_COMMANDS | {"kernel_cmdline"}:
                continue
            raise UnsupportedScript(
                f"the new grub.cfg makes GRUB run {_short(after)!r} where this boot "
                f"ran {_short(before.description)!r} (event {before.event}): sealer predicts "
                "GRUB only where it follows this boot"
            )


def _name(description: str) -> str:
    if description.startswith(_CMDLINE):
        return "kernel_cmdline"
    words = description[len(_COMMAND) :].split(maxsplit=1)
    return words[0] if words else ""


def _short(description: str) -> str:
    first = description.split("\n", 1)[0]
    return first if len(first) <= 80 else first[:77] + "..."


def current_kernel(log: EventLog, boot: GrubBoot, files: HostGrubFiles) -> str | None:
    """This boot's kernel among ``files``, as a GRUB path: the file ``linux`` loaded, if it is
    still there with the digest GRUB measured of it."""
    events = list(log.events)
    for i, event in enumerate(events):
        command = _command_of(event)
        if command is None or not command.startswith("linux "):
            continue
        name = command.split()[1]
        measured = next((e for e in events[i + 1 :] if e.pcr == 9), None)
        if measured is None or measured.data.rstrip(b"\0").decode("utf-8", "replace") != name:
            return None
        path = name if name.startswith("(") else f"({boot.device}){name}"
        try:
            if not files.exists(path):
                return None
            data = files.read(path)
        except MeasurementError:
            return None
        for bank_name, digest in measured.digests.items():
            if bank_name in BANKS and BANKS[bank_name].hash(data) == digest:
                return path
        return None
    return None


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name the same file (the user's --kernel and GRUB's)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b
