"""``sealer key rotate`` against swtpm: a new machine key, and the old one's approvals dead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import PASSPHRASE, SealerCli
from header_edit import edit_token, token_doc
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm
from tpm2_pytss import TSS2_Exception

from sealer.luks import cryptsetup
from sealer.pcrs import BANKS
from sealer.policy import keys
from sealer.policy.approval import parse_approval, sign_approval
from sealer.tpm.connection import connect
from sealer.tpm.pcr import extend_pcr, read_pcrs
from sealer.tpm.policykey import policy_key_name

SHA256 = BANKS["sha256"]


def rotate(sealer: SealerCli, *devices: Path) -> dict[str, object]:
    key_file = sealer.state_dir.parent / "passphrase"  # test data, not a secret
    key_file.write_bytes(PASSPHRASE)
    result = sealer(
        "key", "rotate", "--unlock-key-file", str(key_file), "--state-dir",
        str(sealer.state_dir), "--json", *map(str, devices),
    )
    assert result.returncode == 0, result.stderr
    return {"results": json.loads(result.stdout)}


def forged_approval(
    image: Path, token_id: int, key_dir: Path, state: dict[int, bytes]
) -> dict[str, object]:
    """What the holder of an old backup of the state directory can sign for ``image``."""
    key = keys.load_machine_key(key_dir)
    assert key is not None
    current = parse_approval(token_doc(image, token_id)["approvals"][0])
    signed = sign_approval(
        key, policy_key_name(keys.public_pem(key)), SHA256, [state], "from a backup",
        policy_ref=current.policy_ref,
        release=None if current.release is None else (current.release, current.nv_name),
        epoch=None if current.epoch is None else (current.epoch, current.epoch_nv_name),
    )
    return signed.to_json()


def test_an_old_backup_of_the_machine_key_signs_nothing_after_rotation(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image, "--pcrs", "4", "--recovery-key").returncode == 0
    backup = tmp_path / "backup"
    shutil.copytree(sealer.state_dir, backup)
    rotate(sealer, luks_image)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    # A changed kernel, approved with the old key from the backup: refused.
    with connect(swtpm.tcti) as ctx:
        extend_pcr(ctx, SHA256, 4, SHA256.hash(b"the attacker's kernel"))
        changed = read_pcrs(ctx, SHA256, [4, 15])
    [token_id] = cryptsetup.read_header(str(luks_image)).tokens  # the new enrollment's
    forged = forged_approval(luks_image, token_id, backup, changed)
    edit_token(luks_image, token_id, approvals=[forged])
    result = sealer("unlock", "--test", str(luks_image))
    assert result.returncode in (5, 9), result.stderr  # not trusted: refused before the TPM
    assert "Traceback" not in result.stderr
    assert opens_with(luks_image, PASSPHRASE)


def test_rotation_keeps_the_binding_and_the_recovery_key_of_every_volume(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    data = make_luks_image(tmp_path / "data.img", PASSPHRASE)
    enrolled = sealer.enroll(luks_image, "--pcrs", "4,7", "--recovery-key", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    recovery = json.loads(enrolled.stdout)["recovery_key"].encode()
    assert sealer.enroll(data, "--pcrs", "7").returncode == 0
    old_key = (sealer.state_dir / "policy-key.pem").read_bytes()
    old_counter = token_doc(luks_image)["retirement"]
    rotate(sealer, luks_image, data)
    assert (sealer.state_dir / "policy-key.pem").read_bytes() != old_key
    assert not (sealer.state_dir / "policy-key.next.pem").exists()
    for image, pcrs in ((luks_image, [4, 7]), (data, [7])):
        report = json.loads(sealer("status", "--json", str(image)).stdout)
        [entry] = report["enrollments"]
        assert entry["pcrs"] == pcrs and entry["unlocks_now"], entry
        assert len(entry["policy_keys"]) == 1
    [root] = json.loads(sealer("status", "--json", str(luks_image)).stdout)["enrollments"]
    assert opens_with(luks_image, recovery)
    assert root["recovery"]["keyslot"] is not None
    assert token_doc(luks_image, root["token"])["retirement"] != old_counter
    # The old enrollment's counter was freed (its index may hold another one now).
    with connect(swtpm.tcti) as ctx:
        index = int(old_counter["nv_index"], 16)
        try:
            _, name = ctx.nv_read_public(ctx.tr_from_tpmpublic(index))
        except TSS2_Exception:
            name = b""
    assert bytes(name).hex() != old_counter["nv_name"]


def test_rotate_refuses_a_volume_enrolled_with_another_key(
    sealer: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    with Swtpm(tmp_path / "other-tpm") as other_tpm:
        other = SealerCli(tcti=other_tpm.tcti, state_dir=tmp_path / "other-state")
        assert other.enroll(luks_image).returncode == 0
    assert sealer.enroll(make_luks_image(tmp_path / "mine.img", PASSPHRASE)).returncode == 0
    result = sealer("key", "rotate", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == 2, result.stderr
    assert "no sealer enrollment that trusts the policy key" in result.stderr
