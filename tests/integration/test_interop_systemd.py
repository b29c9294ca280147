"""Volumes bound by the real systemd-cryptenroll (systemd 252) open with sealer's reader.

Every enrollment here is made by systemd-cryptenroll against its own swtpm; the key sealer
derives must open the volume in cryptsetup itself. systemd 252 leaves its HMAC session
loaded after the unseal it runs to verify an enrollment (swtpm has no resource manager, and
swtpm holds three loaded sessions), so each test enrolls at most twice per swtpm.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE
from luks_image import opens_with
from swtpm import Swtpm, WireLog, log_size

from sealer.errors import AuthError, PolicyMismatchError, SealerError, TokenError, TPMMismatchError
from sealer.interop import systemd_tpm2 as interop
from sealer.luks import cryptsetup
from sealer.pcrs import BANKS
from sealer.tpm import systemd_tpm2 as tpm
from sealer.tpm.connection import connect

# A token systemd-cryptenroll 252 wrote (--tpm2-pcrs=7, fresh swtpm), for the parser tests.
REAL_TOKEN: dict[str, Any] = {
    "type": "systemd-tpm2",
    "keyslots": ["1"],
    "tpm2-blob": (
        "AJ4AIPNNZUlqEy3gvTrkRjbDT5Pkah+0IXd/yP2yWCCB6aogABC+vsYLFDCJE2JU72OuXulAzL7n0knzuNeO"
        "odSv3mseSkRxMJB1oc69ithp1MFB++A56uEF89JR1Yl60HBT7328KGLNb//y3Ypk+uzNujMkqYwCXdPUCyuP"
        "t3CgTd1WsXKGP4Ga+EzQ2lzoaClkE2Vfv6Ww+ax8T3qZmgBOAAgACwAAABIAIItWgtgbKUNdCNeSeBUGEdx+"
        "WSOy/vzOaEoJV3tAEwqLABAAIJ19xH03cmQhwh3N8WzClWTlNDMBX3pWF7Z1FI9erxL+"
    ),
    "tpm2-pcrs": [7],
    "tpm2-pcr-bank": "sha256",
    "tpm2-primary-alg": "ecc",
    "tpm2-policy-hash": "8b5682d81b29435d08d79278150611dc7e5923b2fefcce684a09577b40130a8b",
    "tpm2-pin": False,
}
PIN = b"4711"


def _no_pin() -> bytes:
    raise AssertionError("the PIN must not be asked for")


@pytest.fixture(autouse=True)
def _systemd_cryptenroll() -> None:
    if shutil.which("systemd-cryptenroll") is None:
        pytest.skip("systemd-cryptenroll is not installed (Debian package 'systemd')")


def _enroll(
    tpm_: Swtpm, image: Path, *args: str, pin: bytes | None = None
) -> interop.SystemdTpm2Token:
    """Run the real systemd-cryptenroll, and parse the token it added."""
    env = {**os.environ, "PASSWORD": PASSPHRASE.decode()}
    if pin is not None:
        env["NEWPIN"] = pin.decode()
        args += ("--tpm2-with-pin=yes",)
    before = set(_tokens(image))
    result = subprocess.run(
        ["systemd-cryptenroll", f"--tpm2-device={tpm_.tcti}", *args, str(image)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (token_id,) = set(_tokens(image)) - before
    return interop.parse(token_id, _tokens(image)[token_id])


def _tokens(image: Path) -> dict[int, Any]:
    dump = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(image)],
        capture_output=True, check=True, text=True,
    )
    tokens = json.loads(dump.stdout)["tokens"]
    return {int(k): v for k, v in tokens.items() if v["type"] == interop.TOKEN_TYPE}


def _extend(tpm_: Swtpm, pcr: int, bank: str, event: bytes) -> None:
    """Change a PCR the way a changed boot would, with tpm2-tools."""
    value = hashlib.new(bank, event).hexdigest()
    spec = f"{pcr}:{bank}={value}"
    subprocess.run(["tpm2_pcrextend", "-T", tpm_.tcti, spec], check=True, capture_output=True)


def _handles(tpm_: Swtpm, kind: str) -> list[str]:
    out = subprocess.run(
        ["tpm2_getcap", "-T", tpm_.tcti, kind], check=True, capture_output=True, text=True
    ).stdout
    return [line.strip("- ").strip() for line in out.splitlines() if line.strip()]


def _assert_opens(image: Path, token: interop.SystemdTpm2Token, key: bytes) -> None:
    assert len(key) == 44 and len(base64.b64decode(key, validate=True)) == 32
    assert opens_with(image, key)
    assert cryptsetup.test_key(str(image), key, slot=token.keyslots[0])


@pytest.mark.parametrize(
    ("pcr_arg", "pcrs"), [("7", (7,)), ("0+7", (0, 7)), ("", ())], ids=["7", "0+7", "none"]
)
def test_systemd_enrollment_opens(
    swtpm: Swtpm, luks_image: Path, pcr_arg: str, pcrs: tuple[int, ...]
) -> None:
    token = _enroll(swtpm, luks_image, f"--tpm2-pcrs={pcr_arg}")
    assert (token.pcrs, token.pcr_bank, token.primary_alg) == (pcrs, "sha256", "ecc")
    assert token.keyslots == (1,) and not token.needs_pin
    assert token.sealed_private + token.sealed_public == token.blob

    key = interop.passphrase(token, swtpm.tcti, _no_pin)

    _assert_opens(luks_image, token, key)
    assert _handles(swtpm, "handles-transient") == []  # primary and sealed object flushed
    assert len(_handles(swtpm, "handles-loaded-session")) == 1  # systemd's own leftover


@pytest.mark.parametrize("bank", ["sha256", "sha1"])
def test_measured_bank_and_changed_pcr(swtpm: Swtpm, luks_image: Path, bank: str) -> None:
    """systemd 252 binds to the bank whose PCRs were measured into (SHA-1 only if SHA-256's
    are all zero); a later change of that PCR is refused before any TPM authorisation."""
    _extend(swtpm, 7, bank, b"secure boot db")
    token = _enroll(swtpm, luks_image, "--tpm2-pcrs=7")
    assert token.pcr_bank == bank
    _assert_opens(luks_image, token, interop.passphrase(token, swtpm.tcti, _no_pin))

    _extend(swtpm, 7, bank, b"evil maid's db")
    with pytest.raises(PolicyMismatchError) as refused:
        interop.passphrase(token, swtpm.tcti, _no_pin)
    message = refused.value.one_line()
    assert f"PCR 7 ({bank}) differs from the value systemd-cryptenroll bound" in message
    assert "\n" not in message and "Traceback" not in message
    assert _handles(swtpm, "handles-transient") == []


def test_tpm_refuses_changed_pcrs_itself(swtpm: Swtpm, luks_image: Path) -> None:
    """Without sealer's own check, the TPM's policy failure still ends in a clear error."""
    token = _enroll(swtpm, luks_image, "--tpm2-pcrs=0+7")
    _extend(swtpm, 0, "sha256", b"new firmware")
    with pytest.raises(PolicyMismatchError) as refused:
        interop.passphrase(token, swtpm.tcti, _no_pin)
    assert "PCRs 0+7 (sha256): at least one differs" in refused.value.one_line()

    sealed = tpm.SystemdSealedObject(
        primary_alg=token.primary_alg, private=token.sealed_private,
        public=token.sealed_public, bank=BANKS["sha256"], pcrs=token.pcrs, with_pin=False,
    )
    with pytest.raises(PolicyMismatchError) as tpm_refused, connect(swtpm.tcti) as ctx:
        tpm.unseal(ctx, sealed, None)
    assert "differ from the values systemd-cryptenroll bound" in tpm_refused.value.one_line()
    assert _handles(swtpm, "handles-transient") == []
    assert len(_handles(swtpm, "handles-loaded-session")) == 1


def test_pin(swtpm: Swtpm, luks_image: Path) -> None:
    token = _enroll(swtpm, luks_image, "--tpm2-pcrs=7", pin=PIN)
    assert token.needs_pin
    asked: list[bool] = []

    def read_pin() -> bytes:
        asked.append(True)
        return PIN

    _assert_opens(luks_image, token, interop.passphrase(token, swtpm.tcti, read_pin))
    assert asked == [True]

    with pytest.raises(AuthError):
        interop.passphrase(token, swtpm.tcti, lambda: b"1234")
    pinless = dataclasses.replace(token, needs_pin=False)  # a header edited to skip the PIN
    with pytest.raises(TokenError, match="tpm2-pin flag contradicts its policy hash"):
        interop.passphrase(pinless, swtpm.tcti, _no_pin)
    assert _handles(swtpm, "handles-transient") == []

    _extend(swtpm, 7, "sha256", b"changed")
    with pytest.raises(PolicyMismatchError):
        interop.passphrase(token, swtpm.tcti, _no_pin)  # PCRs first: no PIN prompt in vain


def test_another_tpm_is_refused(swtpm: Swtpm, luks_image: Path, tmp_path: Path) -> None:
    token = _enroll(swtpm, luks_image, "--tpm2-pcrs=7")
    with Swtpm(tmp_path / "other-tpm") as other, pytest.raises(TPMMismatchError):
        interop.passphrase(token, other.tcti, _no_pin)


def test_damaged_sealed_object_is_refused(swtpm: Swtpm, luks_image: Path) -> None:
    token = _enroll(swtpm, luks_image, "--tpm2-pcrs=7")
    private = bytearray(token.sealed_private)
    private[40] ^= 0x01  # inside the encrypted sensitive area: the TPM's integrity check fails
    damaged = dataclasses.replace(token, blob=bytes(private) + token.sealed_public)
    with pytest.raises(SealerError) as refused:
        interop.passphrase(damaged, swtpm.tcti, _no_pin)
    assert isinstance(refused.value, TPMMismatchError)
    assert _handles(swtpm, "handles-transient") == []


@pytest.fixture
def logged_tpm(tmp_path: Path) -> Iterator[tuple[Swtpm, Path]]:
    log = tmp_path / "wire.log"
    with Swtpm(tmp_path / "tpm", log_file=log) as tpm_:
        yield tpm_, log


@pytest.mark.parametrize("pin", [None, PIN], ids=["no-pin", "pin"])
def test_no_secret_crosses_the_wire_in_clear(
    logged_tpm: tuple[Swtpm, Path], luks_image: Path, pin: bytes | None
) -> None:
    tpm_, log = logged_tpm
    token = _enroll(tpm_, luks_image, "--tpm2-pcrs=7", pin=pin)
    # Byte-compatibility of the primary key: systemd's CreatePrimary carries our template.
    template = tpm.primary_template("ecc").marshal()
    created = [e.command for e in WireLog.read(log).exchanges if e.name == "CreatePrimary"]
    assert created and all(template in command for command in created)

    start = log_size(log)
    key = interop.passphrase(token, tpm_.tcti, lambda: pin or b"")
    _assert_opens(luks_image, token, key)

    secret = base64.b64decode(key)
    wire = WireLog.read(log)  # systemd's enrollment and verification unseal, then ours
    needles = [secret, key, secret[:8], secret[-8:], PASSPHRASE]
    if pin is not None:
        needles += [tpm.pin_auth_value(pin), tpm.pin_auth_value(pin)[:8]]
    for needle in needles:
        assert not wire.contains(needle), f"{needle!r} crossed the TPM bus in clear"
    assert wire.contains(token.sealed_private[2:34])  # positive control: the blob is public

    counts = WireLog.read(log, start).counts(succeeded_only=True)
    expected = {
        "PCR_Read": 1, "CreatePrimary": 1, "Load": 1, "StartAuthSession": 1, "PolicyPCR": 1,
        "Unseal": 1, "FlushContext": 3,
    }
    if pin is not None:
        expected["PolicyAuthValue"] = 1
    assert counts == expected


# ---- the parser, against hostile tokens (no TPM needed) ----


def test_real_token_parses() -> None:
    token = interop.parse(3, REAL_TOKEN)
    assert token.keyslots == (1,) and token.pcrs == (7,) and token.pcr_bank == "sha256"
    assert token.primary_alg == "ecc" and not token.needs_pin and token.unsupported() is None
    assert token.policy_hash.hex() == REAL_TOKEN["tpm2-policy-hash"]
    assert len(token.sealed_private) == 2 + 0x9E and len(token.sealed_public) == 2 + 0x4E
    # The sealed object's authPolicy is the token's policy hash; systemd computed it from
    # PolicyPCR over an all-zero PCR 7, which sealer's digest code reproduces.
    assert interop.expected_policy(BANKS["sha256"], {7: bytes(32)}, False) == token.policy_hash


def test_optional_fields_default_like_systemd() -> None:
    doc = {k: v for k, v in REAL_TOKEN.items() if k not in ("tpm2-pcr-bank", "tpm2-primary-alg")}
    token = interop.parse(0, {**doc, "tpm2-pin": False, "some-future-field": 1})
    assert (token.pcr_bank, token.primary_alg) == ("sha256", "ecc")
    del doc["tpm2-pin"]
    assert not interop.parse(0, {**doc, "tpm2-pcrs": [7, 7], "tpm2-pcr-bank": "SHA256"}).needs_pin


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


_BLOB = base64.b64decode(REAL_TOKEN["tpm2-blob"])
_PUBLIC_AT = 2 + 0x9E
HOSTILE: dict[str, Any] = {
    "not-an-object": ["systemd-tpm2"],
    "null": None,
    "other-type": {"type": "sealer-tpm2"},
    "keyslots-string": {"keyslots": "1"},
    "keyslots-int": {"keyslots": [1]},
    "keyslots-empty": {"keyslots": []},
    "keyslots-word": {"keyslots": ["one"]},
    "keyslots-negative": {"keyslots": ["-1"]},
    "keyslots-too-big": {"keyslots": ["32"]},
    "keyslots-huge": {"keyslots": ["9" * 5000]},
    "keyslots-unicode-digit": {"keyslots": ["\u0663"]},
    "pcrs-string": {"tpm2-pcrs": "7"},
    "pcrs-24": {"tpm2-pcrs": [24]},
    "pcrs-negative": {"tpm2-pcrs": [-1]},
    "pcrs-bool": {"tpm2-pcrs": [True]},
    "pcrs-float": {"tpm2-pcrs": [7.0]},
    "pcrs-null": {"tpm2-pcrs": None},
    "bank-md5": {"tpm2-pcr-bank": "md5"},
    "bank-number": {"tpm2-pcr-bank": 11},
    "alg-dsa": {"tpm2-primary-alg": "dsa"},
    "alg-null": {"tpm2-primary-alg": None},
    "blob-not-base64": {"tpm2-blob": "not base64!"},
    "blob-empty": {"tpm2-blob": ""},
    "blob-list": {"tpm2-blob": [REAL_TOKEN["tpm2-blob"]]},
    "blob-non-ascii": {"tpm2-blob": "AJ4\u00e9"},
    "blob-truncated": {"tpm2-blob": _b64(_BLOB[:-1])},
    "blob-private-only": {"tpm2-blob": _b64(_BLOB[:_PUBLIC_AT])},
    "blob-trailing": {"tpm2-blob": _b64(_BLOB + b"\0")},
    "blob-one-byte": {"tpm2-blob": _b64(b"\0")},
    "blob-not-sealed-data": {
        "tpm2-blob": _b64(_BLOB[: _PUBLIC_AT + 2] + b"\x00\x23" + _BLOB[_PUBLIC_AT + 4 :])
    },
    "blob-tiny-public": {"tpm2-blob": _b64(_BLOB[:_PUBLIC_AT] + b"\x00\x02\x00\x08")},
    "hash-not-hex": {"tpm2-policy-hash": "zz" * 32},
    "hash-spaces": {"tpm2-policy-hash": "8b 56" + "00" * 30},
    "hash-odd": {"tpm2-policy-hash": "abc"},
    "hash-short": {"tpm2-policy-hash": "00" * 20},
    "hash-other": {"tpm2-policy-hash": "00" * 32},
    "hash-number": {"tpm2-policy-hash": 5},
    "pin-string": {"tpm2-pin": "yes"},
    "pin-int": {"tpm2-pin": 1},
    "pin-null": {"tpm2-pin": None},
    "pubkey-pcrs-without-key": {"tpm2_pubkey_pcrs": [11]},
    "pubkey-pcrs-bad": {"tpm2_pubkey_pcrs": ["11"], "tpm2_pubkey": _b64(b"pem")},
    "pubkey-not-base64": {"tpm2_pubkey_pcrs": [11], "tpm2_pubkey": "!!"},
}
REQUIRED = ["type", "keyslots", "tpm2-blob", "tpm2-pcrs", "tpm2-policy-hash"]


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_token(name: str) -> None:
    change = HOSTILE[name]
    doc = {**REAL_TOKEN, **change} if isinstance(change, dict) else change
    with pytest.raises(TokenError) as refused:
        interop.parse(3, doc)
    assert refused.value.one_line().startswith("systemd-tpm2 token 3 is corrupted (")


@pytest.mark.parametrize("field", REQUIRED)
def test_missing_field(field: str) -> None:
    doc = {k: v for k, v in REAL_TOKEN.items() if k != field}
    with pytest.raises(TokenError):
        interop.parse(3, doc)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"tpm2_pubkey_pcrs": [11], "tpm2_pubkey": _b64(b"PEM")}, "signed PCR policy"),
        ({"tpm2_salt": _b64(b"salt")}, "tpm2_salt (a salted PIN (systemd 253))"),
        ({"tpm2_srk": _b64(b"srk")}, "newer systemd"),
        ({"tpm2_pcrlock": True}, "newer systemd"),
    ],
)
def test_unsupported_token_is_refused_before_the_tpm(extra: dict[str, Any], reason: str) -> None:
    token = interop.parse(2, {**REAL_TOKEN, **extra})
    with pytest.raises(TokenError) as refused:
        interop.passphrase(token, "swtpm:host=127.0.0.1,port=1", _no_pin)  # never reached
    assert reason in refused.value.one_line()
    assert refused.value.one_line().startswith("cannot use systemd-tpm2 token 2: ")


def test_unsupported_fields_that_are_off_are_fine() -> None:
    doc = {**REAL_TOKEN, "tpm2_pcrlock": False, "tpm2_pubkey_pcrs": [], "tpm2_salt": None}
    assert interop.parse(0, doc).unsupported() is None
