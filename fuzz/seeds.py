"""Builders of well-formed inputs, made with sealer's own code, for the fuzz corpus and tests.

The real-tool seeds (LUKS2 headers by cryptsetup, tokens by sealer enroll, systemd-cryptenroll
and clevis, logs captured from OVMF) come from make_corpus.py; what is built here needs no
tool: an event log that exercises every event decoder, and signed approval files.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from sealer.measure import eventlog
from sealer.pcrs import BANKS, Bank
from sealer.policy import keys
from sealer.policy.approval import sign_approval
from sealer.policy.revocation import REVOCATION_INDEX, RevocationIndex
from sealer.policy.vendor import ApprovalFile
from sealer.tpm.policykey import policy_key_name

# ---------------------------------------------------------------------------------------------
# TCG crypto-agile event logs

Digests = Sequence[tuple[int, bytes]]  # (TPM algorithm id, digest)


def spec_id_event(algorithms: Mapping[int, int], locality_event: bool = False) -> bytes:
    """The log's first event (SHA-1 format) carrying 'Spec ID Event03' for ``algorithms``."""
    body = eventlog.SPEC_ID_SIGNATURE + struct.pack("<IBBBB", 0, 0, 2, 0, 2)
    body += struct.pack("<I", len(algorithms))
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in algorithms.items())
    body += b"\0"  # vendorInfoSize
    return struct.pack("<II", 0, eventlog.EV_NO_ACTION) + bytes(20) + _sized(body)


def event2(pcr: int, kind: int, digests: Digests, data: bytes) -> bytes:
    """One TCG_PCR_EVENT2."""
    packed = b"".join(struct.pack("<H", alg) + digest for alg, digest in digests)
    return struct.pack("<III", pcr, kind, len(digests)) + packed + _sized(data)


def _sized(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def variable_event_data(name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA: GUID, name length (chars), data length, name, data."""
    guid = bytes.fromhex("61dfe48bca93d211aa0d00e098032b8c")  # EFI global variable GUID
    return guid + struct.pack("<QQ", len(name), len(data)) + _utf16(name) + data


def image_event_data(path: str) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT with a device path of one file path node and the end node."""
    node = _utf16(path) + b"\0\0"
    file_node = struct.pack("<BBH", 4, 4, 4 + len(node)) + node
    device_path = file_node + struct.pack("<BBH", 0x7F, 0xFF, 4)  # end of the device path
    return struct.pack("<QQQQ", 0x1000, 0x20000, 0, len(device_path)) + device_path


def sample_event_log(banks: Sequence[Bank] = (BANKS["sha1"], BANKS["sha256"])) -> bytes:
    """A small log with one event of each kind the decoders treat specially."""
    algorithms = {bank.alg_id: bank.size for bank in banks}
    tag = struct.pack("<II", eventlog.LINUX_INITRD_TAG, 13) + b"Linux initrd\0"
    events = [
        (0, eventlog.EV_NO_ACTION, eventlog.STARTUP_LOCALITY_SIGNATURE + b"\x03"),
        (0, 0x8, _utf16("OVMF 1.0\0")),  # EV_S_CRTM_VERSION
        (7, 0x80000001, variable_event_data("SecureBoot", b"\x01")),
        (7, eventlog.EV_SEPARATOR, b"\0\0\0\0"),
        (4, eventlog.EV_EFI_ACTION, b"Calling EFI Application from Boot Option"),
        (4, eventlog.EV_EFI_BOOT_SERVICES_APPLICATION, image_event_data("\\EFI\\BOOTX64.EFI")),
        (11, eventlog.EV_IPL, _utf16(".linux\0")),
        (9, eventlog.EV_EVENT_TAG, tag),
        (8, eventlog.EV_IPL, b"grub_cmd: linux /vmlinuz\0"),
        (7, eventlog.EV_EFI_VARIABLE_AUTHORITY, variable_event_data("db", b"cert")),
    ]
    log = spec_id_event(algorithms)
    for pcr, kind, data in events:
        digests = [(bank.alg_id, bank.hash(data)) for bank in banks]
        log += event2(pcr, kind, digests, data)
    return log


# ---------------------------------------------------------------------------------------------
# Approval files (what `sealer policy sign-release` writes)


def approval_file(
    key: ec.EllipticCurvePrivateKey,
    *,
    bank: Bank = BANKS["sha256"],
    branches: int = 1,
    release: int = 3,
    with_events: bool = True,
) -> dict[str, Any]:
    """A vendor approval file as sign_release makes it, for ``branches`` boot states."""
    pem = keys.public_pem(key)
    name = policy_key_name(pem)
    states = [{7: bank.hash(b"state %d" % i), 15: bank.initial_value(15)} for i in range(branches)]
    events = [{7: ("0123456789abcdef", "fedcba9876543210"), 15: ()} for _ in states]
    approval = sign_approval(
        key, name, bank, states, comment=f"release {release}",
        events=events if with_events else (),
        release=(release, RevocationIndex(REVOCATION_INDEX, name).name),
    )
    return ApprovalFile(approval, pem).to_json()
