"""A wire audit: what each sealer operation sends to the TPM, and that no secret is in it.

An interposer on the LPC/SPI bus sees exactly the bytes swtpm dumps with ``--log level=20``.
``WireAudit`` cuts that log into named operations, counts each one's TPM commands by command
code, and searches every command and response for secrets: each whole, and each 8-byte
window of it, so a secret split over two commands, or a prefix of one, is found too. Control
values (bytes meant to travel in clear, such as a sealed blob or the SRK's name) go through the
same search, which shows the search finds what is there.

``run_lifecycle`` drives the real ``sealer`` command through every operation on a simulated
machine (swtpm booted by replaying a captured event log, LUKS2 image files) and returns the
filled-in audit; ``bench/wire_audit.py`` prints it and ``tests/integration/test_wire.py``
asserts on it.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventlogs
from clirun import run_with_pipes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from luks_image import make_luks_image, opens_with
from simboot import SHA256, SimulatedMachine, boot_of, captured_boot, make_uki
from swtpm import WireLog, log_size

from sealer.boot.pcrcap import CAP_EVENT
from sealer.luks import cryptsetup
from sealer.luks.enrollment import Enrollment, enrollments
from sealer.policy.keys import MACHINE_KEY_FILE
from sealer.services.secrets import pin_auth_value
from sealer.services.tpmguard import LOCKOUT_AUTH_FILE as LOCKOUT_AUTH
from sealer.services.unlock import release

FRAGMENT = 8  # bytes: the window each needle is also searched for
PASSPHRASE = b"correct horse battery staple"
PIN = b"2468"
RETRY = 0x922  # TPM_RC_RETRY

# The operations run_lifecycle records, in order.
ENROLL_FIRST = "enroll --recovery-key (first on this TPM)"
ENROLL_PIN = "enroll --pin --recovery-key"
STATUS = "status"
UNLOCK = "unlock --test"
UNLOCK_PIN = "unlock --test --pin-file"
KEYSCRIPT = "boot: keyscript"
CAP = "boot: cap (init-bottom)"
RESEAL = "reseal --uki"
PRUNE = "prune"
REVOKE = "revoke --below (machine key)"
REMOVE = "remove"
ENROLL_VENDOR = "enroll --trust-vendor-key"
REVOKE_VENDOR = "revoke --statement (vendor)"
OPERATIONS = (
    ENROLL_FIRST, ENROLL_PIN, STATUS, UNLOCK, UNLOCK_PIN, KEYSCRIPT, CAP, RESEAL, PRUNE,
    REVOKE, REMOVE, ENROLL_VENDOR, REVOKE_VENDOR,
)


@dataclass(frozen=True)
class Finding:
    """A needle (or an 8-byte window of it) seen in one command or response."""

    operation: str
    needle: str
    command: str
    direction: str  # "command" or "response"
    whole: bool
    offset: int  # of the first window found, in the needle
    fragments: int  # distinct windows found

    def __str__(self) -> str:
        if self.whole:
            what = f"{self.needle} (whole)"
        else:
            what = f"{self.needle}[{self.offset}:{self.offset + FRAGMENT}]"
            if self.fragments > 1:
                what += f" (+{self.fragments - 1} more {FRAGMENT}-byte fragments)"
        return f"{self.operation}: {what} in {self.command} {self.direction}"


def _windows(needles: Mapping[str, bytes]) -> dict[bytes, tuple[str, int]]:
    """Every 8-byte window of every needle of 8 bytes or more -> (needle, offset)."""
    windows: dict[bytes, tuple[str, int]] = {}
    for name, value in needles.items():
        for offset in range(len(value) - FRAGMENT + 1):
            window = value[offset : offset + FRAGMENT]
            if len(set(window)) >= 3:  # runs like 8 zero bytes match anything; none here
                windows.setdefault(window, (name, offset))
    return windows


def search(operation: str, wire: WireLog, needles: Mapping[str, bytes]) -> list[Finding]:
    """Where each needle, whole or in 8-byte windows, appears in ``wire``."""
    windows = _windows(needles)
    findings = []
    for exchange in wire.exchanges:
        for direction, data in (("command", exchange.command), ("response", exchange.response)):
            hits: dict[str, set[int]] = {}
            for i in range(len(data) - FRAGMENT + 1):
                hit = windows.get(data[i : i + FRAGMENT])
                if hit is not None:
                    hits.setdefault(hit[0], set()).add(hit[1])
            for name, value in needles.items():
                whole = bool(value) and value in data
                if whole or name in hits:
                    offsets = hits.get(name, {0})
                    findings.append(
                        Finding(
                            operation, name, exchange.name, direction, whole,
                            min(offsets), len(offsets),
                        )
                    )
    # One finding per (needle, command, direction): a command sent twice is one finding.
    unique: dict[tuple[str, str, str], Finding] = {}
    for finding in findings:
        unique.setdefault((finding.needle, finding.command, finding.direction), finding)
    return list(unique.values())


@dataclass
class WireAudit:
    """Named slices of one swtpm wire log, and the needles (secrets) and controls to look for."""

    log_file: Path
    needles: dict[str, bytes] = field(default_factory=dict)
    controls: dict[str, bytes] = field(default_factory=dict)
    operations: dict[str, WireLog] = field(default_factory=dict)

    @contextmanager
    def operation(self, name: str) -> Iterator[None]:
        """Record the TPM traffic of the block as operation ``name``."""
        start = log_size(self.log_file)
        yield
        wire = WireLog.read(self.log_file, start)
        if name in self.operations:  # the same operation again: add it up
            wire = WireLog(self.operations[name].exchanges + wire.exchanges)
        self.operations[name] = wire

    def _selected(self, operation: str | None) -> dict[str, WireLog]:
        if operation is None:
            return self.operations
        return {operation: self.operations[operation]}

    def findings(
        self, needles: Mapping[str, bytes] | None = None, operation: str | None = None
    ) -> list[Finding]:
        chosen = self.needles if needles is None else needles
        return [
            finding
            for name, wire in self._selected(operation).items()
            for finding in search(name, wire, chosen)
        ]

    def secrets_found(
        self, needles: Mapping[str, bytes] | None = None, operation: str | None = None
    ) -> list[str]:
        """Each needle seen in clear (default: all of ``self.needles``, every operation)."""
        return [str(f) for f in self.findings(needles, operation)]

    def controls_found(self, operation: str) -> list[str]:
        """The control values seen in ``operation``'s traffic, by name."""
        return sorted({f.needle for f in self.findings(self.controls, operation)})

    def whole_log(self) -> WireLog:
        """All of the log: the operations, and what ran between them (boots, set-up)."""
        return WireLog.read(self.log_file)

    def fragments_checked(self) -> int:
        return len(_windows(self.needles))

    def rows(self) -> list[dict[str, Any]]:
        """One record per operation, in the order they ran (for JSON)."""
        rows = []
        for name, wire in self.operations.items():
            failed: Counter[str] = Counter(
                f"{e.name} rc=0x{e.rc:x}" for e in wire.exchanges if e.rc != 0
            )
            succeeded = wire.counts(succeeded_only=True)
            rows.append(
                {
                    "operation": name,
                    "succeeded": sum(succeeded.values()),
                    "total": len(wire.exchanges),
                    "distinct_codes": len({e.code for e in wire.exchanges}),
                    "succeeded_by_code": dict(sorted(succeeded.items())),
                    "failed": dict(sorted(failed.items())),
                    "secrets_found": self.secrets_found(operation=name),
                    "needles_checked": len(self.needles),
                    "fragments_checked": self.fragments_checked(),
                    "controls_found": self.controls_found(name),
                }
            )
        return rows

    def table(self) -> str:
        """A Markdown table: commands, distinct codes, secrets in clear, needles, controls."""
        lines = [
            "| operation | TPM commands (succeeded/total) | distinct command codes "
            "| secrets in clear (must be 0) | needles checked | in-clear controls found |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows():
            lines.append(
                f"| {row['operation']} | {row['succeeded']}/{row['total']} "
                f"| {row['distinct_codes']} | {len(row['secrets_found'])} "
                f"| {row['needles_checked']} (+{row['fragments_checked']} fragments) "
                f"| {', '.join(row['controls_found']) or '-'} |"
            )
        return "\n".join(lines)

    def code_table(self) -> str:
        """A Markdown table: each operation's successful commands by code, and the failed."""
        lines = ["| operation | succeeded, by command code | failed |", "|---|---|---|"]
        for row in self.rows():
            codes = ", ".join(f"{n} {c}" for n, c in row["succeeded_by_code"].items())
            failed = ", ".join(f"{n} x{c}" for n, c in row["failed"].items())
            lines.append(f"| {row['operation']} | {codes or '-'} | {failed or '-'} |")
        return "\n".join(lines)


# The lifecycle: every operation, driven as a user would, on simulated machines.


class LifecycleError(RuntimeError):
    pass


class Machine(SimulatedMachine):
    """One swtpm whose wire goes to ``log_file``, booted by replaying event-log extends."""

    def __init__(self, directory: Path, log_file: Path) -> None:
        super().__init__(directory, log_file=log_file)
        self.directory = directory
        self.state_dir = directory / "state"

    def sealer(
        self, *args: str, stdin: bytes = b"", fds: Sequence[bytes] = (), expect: int = 0
    ) -> str:
        """Run ``sealer`` against this TPM; each of ``fds`` is a pipe named "{fd0}", ...."""
        argv = [sys.executable, "-m", "sealer", "--tcti", self.tcti]
        return self._run(argv, args, stdin, fds, expect, None).decode()

    def module(self, module: str, expect: int = 0, **env: str) -> bytes:
        """Run a boot-time program (``python -m module``) as the initramfs would."""
        environment = dict(
            os.environ,
            SEALER_TCTI=self.tcti,
            SEALER_CAP_RECORD=str(self.directory / "run" / "cap-pcrs"),
            **env,
        )
        return self._run([sys.executable, "-m", module], (), b"", (), expect, environment)

    def _run(
        self,
        argv: list[str],
        args: Sequence[str],
        stdin: bytes,
        fds: Sequence[bytes],
        expect: int,
        env: dict[str, str] | None,
    ) -> bytes:
        proc = run_with_pipes(argv, args, stdin=stdin, fds=fds, env=env)
        if proc.returncode != expect:
            raise LifecycleError(
                f"{' '.join([*argv[2:], *args])}: exit status {proc.returncode}, not {expect}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout


@dataclass
class Volume:
    """An image file, and what its enrollment put in its header."""

    image: Path
    label: str

    def enrollment(self) -> Enrollment:
        [enrollment] = enrollments(cryptsetup.read_header(str(self.image)))
        return enrollment

    def add_controls(self, audit: WireAudit, machine: str) -> None:
        """Bytes of the enrollment that travel in clear: the sealed object's private blob
        (encrypted by the TPM under the SRK), the SRK's name, the revocation field's and the
        retirement counter's."""
        token = self.enrollment().token
        audit.controls[f"sealed blob {self.label}"] = token.sealed_private
        audit.controls[f"SRK name ({machine})"] = token.srk_name
        if token.revocation is not None:
            audit.controls[f"revocation field name ({machine})"] = token.revocation.nv_name
        if token.retirement is not None:  # remove reads it back (NV_ReadPublic) to free it
            audit.controls[f"retirement counter name ({self.label})"] = token.retirement.nv_name


def _released(volume: Volume, tcti: str, pin: bytes = b"") -> bytes:
    """The keyslot passphrase, unsealed in process (outside every recorded operation)."""
    key, _ = release(volume.enrollment(), tcti, lambda: pin)
    return bytes(key)


def _add_secret(audit: WireAudit, volume: Volume, key: bytes) -> None:
    """The keyslot passphrase (checked: it opens the volume) and the sealed secret under it."""
    if not opens_with(volume.image, key):
        raise LifecycleError(f"the key released for {volume.label} does not open its image")
    audit.needles[f"sealed secret {volume.label}"] = base64.b64decode(key, validate=True)
    audit.needles[f"keyslot passphrase {volume.label} (base64)"] = key


def _key_scalar(pem_file: Path) -> bytes:
    key = serialization.load_pem_private_key(pem_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise LifecycleError(f"{pem_file} is not an ECC private key")
    return key.private_numbers().private_value.to_bytes(32, "big")


def run_lifecycle(directory: Path) -> WireAudit:
    """Every operation once, on two simulated machines; the audit, needles and controls set.

    Machine 1 (its own policy key is the revocation authority), captured boot: enroll A
    (first enrollment on this TPM: SRK and revocation field made; --recovery-key), enroll B
    (--pin, --recovery-key), status, unlock A, unlock B with its PIN, the keyscript for A,
    the cap; reboot; reseal A for a new UKI; boot that UKI; prune, revoke, remove.
    Machine 2 trusts a vendor key: enroll C, then the vendor's signed revocation statement.
    """
    log_file = directory / "wire.log"
    audit = WireAudit(log_file)
    audit.needles["LUKS passphrase"] = PASSPHRASE
    audit.needles["PIN"] = PIN
    audit.controls["cap event digest"] = SHA256.hash(CAP_EVENT)
    log = str(eventlogs.UKI_BOOT_LOG)
    a = Volume(make_luks_image(directory / "a.img", PASSPHRASE), "A")
    b = Volume(make_luks_image(directory / "b.img", PASSPHRASE), "B")
    c = Volume(make_luks_image(directory / "c.img", PASSPHRASE), "C")

    one = Machine(directory / "machine", log_file)
    try:
        one.boot(captured_boot())
        state = str(one.state_dir)
        enroll = ("enroll", "--unlock-key-file", "-", "--state-dir", state, "--json",
                  "--pcrs", "4,11", "--eventlog", log, "--recovery-key")
        with audit.operation(ENROLL_FIRST):
            out = one.sealer(*enroll, str(a.image), stdin=PASSPHRASE)
        audit.needles["recovery key A"] = json.loads(out)["recovery_key"].encode()
        with audit.operation(ENROLL_PIN):
            out = one.sealer(
                *enroll, "--pin-file", "{fd0}", str(b.image), stdin=PASSPHRASE, fds=[PIN]
            )
        audit.needles["recovery key B"] = json.loads(out)["recovery_key"].encode()
        salt = b.enrollment().token.pin_salt
        assert salt is not None
        audit.needles["PIN auth value B"] = pin_auth_value(PIN, salt)
        with audit.operation(STATUS):
            one.sealer("status", "--json", str(a.image))
        with audit.operation(UNLOCK):
            one.sealer("unlock", "--test", str(a.image))
        with audit.operation(UNLOCK_PIN):
            one.sealer("unlock", "--test", "--pin-file", "-", str(b.image), stdin=PIN)
        _add_secret(audit, b, _released(b, one.tcti, PIN))
        with audit.operation(KEYSCRIPT):
            key = one.module(
                "sealer.boot.keyscript", CRYPTTAB_SOURCE=str(a.image), CRYPTTAB_NAME="cryptroot"
            )
        _add_secret(audit, a, key)
        with audit.operation(CAP):
            one.module("sealer.boot.cap_or_poweroff")
        one.sealer("unlock", "--test", str(a.image), expect=5)  # capped: refused before Load

        one.boot(captured_boot())
        uki, contents = make_uki(directory / "v2", initrd=b"new initramfs", cmdline=b"quiet")
        with audit.operation(RESEAL):
            one.sealer("reseal", "--eventlog", log, "--state-dir", state, "--uki", str(uki),
                       str(a.image))
        one.boot(boot_of(uki, contents))
        one.sealer("unlock", "--test", str(a.image))  # the update was approved ahead
        with audit.operation(PRUNE):
            one.sealer("prune", "--state-dir", state, str(a.image))
        with audit.operation(REVOKE):
            one.sealer("revoke", "--below", "1", "--state-dir", state, str(a.image))
        one.sealer("unlock", "--test", str(a.image), expect=5)  # revoked
        for volume in (a, b):
            volume.add_controls(audit, "machine 1")
        with audit.operation(REMOVE):
            one.sealer("remove", str(a.image))
        one.sealer("tpm", "clear-lockout", "--state-dir", state)  # in the whole log's search
        audit.needles["policy key scalar (machine 1)"] = _key_scalar(
            one.state_dir / MACHINE_KEY_FILE
        )
        # Set by the first enrollment (HierarchyChangeAuth), used by clear-lockout.
        audit.needles["TPM lockout auth (machine 1)"] = (one.state_dir / LOCKOUT_AUTH).read_bytes()
    finally:
        one.stop()

    two = Machine(directory / "fleet", log_file)  # after machine 1 stopped: one log writer
    try:
        two.boot(captured_boot())
        vendor = directory / "vendor.pem"
        two.sealer("policy", "keygen", "--out", str(vendor))
        with audit.operation(ENROLL_VENDOR):
            two.sealer(
                "enroll", "--unlock-key-file", "-", "--state-dir", str(two.state_dir),
                "--quiet", "--pcrs", "4,11", "--trust-vendor-key",
                str(directory / "vendor.pub.pem"), str(c.image), stdin=PASSPHRASE,
            )
        _add_secret(audit, c, _released(c, two.tcti))
        c.add_controls(audit, "machine 2")
        statement = directory / "below-1.revocation"
        two.sealer("policy", "revoke", "--key", str(vendor), "--below", "1",
                   "--out", str(statement))
        with audit.operation(REVOKE_VENDOR):
            two.sealer("revoke", "--statement", str(statement), str(c.image))
        two.sealer("unlock", "--test", str(c.image), expect=5)
        audit.needles["policy key scalar (machine 2)"] = _key_scalar(
            two.state_dir / MACHINE_KEY_FILE
        )
        audit.needles["TPM lockout auth (machine 2)"] = (two.state_dir / LOCKOUT_AUTH).read_bytes()
        audit.needles["vendor key scalar"] = _key_scalar(vendor)
    finally:
        two.stop()
    return audit
