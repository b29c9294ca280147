"""What crosses the TPM bus: no secret in clear, and how many commands each operation sends.

swtpm's level-20 log holds every command and response byte; an interposer on the LPC/SPI
bus sees exactly these bytes. One run of every operation (swtpm-fixtures/wireaudit.py:
enroll with and without PIN, status, unlock with and without PIN, the boot-time keyscript
and cap, reseal, prune, revoke by the machine and by a vendor, remove) is audited for every
secret, whole and in 8-byte fragments; ``make bench-wire`` prints the same audit as a table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import wireaudit
from bootimage import STUB
from conftest import SealerCli
from swtpm import Swtpm
from wireaudit import WireAudit, run_lifecycle, search

from sealer.luks import cryptsetup
from sealer.luks.enrollment import enrollments
from sealer.pcrs import BANKS
from sealer.policy import digest
from sealer.services.matching import approvals_of
from sealer.tpm.bare import open_tpm
from sealer.tpm.connection import connect
from sealer.tpm.pcr import extend_pcr, read_pcrs
from sealer.tpm.release import AuthorizedPolicy, trial_policy_digest

SHA256 = BANKS["sha256"]

# PCR_Read, LoadExternal + VerifySignature (the TPM checks the approval's signature), Load,
# StartAuthSession, PolicyPCR, PolicyNV (the release is not revoked), PolicyNV (the approval
# is not retired), PolicyAuthorize, PolicyPCR (the capping PCR at its reset value), Unseal,
# and a FlushContext for the policy key and the sealed object: the session ends with the
# Unseal. No ReadPublic, NV_ReadPublic or NV_Read: the token names the SRK's and the NV
# indices' public areas, and the revocation bits are read only after a refusal
# (sealer.tpm.release). Issue 19's bound: at most 13.
UNLOCK_COMMANDS = {
    "PCR_Read": 1, "LoadExternal": 1, "VerifySignature": 1, "Load": 1, "StartAuthSession": 1,
    "PolicyPCR": 2, "PolicyNV": 2, "PolicyAuthorize": 1, "Unseal": 1, "FlushContext": 2,
}


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> WireAudit:
    for tool in ("swtpm", "cryptsetup", "objcopy"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run the README's test command")
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    return run_lifecycle(tmp_path_factory.mktemp("wire"))


def test_every_operation_was_audited_with_every_needle(audit: WireAudit) -> None:
    assert tuple(audit.operations) == wireaudit.OPERATIONS
    for label in ("A", "B", "C"):
        assert len(audit.needles[f"sealed secret {label}"]) == 32
    assert {"LUKS passphrase", "PIN", "PIN auth value B", "recovery key A", "recovery key B",
            "policy key scalar (machine 1)", "policy key scalar (machine 2)",
            "vendor key scalar", "TPM lockout auth (machine 1)",
            "TPM lockout auth (machine 2)"} <= set(audit.needles)
    assert len(audit.needles["TPM lockout auth (machine 1)"]) == 32


@pytest.mark.parametrize("operation", wireaudit.OPERATIONS)
def test_no_secret_crosses_the_wire_in_clear(audit: WireAudit, operation: str) -> None:
    assert audit.secrets_found(operation=operation) == []
    if audit.operations[operation].exchanges:
        # Positive control: the same search finds bytes that are meant to travel in clear.
        assert audit.controls_found(operation), f"{operation}: the search found no control"


def test_nothing_between_the_operations_leaks_either(audit: WireAudit) -> None:
    """Boot replays, and the in-process unseals that obtained the secrets for the search."""
    assert [str(f) for f in search("whole log", audit.whole_log(), audit.needles)] == []


def test_the_search_finds_fragments_and_says_where(audit: WireAudit) -> None:
    blob = audit.controls["sealed blob A"]
    # Only 5 windows of it travel: the 20 bytes after the blob's 12 each differ from the
    # blob's own next bytes (random ones would match the next byte once in 256 runs).
    spliced = {"spliced": blob[20:32] + bytes(b ^ 0xFF for b in blob[32:52])}
    [found] = audit.findings(spliced, wireaudit.UNLOCK)
    assert (found.command, found.direction, found.whole) == ("Load", "command", False)
    assert (found.offset, found.fragments) == (0, 5)
    assert str(found) == (
        "unlock --test: spliced[0:8] (+4 more 8-byte fragments) in Load command"
    )
    [created] = audit.findings({"blob": blob}, wireaudit.ENROLL_FIRST)
    assert (created.command, created.direction, created.whole) == ("Create", "response", True)


def test_unlock_command_count(audit: WireAudit) -> None:
    counts = audit.operations[wireaudit.UNLOCK].counts()
    assert counts == UNLOCK_COMMANDS
    assert sum(counts.values()) == 13
    # The boot-time unlocker sends exactly what ``sealer unlock`` sends.
    assert audit.operations[wireaudit.KEYSCRIPT].counts() == UNLOCK_COMMANDS
    # With a PIN: one PolicyAuthValue more, and before the PIN is asked for, a GetCapability
    # that reads the lockout state and NV_ReadPublic + NV_Read of the revocation field and of
    # the retirement counter (a PIN the TPM would refuse anyway is not asked for). The object
    # is DA-protected: its first use after startup makes the TPM save its orderly state and
    # answer TPM_RC_RETRY once.
    with_pin = audit.operations[wireaudit.UNLOCK_PIN]
    assert with_pin.counts(succeeded_only=True) == {
        **UNLOCK_COMMANDS, "PolicyAuthValue": 1, "GetCapability": 1, "NV_ReadPublic": 2,
        "NV_Read": 2,
    }
    failed = [(e.name, e.rc) for e in with_pin.exchanges if e.rc != 0]
    assert failed in ([], [("Unseal", wireaudit.RETRY)])


def test_enroll_creates_the_srk_once_and_nothing_else_unseals(audit: WireAudit) -> None:
    first = audit.operations[wireaudit.ENROLL_FIRST].counts(succeeded_only=True)
    later = audit.operations[wireaudit.ENROLL_PIN].counts(succeeded_only=True)
    # NV_DefineSpace: the revocation field once per TPM, a retirement counter per enrollment.
    assert (first["CreatePrimary"], first["Create"], first["NV_DefineSpace"]) == (1, 1, 2)
    assert (later["CreatePrimary"], later["Create"], later["NV_DefineSpace"]) == (0, 1, 1)
    # Re-sealing, pruning, revoking and status never need the secret out of the TPM.
    for operation in (wireaudit.STATUS, wireaudit.RESEAL, wireaudit.PRUNE, wireaudit.REVOKE,
                      wireaudit.REVOKE_VENDOR, wireaudit.REMOVE, wireaudit.CAP):
        counts = audit.operations[operation].counts()
        assert counts["Unseal"] == counts["Load"] == 0, operation


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
    with open_tpm(swtpm.tcti) as tpm:
        assert trial_policy_digest(tpm, policy) == digest.approved_policy(bank, branches)


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
