"""What crosses the TPM bus: no secret in clear, and how many commands each operation sends.

swtpm's level-20 log holds every command and response byte; an interposer on the LPC/SPI
bus sees exactly these bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from swtpm import Swtpm, WireLog, log_size

from sealer.luks import cryptsetup
from sealer.pcrs import BANKS
from sealer.policy import digest
from sealer.services.unlock import approvals_of, release
from sealer.services.volume import enrollments
from sealer.tpm.connection import connect
from sealer.tpm.pcr import extend_pcr, read_pcrs
from sealer.tpm.seal import AuthorizedPolicy, trial_policy_digest

pytestmark = pytest.mark.integration
SHA256 = BANKS["sha256"]


@pytest.fixture
def logged_tpm(tmp_path: Path) -> Iterator[tuple[Swtpm, Path]]:
    log = tmp_path / "wire.log"
    with Swtpm(tmp_path / "tpm", log_file=log) as tpm:
        yield tpm, log


def _released_key(tcti: str, image: Path, pin: bytes = b"") -> bytes:
    enrollment = enrollments(cryptsetup.read_header(str(image)))[0]
    key, _ = release(enrollment, tcti, lambda: pin)
    return key


@pytest.mark.parametrize("pin", [b"", b"2468"])
def test_no_secret_crosses_the_wire_in_clear(
    logged_tpm: tuple[Swtpm, Path], luks_image: Path, tmp_path: Path, pin: bytes
) -> None:
    tpm, log = logged_tpm
    sealer = SealerCli(tcti=tpm.tcti, state_dir=tmp_path / "state")
    enrolled = sealer.enroll(luks_image, pin=pin)
    assert enrolled.returncode == 0, enrolled.stderr
    unlock_args = ["--pin-file", "-"] if pin else []
    unlocked = sealer("unlock", "--test", *unlock_args, str(luks_image), stdin=pin)
    assert unlocked.returncode == 0, unlocked.stderr

    key = _released_key(tpm.tcti, luks_image, pin)  # the keyslot passphrase: base64(secret)
    secret = base64.b64decode(key)
    wire = WireLog.read(log)
    # With a PIN the object is DA-protected: the first use after startup makes the TPM save
    # its orderly state and answer TPM_RC_RETRY once, so count successful commands.
    succeeded = wire.counts(succeeded_only=True)
    assert succeeded["Unseal"] == 2 and succeeded["Create"] == 1
    for needle in (secret, key, secret[:8], secret[-8:], PASSPHRASE):
        assert not wire.contains(needle), f"{needle!r} crossed the TPM bus in clear"

    # Positive control: the reader does find bytes that are meant to travel in clear.
    marker = SHA256.hash(b"wire audit marker")
    with connect(tpm.tcti) as ctx:
        extend_pcr(ctx, SHA256, 16, marker)
    assert WireLog.read(log).contains(marker)


def test_unlock_command_count(
    logged_tpm: tuple[Swtpm, Path], luks_image: Path, tmp_path: Path
) -> None:
    tpm, log = logged_tpm
    sealer = SealerCli(tcti=tpm.tcti, state_dir=tmp_path / "state")
    assert sealer.enroll(luks_image).returncode == 0
    start = log_size(log)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    counts = WireLog.read(log, start).counts()
    # ReadPublic(SRK), PCR_Read, NV_ReadPublic + NV_Read (is the approval's release revoked?),
    # LoadExternal, VerifySignature, Load, StartAuthSession, PolicyPCR, PolicyNV (the release
    # check), PolicyAuthorize, Unseal, and a FlushContext for each of the three handles.
    assert counts == {
        "ReadPublic": 1, "PCR_Read": 1, "NV_ReadPublic": 1, "NV_Read": 1, "LoadExternal": 1,
        "VerifySignature": 1, "Load": 1, "StartAuthSession": 1, "PolicyPCR": 1, "PolicyNV": 1,
        "PolicyAuthorize": 1, "Unseal": 1, "FlushContext": 3,
    }  # fmt: skip
    assert "CreatePrimary" not in counts


@pytest.mark.parametrize("bank_name", ["sha256", "sha1"])
@pytest.mark.parametrize("branch_count", [1, 3])
def test_software_policy_digests_equal_the_tpms(
    swtpm: Swtpm, bank_name: str, branch_count: int
) -> None:
    """The TPM hashes its own PCR values (empty pcrDigest) and must reach our digest."""
    bank = BANKS[bank_name]
    with connect(swtpm.tcti) as ctx:
        extend_pcr(ctx, bank, 4, bank.hash(b"uki"))
        extend_pcr(ctx, bank, 7, bank.hash(b"secure boot db"))
        current = read_pcrs(ctx, bank, [4, 7, 15])
        branches = [{**current, 4: bank.hash(b"older uki %d" % n)} for n in range(branch_count)]
        branches[-1] = current
        policy = AuthorizedPolicy(
            bank=bank,
            branches=branches,
            branch_digests=[digest.policy_pcr(digest.ZERO, bank, b) for b in branches],
            branch_index=branch_count - 1,
            pcr_digest=b"",
            approved_policy=b"",
            approval_digest=b"",
            policy_ref=b"",
            key_pem="",
            signature_rs=(0, 0),
            authorized_digests=[],
            with_pin=False,
        )
        assert trial_policy_digest(ctx, policy) == digest.approved_policy(bank, branches)


@pytest.mark.parametrize("bank_name", ["sha1", "sha384"])
def test_enroll_and_unlock_in_other_pcr_banks(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, bank_name: str
) -> None:
    bank = BANKS[bank_name]
    with connect(swtpm.tcti) as ctx:
        active = bool(read_pcrs(ctx, bank, [7]))
    assert active
    enrolled = sealer.enroll(luks_image, "--pcr-bank", bank_name, "--pcrs", "7")
    assert enrolled.returncode == 0, enrolled.stderr
    unlocked = sealer("unlock", "--test", str(luks_image))
    assert unlocked.returncode == 0, unlocked.stderr
    with connect(swtpm.tcti) as ctx:
        extend_pcr(ctx, bank, 7, bank.hash(b"tampered"))
    assert sealer("unlock", "--test", str(luks_image)).returncode == 5


def test_approvals_verify_against_the_token_key(sealer: SealerCli, luks_image: Path) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    enrollment = enrollments(cryptsetup.read_header(str(luks_image)))[0]
    (approval,) = approvals_of(enrollment)
    assert approval.pcrs == (4, 7, 15)
