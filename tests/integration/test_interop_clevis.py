"""Volumes bound by real clevis (tpm2 pin): sealer.interop.clevis opens them byte for byte.

Every binding here is made by ``clevis luks bind`` against swtpm, and every key sealer
derives is checked against cryptsetup and against ``clevis luks pass`` itself.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PASSPHRASE
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm, WireLog, log_size

from sealer.errors import ExitCode, PolicyMismatchError, SealerError, TokenError
from sealer.interop import clevis
from sealer.luks import cryptsetup
from sealer.pcrs import BANKS
from sealer.tpm import clevis_tpm2
from sealer.tpm.connection import connect
from sealer.tpm.pcr import active_banks

pytestmark = [
    pytest.mark.skipif(
        shutil.which("clevis") is None,
        reason="clevis is not installed (apt-get install clevis clevis-luks clevis-tpm2)",
    ),
]

PCR7_SHA256 = '{"pcr_bank":"sha256","pcr_ids":"7"}'
Bound = tuple[Swtpm, Path, dict[str, Any]]  # a swtpm, an image clevis bound to it, its token


def bind(tpm: Swtpm, image: Path, config: str) -> None:
    """``clevis luks bind`` with the passphrase on stdin, as a person would script it."""
    env = {**os.environ, "TPM2TOOLS_TCTI": tpm.tcti}
    subprocess.run(
        ["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2", config],
        input=PASSPHRASE, env=env, check=True, capture_output=True,
    )
    # tpm2_createpolicy (tpm2-tools 5.4) leaves its trial session loaded and clevis flushes
    # only transient objects: harmless behind /dev/tpmrm0, but swtpm has no resource manager
    # and runs out of session slots after three binds. Clean up after clevis, not after us.
    subprocess.run(["tpm2_flushcontext", "-T", tpm.tcti, "-l"], check=True)


def clevis_token(image: Path) -> tuple[int, dict[str, Any]]:
    [token] = cryptsetup.read_header(str(image)).tokens_of_type(clevis.TOKEN_TYPE)
    return token.token_id, dict(token.data)


def clevis_pass(tpm: Swtpm, image: Path, slot: int) -> bytes:
    env = {**os.environ, "TPM2TOOLS_TCTI": tpm.tcti}
    argv = ["clevis", "luks", "pass", "-d", str(image), "-s", str(slot)]
    return subprocess.run(argv, env=env, check=True, capture_output=True).stdout


def extend(tpm: Swtpm, pcr: int, bank: str = "sha256") -> None:
    digest = "11" * BANKS[bank].size
    subprocess.run(["tpm2_pcrextend", "-T", tpm.tcti, f"{pcr}:{bank}={digest}"], check=True)


def leftovers(tpm: Swtpm) -> list[str]:
    """Transient objects and sessions still loaded: sealer must leave none behind."""
    found = []
    for kind in ("handles-transient", "handles-loaded-session"):
        out = subprocess.run(
            ["tpm2_getcap", "-T", tpm.tcti, kind], check=True, capture_output=True, text=True
        ).stdout
        found += [line for line in out.splitlines() if line.strip()]
    return found


@pytest.mark.parametrize(
    "config",
    [
        PCR7_SHA256,
        '{"pcr_bank":"sha256","pcr_ids":"0,7"}',
        '{"pcr_bank":"sha1","pcr_ids":"7"}',
        '{"key":"rsa","pcr_bank":"sha256","pcr_ids":"7"}',
        # clevis v19 cannot unseal this one itself: tpm2_unseal's PCR policy session is
        # SHA-256 whatever "hash" the object was created with. sealer uses the object's.
        '{"hash":"sha1","pcr_bank":"sha256","pcr_ids":"7"}',
        "{}",  # no PCR policy at all: the object takes an empty password
    ],
)
def test_passphrase_opens_a_clevis_bound_volume(
    swtpm: Swtpm, luks_image: Path, config: str
) -> None:
    cfg = json.loads(config)
    if cfg.get("pcr_bank") == "sha1":
        with connect(swtpm.tcti) as ctx:
            if BANKS["sha1"] not in active_banks(ctx):
                pytest.skip("this swtpm has no active sha1 PCR bank")
    bind(swtpm, luks_image, config)
    token_id, doc = clevis_token(luks_image)
    token = clevis.parse(token_id, doc)
    assert token.pcr_bank == cfg.get("pcr_bank", "")
    expected_pcrs = tuple(int(p) for p in cfg["pcr_ids"].split(",")) if "pcr_ids" in cfg else ()
    assert token.pcrs == expected_pcrs
    assert (token.hash_alg, token.key_alg) == (cfg.get("hash", "sha256"), cfg.get("key", "ecc"))
    [slot] = token.keyslots

    key = clevis.passphrase(token, swtpm.tcti)
    assert cryptsetup.test_key(str(luks_image), key, slot)
    assert opens_with(luks_image, key)
    if token.hash_alg == "sha256" or not token.pcrs:
        assert key == clevis_pass(swtpm, luks_image, slot)  # byte for byte what clevis derives
    assert not leftovers(swtpm)


@pytest.mark.parametrize(
    ("pcr_ids", "message"),
    [
        ("7", "PCR 7 differs from the value clevis bound (sha256 bank)"),
        ("0,7", "PCRs 0, 7: at least one differs from the values clevis bound (sha256 bank;"),
    ],
)
def test_a_changed_pcr_is_a_policy_mismatch(
    swtpm: Swtpm, luks_image: Path, pcr_ids: str, message: str
) -> None:
    bind(swtpm, luks_image, json.dumps({"pcr_bank": "sha256", "pcr_ids": pcr_ids}))
    token = clevis.parse(*clevis_token(luks_image))
    extend(swtpm, 7)
    with pytest.raises(PolicyMismatchError) as caught:
        clevis.passphrase(token, swtpm.tcti)
    assert caught.value.message.startswith(message), caught.value.message
    assert caught.value.exit_code == ExitCode.POLICY
    assert "\n" not in caught.value.one_line()
    assert not leftovers(swtpm)  # the failed attempt flushed primary, object and session
    extend(swtpm, 16)  # PCRs outside the binding do not matter: still refused, still clean
    with pytest.raises(PolicyMismatchError):
        clevis.passphrase(token, swtpm.tcti)
    assert not leftovers(swtpm)


def test_extending_an_unbound_pcr_changes_nothing(swtpm: Swtpm, luks_image: Path) -> None:
    bind(swtpm, luks_image, PCR7_SHA256)
    token = clevis.parse(*clevis_token(luks_image))
    extend(swtpm, 4)
    extend(swtpm, 7, "sha1")  # another bank than the bound one
    assert opens_with(luks_image, clevis.passphrase(token, swtpm.tcti))


# --- hostile and malformed tokens -------------------------------------------------------------


@pytest.fixture(scope="module")
def bound_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bound]:
    """One real clevis binding (PCR 7, sha256), shared by the malformed-token tests."""
    tmp = tmp_path_factory.mktemp("clevis")
    image = make_luks_image(tmp / "volume.img", PASSPHRASE)
    with Swtpm(tmp / "tpm") as tpm:
        bind(tpm, image, PCR7_SHA256)
        yield tpm, image, clevis_token(image)[1]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _header(doc: dict[str, Any]) -> dict[str, Any]:
    text = doc["jwe"]["protected"]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return header


def _with_header(doc: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    header = _header(doc)
    edit(header)
    doc["jwe"]["protected"] = _b64url(json.dumps(header).encode())
    return doc


def _tpm2(header: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = header["clevis"]["tpm2"]
    return section


def _edit(doc: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    edit(doc)
    return doc


MALFORMED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "no jwe": lambda d: _edit(d, lambda x: x.pop("jwe")),
    "jwe is a string": lambda d: _edit(d, lambda x: x.update(jwe="a.b.c.d.e")),
    "no iv": lambda d: _edit(d, lambda x: x["jwe"].pop("iv")),
    "iv is a number": lambda d: _edit(d, lambda x: x["jwe"].update(iv=12)),
    "iv is 8 bytes": lambda d: _edit(d, lambda x: x["jwe"].update(iv=_b64url(b"\0" * 8))),
    "ciphertext not base64url": lambda d: _edit(d, lambda x: x["jwe"].update(ciphertext="a+b/")),
    "tag padded base64": lambda d: _edit(d, lambda x: x["jwe"].update(tag="AAAA==")),
    "tag of length 1 mod 4": lambda d: _edit(d, lambda x: x["jwe"].update(tag="AAAAA")),
    "encrypted key set": lambda d: _edit(d, lambda x: x["jwe"].update(encrypted_key="AAAA")),
    "aad member": lambda d: _edit(d, lambda x: x["jwe"].update(aad="AAAA")),
    "protected not base64url": lambda d: _edit(d, lambda x: x["jwe"].update(protected="e30=")),
    "protected not utf-8": lambda d: _edit(d, lambda x: x["jwe"].update(protected="__8")),
    "protected not json": lambda d: _edit(d, lambda x: x["jwe"].update(protected=_b64url(b"{"))),
    "protected a list": lambda d: _edit(d, lambda x: x["jwe"].update(protected=_b64url(b"[]"))),
    "no keyslots": lambda d: _edit(d, lambda x: x.pop("keyslots")),
    "keyslot not a number": lambda d: _edit(d, lambda x: x.update(keyslots=["one"])),
    "keyslot an int": lambda d: _edit(d, lambda x: x.update(keyslots=[1])),
    "keyslot unicode digit": lambda d: _edit(d, lambda x: x.update(keyslots=["\u00b2"])),
    "wrong type": lambda d: _edit(d, lambda x: x.update(type="systemd-tpm2")),
    "no clevis": lambda d: _with_header(d, lambda h: h.pop("clevis")),
    "no pin": lambda d: _with_header(d, lambda h: h["clevis"].pop("pin")),
    "no tpm2 section": lambda d: _with_header(d, lambda h: h["clevis"].pop("tpm2")),
    "alg ECDH-ES": lambda d: _with_header(d, lambda h: h.update(alg="ECDH-ES")),
    "enc CBC": lambda d: _with_header(d, lambda h: h.update(enc="A256CBC-HS512")),
    "zip": lambda d: _with_header(d, lambda h: h.update(zip="DEF")),
    "no jwk_pub": lambda d: _with_header(d, lambda h: _tpm2(h).pop("jwk_pub")),
    "jwk_priv a list": lambda d: _with_header(d, lambda h: _tpm2(h).update(jwk_priv=[])),
    "jwk_pub not base64url": lambda d: _with_header(d, lambda h: _tpm2(h).update(jwk_pub="@@")),
    "jwk_pub not a TPM2B": lambda d: _with_header(d, lambda h: _tpm2(h).update(jwk_pub="AAAA")),
    "no hash": lambda d: _with_header(d, lambda h: _tpm2(h).pop("hash")),
    "hash md5": lambda d: _with_header(d, lambda h: _tpm2(h).update(hash="md5")),
    "key keyedhash": lambda d: _with_header(d, lambda h: _tpm2(h).update(key="keyedhash")),
    "pcr_ids a list": lambda d: _with_header(d, lambda h: _tpm2(h).update(pcr_ids=["7"])),
    "pcr_ids 24": lambda d: _with_header(d, lambda h: _tpm2(h).update(pcr_ids="7,24")),
    "pcr_ids junk": lambda d: _with_header(d, lambda h: _tpm2(h).update(pcr_ids="7,x")),
    "pcr_ids octal": lambda d: _with_header(d, lambda h: _tpm2(h).update(pcr_ids="07")),
    "no pcr_bank": lambda d: _with_header(d, lambda h: _tpm2(h).pop("pcr_bank")),
    "pcr_bank sm3": lambda d: _with_header(d, lambda h: _tpm2(h).update(pcr_bank="sm3_256")),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_tokens_are_token_errors(bound_token: Bound, case: str) -> None:
    doc = MALFORMED[case](bound_token[2])
    with pytest.raises(TokenError) as caught:
        clevis.parse(3, doc)
    assert caught.value.message.startswith("clevis token 3"), caught.value.message
    assert caught.value.hint


@pytest.mark.parametrize("pin", ["tang", "sss"])
def test_other_pins_are_refused_by_name(bound_token: Bound, pin: str) -> None:
    def to_pin(header: dict[str, Any]) -> None:
        header["clevis"] = {"pin": pin, pin: {"url": "http://tang.example"}}

    with pytest.raises(TokenError) as caught:
        clevis.parse(0, _with_header(bound_token[2], to_pin))
    assert f"clevis pin '{pin}' is not supported, only tpm2" in caught.value.message


def _leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaf_paths(value, (*path, index))


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


HOSTILE_VALUES: list[Any] = [None, 0, True, -1, 1.5, "", "!", "A", [], {}, ["x"], {"a": 1}]


def test_no_hostile_value_escapes_as_another_exception(
    bound_token: Bound,
) -> None:
    """Every field of the token and of its protected header, replaced by every odd value:
    parse() returns a token or raises TokenError, never KeyError, ValueError and the like."""
    doc = bound_token[2]
    header = _header(doc)
    variants: list[Any] = []
    for path in _leaf_paths(doc):
        variants += [_replaced(doc, path, value) for value in HOSTILE_VALUES]
    for path in _leaf_paths(header):
        for value in HOSTILE_VALUES:
            protected = _b64url(json.dumps(_replaced(header, path, value)).encode())
            variants.append(_replaced(doc, ("jwe", "protected"), protected))
    assert len(variants) > 200
    for variant in variants:
        with contextlib.suppress(TokenError):  # anything else fails the test
            clevis.parse(0, variant if isinstance(variant, dict) else {"x": variant})


def test_a_tampered_token_fails_cleanly_at_unseal(
    bound_token: Bound,
) -> None:
    tpm, image, doc = bound_token
    good = clevis.parse(0, doc)
    assert opens_with(image, clevis.passphrase(good, tpm.tcti))

    flipped = bytes([good.ciphertext[0] ^ 1]) + good.ciphertext[1:]
    with pytest.raises(TokenError, match="does not decrypt with the key the TPM released"):
        clevis.passphrase(clevis.parse(0, _edit(doc, lambda x: x["jwe"].update(
            ciphertext=_b64url(flipped)))), tpm.tcti)

    # A well-formed TPM2B around garbage: the TSS cannot unmarshal it.
    garbage = _b64url(b"\x00\x04abcd")
    with pytest.raises(TokenError, match=r"clevis token 0 is corrupted \(jwk_pub or jwk_priv"):
        clevis.passphrase(
            clevis.parse(0, _with_header(doc, lambda h: _tpm2(h).update(jwk_pub=garbage))),
            tpm.tcti,
        )

    # A TPM2B the TSS accepts but the TPM finds malformed: its parameter error is the token's.
    short = _b64url(b"\x00\x08abcdefgh")
    with pytest.raises(TokenError, match="the TPM refused its sealed object"):
        clevis.passphrase(
            clevis.parse(0, _with_header(doc, lambda h: _tpm2(h).update(jwk_priv=short))),
            tpm.tcti,
        )

    # An altered private blob fails the TPM's integrity check, as another TPM's blob would.
    priv = bytearray(good.jwk_priv)
    priv[-1] ^= 1
    altered = _with_header(doc, lambda h: _tpm2(h).update(jwk_priv=_b64url(bytes(priv))))
    with pytest.raises(SealerError, match="cannot load the key sealed in clevis token 0"):
        clevis.passphrase(clevis.parse(0, altered), tpm.tcti)
    assert not leftovers(tpm)


# --- what crosses the TPM bus ---------------------------------------------------------------


@pytest.fixture
def logged_tpm(tmp_path: Path) -> Iterator[tuple[Swtpm, Path]]:
    log = tmp_path / "wire.log"
    with Swtpm(tmp_path / "tpm", log_file=log) as tpm:
        yield tpm, log


def test_the_jwk_never_crosses_the_wire_in_clear(
    logged_tpm: tuple[Swtpm, Path],
    luks_image: Path,
    record_property: Callable[[str, object], None],
) -> None:
    tpm, log = logged_tpm
    bind(tpm, luks_image, PCR7_SHA256)
    token = clevis.parse(*clevis_token(luks_image))

    start = log_size(log)
    key = clevis.passphrase(token, tpm.tcti)
    ours = WireLog.read(log, start)
    assert ours.counts() == {
        "CreatePrimary": 1, "Load": 1, "StartAuthSession": 1, "PolicyPCR": 1, "Unseal": 1,
        "FlushContext": 3,
    }

    jwk = clevis_tpm2.unseal_jwk(
        tpm.tcti, where="test", hash_name=token.hash_alg, key=token.key_alg,
        public=token.jwk_pub, private=token.jwk_priv, pcr_bank=token.pcr_bank, pcrs=token.pcrs,
    )
    k = json.loads(jwk)["k"]
    secret_bytes = base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
    needles = [jwk.strip(), k.encode(), secret_bytes, b'"kty"', key]
    ours = WireLog.read(log, start)  # both of our unseals
    for needle in needles:
        assert not ours.contains(needle), f"{needle[:12]!r}... crossed the TPM bus in clear"

    # clevis itself, measured for comparison: its tpm2_unseal has no encrypted session.
    start = log_size(log)
    assert clevis_pass(tpm, luks_image, token.keyslots[0]) == key
    theirs = WireLog.read(log, start)
    record_property("clevis_pass_commands", sum(theirs.counts().values()))
    record_property("clevis_pass_counts", dict(theirs.counts()))
    record_property("clevis_pass_jwk_in_clear", theirs.contains(k.encode()))
    # Positive control of the reader: the same JWK is visible in clevis' own Unseal response
    # (tpm2-tools 5.4 unseals without parameter encryption).
    assert theirs.contains(k.encode()) and theirs.contains(b'"kty"')
