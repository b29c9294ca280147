"""Unit tests for swtpm-fixtures/latency_proxy.py: TPM command headers, the latency table, the
frame reader (tests/integration/test_tpm_latency.py runs tpm2-tools through a real proxy)."""

from __future__ import annotations

import socket
import struct

import pytest
from latency_proxy import (
    ALG_ECC,
    ALG_RSA,
    CC_CREATE_PRIMARY,
    SLOW_DISCRETE,
    LatencyProfile,
    parse_header,
    primary_key_type,
    read_frame,
)

CC_GET_RANDOM = 0x17B
CC_UNSEAL = 0x15E


def command(code: int, body: bytes = b"", tag: int = 0x8001) -> bytes:
    return struct.pack(">HII", tag, 10 + len(body), code) + body


def create_primary(key_type: int, with_sessions: bool = True) -> bytes:
    """A CreatePrimary buffer: owner handle, [password session], empty inSensitive, inPublic."""
    body = struct.pack(">I", 0x40000001)
    if with_sessions:
        session = struct.pack(">IHBH", 0x40000009, 0, 0x01, 0)  # TPM_RS_PW, no nonce, no auth
        body += struct.pack(">I", len(session)) + session
    body += struct.pack(">H", 4) + b"\0\0\0\0"  # inSensitive: userAuth and data empty
    public = struct.pack(">HH", key_type, 0x000B) + b"\0" * 16
    body += struct.pack(">H", len(public)) + public
    return command(CC_CREATE_PRIMARY, body, tag=0x8002 if with_sessions else 0x8001)


def test_parse_header_reads_tag_size_and_code() -> None:
    header = parse_header(command(CC_GET_RANDOM, b"\x00\x08"))
    assert (header.tag, header.size, header.code) == (0x8001, 12, CC_GET_RANDOM)


@pytest.mark.parametrize(
    "data",
    [b"\x80\x01\x00", struct.pack(">HII", 0x00C1, 10, 1), struct.pack(">HII", 0x8001, 9, 1),
     struct.pack(">HII", 0x8001, 1 << 20, 1)],
    ids=["short", "tpm1.2-tag", "size-below-header", "size-absurd"],
)
def test_parse_header_refuses_what_is_not_a_tpm2_command(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_header(data)


def test_primary_key_type_with_and_without_an_authorization_area() -> None:
    assert primary_key_type(create_primary(ALG_ECC)) == ALG_ECC
    assert primary_key_type(create_primary(ALG_RSA, with_sessions=False)) == ALG_RSA
    assert primary_key_type(command(CC_UNSEAL, b"\0" * 4)) is None
    assert primary_key_type(command(CC_CREATE_PRIMARY, b"\0\0")) is None  # truncated


def test_table_lookup_default_and_rsa_primary() -> None:
    profile = LatencyProfile("t", "test", default_ms=7.0, per_command_ms={CC_UNSEAL: 50.0},
                             rsa_primary_ms=900.0)
    assert profile.latency_ms(command(CC_UNSEAL)) == 50.0
    assert profile.latency_ms(command(CC_GET_RANDOM)) == 7.0  # no entry: the default
    assert profile.latency_ms(create_primary(ALG_RSA)) == 900.0
    assert profile.latency_ms(create_primary(ALG_ECC)) == 7.0


def test_slow_discrete_profile_makes_an_ecc_primary_dearer_than_a_command_and_rsa_dearest() -> None:
    ecc, rsa = create_primary(ALG_ECC), create_primary(ALG_RSA)
    ordinary = command(CC_UNSEAL)
    assert (SLOW_DISCRETE.latency_ms(ordinary) < SLOW_DISCRETE.latency_ms(ecc)
            < SLOW_DISCRETE.latency_ms(rsa))


def test_read_frame_reassembles_a_frame_split_across_sends() -> None:
    frame = command(CC_GET_RANDOM, b"\x00\x08")
    left, right = socket.socketpair()
    with left, right:
        for piece in (frame[:3], frame[3:11], frame[11:]):
            left.sendall(piece)
        left.shutdown(socket.SHUT_WR)
        assert read_frame(right) == frame
        assert read_frame(right) is None  # a clean end of stream between frames
