"""A person at the serial console of a running QEMU machine: wait for text, type, run commands.

qemu.Machine.boot() runs a machine to power-off, answering prompts from a list. An installed
system needs a conversation instead: log in (a getty autologin), run a command, read what it
printed and its exit status, answer the prompt it asks, run the next. ``Console`` starts
swtpm and QEMU like Machine.boot() does (same machine, same disks and TPM state) and keeps
the whole transcript, with a timestamp for each thing waited for.

Commands run in root's login shell with echo off; the shell prints a marker with each
command's exit status before its next prompt (PROMPT_COMMAND).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from qemu import Machine

SHELL_PROMPT = "root@sealer-guest:~#"
_DONE = r"SEALER-DONE:(\d+)\n"


class ConsoleTimeout(AssertionError):
    """What was waited for did not appear in time (an assertion: the test failed)."""


@dataclass(frozen=True)
class CommandResult:
    command: str
    output: str
    status: int
    seconds: float


@dataclass
class Console:
    machine: Machine
    transcript_path: Path | None = None
    _chunks: list[bytes] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _position: int = 0  # what was already consumed by wait_for / run
    marks: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> Console:
        self._swtpm, socket_path = self.machine._start_swtpm()
        self.started = time.monotonic()
        self._qemu = subprocess.Popen(
            self.machine.qemu_argv(socket_path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _pump(self) -> None:
        assert self._qemu.stdout is not None
        while data := os.read(self._qemu.stdout.fileno(), 65536):
            with self._lock:
                self._chunks.append(data)
            if self.transcript_path is not None:
                with open(self.transcript_path, "ab") as handle:
                    handle.write(data)

    @property
    def text(self) -> str:
        with self._lock:
            return b"".join(self._chunks).decode("utf-8", "replace").replace("\r", "")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def powered_off(self) -> bool:
        return self._qemu.poll() is not None

    def wait_for(self, pattern: str, timeout: float, *, regex: bool = False) -> re.Match[str]:
        """Wait until ``pattern`` appears after what earlier waits consumed; consume it."""
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern if regex else re.escape(pattern))
        while True:
            found = compiled.search(self.text, self._position)
            if found is not None:
                self._position = found.end()
                self.marks.setdefault(pattern, self.elapsed())
                return found
            if self.powered_off():
                raise ConsoleTimeout(f"the machine powered off before {pattern!r}:\n"
                                     + self.tail())
            if time.monotonic() > deadline:
                raise ConsoleTimeout(f"{pattern!r} did not appear in {timeout:.0f} s:\n"
                                     + self.tail())
            time.sleep(0.05)

    def type(self, text: str) -> None:
        assert self._qemu.stdin is not None
        self._qemu.stdin.write(text.encode())
        self._qemu.stdin.flush()

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.text.splitlines()[-lines:])

    def login(self, timeout: float = 600) -> float:
        """Wait for the autologin shell, turn echo off; return seconds since power-on."""
        self.wait_for(SHELL_PROMPT, timeout)
        seconds = self.elapsed()
        self.prepare_shell()
        return seconds

    def prepare_shell(self) -> None:
        """Echo, prompt and bracketed paste off, no pager, no colours: plain output; after
        every command the shell prints ``SEALER-DONE:STATUS`` (PROMPT_COMMAND)."""
        self.type(
            "stty -echo cols 250; bind 'set enable-bracketed-paste off'; PS1=; "
            "export PAGER=cat SYSTEMD_PAGER= SYSTEMD_COLORS=0; "
            "PROMPT_COMMAND='printf \"SEALER-DONE:%s\\n\" $?'\n"
        )
        self.wait_for(_DONE, 60, regex=True)

    def run(
        self, command: str, timeout: float = 300, answers: tuple[tuple[str, str], ...] = ()
    ) -> CommandResult:
        """Run ``command`` in the shell; answer each (prompt, text) in order as it appears.

        Nothing is typed ahead of the shell: a password prompt flushes type-ahead, so the end
        of a command is the marker the shell prints before its next prompt."""
        start = self._position
        began = time.monotonic()
        self.type(f"{command}\n")
        for prompt, text in answers:
            self.wait_for(prompt, timeout)
            self.type(text)
        found = self.wait_for(_DONE, timeout, regex=True)
        output = self.text[start:found.start()]
        return CommandResult(command, output, int(found.group(1)), time.monotonic() - began)

    def power_off(self, timeout: float = 180) -> float:
        """``systemctl poweroff`` and wait for QEMU to exit; return seconds it took."""
        began = time.monotonic()
        self.type("systemctl poweroff\n")
        deadline = began + timeout
        while not self.powered_off():
            if time.monotonic() > deadline:
                raise ConsoleTimeout("the machine did not power off:\n" + self.tail())
            time.sleep(0.1)
        return time.monotonic() - began

    def close(self) -> None:
        if self._qemu.poll() is None:
            self._qemu.kill()
        self._qemu.wait()
        self._reader.join(timeout=5)
        self._swtpm.kill()
        self._swtpm.wait()
