"""Predict the PCR values of the next boot from this boot's event log and the new boot images.

The current log is the firmware's own record of what it measured. Predicting the next boot
means taking that record, replacing the events the new images change, and replaying it:

- a UKI (systemd-stub): PCR 4's last boot-application event becomes the UKI's Authenticode
  hash; PCR 11's section events are recomputed from its sections; in PCR 9, the Linux EFI
  stub's "Linux initrd" and load-options events follow its .initrd and .cmdline sections.
- a kernel started through its EFI stub (+ an initrd): PCR 4's last boot-application event
  becomes the kernel's Authenticode hash, PCR 9's "Linux initrd" event the initrd's hash.

Everything else (firmware, option ROMs, boot variables, Secure Boot databases) is assumed to
stay as it is. PCR 7 stays the same only if the same db certificate verifies the new image;
that is checked against the certificate the current boot recorded, and PCR 7 is reported as
unpredictable when it differs. A PCR whose live value is not what the log replays to was
extended by something the log does not record, so it is never predicted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from sealer.errors import MeasurementError
from sealer.measure import eventlog, grub, pe
from sealer.measure.eventlog import EventLog
from sealer.measure.images import read_image
from sealer.measure.measurements import Measurement, measurements_of, replay
from sealer.pcrs import Bank

_APPLICATION = "EV_EFI_BOOT_SERVICES_APPLICATION"


@dataclass(frozen=True)
class Change:
    """One event that differs between this boot's log and the predicted next boot."""

    pcr: int
    event: int | None  # the current log's event that changes (None: a new event)
    type_name: str
    description: str
    old: bytes | None  # None: the next boot adds this event
    new: bytes | None  # None: the next boot no longer makes it


@dataclass(frozen=True)
class NextBoot:
    """The boot images the next boot will load: a UKI, or a kernel and its initrd; on a
    machine that boots through GRUB, the ``grub.cfg`` that decides them."""

    uki: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    grub_cfg: Path | None = None  # used when this boot went through GRUB

    def __post_init__(self) -> None:
        if self.uki is not None and (self.kernel is not None or self.grub_cfg is not None):
            raise MeasurementError("give either a UKI or a kernel (with its initrd), not both")
        if self.uki is None and self.kernel is None and self.grub_cfg is None:
            raise MeasurementError("give a UKI, a kernel (with its initrd) or a GRUB config")
        if self.uki is not None and self.initrd is not None:
            raise MeasurementError("a UKI carries its own initrd: do not give --initrd with it")

    def describe(self) -> str:
        if self.uki is not None:
            return f"UKI {self.uki}"
        if self.kernel is None:
            return f"default entry of {self.grub_cfg}"
        return f"kernel {self.kernel}" + (f" with initrd {self.initrd}" if self.initrd else "")


@dataclass(frozen=True)
class Prediction:
    """The next boot's predicted PCR values in one bank, and the events that make them differ."""

    bank: Bank
    current: Mapping[int, bytes]  # the current log replayed: every PCR it extends
    predicted: Mapping[int, bytes]  # the predicted measurements replayed
    changes: tuple[Change, ...]
    measurements: tuple[Measurement, ...]  # the next boot's measurements in this bank
    unpredictable: Mapping[int, str] = field(default_factory=dict)  # PCR -> why

    def value(self, pcr: int) -> bytes:
        return self.predicted.get(pcr, self.bank.initial_value(pcr))

    def changed_pcrs(self) -> list[int]:
        return sorted({c.pcr for c in self.changes})


def _last_application(measurements: Sequence[Measurement]) -> int:
    found = [i for i, m in enumerate(measurements) if m.pcr == 4 and m.type_name == _APPLICATION]
    if not found:
        raise MeasurementError(
            "the event log records no boot application in PCR 4, so there is no boot image "
            "to replace",
            "sealer predicts boots that the firmware (or shim) starts from an EFI image",
        )
    return found[-1]


def _tagged(log: EventLog, tag: int) -> list[int]:
    """Event numbers of the Linux EFI stub's tagged PCR 9 events with ``tag``."""
    return [e.number for e in log.events if e.pcr == 9 and e.tag == tag]


class _Editor:
    """The current measurements, edited into the next boot's, remembering every change."""

    def __init__(self, measurements: list[Measurement]) -> None:
        self.measurements = measurements
        self.changes: list[Change] = []

    def _index_of(self, event: int) -> int:
        return next(i for i, m in enumerate(self.measurements) if m.event == event)

    def set_digest(self, index: int, digest: bytes) -> None:
        old = self.measurements[index]
        if old.digest != digest:
            self.changes.append(
                Change(old.pcr, old.event, old.type_name, old.description, old.digest, digest)
            )
        self.measurements[index] = replace(old, digest=digest, event=old.event)

    def set_event_digest(self, event: int, digest: bytes) -> None:
        self.set_digest(self._index_of(event), digest)

    def replace_run(self, indices: list[int], new: list[Measurement]) -> None:
        """Replace the measurements at ``indices`` (one PCR) by ``new``, pairing them in order."""
        old = [self.measurements[i] for i in indices]
        for i in range(max(len(old), len(new))):
            before = old[i] if i < len(old) else None
            after = new[i] if i < len(new) else None
            if before is not None and after is not None and before.digest == after.digest:
                continue
            shown = before or after
            assert shown is not None
            self.changes.append(
                Change(
                    shown.pcr,
                    before.event if before else None,
                    shown.type_name,
                    (after or shown).description,
                    before.digest if before else None,
                    after.digest if after else None,
                )
            )
        at = indices[0] if indices else len(self.measurements)
        kept = [m for i, m in enumerate(self.measurements) if i not in set(indices)]
        at -= sum(1 for i in indices if i < at)
        self.measurements = kept[:at] + new + kept[at:]


def _signer_reason(log: EventLog, image: bytes, what: str, source: str) -> str | None:
    """Why PCR 7 would change with ``image``, or None if the same certificate verifies it."""
    authorities = [
        data
        for e in log.events
        if e.pcr == 7 and e.type == eventlog.EV_EFI_VARIABLE_AUTHORITY
        and (data := eventlog.variable_data(e)) is not None
    ]
    if not authorities:
        return None  # Secure Boot off: PCR 7 does not depend on the image's signer
    signers = pe.signer_certificates(image, source=source)
    if not signers:
        return f"the new {what} is not signed: Secure Boot will refuse to start it"
    _, signature_data = authorities[-1]
    verified_by = signature_data[16:]  # EFI_SIGNATURE_DATA: owner GUID, then the certificate
    if verified_by in signers:
        return None
    return (
        f"the new {what} is signed by another certificate than the one that verified this "
        "boot's image, so PCR 7 (which records that certificate) will change"
    )


def predict(
    log: EventLog, bank: Bank, boot: NextBoot, live: Mapping[int, bytes] | None = None
) -> Prediction:
    """The PCR values of a boot of ``boot`` on this machine; ``live`` (the TPM's current
    values of some PCRs) marks the PCRs the log does not account for as unpredictable."""
    editor = _Editor(measurements_of(log, bank))
    current = replay(editor.measurements, bank, log.startup_locality)
    unpredictable: dict[int, str] = {}
    for pcr, value in sorted((live or {}).items()):
        if current.get(pcr, bank.initial_value(pcr)) != value:
            unpredictable[pcr] = (
                "its live value is not what the event log replays to: something extended it "
                "without a record in the firmware's log"
            )
    application = _last_application(editor.measurements)
    if boot.uki is not None:
        image = read_image(boot.uki)
        _predict_uki(log, bank, editor, application, image, unpredictable, str(boot.uki))
        reason = _signer_reason(log, image, "UKI", str(boot.uki))
    elif grub.is_grub_boot(log):
        reason = _predict_grub_chain(log, bank, editor, boot, unpredictable)
    else:
        if boot.kernel is None:
            raise MeasurementError(
                "this boot did not go through GRUB, so its grub.cfg does not say what the next "
                "boot starts",
                "give the next boot's --kernel (and --initrd) or --uki",
            )
        image = read_image(boot.kernel)
        editor.set_digest(application, pe.authenticode_digest(image, bank, source=str(boot.kernel)))
        if boot.initrd is not None:
            tagged = _tagged(log, eventlog.LINUX_INITRD_TAG)
            if tagged:
                editor.set_event_digest(tagged[-1], bank.hash(read_image(boot.initrd)))
            else:
                unpredictable[9] = "this boot's kernel measured no initrd, the next one may"
        reason = _signer_reason(log, image, "kernel", str(boot.kernel))
    if reason:
        unpredictable[7] = reason
    predicted = replay(editor.measurements, bank, log.startup_locality)
    return Prediction(
        bank=bank,
        current=current,
        predicted=predicted,
        changes=tuple(sorted(editor.changes, key=lambda c: (c.event is None, c.event or 0))),
        measurements=tuple(editor.measurements),
        unpredictable=unpredictable,
    )


def _predict_uki(
    log: EventLog,
    bank: Bank,
    editor: _Editor,
    application: int,
    image: bytes,
    unpredictable: dict[int, str],
    source: str,
) -> None:
    editor.set_digest(application, pe.authenticode_digest(image, bank, source=source))
    # PCR 11: systemd-stub's section events, all EV_IPL, replaced as one run.
    stub_run = [
        i for i, m in enumerate(editor.measurements) if m.pcr == 11 and m.type_name == "EV_IPL"
    ]
    stub_events = pe.uki_pcr11_events(image, bank, source=source)
    new_run = [
        Measurement(11, digest, "EV_IPL", description, None)
        for description, digest in stub_events
    ]
    editor.replace_run(stub_run, new_run)
    # PCR 9: what the Linux EFI stub measures of what systemd-stub hands it. The initrd is
    # the bytes systemd-stub measured as ".initrd contents": that digest serves both PCRs.
    initrd = dict(stub_events).get(".initrd contents")
    initrd_events = _tagged(log, eventlog.LINUX_INITRD_TAG)
    if initrd_events and initrd is not None:
        editor.set_event_digest(initrd_events[-1], initrd)
    elif initrd_events or initrd is not None:
        unpredictable[9] = "the current boot and the new UKI differ in having an initrd at all"
    options_events = _tagged(log, eventlog.LINUX_LOAD_OPTIONS_TAG)
    if options_events:
        # Found the way systemd-stub finds it (prefix match, the last one wins).
        found = pe.stub_sections(image, source=source, only={".cmdline"})
        cmdline = found[".cmdline"].data if ".cmdline" in found else b""
        digest = pe.linux_load_options_digest(cmdline, bank)
        if digest is None:
            unpredictable[9] = "the kernel's measurement of its command line is not known"
        else:
            editor.set_event_digest(options_events[-1], digest)


def _predict_grub_chain(
    log: EventLog, bank: Bank, editor: _Editor, boot: NextBoot, unpredictable: dict[int, str]
) -> str | None:
    """Replace GRUB's events (PCRs 8, 9) and the kernel's (PCR 4) with those of a run of the
    new grub.cfg; return why PCR 7 would change, if it would."""
    config = boot.grub_cfg or grub.DEFAULT_GRUB_CFG
    try:
        found = grub.predict_grub(log, bank, editor.measurements, config)
    except MeasurementError as exc:
        why = exc.one_line()
        unpredictable.update({8: why, 9: why})
        unpredictable.setdefault(4, why)
        unpredictable.setdefault(7, why)
        return None
    if boot.kernel is not None and not grub.same_file(boot.kernel, found.kernel):
        raise MeasurementError(
            f"the default entry of {config} boots {found.kernel}, not {boot.kernel}",
            "give the kernel GRUB boots, or leave --kernel out: GRUB's config decides it",
        )
    if boot.initrd is not None and not any(grub.same_file(boot.initrd, i) for i in found.initrds):
        loaded = ", ".join(map(str, found.initrds)) or "no initrd"
        raise MeasurementError(
            f"the default entry of {config} loads {loaded}, not {boot.initrd}",
            "give the initrd GRUB loads, or leave --initrd out",
        )
    for pcr in (8, 9, 4):
        gone = set(found.replaced[pcr])
        indices = [i for i, m in enumerate(editor.measurements) if m.event in gone]
        editor.replace_run(indices, found.measurements[pcr])
    return _grub_signer_reason(log, found)


def _grub_signer_reason(log: EventLog, found: grub.GrubPrediction) -> str | None:
    """Why PCR 7 would change with the new kernel on the shim + GRUB chain, or None.

    shim records in PCR 7 the db or MOK certificate that verified an image, but nothing when
    its built-in vendor certificate did (Debian's kernels). So PCR 7 stays the same when the
    new kernel is signed by the certificate that signed this boot's kernel; that kernel is
    found in /boot by the digest GRUB measured of it.
    """
    image, source = found.files.read(found.kernel_path), str(found.kernel)
    first = found.boot.first_event
    after_grub = [
        e for e in log.events
        if e.pcr == 7 and e.type == eventlog.EV_EFI_VARIABLE_AUTHORITY and e.number > first
    ]
    if after_grub:
        return _signer_reason(log, image, "kernel", source)
    signers = pe.signer_certificates(image, source=source)
    if not signers:
        return "the new kernel is not signed: shim will refuse to start it"
    current = grub.current_kernel(log, found.boot, found.files)
    if current is None:
        return (
            "this boot's kernel is no longer in /boot, so sealer cannot check that shim "
            "verifies the new kernel the same way"
        )
    current_signers = pe.signer_certificates(
        found.files.read(current), source=str(found.files.host_path(current))
    )
    if set(current_signers) != set(signers):
        return (
            "the new kernel is signed by another certificate than this boot's kernel, so shim "
            "may record another authority in PCR 7"
        )
    return None
