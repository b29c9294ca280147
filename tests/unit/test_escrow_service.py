"""Unit tests for sealer.services.escrow: the machine id, the checks before any change, and
reading a key back from its record."""

from __future__ import annotations

from pathlib import Path

import pytest
from escrow_certs import OrgKeys, org_pair

from sealer.errors import AuthError, StateError, UsageError
from sealer.escrow import cms
from sealer.escrow.record import read_record
from sealer.luks.header import Keyslot, LuksHeader
from sealer.services.escrow import escrow_key, escrowed, prepare_escrow, read_machine_id, recover
from sealer.services.secrets import is_recovery_key, new_recovery_key

UUID = "564fedb6-c653-4f75-9d78-8a760590c397"


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgKeys:
    return org_pair(tmp_path_factory.mktemp("org"))


def test_machine_id_from_its_file(tmp_path: Path) -> None:
    path = tmp_path / "machine-id"
    path.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    assert read_machine_id(path) == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    with pytest.raises(UsageError) as raised:
        read_machine_id(tmp_path / "absent")
    assert raised.value.one_line() == (
        f"{tmp_path / 'absent'} does not exist, so this machine has no machine id: give one "
        "with --machine-id"
    )
    path.write_text("\n")
    with pytest.raises(UsageError, match="does not hold a machine id"):
        read_machine_id(path)


def test_prepare_checks_the_machine_id_and_the_directory(org: OrgKeys, tmp_path: Path) -> None:
    absent = tmp_path / "no-machine-id"
    with pytest.raises(UsageError, match="has no machine id"):
        prepare_escrow(org.cert, tmp_path / "escrow", None, absent)
    with pytest.raises(UsageError, match="is not a machine id"):
        prepare_escrow(org.cert, tmp_path / "escrow", "../x", absent)
    with pytest.raises(StateError, match="cannot be made"):
        prepare_escrow(org.cert, org.cert / "escrow", "m1", absent)
    target = prepare_escrow(org.cert, tmp_path / "a" / "b", "m1", absent)
    assert target.machine_id == "m1" and not (tmp_path / "a").exists()  # nothing made yet


def test_escrow_then_recover(org: OrgKeys, tmp_path: Path) -> None:
    target = prepare_escrow(org.cert, tmp_path / "escrow", "m1")
    key = new_recovery_key()
    header = LuksHeader("/dev/sda2", UUID, {n: Keyslot(n, "pbkdf2", 1000, f"salt{n}")
                                             for n in (0, 2, 3)}, {})
    assert escrowed(target.directory, header, 2) is None  # no directory yet
    path = escrow_key(target, device="/dev/sda2", uuid=UUID, token_id=0, keyslot=2, key=key,
                      keyslot_salt="salt2")
    assert escrowed(target.directory, header, 2) is True
    assert escrowed(target.directory, header, 3) is False
    # Another key put in keyslot 2 later (a new salt): the record does not vouch for it.
    replaced = LuksHeader("/dev/sda2", UUID, {2: Keyslot(2, "pbkdf2", 1000, "other")}, {})
    assert escrowed(target.directory, replaced, 2) is False
    record = read_record(path)
    assert record.certificate_sha256 == cms.load_certificate(org.cert).sha256
    recovered = recover(path, org.key, lambda: b"")
    assert recovered.key == key and recovered.record == record


def test_recover_with_another_key_names_the_certificate(org: OrgKeys, tmp_path: Path) -> None:
    path = escrow_key(prepare_escrow(org.cert, tmp_path, "m1"), device="/dev/sda2", uuid=UUID,
                      token_id=0, keyslot=2, key=new_recovery_key(),
                      keyslot_salt=None)
    other = tmp_path / "other.key"
    other.write_bytes(_other_key_pem())
    with pytest.raises(AuthError) as raised:
        recover(path, other, lambda: b"")
    assert raised.value.message == f"the private key {other} does not decrypt {path}"
    assert "CN=Example Org recovery-key escrow" in str(raised.value.hint)
    with pytest.raises(UsageError, match="cannot read the private key"):
        recover(path, tmp_path / "absent.key", lambda: b"")


def _other_key_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_is_recovery_key() -> None:
    for _ in range(20):
        assert is_recovery_key(new_recovery_key().encode())
    for text in (b"", b"abcde", b"abcde-abcde-abcde-abcde-abcde-abcdi", b"abcde-" * 6,
                 b"ABCDE-abcde-abcde-abcde-abcde-abcde", b"abcde-abcde-abcde-abcde-abcde-abcde\n"):
        assert not is_recovery_key(text), text
