"""Vendor-signed approvals and rollback revocation, against swtpm and a real LUKS2 header.

The build machine is this test with no TPM: it signs approvals from the captured event log
(the "reference log" of the hardware model). The machine is simulated on swtpm from that
captured boot (swtpm-fixtures/simboot.py); each boot of a new UKI is built by hand.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import eventlogs
import pytest
from bootimage import STUB
from conftest import SealerCli
from simboot import SHA256, SimulatedMachine, boot_of, captured_boot, make_uki

from sealer.errors import PolicyMismatchError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import enrollments
from sealer.services.matching import approvals_of, authorized_policy, find_match
from sealer.services.unlock import release_key
from sealer.tpm.bare import open_tpm
from sealer.tpm.connection import connect
from sealer.tpm.pcr import read_pcrs
from sealer.tpm.release import SealedBlob, handles_of, unseal

EXIT_POLICY, EXIT_TOKEN, EXIT_REFUSED = 5, 9, 12
LOG = str(eventlogs.UKI_BOOT_LOG)


class Fleet:
    """A vendor (keys, signed files) and one machine that trusts it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.machine = SimulatedMachine(directory)
        self.sealer = SealerCli(tcti=self.machine.tcti, state_dir=directory / "state")
        self.vendor_key = directory / "vendor.pem"

    def boot(self, extended: list[tuple[int, bytes]]) -> None:
        self.machine.boot(extended)
        self.sealer.tcti = self.machine.tcti

    def run(self, *args: str) -> tuple[int, str, str]:
        result = self.sealer(*args)
        return result.returncode, result.stdout, result.stderr

    def sign(self, uki: Path, release: int, key: Path | None = None, pcrs: str = "4,11") -> Path:
        out = self.directory / f"{uki.parent.name}-{release}.approval"
        code, _, err = self.run(
            "policy", "sign", "--key", str(key or self.vendor_key), "--uki", str(uki),
            "--eventlog", LOG, "--release", str(release), "--pcrs", pcrs, "--out", str(out),
        )
        assert code == 0, err
        return out

    def unlocks(self, image: Path) -> tuple[int, str]:
        result = self.sealer("unlock", "--test", str(image))
        return result.returncode, result.stderr


@pytest.fixture
def fleet(tmp_path: Path, luks_image: Path) -> Iterator[Fleet]:
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    fleet = Fleet(tmp_path)
    code, _, err = fleet.run("policy", "keygen", "--out", str(fleet.vendor_key))
    assert code == 0, err
    fleet.boot(captured_boot())
    enrolled = fleet.sealer.enroll(
        luks_image, "--pcrs", "4,11", "--trust-vendor-key", str(tmp_path / "vendor.pub.pem")
    )
    assert enrolled.returncode == 0, enrolled.stderr
    yield fleet
    fleet.machine.stop()


def test_keygen_writes_a_private_key_only_its_owner_reads(fleet: Fleet) -> None:
    assert stat.S_IMODE(fleet.vendor_key.stat().st_mode) == 0o600
    assert fleet.vendor_key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    code, _, err = fleet.run("policy", "keygen", "--out", str(fleet.vendor_key))
    assert code == 2 and "exists already" in err


def test_a_vendor_approval_unlocks_a_release_never_resealed_on_the_machine(
    fleet: Fleet, luks_image: Path, tmp_path: Path
) -> None:
    uki, contents = make_uki(tmp_path / "v2", initrd=b"release 2 initramfs", cmdline=b"quiet")
    approval = fleet.sign(uki, 2)
    code, shown, err = fleet.run("policy", "show", "--json", str(approval))
    assert code == 0, err
    summary = json.loads(shown)
    assert summary["release"] == 2 and summary["signature"] == "valid"
    assert sorted(summary["boot_states"][0]) == ["11", "15", "4"]

    fleet.boot(boot_of(uki, contents))
    assert fleet.unlocks(luks_image)[0] == EXIT_POLICY  # not installed yet
    before = luks_image.read_bytes()
    code, out, err = fleet.run("policy", "install", str(approval), str(luks_image))
    assert code == 0, err
    assert "release 2 approved" in out and luks_image.read_bytes() != before
    assert fleet.unlocks(luks_image) == (0, "")


def test_refused_approvals_each_say_why(fleet: Fleet, luks_image: Path, tmp_path: Path) -> None:
    uki, contents = make_uki(tmp_path / "v2", initrd=b"release 2", cmdline=b"ro")
    fleet.boot(boot_of(uki, contents))

    # Signed by a key the enrollment does not trust.
    stranger = tmp_path / "stranger.pem"
    assert fleet.run("policy", "keygen", "--out", str(stranger))[0] == 0
    untrusted = fleet.sign(uki, 2, stranger)
    code, _, err = fleet.run("policy", "install", str(untrusted), str(luks_image))
    assert code == EXIT_REFUSED and "no enrollment" in err and "trusts the key" in err

    # Tampered: one approved PCR value changed after signing.
    approval = fleet.sign(uki, 2)
    doc = json.loads(approval.read_text())
    doc["approval"]["branches"][0]["4"] = "00" * 32
    approval.write_text(json.dumps(doc))
    code, _, err = fleet.run("policy", "install", str(approval), str(luks_image))
    assert code == EXIT_POLICY and "signature does not match its content" in err

    # Signed for other PCR values (another UKI): installs, but this boot is not it.
    other, _ = make_uki(tmp_path / "v3", initrd=b"release 3", cmdline=b"ro")
    assert fleet.run("policy", "install", str(fleet.sign(other, 3)), str(luks_image))[0] == 0
    code, err = fleet.unlocks(luks_image)
    assert code == EXIT_POLICY and "PCRs 4,11 differ from every approved boot state" in err

    # Signed for PCRs the fleet does not enroll.
    code, _, err = fleet.run(
        "policy", "install", str(fleet.sign(uki, 2, pcrs="4")), str(luks_image)
    )
    assert code == EXIT_REFUSED and "binds sha256 PCR 4,11,15" in err
    assert "Traceback" not in err


def test_revoked_releases_stop_unlocking_and_say_so(
    fleet: Fleet, luks_image: Path, tmp_path: Path
) -> None:
    v2, v2_contents = make_uki(tmp_path / "v2", initrd=b"release 2", cmdline=b"ro")
    v3, v3_contents = make_uki(tmp_path / "v3", initrd=b"release 3", cmdline=b"ro quiet")
    for uki, release in ((v2, 2), (v3, 3)):
        approval = fleet.sign(uki, release)
        assert fleet.run("policy", "install", str(approval), str(luks_image))[0] == 0
    fleet.boot(boot_of(v2, v2_contents))
    assert fleet.unlocks(luks_image)[0] == 0

    # The machine cannot revoke on its own: the vendor is the authority.
    code, _, err = fleet.run("revoke", "--below", "3", str(luks_image))
    assert code == 2 and "needs the vendor's signed statement" in err
    statement = tmp_path / "below-3.revocation"
    assert fleet.run(
        "policy", "revoke", "--key", str(fleet.vendor_key), "--below", "3", "--out", str(statement)
    )[0] == 0
    # A statement whose bits were changed after signing is refused before the TPM sees it.
    doc = json.loads(statement.read_text())
    tampered = tmp_path / "tampered.revocation"
    tampered.write_text(json.dumps({**doc, "bits": "0x" + "f" * 16}))
    code, _, err = fleet.run("revoke", "--statement", str(tampered), str(luks_image))
    assert code == EXIT_POLICY and "statement's signature does not match" in err

    code, out, err = fleet.run("revoke", "--statement", str(statement), str(luks_image))
    assert code == 0, err
    assert "releases below 3 are revoked (before: below 0)" in out
    code, err = fleet.unlocks(luks_image)
    assert code == EXIT_POLICY
    assert "this boot image was revoked: its approval is for release 2, and releases below 3" in err
    # The machine's own approval of the original boot (release 0) is revoked too: a rollback.
    fleet.boot(captured_boot())
    code, err = fleet.unlocks(luks_image)
    assert code == EXIT_POLICY and "this boot image was revoked" in err
    # And re-sealing cannot take a revoked boot as its base.
    code, _, err = fleet.run(
        "reseal", "--eventlog", LOG, "--state-dir", str(fleet.sealer.state_dir), str(luks_image)
    )
    assert code == EXIT_POLICY and "this boot is not an approved state" in err
    # Release 3 still unlocks, and status says which approvals are revoked.
    fleet.boot(boot_of(v3, v3_contents))
    assert fleet.unlocks(luks_image) == (0, "")
    code, out, err = fleet.run("status", "--json", str(luks_image))
    assert code == 0, err
    [enrollment] = json.loads(out)["enrollments"]
    assert enrollment["revocation"] == {
        "nv_index": "0x01335ea1", "authority": "vendor", "revoked_below": 3
    }
    assert [(a["release"], a["revoked"]) for a in enrollment["approvals"]] == [
        (0, True), (2, True), (3, False)
    ]
    assert enrollment["unlocks_now"] is True
    text = fleet.run("status", str(luks_image))[1]
    assert "revoked (release 2)" in text and "releases below 3 revoked" in text


def test_a_machine_without_a_vendor_revokes_with_its_own_key(
    machine_sealer: tuple[SimulatedMachine, SealerCli], luks_image: Path
) -> None:
    _, sealer = machine_sealer
    assert sealer.enroll(luks_image, "--pcrs", "4,11").returncode == 0
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    result = sealer("revoke", "--below", "1", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == 0, result.stderr
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == EXIT_POLICY and "was revoked" in refused.stderr
    # The passphrase path is untouched; re-approving this boot takes a deliberate choice.
    approved = sealer(
        "reseal", "--eventlog", LOG, "--approve-current", "--state-dir", str(sealer.state_dir),
        str(luks_image),
    )
    assert approved.returncode == 0, approved.stderr
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0


def test_a_revoked_release_is_refused_before_the_pin_is_asked_for(
    machine_sealer: tuple[SimulatedMachine, SealerCli], luks_image: Path
) -> None:
    """The revocation bits are read after a refusal on a boot without PIN (one command
    less); with a PIN they are read before the prompt: a person must not type a PIN that the
    TPM would refuse anyway."""
    machine, sealer = machine_sealer
    assert sealer.enroll(luks_image, "--pcrs", "4,11", pin=b"2468").returncode == 0
    result = sealer("revoke", "--below", "1", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == 0, result.stderr

    def no_pin() -> bytes:
        raise AssertionError("the PIN was asked for")

    with pytest.raises(PolicyMismatchError, match="was revoked"):
        release_key(str(luks_image), token_id=None, tcti=machine.tcti, read_pin=no_pin)


@pytest.fixture
def machine_sealer(tmp_path: Path) -> Iterator[tuple[SimulatedMachine, SealerCli]]:
    machine = SimulatedMachine(tmp_path)
    machine.boot(captured_boot())
    yield machine, SealerCli(tcti=machine.tcti, state_dir=tmp_path / "state")
    machine.stop()


def test_the_tpm_itself_refuses_a_revoked_approval(
    machine_sealer: tuple[SimulatedMachine, SealerCli], luks_image: Path
) -> None:
    """sealer checks the field before asking the TPM, for a clear message; this bypasses
    that check and shows that the TPM's PolicyNV refuses on its own."""
    machine, sealer = machine_sealer
    assert sealer.enroll(luks_image, "--pcrs", "4,11").returncode == 0
    assert sealer("revoke", "--below", "1", "--state-dir", str(sealer.state_dir),
                  str(luks_image)).returncode == 0
    [enrollment] = enrollments(cryptsetup.read_header(str(luks_image)))
    [approval] = approvals_of(enrollment)
    with connect(machine.tcti) as ctx:
        current = read_pcrs(ctx, SHA256, [4, 11, 15])
    match = find_match([approval], current)
    assert match is not None and approval.release == 0
    policy = authorized_policy(enrollment, match)
    token = enrollment.token
    with pytest.raises(PolicyMismatchError), open_tpm(machine.tcti) as tpm:
        blob = SealedBlob(token.sealed_public, token.sealed_private)
        unseal(tpm, handles_of(tpm, token), blob, policy, b"")


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["policy", "show", "{missing}"], 2, "cannot read"),
        (["policy", "show", "{log}"], 9, "not a sealer approval file"),
        (["policy", "install", "{json}", "{image}"], 9, "not a sealer approval file"),
        (["policy", "sign", "--key", "{log}", "--uki", "{log}", "--eventlog", "{log}",
          "--release", "1", "--out", "{out}"], 2, "not an unencrypted PEM private key"),
        (["policy", "sign", "--key", "{rsa}", "--uki", "{log}", "--eventlog", "{log}",
          "--release", "1", "--out", "{out}"], 2, "not an ECC P-256 key"),
        (["policy", "sign", "--key", "{vendor}", "--uki", "{log}", "--eventlog", "{log}",
          "--release", "64", "--out", "{out}"], 2, "64 is not in the range"),
        (["enroll", "--trust-vendor-key", "{log}", "{image}"], 2, "not a PEM public key"),
        (["revoke", "{image}"], 2, "give --below N, or --statement FILE"),
        (["revoke", "--statement", "{json}", "{image}"], 9, "not a sealer revocation file"),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    fleet: Fleet, luks_image: Path, tmp_path: Path, args: list[str], code: int, expected: str
) -> None:
    rsa = tmp_path / "rsa.pem"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-out", str(rsa)], check=True,
        capture_output=True,
    )
    other_json = tmp_path / "other.json"
    other_json.write_text('{"type": "something-else"}')
    names = {
        "missing": str(tmp_path / "missing"), "log": LOG, "image": str(luks_image),
        "json": str(other_json), "out": str(tmp_path / "out.approval"), "rsa": str(rsa),
        "vendor": str(fleet.vendor_key),
    }
    before = luks_image.read_bytes()
    result = fleet.sealer(*[a.format(**names) for a in args], stdin=b"x")
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    # Our failures are one line; click's own (a value out of range) end with its "Error:" line.
    assert (len(lines) == 1 and lines[0].startswith("sealer: ")) or lines[-1].startswith(
        "Error: "
    ), lines
    assert expected in lines[-1] and "Traceback" not in result.stderr
    assert luks_image.read_bytes() == before
