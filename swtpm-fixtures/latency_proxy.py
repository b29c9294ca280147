"""A TCP proxy in front of swtpm that makes each TPM command take as long as on a slow real TPM.

swtpm answers a command in about a millisecond; a discrete TPM takes tens to hundreds of
milliseconds, and seconds for an RSA primary key. A benchmark on bare swtpm therefore hides
what the number of commands a tool sends costs on a real machine. LatencyProxy listens on a
port pair (Q, Q+1) like swtpm itself (libtss2's swtpm TCTI always finds the control channel at
data port + 1), forwards both channels to a running Swtpm, and on the data channel holds each
response back for the time its command takes in a LatencyProfile.

Framing (checked with a real run of tpm2-tools through this proxy): libtss2's swtpm TCTI sends
bare TPM 2.0 command buffers on the data port, without the mssim TCTI's send-command/locality
prefix: a 10-byte header (tag, total size, command code; big endian) and then size - 10 bytes.
The response is framed the same way. The control port carries swtpm's own ioctl-like protocol
(locality, cancel, ...): it is forwarded untouched and never delayed.

The delay goes between swtpm's response and the client, and one lock serialises commands from
all connections: a real TPM executes one command at a time, so two clients queue.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType

from swtpm import COMMAND_NAMES

HEADER = struct.Struct(">HII")  # tag, size, command (or response) code
TAG_NO_SESSIONS = 0x8001
TAG_SESSIONS = 0x8002
# The largest command a TPM accepts is 4 KiB (TPM2_PT_MAX_COMMAND_SIZE) on real chips; leave
# room, but refuse absurd sizes so a framing mistake cannot make the proxy wait forever.
MAX_FRAME = 1 << 16

CC_CREATE_PRIMARY = 0x131
ALG_RSA = 0x0001
ALG_ECC = 0x0023


@dataclass(frozen=True)
class CommandHeader:
    tag: int
    size: int
    code: int


def parse_header(data: bytes) -> CommandHeader:
    """The header of a TPM command buffer; ValueError when it is not one."""
    if len(data) < HEADER.size:
        raise ValueError(f"a TPM header is {HEADER.size} bytes, got {len(data)}")
    tag, size, code = HEADER.unpack_from(data)
    if tag not in (TAG_NO_SESSIONS, TAG_SESSIONS):
        raise ValueError(f"tag 0x{tag:04x} is not a TPM 2.0 command tag")
    if not HEADER.size <= size <= MAX_FRAME:
        raise ValueError(f"command size {size} out of range")
    return CommandHeader(tag, size, code)


def primary_key_type(command: bytes) -> int | None:
    """The key type (TPM_ALG_ECC, TPM_ALG_RSA, ...) a CreatePrimary command asks for.

    Layout (TPM 2.0 Part 3, 24.1): header, primaryHandle, [authorization area: UINT32 size +
    sessions], inSensitive (TPM2B), inPublic (TPM2B: UINT16 size, then TPMT_PUBLIC whose first
    field is the type). Parameter encryption only ever hides the first parameter's bytes, not
    its size, so the type is readable in every case. None when the buffer is not that shape.
    """
    try:
        header = parse_header(command)
        if header.code != CC_CREATE_PRIMARY:
            return None
        offset = HEADER.size + 4  # the primary handle
        if header.tag == TAG_SESSIONS:
            (auth_size,) = struct.unpack_from(">I", command, offset)
            offset += 4 + auth_size
        (sensitive_size,) = struct.unpack_from(">H", command, offset)
        offset += 2 + sensitive_size + 2  # inSensitive, then inPublic's size
        (key_type,) = struct.unpack_from(">H", command, offset)
    except (ValueError, struct.error):
        return None
    return int(key_type)


@dataclass(frozen=True)
class LatencyProfile:
    """Milliseconds a modelled TPM spends on each command (by command code).

    ``rsa_primary_ms`` replaces the CreatePrimary figure when the primary is an RSA key: RSA
    key generation is the one command whose cost depends on its parameters by orders of
    magnitude (prime search), so one CreatePrimary figure cannot stand for both.
    """

    name: str
    description: str
    default_ms: float
    per_command_ms: Mapping[int, float] = field(default_factory=dict)
    rsa_primary_ms: float | None = None

    def latency_ms(self, command: bytes) -> float:
        code = parse_header(command).code
        if (
            code == CC_CREATE_PRIMARY
            and self.rsa_primary_ms is not None
            and primary_key_type(command) == ALG_RSA
        ):
            return self.rsa_primary_ms
        return self.per_command_ms.get(code, self.default_ms)


# Sources, each read in the public issue trackers (no datasheet gives per-command times):
#
# [S1] systemd/systemd#40485, comment by smolx, 2026-03-02 (a discrete TPM's boot log):
#      "Successfully created primary key on TPM in 251ms" and "... in 254ms" (systemd's SRK:
#      ECC NIST P-256), "Completed TPM2 key unsealing in 1.351072s" / "1.379016s".
#      https://github.com/systemd/systemd/issues/40485
# [S2] systemd/systemd#20716 (Lennart Poettering's commit comment in tpm2-util.c): ECC
#      primary keys "so much faster, noticeably so (~10s vs. ~240ms on my system)" for RSA
#      vs ECC CreatePrimary. https://github.com/systemd/systemd/pull/20716
# [S3] archledger/irlume#248 (2026-08-03), ThinkPad X13 Yoga Gen 4 with a discrete
#      STMicroelectronics TPM (STM0176): a warm unseal is exactly 26 TPM commands (counted
#      from the code: NV_ReadPublic, ReadPublic x2, StartAuthSession, Load, FlushContext,
#      15 policy commands, PolicyAuthorizeNV, Unseal, ...) and takes 2.70-2.72 s,
#      deterministic to 0.01 s: 104 ms per command on average. The same thread measures a
#      transient RSA-2048 CreatePrimary at 8.73 s on that chip; a firmware TPM does the same
#      unseal in 0.20 s. https://github.com/archledger/irlume/issues/248
#
# Not used, but consistent: latchset/clevis#153 (an RSA tpm2_createprimary making a clevis
# unlock take ~20 s per volume); google/go-tpm-tools#24 ("7s ... for generating an RSA key on
# a real TPM"); Chrome's study quoted at https://stiankri.substack.com/p/tpm-performance
# (TPM ECDSA P-256 signature latency 200 ms p50, 600 ms p95: no unlock path here signs).
SLOW_DISCRETE = LatencyProfile(
    name="slow-dtpm",
    description=(
        "slow discrete TPM (STMicro-class): 104 ms per command [irlume#248], CreatePrimary "
        "ECC P-256 250 ms [systemd#40485, systemd#20716], RSA-2048 8.73 s [irlume#248]"
    ),
    # [S3]'s measured average over a mix of cheap (ReadPublic, FlushContext) and policy
    # commands. No public source splits that average per command, so every command without
    # its own figure gets it: a total over a similar mix reproduces [S3]'s measured total.
    default_ms=104.0,
    per_command_ms=MappingProxyType({
        CC_CREATE_PRIMARY: 250.0,  # ECC P-256: 251/254 ms [S1], ~240 ms [S2]
    }),
    rsa_primary_ms=8730.0,  # [S3]; [S2] says ~10 s on another machine
)

PROFILES: Mapping[str, LatencyProfile] = MappingProxyType({SLOW_DISCRETE.name: SLOW_DISCRETE})


def _bind_port_pair(host: str) -> tuple[socket.socket, socket.socket]:
    """Two listening sockets on ports Q and Q+1, bound before anyone else can take Q+1."""
    for _ in range(100):
        data = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        data.bind((host, 0))
        port = int(data.getsockname()[1])
        control = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            control.bind((host, port + 1))
        except OSError:
            data.close()
            control.close()
            continue
        for sock in (data, control):
            sock.listen(8)
            sock.settimeout(0.1)  # accept() wakes up to notice stop()
        return data, control
    raise RuntimeError("no two adjacent free TCP ports on loopback")


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Exactly ``size`` bytes; None on end of stream before the first byte."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if chunks:
                raise ConnectionError(f"stream ended inside a frame ({len(chunks)}/{size})")
            return None
        chunks.extend(chunk)
    return bytes(chunks)


def read_frame(sock: socket.socket) -> bytes | None:
    """One TPM command or response, however TCP splits it; None at a clean end of stream."""
    head = _recv_exact(sock, HEADER.size)
    if head is None:
        return None
    _, size, _ = HEADER.unpack(head)
    if not HEADER.size <= size <= MAX_FRAME:
        raise ValueError(f"frame size {size} out of range")
    body = _recv_exact(sock, size - HEADER.size) if size > HEADER.size else b""
    if body is None:
        raise ConnectionError("stream ended after a frame header")
    return head + body


class LatencyProxy:
    """A proxy to a running swtpm that delays each command; use as a context manager."""

    def __init__(
        self, upstream_port: int, profile: LatencyProfile, host: str = "127.0.0.1"
    ) -> None:
        self.upstream_port = upstream_port
        self.profile = profile
        self.host = host
        self.port = 0
        self.counts: Counter[int] = Counter()  # command code -> commands forwarded
        self.delayed_seconds = 0.0
        self.connections = 0
        self.errors: list[str] = []  # framing or socket errors, for a test to look at
        self._stop = threading.Event()
        self._lock = threading.Lock()  # counters and the open sockets
        self._tpm_busy = threading.Lock()  # one command at a time, as on a real TPM
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []

    @property
    def tcti(self) -> str:
        return f"swtpm:host={self.host},port={self.port}"

    def command_counts(self) -> Counter[str]:
        with self._lock:
            return Counter({COMMAND_NAMES.get(c, f"0x{c:x}"): n for c, n in self.counts.items()})

    def start(self) -> LatencyProxy:
        data, control = _bind_port_pair(self.host)
        self._listeners = [data, control]
        self.port = int(data.getsockname()[1])
        self._spawn(self._accept_loop, data, self.upstream_port, self._serve_data)
        self._spawn(self._accept_loop, control, self.upstream_port + 1, self._serve_control)
        return self

    def stop(self) -> None:
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        with self._lock:
            # shutdown() wakes a handler blocked in recv() on either side.
            for sock in self._open:
                with contextlib.suppress(OSError):  # already closed by its peer
                    sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self, listener: socket.socket, upstream_port: int, serve: object) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            client.settimeout(None)
            self._spawn(self._connection, client, upstream_port, serve)

    def _connection(self, client: socket.socket, upstream_port: int, serve: object) -> None:
        """Pair a client connection with its own upstream connection, and serve it."""
        try:
            upstream = socket.create_connection((self.host, upstream_port), timeout=5)
        except OSError as error:
            self._note(f"upstream port {upstream_port}: {error}")
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._open.update((client, upstream))
            self.connections += 1
        try:
            serve(client, upstream)  # type: ignore[operator]
        except (OSError, ValueError) as error:
            if not self._stop.is_set():
                self._note(f"{type(error).__name__}: {error}")
        finally:
            with self._lock:
                self._open.difference_update((client, upstream))
            client.close()
            upstream.close()

    def _serve_data(self, client: socket.socket, upstream: socket.socket) -> None:
        while not self._stop.is_set():
            command = read_frame(client)
            if command is None:
                return
            latency = self.profile.latency_ms(command) / 1000  # ValueError: not a command
            with self._tpm_busy:
                upstream.sendall(command)
                response = read_frame(upstream)
                if response is None:
                    return
                # An Event wait, not time.sleep: stop() must not wait out a long delay.
                if self._stop.wait(latency):
                    return
            with self._lock:
                self.counts[parse_header(command).code] += 1
                self.delayed_seconds += latency
            client.sendall(response)

    def _serve_control(self, client: socket.socket, upstream: socket.socket) -> None:
        """Forward bytes both ways until either side closes: the control channel is not timed."""
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    chunk = source.recv(65536)
                    if not chunk:
                        return
                    key.data.sendall(chunk)

    def _note(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)
