"""Volumes bound by clevis' tpm2 pin: the ``clevis`` LUKS2 token, and the key it leads to.

The format, as clevis v19 writes it (source paths in latchset/clevis at tag v19):

- src/luks/clevis-luks-common-functions.in (clevis_luks_save_slot) imports the token
  ``{"type": "clevis", "keyslots": ["N"], "jwe": <JWE>}``, the JWE in the flattened JSON
  serialization of RFC 7516 section 7.2.2 (``jose jwe fmt``): ``protected``,
  ``encrypted_key`` (empty), ``iv``, ``ciphertext``, ``tag``, all BASE64URL without padding.
- src/pins/tpm2/clevis-encrypt-tpm2 generates a random JWK ``{"kty": "oct", "alg": "A256GCM",
  "k": ...}``, seals it (JSON text, plus the newline of a here-string) as a TPM keyedhash
  object, and encrypts the plaintext with that JWK through ``jose jwe enc``: "alg": "dir" and
  "enc": "A256GCM" (the JWK *is* the content encryption key; no ECDH-ES, no key wrap).
  The protected header carries the binding:
  ``{"clevis": {"pin": "tpm2", "tpm2": {"hash", "key", "pcr_bank", "pcr_ids", "jwk_pub",
  "jwk_priv"}}}``, pcr_ids a string such as "0,7" (absent without a PCR policy), jwk_pub and
  jwk_priv the BASE64URL of tpm2-tools' TPM2B_PUBLIC / TPM2B_PRIVATE files.
- The plaintext is the keyslot passphrase that clevis_luks_generate_key made with
  ``pwmake`` and added with ``cryptsetup luksAddKey``; clevis-luks-unlock later hands it to
  ``cryptsetup open -d-`` after bash command substitution (see ``_as_clevis_hands_it_over``).

The TPM work (re-creating clevis' primary key, PolicyPCR, unseal) is sealer.tpm.clevis_tpm2.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealer.errors import TokenError
from sealer.pcrs import BANKS, PCR_COUNT
from sealer.tpm import clevis_tpm2

TOKEN_TYPE = "clevis"

# RFC 7518 section 5.3: AES GCM content encryption, key size per "enc" value.
_GCM_KEY_SIZES = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}
_GCM_IV_SIZE = 12  # 96 bits (RFC 7518 section 5.3)
_GCM_TAG_SIZE = 16  # 128 bits (RFC 7518 section 5.3)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# A PCR index as tpm2-tools reads it and a person writes it: decimal, no leading zero
# (tpm2-tools' strtoul(base 0) would read "010" as octal; clevis never writes that).
_PCR_INDEX = re.compile(r"0|[1-9][0-9]?")
_REPAIR = "unlock with the passphrase, then 'clevis luks unbind' this binding and bind again"


@dataclass(frozen=True)
class ClevisTpm2Token:
    """A clevis tpm2 pin's LUKS2 token, parsed: the object the TPM unseals (a JWK), and the JWE
    that this JWK decrypts to the keyslot passphrase.
    """

    token_id: int
    keyslots: tuple[int, ...]
    pcr_bank: str  # "" when clevis bound without a PCR policy (no pcr_ids)
    pcrs: tuple[int, ...]
    hash_alg: str  # clevis "hash": name algorithm of the primary key and the sealed object
    key_alg: str  # clevis "key": tpm2_createprimary's -G value, e.g. "ecc"
    jwk_pub: bytes  # marshalled TPM2B_PUBLIC of the sealed object
    jwk_priv: bytes  # marshalled TPM2B_PRIVATE of the sealed object
    protected: str  # the JWE protected header exactly as stored: it is the GCM AAD
    enc: str  # "A256GCM" (or another AES GCM size)
    iv: bytes
    ciphertext: bytes
    tag: bytes


class _Reader:
    """Typed access to one JSON object of the token; every malformation is a TokenError."""

    def __init__(self, doc: Mapping[str, Any], where: str, path: str) -> None:
        self.doc = doc
        self.where = where
        self.path = path  # e.g. "jwe", for messages

    def fail(self, what: str) -> TokenError:
        return TokenError(f"{self.where} is corrupted ({what})", _REPAIR)

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def text(self, key: str) -> str:
        value = self.doc.get(key)
        if not isinstance(value, str):
            raise self.fail(f"field {self._name(key)!r} is missing or not a string")
        return value

    def obj(self, key: str) -> _Reader:
        value = self.doc.get(key)
        if not isinstance(value, dict):
            raise self.fail(f"field {self._name(key)!r} is missing or not an object")
        return _Reader(value, self.where, self._name(key))

    def b64url(self, key: str, size: int | None = None) -> bytes:
        value = self.text(key)
        decoded = _b64url_decode(value)
        if decoded is None:
            raise self.fail(f"field {self._name(key)!r} is not BASE64URL")
        if size is not None and len(decoded) != size:
            raise self.fail(f"field {self._name(key)!r} has {len(decoded)} bytes, not {size}")
        return decoded


def _b64url_decode(text: str) -> bytes | None:
    """BASE64URL without padding (RFC 7515 section 2), or None when ``text`` is not that.

    The alphabet is checked first: Python's decoder would silently skip stray characters.
    """
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _keyslots(r: _Reader) -> tuple[int, ...]:
    raw = r.doc.get("keyslots")
    if not isinstance(raw, list) or not raw:
        raise r.fail("field 'keyslots' is missing or empty")
    slots = []
    for slot in raw:
        if not (isinstance(slot, str) and slot.isascii() and slot.isdigit() and len(slot) < 4):
            raise r.fail(f"keyslot {slot!r} is not a keyslot number")
        slots.append(int(slot))
    return tuple(slots)


def _pcr_ids(r: _Reader, text: str) -> tuple[int, ...]:
    """clevis' pcr_ids string ("7", "0,7"; tpm2-tools also takes "all")."""
    if text == "all":
        return tuple(range(PCR_COUNT))
    items = text.split(",")
    if not all(_PCR_INDEX.fullmatch(item) and int(item) < PCR_COUNT for item in items):
        raise r.fail(f"pcr_ids {text!r} is not a list of PCR indices 0-23")
    return tuple(sorted({int(item) for item in items}))


def _protected_header(jwe: _Reader) -> tuple[str, dict[str, Any]]:
    encoded = jwe.text("protected")
    raw = _b64url_decode(encoded)
    if raw is None:
        raise jwe.fail("field 'jwe.protected' is not BASE64URL")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # UnicodeDecodeError and JSONDecodeError are ValueErrors; RecursionError comes from
        # arrays or objects nested about a thousand deep.
        raise jwe.fail("the JWE protected header is not JSON") from exc
    if not isinstance(header, dict):
        raise jwe.fail("the JWE protected header is not a JSON object")
    return encoded, header


def _bank(r: _Reader, key: str, what: str) -> str:
    name = r.text(key)
    if name not in BANKS:
        raise TokenError(
            f"{r.where} uses the {what} {name!r}, which sealer does not support",
            f"supported: {', '.join(BANKS)}; unlock with the passphrase",
        )
    return name


def _tpm2b(r: _Reader, key: str) -> bytes:
    """A marshalled TPM2B: a big-endian 16-bit size, then exactly that many bytes."""
    blob = r.b64url(key)
    if len(blob) < 2 or int.from_bytes(blob[:2], "big") != len(blob) - 2:
        raise r.fail(f"field {r._name(key)!r} is not a TPM2B blob")
    return blob


def parse(token_id: int, doc: Mapping[str, Any]) -> ClevisTpm2Token:
    """Read a ``clevis`` LUKS2 token; only the tpm2 pin is supported (not sss, not tang)."""
    where = f"clevis token {token_id}"
    top = _Reader(doc, where, "")
    if doc.get("type") != TOKEN_TYPE:
        raise top.fail(f"type is {doc.get('type')!r}")
    keyslots = _keyslots(top)
    jwe = top.obj("jwe")
    if "recipients" in jwe.doc or "aad" in jwe.doc:
        # clevis reads its JWE back in the compact serialization, which has neither.
        raise top.fail("its JWE has recipients or aad, which clevis never writes")
    protected, header = _protected_header(jwe)
    hdr = _Reader(header, where, "protected")
    clevis_cfg = hdr.obj("clevis")
    pin = clevis_cfg.doc.get("pin")
    if pin != "tpm2":
        if isinstance(pin, str):
            raise TokenError(
                f"{where}: clevis pin {pin!r} is not supported, only tpm2",
                "unlock it with clevis, or with the passphrase",
            )
        raise top.fail("field 'protected.clevis.pin' is missing or not a string")
    tpm2 = clevis_cfg.obj("tpm2")
    alg, enc = hdr.text("alg"), hdr.text("enc")
    if alg != "dir" or enc not in _GCM_KEY_SIZES or "zip" in header:
        raise TokenError(
            f"{where} is encrypted as alg {alg!r}, enc {enc!r}"
            f"{', zip ' + repr(header['zip']) if 'zip' in header else ''}; sealer reads what "
            "clevis' tpm2 pin writes: alg 'dir' with AES GCM, uncompressed",
            "unlock with clevis, or with the passphrase",
        )
    if jwe.b64url("encrypted_key") != b"":
        # RFC 7516 section 5.2 step 10: with direct encryption the encrypted key is empty.
        raise top.fail("field 'jwe.encrypted_key' must be empty with alg 'dir'")
    key_alg = tpm2.text("key")
    if key_alg not in clevis_tpm2.PRIMARY_KEYS:
        raise TokenError(
            f"{where} was bound with the primary key type {key_alg!r}, which sealer cannot "
            "re-create",
            f"supported: {', '.join(clevis_tpm2.PRIMARY_KEYS)}; unlock with the passphrase",
        )
    pcrs: tuple[int, ...] = ()
    pcr_bank = ""
    # clevis-decrypt-tpm2 applies a PCR policy, and reads pcr_bank, only for non-empty pcr_ids.
    if tpm2.doc.get("pcr_ids", "") != "":
        pcrs = _pcr_ids(tpm2, tpm2.text("pcr_ids"))
        pcr_bank = _bank(tpm2, "pcr_bank", "PCR bank")
    return ClevisTpm2Token(
        token_id=token_id,
        keyslots=keyslots,
        pcr_bank=pcr_bank,
        pcrs=pcrs,
        hash_alg=_bank(tpm2, "hash", "hash algorithm"),
        key_alg=key_alg,
        jwk_pub=_tpm2b(tpm2, "jwk_pub"),
        jwk_priv=_tpm2b(tpm2, "jwk_priv"),
        protected=protected,
        enc=enc,
        iv=jwe.b64url("iv", _GCM_IV_SIZE),
        ciphertext=jwe.b64url("ciphertext"),
        tag=jwe.b64url("tag", _GCM_TAG_SIZE),
    )


def decrypt_dir_gcm(cek: bytes, protected: str, iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    """Decrypt a JWE made with alg "dir" and enc "A128GCM"/"A192GCM"/"A256GCM".

    - RFC 7518 section 4.5: with "dir" the shared symmetric key *is* the content encryption
      key (CEK); nothing is unwrapped.
    - RFC 7516 section 5.2 steps 14-15: the Additional Authenticated Data is
      ASCII(Encoded Protected Header), the BASE64URL text exactly as stored, never a
      re-serialisation of the decoded header (no JWE AAD: clevis never sets one).
    - RFC 7516 section 5.2 step 16 and RFC 7518 section 5.3: AES GCM with a 96-bit IV and a
      128-bit authentication tag; a wrong key or any altered byte fails the tag check.

    Raises cryptography's InvalidTag when the tag does not verify.
    """
    return AESGCM(cek).decrypt(iv, ciphertext + tag, protected.encode("ascii"))


def _content_key(where: str, sealed: bytes, enc: str) -> bytes:
    """The AES key in the JWK the TPM released (RFC 7518 section 6.4: "kty": "oct", "k")."""

    def fail(what: str) -> TokenError:
        return TokenError(f"the key sealed in {where} is not a usable JWK ({what})", _REPAIR)

    try:
        jwk = json.loads(sealed.decode("utf-8"))  # JSON allows clevis' trailing newline
    except ValueError as exc:
        raise fail("not JSON") from exc
    if not isinstance(jwk, dict) or jwk.get("kty") != "oct":
        raise fail("not a symmetric 'oct' key")
    if jwk.get("alg", enc) != enc:
        raise fail(f"its alg {jwk.get('alg')!r} is not the JWE's enc {enc!r}")
    k = jwk.get("k")
    key = _b64url_decode(k) if isinstance(k, str) else None
    if key is None or len(key) != _GCM_KEY_SIZES[enc]:
        raise fail(f"'k' is not a {_GCM_KEY_SIZES[enc] * 8}-bit BASE64URL key")
    return key


def _as_clevis_hands_it_over(plaintext: bytes) -> bytes:
    """The bytes clevis itself gives cryptsetup for this plaintext.

    clevis-luks-unlock runs ``pt=$(clevis luks pass ...)`` style command substitutions and
    then ``echo -n "${pt}" | cryptsetup open -d-``: bash drops NUL bytes and strips trailing
    newlines on the way. A key made by ``clevis luks bind`` (pwmake output) has neither, so
    this changes nothing for it, and keeps any hand-made JWE opening exactly as clevis does.
    """
    return plaintext.replace(b"\0", b"").rstrip(b"\n")


def passphrase(token: ClevisTpm2Token, tcti: str | None) -> bytes:
    """The exact bytes cryptsetup must receive for the token's keyslot (a secret)."""
    where = f"clevis token {token.token_id}"
    sealed = clevis_tpm2.unseal_jwk(
        tcti,
        where=where,
        hash_name=token.hash_alg,
        key=token.key_alg,
        public=token.jwk_pub,
        private=token.jwk_priv,
        pcr_bank=token.pcr_bank,
        pcrs=token.pcrs,
    )
    cek = _content_key(where, sealed, token.enc)
    try:
        plaintext = decrypt_dir_gcm(cek, token.protected, token.iv, token.ciphertext, token.tag)
    except InvalidTag as exc:
        raise TokenError(
            f"{where} does not decrypt with the key the TPM released (the JWE was altered)",
            _REPAIR,
        ) from exc
    return _as_clevis_hands_it_over(plaintext)
