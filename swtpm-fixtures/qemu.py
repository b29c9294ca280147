"""Boot a machine in QEMU (TCG) with OVMF Secure Boot, a swtpm TPM 2.0 and a serial console.

A Machine is one computer across reboots: its TPM state directory and its UEFI variable
store persist between boots, its disks are files. ``boot()`` starts swtpm (it exits when
QEMU disconnects, so once per boot), runs QEMU with the serial console on a pipe, answers
prompts when given text appears (to type a passphrase at the console), and returns the
whole console transcript when the machine powers off or the time runs out.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rootdisk import EVENT_LOG_BEGIN, EVENT_LOG_END
from secureboot import OVMF_CODE

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Answer:
    """When ``prompt`` appears on the console (after the previous answer), type ``text``."""

    prompt: str
    text: str


@dataclass
class Boot:
    transcript: str
    seconds: float
    powered_off: bool  # False: killed at the time limit, or stopped at a ``stop_at`` text

    def lines_with(self, marker: str) -> list[str]:
        return [line.strip() for line in self.transcript.splitlines() if marker in line]

    def pcrs(self) -> dict[int, bytes]:
        """PCR values the guest's root reported ("SEALER-E2E: pcr sha256 N HEX")."""
        found: dict[int, bytes] = {}
        for match in re.finditer(
            r"SEALER-E2E: pcr sha256 (\d+) ([0-9A-Fa-f]{64})", self.transcript
        ):
            found[int(match.group(1))] = bytes.fromhex(match.group(2))
        return found

    def event_log(self) -> bytes:
        """The firmware's TCG event log, as the guest's root printed it in base64."""
        text = self.transcript.replace("\r", "")
        begin = text.index(EVENT_LOG_BEGIN + "\n") + len(EVENT_LOG_BEGIN) + 1
        end = text.index(EVENT_LOG_END, begin)
        return base64.b64decode("".join(text[begin:end].split()))

    def seconds_until(self, text: str) -> float | None:
        return self._marks.get(text)

    _marks: dict[str, float] = field(default_factory=dict)


@dataclass
class Machine:
    directory: Path  # holds the TPM state and this machine's copy of the UEFI variables
    vars_template: Path
    disks: list[Path]
    memory_mib: int = 1024
    firmware: Path = OVMF_CODE  # the read-only code flash (Secure Boot build of OVMF)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.vars_path.exists():
            shutil.copyfile(self.vars_template, self.vars_path)

    @property
    def vars_path(self) -> Path:
        return self.directory / "OVMF_VARS.fd"

    @property
    def tpm_state(self) -> Path:
        return self.directory / "tpm"

    def _start_swtpm(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.tpm_state.mkdir(exist_ok=True)
        socket_path = self.tpm_state / "swtpm.sock"
        socket_path.unlink(missing_ok=True)
        process = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_state}",
                "--ctrl", f"type=unixio,path={socket_path}",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("swtpm did not create its socket")
            time.sleep(0.02)
        return process, socket_path

    def qemu_argv(self, socket_path: Path) -> list[str]:
        argv = [
            QEMU, "-accel", "tcg", "-machine", "q35,smm=on", "-m", str(self.memory_mib),
            "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
            "-global", "driver=cfi.pflash01,property=secure,value=on",
            "-drive", f"if=pflash,format=raw,unit=0,file={self.firmware},readonly=on",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.vars_path}",
            "-chardev", f"socket,id=chrtpm,path={socket_path}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
        ]  # fmt: skip
        for disk in self.disks:
            argv += ["-drive", f"file={disk},format=raw,if=virtio"]
        return argv

    def boot(
        self,
        *,
        answers: list[Answer] | None = None,
        stop_at: str | None = None,
        marks: tuple[str, ...] = (),
        timeout: float = 240.0,
        tpm_dies_at: str | None = None,
    ) -> Boot:
        """Boot until power-off (or ``stop_at`` appears, or ``timeout``); return the console.

        ``tpm_dies_at``: when this text appears, swtpm is killed, as a TPM that stops
        answering mid-boot (QEMU then fails every further TPM command of the guest)."""
        pending = list(answers or [])
        swtpm, socket_path = self._start_swtpm()
        start = time.monotonic()
        qemu = subprocess.Popen(
            self.qemu_argv(socket_path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        chunks: list[bytes] = []
        lock = threading.Lock()

        def pump() -> None:
            assert qemu.stdout is not None
            while data := os.read(qemu.stdout.fileno(), 65536):
                with lock:
                    chunks.append(data)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        seen_marks: dict[str, float] = {}
        answered_upto = 0
        powered_off = False
        try:
            while True:
                with lock:
                    text = b"".join(chunks).decode("utf-8", "replace")
                now = time.monotonic() - start
                for mark in marks:
                    if mark not in seen_marks and mark in text:
                        seen_marks[mark] = now
                if tpm_dies_at is not None and swtpm.poll() is None and tpm_dies_at in text:
                    swtpm.kill()
                if pending:
                    position = text.find(pending[0].prompt, answered_upto)
                    if position >= 0:
                        answered_upto = position + len(pending[0].prompt)
                        assert qemu.stdin is not None
                        qemu.stdin.write(pending.pop(0).text.encode())
                        qemu.stdin.flush()
                if qemu.poll() is not None:
                    powered_off = True
                    break
                if (stop_at is not None and stop_at in text) or now > timeout:
                    break
                time.sleep(0.05)
        finally:
            if qemu.poll() is None:
                qemu.kill()
            qemu.wait()
            reader.join(timeout=5)
            swtpm.kill()
            swtpm.wait()
        with lock:
            transcript = b"".join(chunks).decode("utf-8", "replace")
        return Boot(transcript, time.monotonic() - start, powered_off, seen_marks)
