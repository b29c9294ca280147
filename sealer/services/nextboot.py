"""``sealer status --next-boot``: will the next boot unlock by TPM, or ask for the passphrase?

The next boot unlocks when an approval that is not revoked holds exactly the PCR values that
boot will produce. Those values are predicted the way ``reseal`` predicts them (this boot's
event log with the new image's measurements, checked against the live PCRs), so the answer
is as good as the approval ``reseal`` would sign: "true" here means the TPM will accept it.

Which image boots next is what the update hook decides too: /etc/sealer/update.conf says
whether the machine starts a kernel (/boot/vmlinuz-V with /boot/initrd.img-V) or a UKI
(SEALER_UKI, "%v" standing for V), and V is the newest kernel installed in /boot, the one
the boot loader starts by default. An image named on the command line replaces that guess.

Nothing here fails the status report: an image that cannot be read, a log that is missing or
a PCR that cannot be predicted becomes the entry's reason, with "unlocks" left unknown.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path
from typing import Any

from sealer.errors import MeasurementError, SealerError, TPMMismatchError
from sealer.luks.enrollment import Enrollment
from sealer.measure.predict import NextBoot, Prediction, predict
from sealer.pcrs import format_pcrs
from sealer.policy import revocation
from sealer.policy.approval import Approval
from sealer.services.bootstate import BootState, read_boot_state
from sealer.services.matching import approvals_of, find_match, pcrs_to_read, still_holds

# The update hook's defaults (sealer/install/hookfiles/update/reseal-hook), overridden there,
# and here, by SEALER_HOOK_ETC and SEALER_HOOK_BOOT in tests.
DEFAULT_ETC = Path("/etc/sealer")
DEFAULT_BOOT = Path("/boot")
_ASSIGNMENT = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


# --- which image boots next -------------------------------------------------------------


def _order(char: str) -> int:
    """dpkg's character order: '~' first (even before the end), letters before other signs."""
    if char == "~":
        return -1
    if char.isascii() and char.isalpha():
        return ord(char)
    return ord(char) + 256


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def compare_versions(a: str, b: str) -> int:
    """Negative, zero or positive as ``a`` sorts before, with or after ``b`` in ``sort -V``.

    This is dpkg's verrevcmp, which GNU sort -V uses for names without file suffixes (kernel
    versions have none): runs of digits compare as numbers, other runs by ``_order``.
    """
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and not _is_digit(a[i])) or (j < len(b) and not _is_digit(b[j])):
            ac = _order(a[i]) if i < len(a) and not _is_digit(a[i]) else 0
            bc = _order(b[j]) if j < len(b) and not _is_digit(b[j]) else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and _is_digit(a[i]) and j < len(b) and _is_digit(b[j]):
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and _is_digit(a[i]):
            return 1
        if j < len(b) and _is_digit(b[j]):
            return -1
        if first_diff:
            return first_diff
    return 0


version_key = cmp_to_key(compare_versions)


@dataclass(frozen=True)
class UpdateConf:
    """How this machine boots, as /etc/sealer/update.conf tells the update hook."""

    boot: str = "kernel"  # SEALER_BOOT: "uki", or anything else for a kernel (as the hook)
    uki: str = ""  # SEALER_UKI: the UKI's path, "%v" standing for the kernel version


def _shell_value(raw: str) -> str:
    """The value of a POSIX shell assignment's right-hand side, without evaluating it."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        return raw[1:end] if end > 0 else raw[1:]
    # Unquoted, the value ends at the first blank (the shell would run the rest as a command).
    words = raw.split(None, 1)
    return "" if not words or words[0].startswith("#") else words[0]


def parse_update_conf(text: str, source: str = "update.conf") -> UpdateConf:
    """SEALER_BOOT and SEALER_UKI from the shell file the hook sources; nothing is run."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match and match.group(1) in ("SEALER_BOOT", "SEALER_UKI"):
            values[match.group(1)] = _shell_value(match.group(2))
    for name, value in values.items():
        if "$" in value or "`" in value:
            raise MeasurementError(
                f"{name} in {source} uses shell expansion, which sealer does not evaluate",
                "write the path literally, %v standing for the kernel version",
            )
    return UpdateConf(boot=values.get("SEALER_BOOT") or "kernel", uki=values.get("SEALER_UKI", ""))


def read_update_conf(etc_dir: Path) -> UpdateConf:
    """The hook's settings from ``etc_dir``/update.conf (defaults when it is absent);
    MeasurementError when unreadable.
    """
    path = etc_dir / "update.conf"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return UpdateConf()  # the hook's default: a kernel and its initrd
    except OSError as exc:
        raise MeasurementError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_update_conf(text, str(path))


def installed_versions(boot_dir: Path) -> list[str]:
    """The kernel versions V with a /boot/vmlinuz-V, oldest first (``sort -V``)."""
    try:
        names = [p.name for p in boot_dir.iterdir() if p.is_file()]
    except OSError as exc:
        raise MeasurementError(f"cannot list {boot_dir}: {exc.strerror}") from exc
    versions = [
        n.removeprefix("vmlinuz-") for n in names
        # dpkg's half-unpacked files (vmlinuz-V.dpkg-new) are not a kernel that boots.
        if n.startswith("vmlinuz-") and n != "vmlinuz-" and ".dpkg-" not in n
    ]
    return sorted(versions, key=version_key)


def find_next_boot(etc_dir: Path = DEFAULT_ETC, boot_dir: Path = DEFAULT_BOOT) -> NextBoot:
    """The images of the newest installed kernel, booted the way update.conf says."""
    conf = read_update_conf(etc_dir)
    if conf.boot == "uki" and not conf.uki:
        raise MeasurementError(
            f"SEALER_BOOT=uki in {etc_dir / 'update.conf'} but SEALER_UKI is not set",
            "set SEALER_UKI to the UKI's path, %v standing for the kernel version, or give "
            "--uki",
        )
    versions = installed_versions(boot_dir)
    if not versions:
        raise MeasurementError(
            f"no kernel is installed in {boot_dir} (no vmlinuz-VERSION)",
            "give the next boot's image with --uki or --kernel",
        )
    newest = versions[-1]
    if conf.boot == "uki":
        return NextBoot(uki=Path(conf.uki.replace("%v", newest)))
    grub_cfg = boot_dir / "grub" / "grub.cfg"  # used only if this boot went through GRUB
    return NextBoot(
        kernel=boot_dir / f"vmlinuz-{newest}",
        initrd=boot_dir / f"initrd.img-{newest}",
        grub_cfg=grub_cfg if grub_cfg.is_file() else None,
    )


# --- will it unlock ---------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Whether the next boot, with the images found or given, would unlock, and the reason."""

    image: str | None  # "UKI /path" or "kernel /boot/vmlinuz-V"; None: no image was found
    initrd: str | None
    unlocks: bool | None  # None: cannot tell (see reason)
    approval: int | None  # the approval that matches the prediction (even a revoked one)
    reason: str
    unpredictable: Mapping[int, str] = field(default_factory=dict)  # bound PCR -> why

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "initrd": self.initrd,
            "unlocks": self.unlocks,
            "approval": self.approval,
            "reason": self.reason,
            "unpredictable": {str(p): why for p, why in sorted(self.unpredictable.items())},
        }


def _image_of(boot: NextBoot) -> str:
    if boot.uki is not None:
        return f"UKI {boot.uki}"
    return f"kernel {boot.kernel}" if boot.kernel is not None else boot.describe()


def _reseal_command(boot: NextBoot, device: str, log_path: Path | None, offline: bool) -> str:
    """The reseal that approves ``boot``, predicting from the same log as this answer."""
    if boot.uki is not None:
        args = ["--uki", str(boot.uki)]
    else:
        args = ["--kernel", str(boot.kernel)] if boot.kernel is not None else []
        args += ["--initrd", str(boot.initrd)] if boot.initrd is not None else []
        args += ["--grub-cfg", str(boot.grub_cfg)] if boot.grub_cfg is not None else []
    args += ["--eventlog", str(log_path)] if log_path is not None else []
    args += ["--offline"] if offline else []
    return shlex.join(["sealer", "reseal", *args, device])


@dataclass(frozen=True)
class NextBootRequest:
    """The next boot's images (or where to find them) and how to read this boot's state."""

    boot: NextBoot | None  # the images given; None: find them from etc_dir and boot_dir
    etc_dir: Path
    boot_dir: Path
    log_path: Path | None
    offline: bool
    tcti: str | None


class NextBootCheck:
    """Answers for each enrollment; the image is found once, and each prediction (hashing a
    UKI of tens of MiB) is made once per bank and live PCR values, not once per volume."""

    def __init__(self, request: NextBootRequest) -> None:
        self.request = request
        self._boot: NextBoot | SealerError | None = request.boot
        self._predictions: dict[tuple[Any, ...], Prediction | SealerError] = {}

    def next_boot(self) -> NextBoot:
        if self._boot is None:
            try:
                self._boot = find_next_boot(self.request.etc_dir, self.request.boot_dir)
            except SealerError as exc:
                self._boot = exc
        if isinstance(self._boot, SealerError):
            raise self._boot
        return self._boot

    def __call__(self, device: str, enrollment: Enrollment) -> dict[str, Any]:
        try:
            boot = self.next_boot()
        except SealerError as exc:
            return Verdict(None, None, None, None, exc.one_line()).to_json()
        initrd = None if boot.initrd is None else str(boot.initrd)
        try:
            verdict = self._check(device, enrollment, boot)
        except SealerError as exc:
            verdict = Verdict(_image_of(boot), initrd, None, None, exc.one_line())
        return verdict.to_json()

    def _predict(self, state: BootState, boot: NextBoot) -> Prediction:
        key = (state.bank.name, tuple(sorted((state.live or {}).items())))
        if key not in self._predictions:
            try:
                self._predictions[key] = predict(state.log, state.bank, boot, state.live)
            except SealerError as exc:
                self._predictions[key] = exc
        found = self._predictions[key]
        if isinstance(found, SealerError):
            raise found
        return found

    def _check(self, device: str, enrollment: Enrollment, boot: NextBoot) -> Verdict:
        token = enrollment.token
        approvals = approvals_of(enrollment)
        bank, wanted = pcrs_to_read(enrollment, approvals)
        # The capping PCR is at its reset value when the initramfs unlocks (it is extended
        # only afterwards), and every approval requires it that way: never read or predict it.
        bound = [p for p in wanted if p != token.cap_pcr]
        nv_field = token.revocation
        state = read_boot_state(
            bank, bound, log_path=self.request.log_path, tcti=self.request.tcti,
            offline=self.request.offline,
            revocation=nv_field.locator if nv_field else None,
            retirement_index=enrollment.counter_index,
        )
        prediction = self._predict(state, boot)
        unpredictable = {p: why for p, why in prediction.unpredictable.items() if p in bound}
        cap = {token.cap_pcr: bank.initial_value(token.cap_pcr)}
        # An unpredictable PCR is left out, so no approval that binds it can match.
        predicted = {**{p: prediction.value(p) for p in bound if p not in unpredictable}, **cap}
        reseal = _reseal_command(boot, device, self.request.log_path, self.request.offline)
        judge = _Judge(enrollment, approvals, state, boot, reseal, unpredictable)
        return judge.judge(predicted, {**state.values(bound), **cap})


@dataclass(frozen=True)
class _Judge:
    enrollment: Enrollment
    approvals: list[Approval]
    state: BootState
    boot: NextBoot
    reseal: str  # the command that would approve the next boot
    unpredictable: Mapping[int, str]

    def _verdict(self, unlocks: bool | None, approval: int | None, reason: str) -> Verdict:
        if not self.state.verified:
            reason += " (from the event log alone: live PCRs and revocations not checked)"
        initrd = None if self.boot.initrd is None else str(self.boot.initrd)
        return Verdict(
            _image_of(self.boot), initrd, unlocks, approval, reason, self.unpredictable
        )

    def _holds(self) -> Callable[[Approval], bool]:
        if not self.state.verified:
            return lambda approval: True  # offline the field is unknown; the TPM checks it
        return still_holds(self.enrollment, self.state.revoked_bits, self.state.epoch_counter)

    def judge(self, predicted: Mapping[int, bytes], now: Mapping[int, bytes]) -> Verdict:
        try:
            holds = self._holds()
        except TPMMismatchError as exc:  # the revocation field is gone: the TPM refuses all
            return self._verdict(False, None, exc.message)
        match = find_match(self.approvals, predicted, holds)
        if match is not None:
            return self._verdict(
                True, match.approval_index,
                f"approval {match.approval_index} ({match.approval.comment}) holds the "
                "predicted PCR values",
            )
        revoked = find_match(self.approvals, predicted)
        if revoked is not None and self.state.revoked_bits is not None:
            level = revocation.level_of(self.state.revoked_bits)
            return self._verdict(
                False, revoked.approval_index,
                f"approval {revoked.approval_index} holds the predicted PCR values, but it is "
                f"for release {revoked.approval.release} and releases below {level} are revoked",
            )
        if self.unpredictable:
            why = unpredictable_reason(self.unpredictable)
            return self._verdict(None, None, why)
        if not self.approvals:
            return self._verdict(False, None, "the enrollment has no approved boot state")
        closest = min((a.differing_pcrs(predicted) for a in self.approvals), key=len)
        what = f"PCR {closest[0]} differs" if len(closest) == 1 else (
            f"PCRs {format_pcrs(closest)} differ"
        )
        if find_match(self.approvals, now, holds) is not None:
            todo = f"run '{self.reseal}'"
        else:  # reseal refuses to predict from a boot that is not approved itself
            todo = "this boot is not approved either, so reseal would refuse: run 'sealer explain'"
        return self._verdict(False, None, f"{what} from every approval ({todo})")


def unpredictable_reason(unpredictable: Mapping[int, str]) -> str:
    """Why the bound PCRs cannot be predicted, each reason once (one GRUB difference makes
    PCRs 4, 7, 8 and 9 unpredictable for the same reason)."""
    grouped: dict[str, list[int]] = {}
    for pcr, reason in sorted(unpredictable.items()):
        grouped.setdefault(reason, []).append(pcr)
    return "; ".join(
        f"{'PCR' if len(pcrs) == 1 else 'PCRs'} {format_pcrs(pcrs)} cannot be predicted: "
        f"{reason}"
        for reason, pcrs in grouped.items()
    )


def render_next_boot(doc: Mapping[str, Any]) -> str:
    """The status line of a ``Verdict.to_json()`` document."""
    head = "next boot" if doc["image"] is None else f"next boot ({doc['image']})"
    if doc["unlocks"] is True:
        return f"{head}: unlocks by TPM (approval {doc['approval']})"
    if doc["unlocks"] is False:
        return f"{head}: will ask for the passphrase: {doc['reason']}"
    return f"{head}: unknown: {doc['reason']}"


@dataclass(frozen=True)
class DeviceVerdict:
    """The next boot's verdict for one enrollment of one device (``boot enable`` reports it)."""

    device: str
    token: int | None  # None: the device could not be read
    verdict: Mapping[str, Any]  # Verdict.to_json(), or {unlocks: None, reason} when unread

    @property
    def unlocks(self) -> bool | None:
        found = self.verdict.get("unlocks")
        return found if isinstance(found, bool) else None

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "token": self.token, **self.verdict}


def next_boot_of_devices(devices: Sequence[str], tcti: str | None) -> list[DeviceVerdict]:
    """Whether the next boot, found as the update hook finds it, unlocks each enrollment of
    ``devices``; a device that cannot be read gets a verdict that says why."""
    from sealer.luks import cryptsetup
    from sealer.luks.enrollment import enrollments

    check = NextBootCheck(NextBootRequest(None, DEFAULT_ETC, DEFAULT_BOOT, None, False, tcti))
    found: list[DeviceVerdict] = []
    for device in devices:
        try:
            enrolled = enrollments(cryptsetup.read_header(device))
        except SealerError as exc:
            found.append(DeviceVerdict(device, None, {"unlocks": None,
                                                      "reason": exc.one_line()}))
            continue
        found += [DeviceVerdict(device, e.token_id, check(device, e)) for e in enrolled]
    return found
