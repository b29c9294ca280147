"""A real software TPM 2.0 (swtpm) for tests and the demo, plus a reader of its wire log.

Each Swtpm listens on loopback TCP ports of its own (libtss2 3.x's swtpm TCTI speaks TCP
only) and keeps its state in a directory, so a test can model one machine across restarts
or a different machine with a fresh directory. swtpm has no resource manager: callers must
flush what they load, which is exactly what sealer promises to do.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

# Names of the TPM 2.0 command codes sealer and the tests send (TPM 2.0 Part 2, 6.5.2).
COMMAND_NAMES = {
    0x11F: "NV_UndefineSpaceSpecial", 0x120: "EvictControl", 0x121: "HierarchyControl",
    0x122: "NV_UndefineSpace", 0x129: "HierarchyChangeAuth", 0x12A: "NV_DefineSpace",
    0x131: "CreatePrimary",
    0x134: "NV_Increment", 0x135: "NV_SetBits", 0x137: "NV_Write",
    0x139: "DictionaryAttackLockReset", 0x13A: "DictionaryAttackParameters", 0x144: "Startup",
    0x145: "Shutdown", 0x149: "PolicyNV", 0x14E: "NV_Read", 0x151: "PolicySecret",
    0x153: "Create", 0x157: "Load", 0x15E: "Unseal", 0x160: "PolicySigned",
    0x161: "ContextLoad", 0x162: "ContextSave", 0x165: "FlushContext", 0x167: "LoadExternal",
    0x169: "NV_ReadPublic", 0x16A: "PolicyAuthorize", 0x16B: "PolicyAuthValue",
    0x16C: "PolicyCommandCode", 0x16E: "PolicyCpHash", 0x171: "PolicyOR", 0x173: "ReadPublic",
    0x176: "StartAuthSession", 0x177: "VerifySignature", 0x17A: "GetCapability",
    0x17B: "GetRandom", 0x17E: "PCR_Read", 0x17F: "PolicyPCR", 0x181: "ReadClock",
    0x182: "PCR_Extend", 0x189: "PolicyGetDigest", 0x18F: "PolicyNvWritten",
}

_BLOCK = re.compile(r"^\s*SWTPM_IO_(Read|Write): length (\d+)\s*$")
_HEX_LINE = re.compile(r"^\s*(?:[0-9A-Fa-f]{2}\s+)*[0-9A-Fa-f]{2}\s*$")


def _free_port_pair() -> int:
    """A port P with P+1 free too: the swtpm TCTI always finds the control port at P+1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free TCP ports on loopback")


class Swtpm:
    """A running swtpm; use as a context manager, or call start()/stop()."""

    def __init__(self, state_dir: Path, log_file: Path | None = None) -> None:
        self.state_dir = state_dir
        self.log_file = log_file
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self, timeout: float = 10.0) -> Swtpm:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port_pair()
        ctrl_port = self.port + 1
        argv = [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={self.state_dir}",
            "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={ctrl_port},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ]
        if self.log_file is not None:
            argv += ["--log", f"file={self.log_file},level=20"]
        self._process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                raise RuntimeError(f"swtpm exited at start: {err.strip()}")
            try:
                socket.create_connection(("127.0.0.1", ctrl_port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("swtpm did not start listening in time")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class Exchange:
    command: bytes
    response: bytes

    @property
    def code(self) -> int:
        return int.from_bytes(self.command[6:10], "big")

    @property
    def rc(self) -> int:
        """The response code; swtpm answers TPM_RC_RETRY (0x922) to be asked again."""
        return int.from_bytes(self.response[6:10], "big")

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.code, f"0x{self.code:x}")


class WireLog:
    """The commands and responses swtpm dumped with --log level=20."""

    def __init__(self, exchanges: list[Exchange]) -> None:
        self.exchanges = exchanges

    @classmethod
    def read(cls, path: Path, start: int = 0) -> WireLog:
        """Parse the log from byte offset ``start`` (to look at one operation only)."""
        with open(path, "rb") as handle:
            handle.seek(start)
            text = handle.read().decode("ascii", "replace")
        frames: list[tuple[str, bytearray]] = []
        for line in text.splitlines():
            block = _BLOCK.match(line)
            if block:
                frames.append((block.group(1), bytearray()))
            elif frames and _HEX_LINE.match(line):
                frames[-1][1].extend(bytes.fromhex(line))
            elif line.strip():
                frames.append(("other", bytearray()))
        exchanges = []
        pending: bytes | None = None
        for kind, data in frames:
            if kind == "Read":
                pending = bytes(data)
            elif kind == "Write" and pending is not None:
                exchanges.append(Exchange(pending, bytes(data)))
                pending = None
        return cls(exchanges)

    def counts(self, succeeded_only: bool = False) -> Counter[str]:
        return Counter(e.name for e in self.exchanges if e.rc == 0 or not succeeded_only)

    def contains(self, needle: bytes) -> bool:
        return any(needle in e.command or needle in e.response for e in self.exchanges)


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
