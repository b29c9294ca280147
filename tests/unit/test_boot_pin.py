"""The boot-time PIN prompt: asked again (saying why) while the TPM rejects the PIN, never
again once nobody answers, at most PIN_PROMPTS times. The TPM side is faked here; the real
one is in tests/integration/test_lockout.py."""

from __future__ import annotations

import os
import pty
import termios
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sealer.boot import unlocker
from sealer.boot.agent import ConsolePin
from sealer.errors import AuthError, LockoutError

REJECTED = AuthError("the TPM rejected the PIN: 2 tries left before the TPM locks out", "hint")


class Asker:
    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.notes: list[str] = []

    def __call__(self, note: str = "") -> bytes:
        self.notes.append(note)
        answer = self.answers.pop(0)
        if answer is None:
            raise AuthError("no PIN was entered")
        return answer


def fake_tpm(monkeypatch: pytest.MonkeyPatch, outcomes: list[Exception | None]) -> None:
    """release_key that reads the PIN, then raises the next outcome (None: releases)."""
    monkeypatch.setattr(unlocker, "enrolled_header", lambda device: None)
    monkeypatch.setattr(unlocker, "seconds_since_process_start", lambda: 0.5)

    def release_key(device: str, **kwargs: Any) -> object:
        outcome = outcomes.pop(0)
        if not isinstance(outcome, LockoutError):  # in lockout, the PIN is not asked for
            kwargs["read_pin"]()
        if outcome is not None:
            raise outcome
        return SimpleNamespace(key=b"key")

    monkeypatch.setattr(unlocker, "release_key", release_key)


def unlock(asker: Asker) -> unlocker.BootUnlock:
    return unlocker.unlock_for_boot("/dev/x", tcti="swtpm:", read_pin=asker, tpm_timeout=1)


def test_a_rejected_pin_is_asked_again_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tpm(monkeypatch, [REJECTED, None])
    asker = Asker([b"1111", b"2468"])
    assert unlock(asker).seconds == 0.5
    assert asker.notes == ["", REJECTED.message]


def test_no_pin_entered_goes_to_the_passphrase_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tpm(monkeypatch, [None])
    asker = Asker([None])
    with pytest.raises(AuthError, match="no PIN was entered"):
        unlock(asker)
    assert asker.notes == [""]


def test_lockout_stops_the_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tpm(monkeypatch, [REJECTED, LockoutError("the TPM is in dictionary-attack lockout")])
    asker = Asker([b"1111", b"2468"])
    with pytest.raises(LockoutError):
        unlock(asker)
    assert asker.notes == [""]


def test_at_most_pin_prompts_prompts(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tpm(monkeypatch, [REJECTED] * (unlocker.PIN_PROMPTS + 1))
    asker = Asker([b"1111"] * (unlocker.PIN_PROMPTS + 1))
    with pytest.raises(AuthError, match="rejected"):
        unlock(asker)
    assert len(asker.notes) == unlocker.PIN_PROMPTS


def test_the_agents_console_prompt_says_why_it_asks_again() -> None:
    master, slave = pty.openpty()
    seen = bytearray()

    def person() -> None:
        while b"Enter the TPM PIN" not in seen:
            seen.extend(os.read(master, 1024))
        # Typing before echo is off would be flushed (TCSAFLUSH), as on a real console.
        deadline = time.monotonic() + 5
        while termios.tcgetattr(slave)[3] & termios.ECHO and time.monotonic() < deadline:
            time.sleep(0.01)
        os.write(master, b"2468\n")

    typing = threading.Thread(target=person)
    typing.start()
    try:
        pin = ConsolePin("cryptroot", Path(os.ttyname(slave)))(REJECTED.message)
    finally:
        typing.join(5)
        os.close(slave)
        os.close(master)
    assert pin == b"2468"
    assert seen.decode().replace("\r\n", "\n").startswith(
        f"sealer: cryptroot: {REJECTED.message}\nEnter the TPM PIN for cryptroot: "
    )
