"""Signed approvals: "the sealed secret may be released in these boot states".

An approval lists one or more boot states (branches), each a full set of expected PCR values,
and carries an ECDSA P-256 signature by a policy key over the TPM's aHash of the policy those
branches make. The TPM checks that signature itself (VerifySignature + PolicyAuthorize); we
check it in software first only to give a clear message instead of a TPM error code.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sealer.errors import PolicyMismatchError, TokenError
from sealer.pcrs import BANKS, PCR_COUNT, Bank, PcrValues
from sealer.policy import digest, retirement, revocation

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

APPROVAL_VERSION = 1
# Event records keep a digest prefix per event: enough to tell events apart, small enough for
# the LUKS2 header's JSON area with eight boot states.
EVENT_PREFIX_HEX = 16

# Which events made up one approved boot state: PCR -> digest prefixes, in log order.
EventRecord = Mapping[int, tuple[str, ...]]
_TPM_BOOT_CONTEXT = b"sealer approval tpm_boot v1\x00"


@dataclass(frozen=True)
class Approval:
    """A signed approval: the boot states (PCR values, one branch each) in which a policy key
    lets the TPM release the sealed secret, through PolicyAuthorize.
    """

    bank: Bank
    branches: tuple[PcrValues, ...]
    policy_ref: bytes
    key_name: bytes  # TPM name of the signing key
    signature: bytes  # DER-encoded ECDSA signature over approval_digest()
    created: str
    comment: str
    # Not signed, and never used to decide anything: it only lets 'sealer explain' name the
    # events that differ from an approved state. One record (or None) per branch.
    events: tuple[EventRecord | None, ...] = ()
    # The TPM's reset count when it was signed, which tells an approval made during this
    # boot (an update waiting for its reboot) from older ones. Not part of what the TPM
    # checks, so signed apart (``tpm_boot_signature``): 'reseal' keeps such states, and must
    # never be made to keep a state by whoever can write the header.
    tpm_boot: int | None = None
    tpm_boot_signature: bytes = b""
    # Signed (part of the approved policy): the release this approval is for, checked against
    # the revocation field named ``nv_name`` (PolicyNV); None in approvals made before it.
    release: int | None = None
    nv_name: bytes = b""
    # Signed (part of the approved policy): the machine's approvals hold only while the
    # enrollment's retirement counter named ``epoch_nv_name`` is at most ``epoch``
    # (sealer.policy.retirement); None in vendor approvals and in approvals made before it.
    epoch: int | None = None
    epoch_nv_name: bytes = b""

    @property
    def approved_policy(self) -> bytes:
        policy = digest.approved_policy(self.bank, self.branches)
        if self.release is not None:
            policy = revocation.policy_release(policy, self.nv_name, self.release)
        if self.epoch is not None:
            policy = retirement.policy_epoch(policy, self.epoch_nv_name, self.epoch)
        return policy

    @property
    def approval_digest(self) -> bytes:
        return digest.approval_digest(self.approved_policy, self.policy_ref)

    @property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(sorted(self.branches[0]))

    def signature_rs(self) -> tuple[int, int]:
        return decode_ecdsa_signature(self.signature)

    def matching_branch(self, current: PcrValues) -> int | None:
        for index, branch in enumerate(self.branches):
            if all(current.get(pcr) == value for pcr, value in branch.items()):
                return index
        return None

    def differing_pcrs(self, current: PcrValues) -> list[int]:
        """The PCRs that differ from the closest branch (fewest differences)."""
        diffs = [
            [pcr for pcr, value in sorted(branch.items()) if current.get(pcr) != value]
            for branch in self.branches
        ]
        return min(diffs, key=len)

    def event_record(self, branch: int) -> EventRecord | None:
        return self.events[branch] if branch < len(self.events) else None

    def signed_tpm_boot(self, public_pem: str) -> int | None:
        """``tpm_boot`` if the key ``public_pem`` signed it for this approval, else None."""
        if self.tpm_boot is None or not self.tpm_boot_signature:
            return None
        try:
            _verify(public_pem, self.tpm_boot_signature, _tpm_boot_digest(self))
        except (PolicyMismatchError, TokenError):
            return None
        return self.tpm_boot

    def to_json(self) -> dict[str, Any]:
        doc = self._signed_json()
        if self.tpm_boot is not None:
            doc["tpm_boot"] = self.tpm_boot
            if self.tpm_boot_signature:
                doc["tpm_boot_signature"] = base64.b64encode(self.tpm_boot_signature).decode()
        if any(record is not None for record in self.events):
            doc["events"] = [
                None if r is None else {str(p): list(d) for p, d in sorted(r.items())}
                for r in self.events
            ]
        return doc

    def _signed_json(self) -> dict[str, Any]:
        release = {} if self.release is None else {
            "release": self.release, "nv_name": self.nv_name.hex()
        }
        epoch = {} if self.epoch is None else {
            "epoch": self.epoch, "epoch_nv_name": self.epoch_nv_name.hex()
        }
        return {
            **release,
            **epoch,
            "version": APPROVAL_VERSION,
            "pcr_bank": self.bank.name,
            "branches": [{str(p): v.hex() for p, v in sorted(b.items())} for b in self.branches],
            "policy_ref": self.policy_ref.hex(),
            "key_name": self.key_name.hex(),
            "signature": base64.b64encode(self.signature).decode("ascii"),
            "created": self.created,
            "comment": self.comment,
        }


def sign_approval(
    key: ec.EllipticCurvePrivateKey,
    key_name: bytes,
    bank: Bank,
    branches: Sequence[PcrValues],
    comment: str,
    policy_ref: bytes = b"",
    events: Sequence[EventRecord | None] = (),
    tpm_boot: int | None = None,
    release: tuple[int, bytes] | None = None,  # (release number, revocation field's NV name)
    epoch: tuple[int, bytes] | None = None,  # (epoch, retirement counter's NV name)
) -> Approval:
    """Sign an approval of ``branches`` with ``key``, whose TPM name is ``key_name``.

    ``release`` and ``epoch`` bind it to the revocation field and the retirement counter.
    ValueError when there are not 1 to MAX_OR_BRANCHES branches.
    """
    if not 1 <= len(branches) <= digest.MAX_OR_BRANCHES:
        raise ValueError(f"an approval holds 1 to {digest.MAX_OR_BRANCHES} boot states")
    unsigned = Approval(
        bank=bank,
        branches=tuple(dict(sorted(b.items())) for b in branches),
        policy_ref=policy_ref,
        key_name=key_name,
        signature=b"",
        created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        comment=comment,
        events=tuple(events),
        tpm_boot=tpm_boot,
        release=None if release is None else revocation.check_release(release[0]),
        nv_name=b"" if release is None else release[1],
        epoch=None if epoch is None else epoch[0],
        epoch_nv_name=b"" if epoch is None else epoch[1],
    )
    signature = key.sign(unsigned.approval_digest, _prehashed())
    signed = Approval(**{**unsigned.__dict__, "signature": signature})
    if tpm_boot is None:
        return signed
    return Approval(
        **{
            **signed.__dict__,
            "tpm_boot_signature": key.sign(_tpm_boot_digest(signed), _prehashed()),
        }
    )


# The boot path reads approvals but never checks a signature in software (the TPM checks it:
# sealer.tpm.release), so `cryptography` is imported only where one is made or checked here.
def _prehashed() -> ec.ECDSA:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    return ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def _verify(public_pem: str, signature: bytes, signed_digest: bytes) -> None:
    """Raise PolicyMismatchError unless ``public_pem`` signed ``signed_digest``; TokenError
    when the key is unusable."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public = serialization.load_pem_public_key(public_pem.encode())
    except ValueError as exc:
        raise TokenError("the policy key stored in the token is unreadable") from exc
    except UnsupportedAlgorithm as exc:  # a well-formed key on a curve OpenSSL does not know
        raise TokenError("the policy key stored in the token is not an ECC P-256 key") from exc
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise TokenError("the policy key stored in the token is not an ECC key")
    try:
        public.verify(signature, signed_digest, _prehashed())
    except InvalidSignature:
        raise PolicyMismatchError(
            "an approval's signature does not match its content (tampered or corrupted)",
            "sign a new approval with 'sealer enroll' after unlocking with the passphrase",
        ) from None


def decode_ecdsa_signature(signature: bytes) -> tuple[int, int]:
    """(r, s) of a DER ECDSA-Sig-Value (SEQUENCE of two INTEGERs), as a P-256 signature has
    it: every length is below 128. TokenError for anything else."""

    def integer(at: int) -> tuple[int, int]:
        if signature[at] != 0x02 or signature[at + 1] > 33:
            raise ValueError("not a short INTEGER")
        end = at + 2 + signature[at + 1]
        value = signature[at + 2 : end]
        # DER: positive, minimal (a leading zero only before a high bit).
        if not value or value[0] & 0x80 or (len(value) > 1 and not value[0] and value[1] < 0x80):
            raise ValueError("not a DER positive integer")
        return int.from_bytes(value, "big"), end

    try:
        if len(signature) < 8 or signature[0] != 0x30 or signature[1] != len(signature) - 2:
            raise ValueError("not a DER SEQUENCE")
        r, after_r = integer(2)
        s, end = integer(after_r)
        if end != len(signature):
            raise ValueError("bytes after the signature")
    except (ValueError, IndexError) as exc:
        raise TokenError("an approval's signature is not a DER ECDSA signature") from exc
    return r, s


def _tpm_boot_digest(approval: Approval) -> bytes:
    """What signs an approval's tpm_boot: the approval (its aHash) and the reset count."""
    assert approval.tpm_boot is not None
    return hashlib.sha256(
        _TPM_BOOT_CONTEXT + approval.approval_digest + struct.pack(">Q", approval.tpm_boot)
    ).digest()


def verify_approval(approval: Approval, public_pem: str) -> None:
    """Raise PolicyMismatchError unless ``public_pem`` signed exactly this approval."""
    _verify(public_pem, approval.signature, approval.approval_digest)


def parse_approval(doc: Mapping[str, Any], where: str = "approval") -> Approval:
    """Parse and check an approval's JSON, not its signature (verify_approval does that);
    TokenError when it is corrupted or of an unknown version.
    """

    def fail(what: str) -> TokenError:
        return TokenError(f"{where} is corrupted ({what})")

    version = doc.get("version")
    if type(version) is not int or version != APPROVAL_VERSION:  # True == 1.0 == 1 in Python
        raise TokenError(f"{where} has unknown version {doc.get('version')!r}")
    bank = BANKS.get(str(doc.get("pcr_bank")))
    if bank is None:
        raise fail(f"unknown PCR bank {doc.get('pcr_bank')!r}")
    raw_branches = doc.get("branches")
    if not isinstance(raw_branches, list) or not 1 <= len(raw_branches) <= 8:
        raise fail("it needs 1 to 8 boot states")
    branches: list[dict[int, bytes]] = []
    try:
        for raw in raw_branches:
            if not isinstance(raw, dict):
                raise fail("a boot state is not an object of PCR: value")
            branch = {int(p): bytes.fromhex(v) for p, v in raw.items()}
            if not branch or any(not 0 <= p < PCR_COUNT for p in branch):
                raise fail("a boot state names no PCR or a PCR out of range")
            if any(len(v) != bank.size for v in branch.values()):
                raise fail(f"a PCR value is not {bank.size} bytes long")
            branches.append(branch)
        if len({tuple(sorted(b)) for b in branches}) != 1:
            raise fail("its boot states do not select the same PCRs")
        if not isinstance(doc.get("signature"), str):
            raise fail("it has no signature")
        signature = base64.b64decode(doc["signature"], validate=True)
        return Approval(
            bank=bank,
            branches=tuple(branches),
            policy_ref=bytes.fromhex(str(doc.get("policy_ref", ""))),
            key_name=bytes.fromhex(str(doc.get("key_name"))),
            signature=signature,
            created=str(doc.get("created", "")),
            comment=str(doc.get("comment", "")),
            events=_event_records(doc.get("events"), len(branches)),
            tpm_boot=_tpm_boot_of(doc.get("tpm_boot")),
            tpm_boot_signature=_optional_b64(doc.get("tpm_boot_signature")),
            **_release_of(doc, fail),
            **_epoch_of(doc, fail),
        )
    except (ValueError, TypeError, OverflowError) as exc:  # binascii.Error is a ValueError
        raise fail(str(exc)) from exc


def _tpm_boot_of(raw: Any) -> int | None:
    return raw if type(raw) is int and 0 <= raw < 2**32 else None  # a TPM reset count


def _optional_b64(raw: Any) -> bytes:
    """An unchecked optional signature: one that does not decode is no signature at all."""
    if not isinstance(raw, str):
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except ValueError:
        return b""


def _release_of(doc: Mapping[str, Any], fail: Callable[[str], TokenError]) -> dict[str, Any]:
    if "release" not in doc:
        return {}
    release = doc["release"]
    if type(release) is not int or not 0 <= release < revocation.RELEASES:
        raise fail(f"its release must be 0 to {revocation.RELEASES - 1}, not {release!r}")
    nv_name = bytes.fromhex(str(doc.get("nv_name", "")))
    if len(nv_name) != 34:
        raise fail("its revocation field's name is not a SHA-256 TPM name")
    return {"release": release, "nv_name": nv_name}


def _epoch_of(doc: Mapping[str, Any], fail: Callable[[str], TokenError]) -> dict[str, Any]:
    if "epoch" not in doc:
        return {}
    epoch = doc["epoch"]
    if type(epoch) is not int or not 0 <= epoch < 2**64:
        raise fail(f"its epoch must be a 64-bit counter value, not {epoch!r}")
    nv_name = bytes.fromhex(str(doc.get("epoch_nv_name", "")))
    if len(nv_name) != 34:
        raise fail("its retirement counter's name is not a SHA-256 TPM name")
    return {"epoch": epoch, "epoch_nv_name": nv_name}


def _event_records(raw: Any, branches: int) -> tuple[EventRecord | None, ...]:
    """The unsigned event records, or none at all when they are malformed: they only explain,
    so a damaged record must never stand between the user and an unlock."""
    if not isinstance(raw, list) or len(raw) != branches:
        return ()
    records: list[EventRecord | None] = []
    for item in raw:
        if item is None:
            records.append(None)
            continue
        if not isinstance(item, dict):
            return ()
        record: dict[int, tuple[str, ...]] = {}
        for pcr, digests in item.items():
            # Two digits at most (PCRs are 0-23): int() raises ValueError past 4300 digits.
            if not (isinstance(pcr, str) and pcr.isascii() and pcr.isdigit() and len(pcr) <= 2):
                return ()
            if not isinstance(digests, list):
                return ()
            if not all(isinstance(d, str) for d in digests):
                return ()
            record[int(pcr)] = tuple(digests)
        records.append(record)
    return tuple(records)
