"""An operation stopped before any of its durable writes loses nothing.

Each operation is run once to list the writes it makes (LUKS2 header, TPM persistent objects
and NV, state directory: ``sealer.host.checkpoint``), then once per write on a fresh machine (its
own swtpm and LUKS2 image), ended abruptly just before that write (swtpm-fixtures/
faultinject.py). After every stop:

- the volume still opens with its passphrase and with a recovery key its owner holds;
- ``sealer status`` tells the truth: every keyslot it calls a passphrase or recovery key
  opens with a key somebody holds, an enrollment it says would unlock does unlock, and an
  interrupted enrollment is named as one;
- running the same command again completes the operation, leaving no stray keyslot.

With --escrow-cert the owner is the organisation: the recovery keys it holds are those in the
escrow records that exist, decrypted with its private key (by openssl cms, not by sealer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import eventlogs
import pytest
from bootimage import STUB
from conftest import PASSPHRASE, ROOT, Result, SealerCli
from escrow_certs import OrgKeys, decrypt_record, org_pair
from faultinject import KILLED
from luks_image import make_luks_image, opens_with
from simboot import SimulatedMachine, captured_boot, make_uki
from swtpm import Swtpm

from sealer.luks import cryptsetup
from sealer.policy import keys
from sealer.tpm.policykey import policy_key_name

INJECTOR = ROOT / "swtpm-fixtures" / "faultinject.py"
ANONYMOUS = "passphrase or recovery key"
MACHINE_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class Machine:
    """One machine for one fault point: a TPM, a LUKS2 image, and the keys its owner holds."""

    directory: Path
    image: Path
    sealer: SealerCli
    held: list[bytes] = field(default_factory=lambda: [PASSPHRASE])
    org: OrgKeys | None = None  # the organisation's escrow certificate and private key

    @property
    def escrow_dir(self) -> Path:
        return self.sealer.state_dir / "escrow"  # enroll's default; rotate is given it

    def run_stopped(self, stop_at: int, args: list[str], stdin: bytes = b"") -> Result:
        """Run sealer, ended just before its ``stop_at``-th write (0: never)."""
        record = self.directory / "writes.txt"
        argv = [sys.executable, str(INJECTOR), str(stop_at), str(record), "--tcti"]
        argv += [self.sealer.tcti, *args]
        # The injector runs as a script: this checkout's sealer first, not the one an
        # editable install of the virtualenv may point at (another worktree's).
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, env=env)
        return Result(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode())

    def writes(self) -> list[str]:
        record = self.directory / "writes.txt"
        return record.read_text().splitlines() if record.exists() else []

    def status(self) -> dict[str, Any]:
        result = self.sealer("status", "--json", "--escrow-dir", str(self.escrow_dir),
                             str(self.image))
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert isinstance(report, dict)
        return report

    def enroll(self) -> None:
        """Enroll with a recovery key, which the owner then holds."""
        result = self.sealer.enroll(self.image, "--recovery-key", "--json")
        assert result.returncode == 0, result.stderr
        self.held.append(json.loads(result.stdout)["recovery_key"].encode())

    def enroll_escrowed(self) -> None:
        """Enroll with a recovery key escrowed to the organisation, which then holds it."""
        result = self.sealer.enroll(self.image, "--recovery-key", "--json",
                                    *_escrow_args(self))
        assert result.returncode == 0, result.stderr
        self.held.append(self.escrowed(Path(json.loads(result.stdout)["escrow_record"])))

    def escrowed(self, record: Path) -> bytes:
        assert self.org is not None
        return decrypt_record(record, self.org)

    def escrowed_keys(self) -> list[bytes]:
        """The keys in every escrow record there is (the organisation holds them all)."""
        records = sorted(self.escrow_dir.glob("*.json")) if self.escrow_dir.is_dir() else []
        return [self.escrowed(record) for record in records]


def _escrow_args(machine: Machine) -> list[str]:
    assert machine.org is not None
    return ["--escrow-cert", str(machine.org.cert), "--machine-id", MACHINE_ID]


def _completed_enrollment(machine: Machine, rerun: Result, report: dict[str, Any]) -> None:
    """One complete enrollment that unlocks, one recovery key (the new one), nothing else."""
    [enrollment] = report["enrollments"]
    assert enrollment["complete"] and enrollment["unlocks_now"]
    doc = json.loads(rerun.stdout)
    if doc["escrow_record"] is None:
        key = doc["recovery_key"].encode()
        escrowed = None  # no escrow directory
    else:  # escrowed, and not printed
        assert doc["recovery_key"] is None
        key = machine.escrowed(Path(doc["escrow_record"]))
        escrowed = True
    recovery_slot = enrollment["recovery"]["keyslot"]
    assert enrollment["recovery"] == {"keyslot": recovery_slot, "pending": None, "retired": None,
                                      "escrowed": escrowed}
    assert cryptsetup.test_key(str(machine.image), key, recovery_slot)
    for old in machine.held[1:]:  # a rotation leaves exactly one recovery key working
        assert not opens_with(machine.image, old)
    # The passphrase, the TPM and one recovery key: nothing an interruption added is left.
    assert len(report["keyslots"]) == 3


def _completed_removal(machine: Machine, rerun: Result, report: dict[str, Any]) -> None:
    assert report["enrollments"] == [] and "token_error" not in report
    assert len(report["keyslots"]) == 2  # the passphrase and the recovery key


def _completed_revocation(machine: Machine, rerun: Result, report: dict[str, Any]) -> None:
    [enrollment] = report["enrollments"]
    assert enrollment["revocation"]["revoked_below"] == 1 and not enrollment["unlocks_now"]


def _completed_rotation(machine: Machine, rerun: Result, report: dict[str, Any]) -> None:
    """One enrollment, under the key now in the state directory; the recovery key kept."""
    [enrollment] = report["enrollments"]
    assert enrollment["complete"] and enrollment["unlocks_now"]
    key = keys.load_machine_key(machine.sealer.state_dir)
    assert key is not None
    machine_name = policy_key_name(keys.public_pem(key)).hex()
    assert [k["name"] for k in enrollment["policy_keys"]] == [machine_name]
    recovery_slot = enrollment["recovery"]["keyslot"]
    assert cryptsetup.test_key(str(machine.image), machine.held[1], recovery_slot)
    assert len(report["keyslots"]) == 3  # the passphrase, the TPM and the recovery key
    assert not (machine.sealer.state_dir / "policy-key.next.pem").exists()


@dataclass(frozen=True)
class Operation:
    name: str
    args: Callable[[Machine], list[str]]
    completed: Callable[[Machine, Result, dict[str, Any]], None]
    prepare: Callable[[Machine], None] = lambda machine: None
    stdin: bytes = b""


def _enroll_args(machine: Machine) -> list[str]:
    return ["enroll", "--unlock-key-file", "-", "--state-dir", str(machine.sealer.state_dir),
            "--recovery-key", "--json", "--quiet", str(machine.image)]


def _escrowed_enroll_args(machine: Machine) -> list[str]:
    return [*_enroll_args(machine)[:-1], *_escrow_args(machine), str(machine.image)]


def _escrowed_rotate_args(machine: Machine) -> list[str]:
    return ["recovery", "rotate", "--json", *_escrow_args(machine), "--escrow-dir",
            str(machine.escrow_dir), str(machine.image)]


OPERATIONS = [
    Operation("enroll", _enroll_args, _completed_enrollment, stdin=PASSPHRASE),
    Operation(
        "enroll --escrow-cert", _escrowed_enroll_args, _completed_enrollment, stdin=PASSPHRASE
    ),
    Operation(
        "recovery rotate", lambda m: ["recovery", "rotate", "--json", str(m.image)],
        _completed_enrollment, prepare=Machine.enroll,
    ),
    Operation(
        "recovery rotate --escrow-cert", _escrowed_rotate_args, _completed_enrollment,
        prepare=Machine.enroll_escrowed,
    ),
    Operation(
        "remove", lambda m: ["remove", "--json", str(m.image)], _completed_removal,
        prepare=Machine.enroll,
    ),
    Operation(
        "key rotate",
        lambda m: ["key", "rotate", "--unlock-key-file", "-", "--state-dir",
                   str(m.sealer.state_dir), "--json", str(m.image)],
        _completed_rotation, prepare=Machine.enroll, stdin=PASSPHRASE,
    ),
    Operation(
        "revoke",
        lambda m: ["revoke", "--below", "1", "--state-dir", str(m.sealer.state_dir), str(m.image)],
        _completed_revocation, prepare=Machine.enroll,
    ),
]


@pytest.fixture(scope="module")
def blank_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_luks_image(tmp_path_factory.mktemp("template") / "volume.img", PASSPHRASE)


def _machine(directory: Path, blank_image: Path, swtpm: Swtpm) -> Machine:
    image = directory / "volume.img"
    shutil.copyfile(blank_image, image)
    sealer = SealerCli(tcti=swtpm.tcti, state_dir=directory / "state")
    return Machine(directory, image, sealer, org=org_pair(directory / "org"))


def _keys_printed(result: Result) -> list[bytes]:
    """Recovery keys the stopped run managed to print (handed over: the owner has them)."""
    try:
        doc = json.loads(result.stdout)
    except json.JSONDecodeError:
        return []
    key = doc.get("recovery_key") if isinstance(doc, dict) else None
    return [key.encode()] if isinstance(key, str) else []


def _check_truthful(machine: Machine) -> dict[str, Any]:
    report = machine.status()
    for slot in report["keyslots"]:
        if slot["used_by"] == ANONYMOUS:  # status says a person holds this one's key
            assert any(
                cryptsetup.test_key(str(machine.image), key, slot["slot"]) for key in machine.held
            ), f"status calls keyslot {slot['slot']} a passphrase, but no held key opens it"
    for entry in report["enrollments"]:
        if not entry["complete"]:
            assert "interrupted" in entry["interrupted"]
            continue
        unlocked = machine.sealer("unlock", "--test", "--token", str(entry["token"]),
                                  str(machine.image))
        assert entry["unlocks_now"] == (unlocked.returncode == 0), unlocked.stderr
    return report


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
def test_every_write_can_be_interrupted(
    op: Operation, blank_image: Path, tmp_path: Path
) -> None:
    with Swtpm(tmp_path / "listing" / "tpm") as tpm:
        machine = _machine(tmp_path / "listing", blank_image, tpm)
        op.prepare(machine)
        listed = machine.run_stopped(0, op.args(machine), op.stdin)
        assert listed.returncode == 0, listed.stderr
        writes = machine.writes()
    assert writes, "the operation announced no write"
    for stop_at, what in enumerate(writes, start=1):
        directory = tmp_path / f"stop-{stop_at}"
        with Swtpm(directory / "tpm") as tpm:
            machine = _machine(directory, blank_image, tpm)
            op.prepare(machine)
            (directory / "writes.txt").unlink(missing_ok=True)
            stopped = machine.run_stopped(stop_at, op.args(machine), op.stdin)
            context = f"{op.name} stopped before write {stop_at} ({what})"
            assert stopped.returncode == KILLED, f"{context}: {stopped.stderr}"
            assert machine.writes()[-1] == what, context  # the same path as the listing run
            machine.held += _keys_printed(stopped)
            machine.held += [k for k in machine.escrowed_keys() if k not in machine.held]
            assert opens_with(machine.image, PASSPHRASE), context
            if len(machine.held) > 1:
                assert any(opens_with(machine.image, k) for k in machine.held[1:]), context
            _check_truthful(machine)
            rerun = machine.sealer(*op.args(machine), stdin=op.stdin)
            assert rerun.returncode == 0, f"{context}, then run again: {rerun.stderr}"
            op.completed(machine, rerun, _check_truthful(machine))


def test_a_keyslot_added_by_hand_after_an_interruption_is_never_removed(
    blank_image: Path, tmp_path: Path
) -> None:
    with Swtpm(tmp_path / "listing" / "tpm") as tpm:
        listing = _machine(tmp_path / "listing", blank_image, tpm)
        assert listing.run_stopped(0, _enroll_args(listing), PASSPHRASE).returncode == 0
    # Stop just before the TPM keyslot is added: the token names keyslot 1, still free.
    add_tpm_slot = listing.writes().index("luks: add keyslot 1") + 1
    with Swtpm(tmp_path / "tpm") as tpm:
        machine = _machine(tmp_path, blank_image, tpm)
        stopped = machine.run_stopped(add_tpm_slot, _enroll_args(machine), PASSPHRASE)
        assert stopped.returncode == KILLED
        # Somebody adds a passphrase by hand (a slow KDF, as cryptsetup's default): slot 1.
        second = tmp_path / "second-passphrase"  # test data, not a secret
        second.write_bytes(b"second passphrase")
        subprocess.run(
            ["cryptsetup", "luksAddKey", "--batch-mode", "--key-file=-", "--pbkdf", "argon2id",
             "--pbkdf-memory", "8192", "--iter-time", "20", "--new-key-slot", "1",
             str(machine.image), str(second)],
            input=PASSPHRASE, check=True, capture_output=True,
        )
        rerun = machine.sealer(*_enroll_args(machine), stdin=PASSPHRASE)
        assert rerun.returncode == 0, rerun.stderr
        assert cryptsetup.test_key(str(machine.image), b"second passphrase", 1)
        machine.held.append(b"second passphrase")
        report = _check_truthful(machine)
        assert [e["keyslot"] for e in report["enrollments"]] == [2]


@pytest.fixture
def resealed_machine(tmp_path: Path) -> Iterator[SimulatedMachine]:
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    machine = SimulatedMachine(tmp_path / "machine")
    yield machine
    machine.stop()


def test_an_interrupted_reseal_keeps_the_old_approvals(
    resealed_machine: SimulatedMachine, blank_image: Path, tmp_path: Path
) -> None:
    """reseal's only write is one token replacement: before it, nothing changed."""
    resealed_machine.boot(captured_boot())
    machine = Machine(tmp_path, tmp_path / "volume.img",
                      SealerCli(resealed_machine.tcti, tmp_path / "state"))
    shutil.copyfile(blank_image, machine.image)
    enrolled = machine.sealer.enroll(machine.image, "--pcrs", "4,11", "--eventlog",
                                     str(eventlogs.UKI_BOOT_LOG))
    assert enrolled.returncode == 0, enrolled.stderr
    uki, _ = make_uki(tmp_path / "v2", initrd=b"new initramfs", cmdline=b"quiet")
    args = [
        "reseal", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--state-dir",
        str(machine.sealer.state_dir), "--json", "--uki", str(uki), str(machine.image),
    ]
    before = cryptsetup.read_header(str(machine.image)).tokens
    stopped = machine.run_stopped(1, args)
    assert stopped.returncode == KILLED and machine.writes() == ["luks: replace token 0"]
    assert cryptsetup.read_header(str(machine.image)).tokens == before
    [approval] = _check_truthful(machine)["enrollments"][0]["approvals"]
    assert approval["matches"]
    rerun = machine.sealer(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert len(_check_truthful(machine)["enrollments"][0]["approvals"]) == 1
    assert json.loads(rerun.stdout)[0]["approved_states"][1]["label"].startswith("next boot")
