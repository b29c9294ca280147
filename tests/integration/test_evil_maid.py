"""An attacker who can write the LUKS2 header (checksums valid: cryptsetup writes it) against
a real swtpm: nothing in the header may widen what the TPM releases.

Each test replays an attack that worked on sealer before approvals were bound to their
enrollment (issue 15): moving an approval between enrollments, choosing the capping PCR,
and having reseal sign an old or revoked state again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import eventlogs
import pytest
from conftest import PASSPHRASE, SealerCli, SealerMachine
from header_edit import edit_token, token_doc, write_token
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm

from sealer.luks import cryptsetup
from sealer.luks.enrollment import require_enrollments
from sealer.pcrs import BANKS
from sealer.policy import keys
from sealer.policy.approval import parse_approval, sign_approval
from sealer.services.matching import Match, authorized_policy
from sealer.tpm.bare import open_tpm
from sealer.tpm.connection import connect
from sealer.tpm.esys import EsysError
from sealer.tpm.pcr import extend_pcr, read_pcrs
from sealer.tpm.policykey import policy_key_name
from sealer.tpm.release import SealedBlob, handles_of, unseal

SHA256 = BANKS["sha256"]


def extend(tpm: Swtpm, pcr: int, data: bytes = b"evil maid") -> None:
    with connect(tpm.tcti) as ctx:
        extend_pcr(ctx, SHA256, pcr, SHA256.hash(data))


def pcr_value(tpm: Swtpm, pcr: int) -> bytes:
    with connect(tpm.tcti) as ctx:
        return read_pcrs(ctx, SHA256, [pcr])[pcr]


@pytest.fixture
def root_and_data(sealer: SealerCli, luks_image: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two volumes of one machine: the root bound to PCRs 4 and 7, a data volume to 7 only."""
    data = make_luks_image(tmp_path / "data.img", PASSPHRASE)
    assert sealer.enroll(luks_image, "--pcrs", "4,7").returncode == 0
    assert sealer.enroll(data, "--pcrs", "7").returncode == 0
    return luks_image, data


# ---------------------------------------------------------------------------------------------
# An approval moved from one enrollment to another


def test_an_approval_moved_from_another_enrollment_does_not_unlock(
    sealer: SealerCli, swtpm: Swtpm, root_and_data: tuple[Path, Path]
) -> None:
    root, data = root_and_data
    moved = token_doc(data)["approvals"]
    edit_token(root, 0, approvals=moved)
    extend(swtpm, 4)  # a changed kernel: PCR 7 alone still matches the data volume's approval
    result = sealer("unlock", "--test", str(root))
    assert result.returncode == 5, result.stdout + result.stderr
    assert "signed for another enrollment" in result.stderr
    assert "Traceback" not in result.stderr
    assert opens_with(root, PASSPHRASE)


def test_the_tpm_itself_refuses_a_moved_approval(
    sealer: SealerCli, swtpm: Swtpm, root_and_data: tuple[Path, Path]
) -> None:
    """Past sealer's own checks (as a modified unlocker would go): the sealed object's policy
    names the enrollment's policyRef, so the TPM refuses the other enrollment's approval."""
    root, data = root_and_data
    foreign = parse_approval(token_doc(data)["approvals"][0])
    enrollment = require_enrollments(cryptsetup.read_header(str(root)))[0]
    # Its PolicyNV checks the data volume's retirement counter: let the policy name that one.
    data_token = require_enrollments(cryptsetup.read_header(str(data)))[0].token
    enrollment = replace(
        enrollment, token=replace(enrollment.token, retirement=data_token.retirement)
    )
    policy = authorized_policy(enrollment, Match(0, foreign, 0))
    token = enrollment.token
    with open_tpm(swtpm.tcti) as tpm:
        blob = SealedBlob(token.sealed_public, token.sealed_private)
        with pytest.raises(EsysError) as refused:
            unseal(tpm, handles_of(tpm, token), blob, policy, b"")
    assert "policy" in refused.value.text.lower()


def test_a_token_rewritten_as_legacy_does_not_unlock(
    sealer: SealerCli, swtpm: Swtpm, root_and_data: tuple[Path, Path]
) -> None:
    """Dropping the enrollment id (a version 1 token, unbound approvals) changes the policy
    the TPM computes, so the object refuses."""
    root, _data = root_and_data
    doc = token_doc(root)
    doc["version"] = 1
    doc.pop("enrollment_id")
    write_token(root, 0, doc)
    result = sealer("unlock", "--test", str(root))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The capping PCR chosen by the header


def run_boot_module(
    module: str, swtpm: Swtpm, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[bytes]:
    environment = dict(
        os.environ, SEALER_TCTI=swtpm.tcti, SEALER_CAP_RECORD=str(tmp_path / "run" / "cap"), **env
    )
    return subprocess.run(
        [sys.executable, "-m", module], env=environment, capture_output=True, timeout=60
    )


@pytest.mark.parametrize("cap_pcr", [16, 23, 14])
def test_the_header_cannot_choose_the_capping_pcr(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path, cap_pcr: int
) -> None:
    """16 and 23 can be reset by anyone; 14 is not the one the approvals bind. Either way,
    the boot must not release the key and then cap a PCR that leaves it releasable."""
    assert sealer.enroll(luks_image).returncode == 0
    edit_token(luks_image, 0, cap_pcr=cap_pcr)
    released = run_boot_module(
        "sealer.boot.keyscript", swtpm, tmp_path,
        CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="cryptroot",
    )
    assert released.stdout == b"", "the keyscript released a key for a token it should refuse"
    assert released.returncode != 0
    assert b"Traceback" not in released.stderr
    capped = run_boot_module("sealer.boot.cap_or_poweroff", swtpm, tmp_path)
    assert capped.returncode == 0, capped.stderr
    assert pcr_value(swtpm, 15) != bytes(32)  # whatever was recorded, PCR 15 is capped
    edit_token(luks_image, 0, cap_pcr=15)  # the honest token again: the cap holds
    assert sealer("unlock", "--test", str(luks_image)).returncode == 5


@pytest.mark.parametrize("cap_pcr", ["16", "23", "17"])
def test_enroll_refuses_a_resettable_capping_pcr(
    sealer: SealerCli, luks_image: Path, cap_pcr: str
) -> None:
    result = sealer.enroll(luks_image, "--cap-pcr", cap_pcr)
    assert result.returncode == 2
    assert f"PCR {cap_pcr} cannot be the capping PCR" in result.stderr
    assert cryptsetup.read_header(str(luks_image)).tokens == {}


def signed_by_root(image: Path, sealer: SealerCli, state: dict[int, bytes]) -> dict[str, Any]:
    """An approval of ``state`` signed with the machine key, as root on the machine can."""
    enrollment = require_enrollments(cryptsetup.read_header(str(image)))[0]
    key = keys.load_machine_key(sealer.state_dir)
    assert key is not None
    # The enrollment's policyRef (empty before approvals were bound to their enrollment).
    binding = getattr(enrollment, "binding", None)
    ref = b"" if binding is None else binding.policy_ref("machine")
    name = policy_key_name(keys.public_pem(key))
    approval = sign_approval(key, name, SHA256, [state], "root", policy_ref=ref)
    old = parse_approval(token_doc(image)["approvals"][0])
    if old.release is not None:  # the same revocation check as the enrollment's approvals
        approval = sign_approval(
            key, name, SHA256, [state], "root", policy_ref=ref,
            release=(old.release, old.nv_name),
        )
    return approval.to_json()


def test_after_the_cap_not_even_the_machine_key_can_approve_a_release(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """Root holds the machine key and can sign an approval of the capped state: the sealed
    object requires the capping PCR at its reset value after any approval, so it refuses."""
    assert sealer.enroll(luks_image, "--pcrs", "7").returncode == 0
    extend(swtpm, 15, b"sealer: boot-time unlock finished")
    capped = {7: pcr_value(swtpm, 7), 15: pcr_value(swtpm, 15)}
    forged = signed_by_root(luks_image, sealer, capped)
    edit_token(luks_image, 0, approvals=[forged])
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 5, result.stderr


def test_the_tpm_itself_refuses_an_approval_of_the_capped_state(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """Past sealer's own checks: the object's policy, not sealer, requires the reset value."""
    assert sealer.enroll(luks_image, "--pcrs", "7").returncode == 0
    extend(swtpm, 15, b"sealer: boot-time unlock finished")
    capped = {7: pcr_value(swtpm, 7), 15: pcr_value(swtpm, 15)}
    forged = parse_approval(signed_by_root(luks_image, sealer, capped))
    enrollment = require_enrollments(cryptsetup.read_header(str(luks_image)))[0]
    policy = authorized_policy(enrollment, Match(0, forged, 0))
    token = enrollment.token
    with open_tpm(swtpm.tcti) as tpm:
        blob = SealedBlob(token.sealed_public, token.sealed_private)
        with pytest.raises(EsysError):
            unseal(tpm, handles_of(tpm, token), blob, policy, b"")


# ---------------------------------------------------------------------------------------------
# reseal must not bring back an old or revoked state


def approved_states(image: Path) -> list[dict[str, str]]:
    return [branch for a in token_doc(image)["approvals"] for branch in a["branches"]]


def reseal(sealer: SealerCli, image: Path) -> None:
    # Any log will do: reseal approves the live PCRs, the log only explains them.
    result = sealer(
        "reseal", "--approve-current", "--eventlog", str(eventlogs.UKI_BOOT_LOG),
        "--state-dir", str(sealer.state_dir), str(image),
    )
    assert result.returncode == 0, result.stderr


def test_a_forged_tpm_boot_tag_does_not_make_reseal_sign_an_old_state(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, "--pcrs", "4").returncode == 0
    old_state = approved_states(luks_image)[0]
    old_approval = token_doc(luks_image)["approvals"][0]
    extend(swtpm, 4)  # an update was booted: reseal approves the new state, drops the old
    reseal(sealer, luks_image)
    assert old_state not in approved_states(luks_image)
    current = token_doc(luks_image)["approvals"]
    # The attacker puts the old approval back, tagged as made during this boot.
    forged = {**old_approval, "tpm_boot": current[0]["tpm_boot"]}
    edit_token(luks_image, 0, approvals=[*current, forged])
    extend(swtpm, 4, b"another update")
    reseal(sealer, luks_image)
    assert old_state not in approved_states(luks_image)


def test_reseal_does_not_sign_a_revoked_state_again(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, "--pcrs", "4").returncode == 0
    extend(swtpm, 4)
    reseal(sealer, luks_image)  # this boot's state, signed during this boot (release 0)
    revoked_state = approved_states(luks_image)[0]
    revoked = sealer(
        "revoke", "--below", "1", "--state-dir", str(sealer.state_dir), str(luks_image)
    )
    assert revoked.returncode == 0, revoked.stderr
    extend(swtpm, 4, b"the next release")
    reseal(sealer, luks_image)
    assert revoked_state not in approved_states(luks_image)
    doc = token_doc(luks_image)["approvals"]
    assert all(a.get("release") == 1 for a in doc), json.dumps(doc)


# ---------------------------------------------------------------------------------------------
# A pruned or superseded approval put back from an old copy of the header


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[SealerMachine]:
    machine = SealerMachine(tmp_path / "machine")
    yield machine
    machine.stop()


KERNEL_2 = SHA256.hash(b"kernel 2")


def test_an_old_approval_put_back_does_not_unlock_the_old_boot(
    machine: SealerMachine, luks_image: Path
) -> None:
    sealer = machine.sealer
    machine.boot([])  # kernel 1: PCR 4 at its reset value
    assert sealer.enroll(luks_image, "--pcrs", "4").returncode == 0
    old_header = token_doc(luks_image)
    machine.boot([(4, KERNEL_2)])  # the update: the user approves kernel 2 (kernel 1 dropped)
    reseal(sealer, luks_image)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    # The evil maid puts the old header back and boots the old (vulnerable) kernel 1.
    write_token(luks_image, 0, old_header)
    machine.boot([])
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 5, result.stdout + result.stderr
    assert "was retired" in result.stderr
    assert opens_with(luks_image, PASSPHRASE)


def test_a_retired_approval_put_before_a_valid_one_does_not_cost_the_unlock(
    machine: SealerMachine, luks_image: Path
) -> None:
    """The unlock reads the retirement counter only after a refusal (issue 19: one command
    less per boot). A retired approval that matches this boot and comes first in the header
    is refused by the TPM; the approval that still holds is tried next, and unlocks."""
    sealer = machine.sealer
    machine.boot([])
    assert sealer.enroll(luks_image, "--pcrs", "4").returncode == 0
    [retired] = token_doc(luks_image)["approvals"]
    reseal(sealer, luks_image)  # the same boot approved again, in the next epoch
    header = token_doc(luks_image)
    header["approvals"] = [retired, *header["approvals"]]
    write_token(luks_image, 0, header)
    result = sealer("unlock", "--test", "--json", str(luks_image))
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["approval"] == 1


def test_deleting_and_redefining_the_retirement_counter_does_not_bring_it_back(
    machine: SealerMachine, luks_image: Path, tmp_path: Path
) -> None:
    """A counter defined again starts above every count the TPM ever had, so an owner (the
    empty owner authorization of every Linux machine) cannot undo a retirement."""
    sealer = machine.sealer
    machine.boot([])
    assert sealer.enroll(luks_image, "--pcrs", "4").returncode == 0
    old_header = token_doc(luks_image)
    counter = old_header["retirement"]["nv_index"]
    machine.boot([(4, KERNEL_2)])
    reseal(sealer, luks_image)
    write_token(luks_image, 0, old_header)
    machine.boot([])
    # The attacker redefines the counter with the same public area (same name), then
    # writes it once, as PolicyNV needs.
    public = read_nv_public(machine, counter)
    tools = ["-T", machine.tcti]
    subprocess.run(["tpm2_nvundefine", *tools, counter], check=True, capture_output=True)
    policy = tmp_path / "tag"
    policy.write_bytes(public.tag)
    subprocess.run(
        ["tpm2_nvdefine", *tools, counter, "-C", "o", "-s", "8", "-a",
         "nt=counter|authwrite|authread|no_da", "-L", str(policy)],
        check=True, capture_output=True,
    )
    subprocess.run(["tpm2_nvincrement", *tools, counter], check=True, capture_output=True)
    assert read_nv_public(machine, counter).name == public.name
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode == 5, result.stdout + result.stderr
    assert "was retired" in result.stderr


@dataclass(frozen=True)
class NvPublic:
    name: bytes
    tag: bytes  # the authPolicy


def read_nv_public(machine: SealerMachine, index: str) -> NvPublic:
    with connect(machine.tcti) as ctx:
        handle = ctx.tr_from_tpmpublic(int(index, 16))
        public, name = ctx.nv_read_public(handle)
    return NvPublic(bytes(name), bytes(public.nvPublic.authPolicy))
