"""A systemd password agent: answer a disk's passphrase request with the key the TPM releases.

In a systemd initramfs (dracut's), no keyscript runs: systemd-cryptsetup asks for the
passphrase through systemd's password agent protocol (systemd's docs/PASSWORD_AGENTS.md). It
writes an INI file ``/run/systemd/ask-password/ask.XXXXXX`` whose ``[Ask]`` section names a
datagram socket (``Socket=``), the asking process (``PID=``), a deadline (``NotAfter=``, µs
of CLOCK_MONOTONIC, 0 for none) and what is asked (``Id=cryptsetup:<source device>``). Any
agent may answer by sending ``+`` and the password to that socket; the first answer wins and
the asker removes the file, which makes the other agents drop their prompt.

``python -m sealer.boot.agent`` is started by ``sealer-ask-password.path`` when that directory
fills. For each request of systemd-cryptsetup it tries the TPM once per device and boot (the
devices tried are remembered in ``TRIED_RECORD``), so a refusal, or a key cryptsetup rejects,
never loops: systemd-cryptsetup asks again and the console agent's prompt is what the user
sees. On success it answers and records the PCR to cap, as the keyscript does; on failure it
prints one line on the console, in the keyscript's words, and leaves the request alone.

Systemd is told the agent is ready (``READY=1``) only after its first pass, and the console
agent's service is ordered after this one: the passphrase prompt does not flash up while the
TPM is being asked. The agent then keeps watching until the directory is empty, because a
service that exited while requests are pending (the person still typing) would be started
again at once by the path unit, in a loop.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sealer.boot.pcrcap import CAP_RECORD
from sealer.boot.unlocker import (
    TPM_WAIT_SECONDS,
    BootUnlock,
    PinAsker,
    fallback_line,
    record_cap_of,
    released_line,
    unlock_for_boot,
)
from sealer.errors import AuthError

ASK_DIR = Path("/run/systemd/ask-password")
# tmpfs, and carried over to the real root with /run: one try per device for the whole boot.
TRIED_RECORD = Path(os.environ.get("SEALER_AGENT_RECORD") or "/run/sealer/agent-tried")
CONSOLE = Path("/dev/console")
# systemd-cryptsetup's Id for a volume's passphrase: "cryptsetup:" + the C-escaped source
# device (systemd 252, src/cryptsetup/cryptsetup.c, get_password()). The verification prompt
# ("cryptsetup-verification:") and the TPM PIN / FIDO2 / PKCS#11 prompts use other Ids.
CRYPTSETUP_ID = "cryptsetup:"
# systemd-cryptsetup creates its temporary file, then its socket, then renames the file to
# ask.*: the path unit may start the agent before the request is complete.
FIRST_REQUEST_WAIT = 2.0
POLL_SECONDS = 0.2

Unlocker = Callable[..., BootUnlock]


@dataclass(frozen=True)
class AskRequest:
    """The ``[Ask]`` section of an ask file, as systemd writes it."""

    socket: str
    pid: int | None
    not_after: int  # CLOCK_MONOTONIC µs; 0: no deadline
    id: str
    message: str
    accept_cached: bool = False
    echo: bool = False


def _ini_values(text: str, section: str) -> dict[str, str]:
    """Key/value pairs of one INI section, the way systemd's configuration parser reads them:
    ``#`` and ``;`` start comments, whitespace around keys and values is dropped, a later
    key wins."""
    values: dict[str, str] = {}
    current: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if sep and current == section:
            values[key.strip()] = value.strip()
    return values


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


def parse_ask(text: str) -> AskRequest | None:
    """The request an ask file holds; None when it has no usable socket (nothing to answer)."""
    values = _ini_values(text, "Ask")
    sock = values.get("Socket", "")
    if not sock.startswith("/"):
        return None
    not_after = _int(values.get("NotAfter")) or 0
    pid = _int(values.get("PID"))
    return AskRequest(
        socket=sock,
        pid=pid if pid else None,
        not_after=not_after,
        id=values.get("Id", ""),
        message=values.get("Message", ""),
        accept_cached=values.get("AcceptCached") == "1",
        echo=values.get("Echo") == "1",
    )


_SIMPLE_ESCAPES = {
    "a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11,
    "\\": 92, '"': 34, "'": 39, "?": 63, "s": 32,
}


def c_unescape(text: str) -> str:
    """Undo systemd's cescape(): backslash escapes, ``\\xNN`` and octal ``\\NNN`` bytes.

    An escape that cescape() never writes is kept as it is rather than refused: the result
    is only used to find a device, and a wrong name fails there, with a reason.
    """
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out += char.encode("utf-8", "surrogateescape")
            i += 1
            continue
        follow = text[i + 1]
        hex_digits = text[i + 2 : i + 4]
        octal_digits = text[i + 1 : i + 4]
        if follow in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[follow])
            i += 2
        elif follow == "x" and len(hex_digits) == 2 and _is_hex(hex_digits):
            out.append(int(hex_digits, 16))
            i += 4
        elif len(octal_digits) == 3 and all(c in "01234567" for c in octal_digits):
            out.append(int(octal_digits, 8) & 0xFF)
            i += 4
        else:
            out += b"\\"
            i += 1
    return out.decode("utf-8", "surrogateescape")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def device_of(request_id: str) -> str | None:
    """The source device of a systemd-cryptsetup passphrase request; None for other requests."""
    if not request_id.startswith(CRYPTSETUP_ID):
        return None
    device = c_unescape(request_id[len(CRYPTSETUP_ID) :])
    return device or None


def expired(not_after: int, now: int) -> bool:
    """Is a request with deadline ``not_after`` (µs, 0: none) over at ``now`` (µs)?"""
    return not_after != 0 and now >= not_after


def monotonic_us() -> int:
    """Now on CLOCK_MONOTONIC in µs: the clock and unit of an ask file's ``NotAfter=``."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


@dataclass(frozen=True)
class Target:
    """The volume a passphrase request is for: its mapping name and its LUKS device."""

    volume: str  # the mapping's name, as the console and the user know it
    source: str  # the device holding the LUKS header


def attach_target(argv: list[str], device: str) -> Target:
    """The volume a request is for, from the asker's command line when it is
    ``systemd-cryptsetup attach VOLUME SOURCE ...`` (which names the volume, and the source
    without the Id's escaping), else the device itself."""
    if len(argv) >= 4 and Path(argv[0]).name == "systemd-cryptsetup" and argv[1] == "attach":
        return Target(volume=argv[2], source=argv[3])
    return Target(volume=device, source=device)


def read_cmdline(pid: int | None) -> list[str]:
    """The command line of process ``pid`` (the asker), or [] when it is gone or unknown."""
    if pid is None:
        return []
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode("utf-8", "surrogateescape") for arg in raw.split(b"\0") if arg]


def process_alive(pid: int | None) -> bool:
    """Is the asker still there? A dead one left a stale file behind (the spec says: skip)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_tried(record: Path) -> set[str]:
    """The devices the TPM was already tried for in this boot (none when there is no record)."""
    try:
        return set(record.read_text(encoding="utf-8", errors="surrogateescape").splitlines())
    except OSError:
        return set()


def remember_tried(record: Path, device: str) -> None:
    """Record that the TPM was tried for ``device``, so this boot never tries it again."""
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(record, "a", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(device + "\n")


def answer(socket_path: str, password: bytes) -> None:
    """Send the password the way the protocol says: ``+`` then the password, one datagram."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"+" + password, socket_path)


def notify_ready() -> None:
    """Tell systemd the first pass is done (Type=notify), so the console agent may start."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    except OSError:
        pass  # systemd then starts the console agent when our start times out


def pending_files(ask_dir: Path) -> Iterator[Path]:
    """The ask files waiting in ``ask_dir``, in name order (none when it cannot be read)."""
    try:
        names = sorted(os.listdir(ask_dir))
    except OSError:
        return
    for name in names:
        if name.startswith("ask."):
            yield ask_dir / name


def directory_empty(ask_dir: Path) -> bool:
    """Whether no request is left in ``ask_dir`` (an unreadable one counts as empty)."""
    try:
        return not os.listdir(ask_dir)
    except OSError:
        return True


class ConsolePin:
    """Asks for the TPM PIN on the console, only when the unlocker needs it.

    Not through the password agents: the console agent is ordered after this service's
    first pass, so it would not answer until this pass ends. Nothing else reads the console
    meanwhile. An empty answer gives up, and the passphrase prompt follows.
    """

    def __init__(self, volume: str, console: Path) -> None:
        self.volume = volume
        self.console = console

    def __call__(self, note: str = "") -> bytes:
        import termios  # only a PIN-protected enrollment needs it

        try:
            fd = os.open(self.console, os.O_RDWR | os.O_NOCTTY)
        except OSError as error:
            raise AuthError(f"no console to ask for the TPM PIN on ({error})") from error
        try:
            if note:  # why it asks again: the tries left
                os.write(fd, f"sealer: {self.volume}: {note}\n".encode())
            os.write(fd, f"Enter the TPM PIN for {self.volume}: ".encode())
            try:
                saved = termios.tcgetattr(fd)
            except termios.error as error:
                raise AuthError("the console is not a terminal: no PIN was entered") from error
            quiet = list(saved)
            quiet[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
            try:
                line = os.read(fd, 1024)
            finally:
                termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
                os.write(fd, b"\n")
        finally:
            os.close(fd)
        pin = line.rstrip(b"\r\n")
        if not pin:
            raise AuthError("no PIN was entered")
        return pin


@dataclass
class Agent:
    """The password agent: answers each request with the TPM's key, once per device and boot.

    Its paths, TPM and unlocker are fields so that tests can point them elsewhere.
    """

    ask_dir: Path = ASK_DIR
    tried_record: Path = TRIED_RECORD
    cap_record: Path = CAP_RECORD
    console: Path = CONSOLE
    tcti: str | None = None
    unlock: Unlocker = unlock_for_boot
    pin_reader: Callable[[str, Path], PinAsker] = ConsolePin
    _unlocked_before: bool = field(default=False, init=False)

    def say(self, line: str) -> None:
        """One line on the console (the keyscript's stderr is the console; ours is the journal).

        O_NOCTTY: a service is a session leader, and opening a terminal without it would make
        the console this process's controlling terminal. No O_CREAT: without a console, a
        file named /dev/console would catch everyone's output.
        """
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | os.O_CLOEXEC
        data = (line + "\n").encode("utf-8", "replace")
        try:
            fd = os.open(self.console, flags)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            print(line, file=sys.stderr, flush=True)

    def run_pass(self) -> int:
        """Handle every pending request once; return how many ask files were read."""
        seen = 0
        for path in pending_files(self.ask_dir):
            try:
                text = path.read_text(encoding="utf-8", errors="surrogateescape")
            except OSError:
                continue  # answered and removed since the listing
            seen += 1
            request = parse_ask(text)
            if request is not None:
                self.handle(request)
        return seen

    def handle(self, request: AskRequest) -> None:
        device = device_of(request.id)
        if device is None or expired(request.not_after, monotonic_us()):
            return
        if not process_alive(request.pid):
            return
        target = attach_target(read_cmdline(request.pid), device)
        tried_as = os.path.realpath(target.source)
        if tried_as in read_tried(self.tried_record):
            return  # tried this boot already: the person at the console answers now
        try:
            # Before trying: a crash or a hang below must not make the next run try again.
            remember_tried(self.tried_record, tried_as)
        except OSError as error:
            self.say(fallback_line(target.volume, error))
            return
        started = time.monotonic()
        try:
            result = self.unlock(
                target.source,
                tcti=self.tcti,
                read_pin=self.pin_reader(target.volume, self.console),
                tpm_timeout=TPM_WAIT_SECONDS,
            )
        except Exception as error:  # a bug must never cost the user the passphrase prompt
            self.say(fallback_line(target.volume, error))
            return
        try:
            problem = record_cap_of(result, target.volume, self.cap_record)
        except Exception as error:  # a bug: the cap might miss this PCR, so release nothing
            self.say(fallback_line(target.volume, error))
            return
        if problem is not None:
            self.say(problem)
        try:
            answer(request.socket, result.unsealed.key)
        except OSError as error:
            # The asker went away (answered at the console meanwhile, or timed out).
            self.say(f"sealer: {target.volume}: the passphrase request was gone before the "
                     f"TPM's key could be given ({error.strerror or error})")
            return
        # The first unlock counts from the interpreter's start, as the keyscript's does;
        # a later one (another volume) from its own start.
        seconds = time.monotonic() - started if self._unlocked_before else result.seconds
        self._unlocked_before = True
        self.say(released_line(target.volume, seconds))


def serve(agent: Agent, *, once: bool) -> int:
    """First pass, READY=1, then watch until no request is left (or just one pass)."""
    start = time.monotonic()
    ready = False
    while True:
        seen = agent.run_pass()
        empty = directory_empty(agent.ask_dir)
        waited = time.monotonic() - start
        if not ready and (seen or once or empty or waited >= FIRST_REQUEST_WAIT):
            notify_ready()
            ready = True
        if once or empty:
            return 0
        time.sleep(POLL_SECONDS)


def stand_aside(ask_dir: Path, error: BaseException) -> int:
    """After a failure of the agent itself: say so, let the console agent start, then stay.

    Exiting while a request is pending would have the path unit start the agent again at
    once, forever, holding the console agent (ordered after this service) back: the user
    would never see the passphrase prompt. So the agent reports ready and waits, doing
    nothing, until the console agent has answered every request.
    """
    print(fallback_line("password agent", error), file=sys.stderr, flush=True)
    notify_ready()
    while not directory_empty(ask_dir):
        time.sleep(POLL_SECONDS)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the agent (``--once``: one pass over the requests); returns the exit status.

    Any exception, even a bug, ends in standing aside for the console agent, so the user still
    gets the passphrase prompt.
    """
    ask_dir = ASK_DIR
    try:
        parser = argparse.ArgumentParser(
            prog="python -m sealer.boot.agent",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument(
            "--once", action="store_true", help="one pass over the requests, then exit"
        )
        parser.add_argument("--ask-dir", type=Path, default=ASK_DIR, help=argparse.SUPPRESS)
        parser.add_argument("--console", type=Path, default=CONSOLE, help=argparse.SUPPRESS)
        args = parser.parse_args(argv)
        ask_dir = args.ask_dir
        agent = Agent(
            ask_dir=args.ask_dir,
            console=args.console,
            # Tests on the host point this at swtpm; in the initramfs it is unset (the device).
            tcti=os.environ.get("SEALER_TCTI") or None,
        )
        return serve(agent, once=args.once)
    except Exception as error:  # a bug must never cost the user the passphrase prompt
        return stand_aside(ask_dir, error)


if __name__ == "__main__":
    sys.exit(main())
