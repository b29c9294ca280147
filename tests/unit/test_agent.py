"""Unit tests for sealer.boot.agent: the systemd password agent's reading of ask files, and
its one-try-per-device rule, with a fake unlocker and a real datagram socket."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from sealer.boot.agent import (
    Agent,
    AskRequest,
    Target,
    attach_target,
    c_unescape,
    device_of,
    expired,
    monotonic_us,
    parse_ask,
    serve,
    stand_aside,
)
from sealer.boot.unlocker import BootUnlock
from sealer.errors import PolicyMismatchError
from sealer.services.unlock import PinReader

UUID = "d46cbdff-3e1b-4da7-948d-d901b919dcdf"
DEVICE = f"/dev/disk/by-uuid/{UUID}"
KEY = b"c2VhbGVyIHRlc3Qga2V5IGJ5dGVzIC4uLi4uLi4uLg=="

# What systemd 252's systemd-cryptsetup leaves in /run/systemd/ask-password (ask.*).
ASK_FILE = f"""[Ask]
PID=312
Socket=/run/systemd/ask-password/sck.8c5fa0de1b2c3d4e
AcceptCached=1
Echo=0
NotAfter=0
Silent=0
Message=Please enter passphrase for disk luks-{UUID}:
Icon=drive-harddisk
Id=cryptsetup:{DEVICE}
"""


def test_an_ask_file_as_systemd_writes_it() -> None:
    assert parse_ask(ASK_FILE) == AskRequest(
        socket="/run/systemd/ask-password/sck.8c5fa0de1b2c3d4e",
        pid=312,
        not_after=0,
        id=f"cryptsetup:{DEVICE}",
        message=f"Please enter passphrase for disk luks-{UUID}:",
        accept_cached=True,
        echo=False,
    )


def test_only_the_ask_section_counts_and_comments_are_skipped() -> None:
    text = (
        "# written by hand\n[Other]\nSocket=/elsewhere\nId=cryptsetup:/dev/vdb\n"
        "[Ask]\n; a comment\n  Socket = /run/x/sck.1  \nId=cryptsetup:/dev/vda\nNotAfter=77\n"
    )
    request = parse_ask(text)
    assert request is not None
    assert (request.socket, request.id, request.not_after, request.pid) == (
        "/run/x/sck.1", "cryptsetup:/dev/vda", 77, None,
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[Ask]\nId=cryptsetup:/dev/vda\n",  # nothing to answer to
        "[Ask]\nSocket=sck.relative\nId=cryptsetup:/dev/vda\n",
        "Socket=/run/x/sck.1\n",  # outside any section
        "\x00\xff garbage",
    ],
)
def test_a_file_without_a_usable_socket_is_no_request(text: str) -> None:
    assert parse_ask(text) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", 0), ("0", 0), ("18446744073709551615", 18446744073709551615), ("-5", 0), ("x", 0)],
)
def test_not_after_is_a_count_of_microseconds_or_none(value: str, expected: int) -> None:
    request = parse_ask(f"[Ask]\nSocket=/s\nNotAfter={value}\n")
    assert request is not None and request.not_after == expected


@pytest.mark.parametrize(
    ("request_id", "device"),
    [
        (f"cryptsetup:{DEVICE}", DEVICE),
        ("cryptsetup:/dev/block/8:3", "/dev/block/8:3"),
        ("cryptsetup:/dev/disk/by-label/my\\x20disk", "/dev/disk/by-label/my disk"),
        ("cryptsetup-verification:/dev/vda", None),  # the "type it again" prompt
        ("cryptsetup-tpm2-pin:/dev/vda", None),
        ("cryptsetup:", None),
        ("sealer-pin:/dev/vda", None),
        ("", None),
    ],
)
def test_the_device_of_a_request_id(request_id: str, device: str | None) -> None:
    assert device_of(request_id) == device


@pytest.mark.parametrize(
    ("escaped", "plain"),
    [
        ("plain/path", "plain/path"),
        ("a\\\\b", "a\\b"),
        ('q\\"uote\\\'s', "q\"uote's"),
        ("tab\\tnl\\n", "tab\tnl\n"),
        ("\\x2d\\x41", "-A"),
        ("\\101\\060", "A0"),
        ("\\xc3\\xa9t\\xc3\\xa9", "été"),  # cescape writes UTF-8 bytes one by one
        ("odd\\q\\x4", "odd\\q\\x4"),  # escapes cescape never writes stay as they are
        ("trailing\\", "trailing\\"),
    ],
)
def test_c_unescape_undoes_systemds_cescape(escaped: str, plain: str) -> None:
    assert c_unescape(escaped) == plain


@pytest.mark.parametrize(
    ("not_after", "now", "result"),
    [(0, 10**12, False), (100, 99, False), (100, 100, True), (100, 101, True)],
)
def test_expiry_in_monotonic_microseconds(not_after: int, now: int, result: bool) -> None:
    assert expired(not_after, now) is result


def test_the_volume_comes_from_systemd_cryptsetups_command_line() -> None:
    argv = ["/usr/lib/systemd/systemd-cryptsetup", "attach", f"luks-{UUID}", DEVICE, "none", ""]
    assert attach_target(argv, DEVICE) == Target(f"luks-{UUID}", DEVICE)
    # Another asker (or a vanished one): the device names itself.
    assert attach_target(["/usr/bin/systemd-ask-password", "x"], DEVICE) == Target(DEVICE, DEVICE)
    assert attach_target([], DEVICE) == Target(DEVICE, DEVICE)
    assert attach_target(["systemd-cryptsetup", "detach", "v"], DEVICE) == Target(DEVICE, DEVICE)


class FakeUnlock:
    """Stands in for unlock_for_boot: records the calls, returns a key or raises."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.devices: list[str] = []

    def __call__(
        self, device: str, *, tcti: str | None, read_pin: PinReader, tpm_timeout: float
    ) -> BootUnlock:
        self.devices.append(device)
        if self.error is not None:
            raise self.error
        token = SimpleNamespace(cap_pcr=15)
        unsealed = SimpleNamespace(key=KEY, enrollment=SimpleNamespace(token=token))
        return cast(BootUnlock, SimpleNamespace(unsealed=unsealed, seconds=1.25))


class Asker:
    """The systemd-cryptsetup side: a bound datagram socket and the ask file naming it."""

    def __init__(self, ask_dir: Path, name: str, **fields: Any) -> None:
        ask_dir.mkdir(parents=True, exist_ok=True)
        self.socket_path = ask_dir / f"sck.{name}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.setblocking(False)
        values = {
            "PID": str(os.getpid()), "Socket": str(self.socket_path), "AcceptCached": "1",
            "Echo": "0", "NotAfter": "0", "Id": f"cryptsetup:{DEVICE}",
        }
        values.update({key: str(value) for key, value in fields.items()})
        self.ask_path = ask_dir / f"ask.{name}"
        body = "".join(f"{key}={value}\n" for key, value in values.items())
        self.ask_path.write_text("[Ask]\n" + body)

    def answers(self) -> list[bytes]:
        got = []
        while True:
            try:
                got.append(self.sock.recv(4096))
            except BlockingIOError:
                return got

    def close(self) -> None:
        self.sock.close()
        self.socket_path.unlink(missing_ok=True)
        self.ask_path.unlink(missing_ok=True)


@pytest.fixture
def askers(tmp_path: Path) -> Iterator[list[Asker]]:
    made: list[Asker] = []
    yield made
    for asker in made:
        asker.close()


def make_agent(tmp_path: Path, unlock: FakeUnlock) -> Agent:
    (tmp_path / "console").touch()  # the agent writes to a console, never creates one
    return Agent(
        ask_dir=tmp_path / "ask-password",
        tried_record=tmp_path / "run" / "agent-tried",
        cap_record=tmp_path / "run" / "cap-pcrs",
        console=tmp_path / "console",
        unlock=unlock,
    )


def console_lines(agent: Agent) -> list[str]:
    return agent.console.read_text().splitlines()


def ask(askers: list[Asker], agent: Agent, name: str, **fields: Any) -> Asker:
    asker = Asker(agent.ask_dir, name, **fields)
    askers.append(asker)
    return asker


def test_the_released_key_answers_the_request_once(tmp_path: Path, askers: list[Asker]) -> None:
    unlock = FakeUnlock()
    agent = make_agent(tmp_path, unlock)
    first = ask(askers, agent, "1")
    assert agent.run_pass() == 1
    assert first.answers() == [b"+" + KEY]
    assert unlock.devices == [DEVICE]
    assert console_lines(agent) == [f"sealer: {DEVICE}: key released by the TPM in 1.25 s"]
    assert (tmp_path / "run" / "cap-pcrs").read_text() == "15\n"
    # systemd-cryptsetup asks again (cryptsetup refused the key): the person answers now.
    first.close()
    again = ask(askers, agent, "2")
    agent.run_pass()
    assert again.answers() == []
    assert unlock.devices == [DEVICE]


def test_a_refusal_says_why_once_and_leaves_the_request(
    tmp_path: Path, askers: list[Asker]
) -> None:
    unlock = FakeUnlock(PolicyMismatchError("PCR 7 differs from every approved boot state"))
    agent = make_agent(tmp_path, unlock)
    asker = ask(askers, agent, "1")
    agent.run_pass()
    agent.run_pass()  # the watch loop passes again while the person types
    assert asker.answers() == []
    assert asker.ask_path.exists()
    assert unlock.devices == [DEVICE]
    assert console_lines(agent) == [
        f"sealer: {DEVICE}: PCR 7 differs from every approved boot state (see 'sealer explain'); "
        "asking for the passphrase instead"
    ]
    assert not (tmp_path / "run" / "cap-pcrs").exists()


def test_a_bug_in_the_unlocker_still_leaves_the_prompt(
    tmp_path: Path, askers: list[Asker]
) -> None:
    agent = make_agent(tmp_path, FakeUnlock(KeyError("slot")))
    asker = ask(askers, agent, "1")
    agent.run_pass()
    assert asker.answers() == []
    assert console_lines(agent) == [
        f"sealer: {DEVICE}: internal error (KeyError: 'slot'); asking for the passphrase instead"
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"Id": "cryptsetup-verification:/dev/vda"},
        {"Id": "some-other-service:password"},
        {"NotAfter": "1"},  # long past
        {"PID": "2147483646"},  # no such process: a stale file
    ],
)
def test_requests_not_ours_or_stale_are_left_alone(
    tmp_path: Path, askers: list[Asker], fields: dict[str, str]
) -> None:
    unlock = FakeUnlock()
    agent = make_agent(tmp_path, unlock)
    asker = ask(askers, agent, "1", **fields)
    agent.run_pass()
    assert unlock.devices == []
    assert asker.answers() == []
    assert console_lines(agent) == []
    assert not agent.tried_record.exists()


def test_a_request_with_time_left_is_answered(tmp_path: Path, askers: list[Asker]) -> None:
    agent = make_agent(tmp_path, FakeUnlock())
    asker = ask(askers, agent, "1", NotAfter=monotonic_us() + 60_000_000)
    agent.run_pass()
    assert asker.answers() == [b"+" + KEY]


def test_two_volumes_are_tried_one_each(tmp_path: Path, askers: list[Asker]) -> None:
    unlock = FakeUnlock()
    agent = make_agent(tmp_path, unlock)
    root = ask(askers, agent, "a")
    home = ask(askers, agent, "b", Id="cryptsetup:/dev/vdc")
    agent.run_pass()
    assert root.answers() == [b"+" + KEY]
    assert home.answers() == [b"+" + KEY]
    assert unlock.devices == [DEVICE, "/dev/vdc"]


def test_serve_once_passes_and_tells_systemd_it_is_ready(
    tmp_path: Path, askers: list[Asker], monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    agent = make_agent(tmp_path, FakeUnlock())
    asker = ask(askers, agent, "1")
    try:
        assert serve(agent, once=True) == 0
        assert notify.recv(64) == b"READY=1"
    finally:
        notify.close()
    assert asker.answers() == [b"+" + KEY]


def test_serve_returns_when_no_request_is_left(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, FakeUnlock())
    agent.ask_dir.mkdir()
    assert serve(agent, once=False) == 0


def test_without_a_console_the_line_goes_to_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = Agent(console=tmp_path / "no-console")
    agent.say("sealer: data: no TPM; asking for the passphrase instead")
    assert capsys.readouterr().err == "sealer: data: no TPM; asking for the passphrase instead\n"
    assert not (tmp_path / "no-console").exists()


def test_a_failing_agent_stands_aside_until_the_console_agent_answered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exiting non-zero with a request pending would have the path unit restart the agent
    # forever while the console agent (ordered after it) waits: no prompt at all.
    ask_dir = tmp_path / "ask-password"
    ask_dir.mkdir()
    assert stand_aside(ask_dir, RuntimeError("boom")) == 0
    assert capsys.readouterr().err == (
        "sealer: password agent: internal error (RuntimeError: boom); "
        "asking for the passphrase instead\n"
    )
