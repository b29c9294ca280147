"""Unit tests for sealer.services.secrets: recovery keys, PIN auth values, secret input."""

from __future__ import annotations

import hashlib
import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sealer.errors import AuthError, UsageError
from sealer.services.secrets import (
    MAX_SECRET_FILE,
    new_recovery_key,
    pin_auth_value,
    read_secret,
    reader,
)

CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
RECOVERY_KEY = re.compile(rf"[{CROCKFORD}]{{5}}(-[{CROCKFORD}]{{5}}){{5}}")


def fake_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(buffer=io.BytesIO(data)))


# ---------------------------------------------------------------------------------------------
# Recovery keys


def test_recovery_key_is_six_groups_of_five_crockford_characters() -> None:
    key = new_recovery_key()
    assert RECOVERY_KEY.fullmatch(key), key
    groups = key.split("-")
    assert len(groups) == 6
    assert all(len(group) == 5 for group in groups)
    assert len(key) == 35


def test_recovery_key_alphabet_is_crockford_base32_lowercase() -> None:
    assert len(set(CROCKFORD)) == 32
    for _ in range(200):
        assert set(new_recovery_key().replace("-", "")) <= set(CROCKFORD)


def test_recovery_key_never_uses_confusable_letters() -> None:
    for _ in range(200):
        assert not set(new_recovery_key()) & set("ilouILOU")


def test_recovery_keys_are_unique_over_1000_draws() -> None:
    keys = [new_recovery_key() for _ in range(1000)]
    assert all(RECOVERY_KEY.fullmatch(k) for k in keys)
    assert len(set(keys)) == 1000


def test_recovery_keys_use_the_whole_alphabet() -> None:
    seen = set("".join(new_recovery_key() for _ in range(1000)).replace("-", ""))
    assert seen == set(CROCKFORD)


# ---------------------------------------------------------------------------------------------
# PIN auth value


def test_pin_auth_value_is_32_bytes() -> None:
    assert len(pin_auth_value(b"1234", b"salt" * 4)) == 32


def test_pin_auth_value_is_deterministic() -> None:
    assert pin_auth_value(b"1234", b"s" * 16) == pin_auth_value(b"1234", b"s" * 16)


def test_pin_auth_value_depends_on_salt() -> None:
    assert pin_auth_value(b"1234", b"a" * 16) != pin_auth_value(b"1234", b"b" * 16)


def test_pin_auth_value_depends_on_pin() -> None:
    assert pin_auth_value(b"1234", b"s" * 16) != pin_auth_value(b"1235", b"s" * 16)


def test_pin_auth_value_is_not_the_plain_pin_hash() -> None:
    assert pin_auth_value(b"1234", b"s" * 16) != hashlib.sha256(b"1234").digest()
    assert pin_auth_value(b"1234", b"s" * 16) != hashlib.sha256(b"s" * 16 + b"1234").digest()


# ---------------------------------------------------------------------------------------------
# read_secret from a file


def test_read_secret_from_file_is_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"secret\n")
    assert read_secret(str(path), "Passphrase") == b"secret\n"


def test_read_secret_from_file_keeps_binary_content(tmp_path: Path) -> None:
    data = bytes(range(256))
    path = tmp_path / "key"
    path.write_bytes(data)
    assert read_secret(str(path), "Passphrase") == data


def test_read_secret_from_file_keeps_only_newline(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"\n")
    assert read_secret(str(path), "Passphrase") == b"\n"


def test_read_secret_from_empty_file_raises_auth_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"")
    with pytest.raises(AuthError, match="empty"):
        read_secret(str(path), "Passphrase")


def test_read_secret_from_missing_file_raises_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    with pytest.raises(UsageError, match="cannot read"):
        read_secret(str(missing), "Passphrase")


def test_read_secret_from_directory_raises_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_secret(str(tmp_path), "Passphrase")


def test_read_secret_from_file_of_exactly_the_maximum_size(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"k" * MAX_SECRET_FILE)
    assert read_secret(str(path), "Passphrase") == b"k" * MAX_SECRET_FILE


def test_read_secret_from_file_one_byte_too_long_raises_usage_error(tmp_path: Path) -> None:
    assert MAX_SECRET_FILE == 8192
    path = tmp_path / "key"
    path.write_bytes(b"k" * (MAX_SECRET_FILE + 1))
    with pytest.raises(UsageError, match="longer than 8192"):
        read_secret(str(path), "Passphrase")


def test_read_secret_from_very_long_file_raises_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"k" * 100_000)
    with pytest.raises(UsageError):
        read_secret(str(path), "Passphrase")


# ---------------------------------------------------------------------------------------------
# read_secret from standard input


def test_read_secret_from_stdin_drops_one_trailing_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin(monkeypatch, b"secret\n")
    assert read_secret("-", "Passphrase") == b"secret"


def test_read_secret_from_stdin_drops_only_one_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin(monkeypatch, b"secret\n\n")
    assert read_secret("-", "Passphrase") == b"secret\n"


def test_read_secret_from_stdin_without_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin(monkeypatch, b"secret")
    assert read_secret("-", "Passphrase") == b"secret"


def test_read_secret_from_stdin_keeps_carriage_return(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stdin(monkeypatch, b"secret\r\n")
    assert read_secret("-", "Passphrase") == b"secret\r"


@pytest.mark.parametrize("data", [b"", b"\n"])
def test_read_secret_from_empty_stdin_raises_auth_error(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    fake_stdin(monkeypatch, data)
    with pytest.raises(AuthError, match="empty"):
        read_secret("-", "Passphrase")


def test_read_secret_from_stdin_of_maximum_size_plus_newline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_stdin(monkeypatch, b"k" * MAX_SECRET_FILE + b"\n")
    assert read_secret("-", "Passphrase") == b"k" * MAX_SECRET_FILE


def test_read_secret_from_stdin_too_long_raises_usage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_stdin(monkeypatch, b"k" * (MAX_SECRET_FILE + 1))
    with pytest.raises(UsageError, match="longer than"):
        read_secret("-", "Passphrase")


def test_read_secret_from_stdin_refuses_long_input_with_newline_at_the_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_stdin(monkeypatch, b"k" * MAX_SECRET_FILE + b"\nrest of a much longer secret")
    with pytest.raises(UsageError):
        read_secret("-", "Passphrase")


# ---------------------------------------------------------------------------------------------
# Deferred reads


def test_reader_defers_the_read_until_called(tmp_path: Path) -> None:
    path = tmp_path / "pin"
    read = reader(str(path), "PIN")  # the file does not exist yet: nothing is read
    path.write_bytes(b"1234")
    assert read() == b"1234"
