"""Fuzz targets: hostile bytes into the real entry point of each parser sealer exposes.

Each target takes one input (the bytes an attacker controls on that path) and drives it the
way sealer's commands do, including what they do with the parsed result right after, since a
parser that "succeeds" on garbage can hand a later step something it cannot digest. The one
rule: sealer may refuse an input only with its own errors (SealerError subclasses), which the
CLI turns into one line and an exit code. Any other exception escaping is a finding (a
"crash"); libFuzzer adds hangs (-timeout) and memory blow-ups (-rss_limit_mb).

This module imports neither atheris nor hypothesis: worker.py runs it under libFuzzer, and
tests/unit/test_hostile_inputs.py calls the same targets from hypothesis strategies.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sealer
from sealer.errors import SealerError
from sealer.interop import clevis, systemd_tpm2
from sealer.luks.enrollment import Enrollment
from sealer.luks.header import PROBE_LENGTH, parse_metadata, probe
from sealer.luks.token import parse_token
from sealer.measure import eventlog
from sealer.measure.coverage import coverage
from sealer.measure.measurements import measurements_of
from sealer.pcrs import BANKS
from sealer.services.matching import approvals_of
from sealer.services.vendor import read_approval_file

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
DICT_DIR = FUZZ_DIR / "dicts"
# The JSON area of a LUKS2 header starts right after the 4 KiB binary header.
LUKS2_JSON_OFFSET = 4096
SCRATCH_ENV = "SEALER_FUZZ_SCRATCH"  # where approval_target writes its input file


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]  # raises SealerError to refuse; anything else is a finding
    what: str


# ---------------------------------------------------------------------------------------------
# 1. The TCG event log (securityfs or --eventlog FILE): parse, then what `sealer eventlog`,
#    `predict` and `enroll` read from it.


def eventlog_target(data: bytes) -> None:
    log = eventlog.parse(data)
    for event in log.events:
        # Descriptions, tags and variables are decoded lazily, from the untrusted data.
        assert isinstance(event.description, str)
        _ = event.tag, event.type_name, eventlog.variable_data(event)
    coverage(log)
    for name in log.algorithms:
        measurements_of(log, BANKS[name])  # replays the bank, as `sealer eventlog` does


# ---------------------------------------------------------------------------------------------
# 2. LUKS2 tokens (the JSON object cryptsetup keeps per token): sealer's own, and the
#    systemd-tpm2 and clevis readers used to open volumes other tools enrolled.


def token_target(data: bytes) -> None:
    doc = _token_json(data)
    if not isinstance(doc, dict):
        return
    # Every reader sees every token: each checks the type itself first, and that check is
    # part of what is under test.
    for reader in (read_sealer_token, read_systemd_token, read_clevis_token):
        with contextlib.suppress(SealerError):  # one reader's refusal must not end the input
            reader(doc)


def _token_json(data: bytes) -> Any:
    """The token as parse_metadata hands it over. JSON that does not decode never reaches a
    token reader (parse_metadata refuses it, and has a target of its own), so it is skipped
    here rather than counted as a refusal."""
    try:
        return json.loads(data.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None


def read_sealer_token(doc: dict[str, Any]) -> None:
    token = parse_token(0, doc)
    # A token sealer accepted must survive being written back (every re-seal rewrites it)
    # and read again unchanged; otherwise the next command cannot read its own token.
    try:
        again = parse_token(0, token.to_json())
    except SealerError as exc:
        raise AssertionError(f"sealer cannot read the token it writes: {exc.one_line()}") from exc
    if again != token:
        raise AssertionError(f"a parsed token reads back differently: {token!r} -> {again!r}")
    approvals_of(Enrollment(0, token))  # the unlock path: each approval parsed and verified


def read_systemd_token(doc: dict[str, Any]) -> None:
    token = systemd_tpm2.parse(0, doc)
    token.unsupported()
    _ = token.sealed_private, token.sealed_public


def read_clevis_token(doc: dict[str, Any]) -> None:
    clevis.parse(0, doc)


# ---------------------------------------------------------------------------------------------
# 3. Approval files (`sealer policy install FILE`, `sealer policy show FILE`).

_scratch: Path | None = None


def approval_target(data: bytes) -> None:
    # read_approval_file takes a path: the input goes through a real file, as it does for
    # `sealer policy install`. One scratch file per process, overwritten each time.
    path = _scratch_file()
    path.write_bytes(data)
    read_approval_file(path)


def _scratch_file() -> Path:
    global _scratch
    if _scratch is None:
        # run.py names a folder it removes afterwards (libFuzzer ends the process without
        # Python's atexit); otherwise tmpfs, so that millions of writes never reach a disk.
        base = os.environ.get(SCRATCH_ENV) or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
        handle, name = tempfile.mkstemp(prefix="sealer-fuzz-approval-", dir=base)
        os.close(handle)
        _scratch = Path(name)
        atexit.register(_scratch.unlink, missing_ok=True)
    return _scratch


# ---------------------------------------------------------------------------------------------
# 4. The LUKS2 header: the binary probe of the device's first bytes, and the JSON metadata
#    that cryptsetup prints (luksDump --dump-json-metadata) from the header's JSON area.


def luks_header_target(data: bytes) -> None:
    """``data`` is a header as it lies on disk: 4 KiB binary header, then the JSON area."""
    with contextlib.suppress(SealerError):  # the JSON is parsed anyway: both halves are hostile
        probe("fuzz", data[:PROBE_LENGTH])
    area = data[LUKS2_JSON_OFFSET:].split(b"\0", 1)[0]
    # cryptsetup's stdout, decoded as sealer.host.proc decodes it.
    header = parse_metadata("fuzz", "uuid", area.decode("utf-8", "replace"))
    header.free_keyslot()
    header.free_token_id()
    header.keyslots_without_token()
    for kind in ("sealer-tpm2", "systemd-tpm2", "clevis"):
        header.tokens_of_type(kind)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("eventlog", eventlog_target, "TCG event log: sealer.measure.eventlog.parse"),
        Target("token", token_target, "LUKS2 token JSON: sealer-tpm2, systemd-tpm2, clevis"),
        Target("approval", approval_target, "approval file: read_approval_file"),
        Target("luks_header", luks_header_target, "LUKS2 header: probe + parse_metadata"),
    )
}


# ---------------------------------------------------------------------------------------------
# What counts as a finding


@dataclass(frozen=True)
class KnownBug:
    """A finding in a file this change could not edit, reported in the issue note.

    It is counted and reported instead of stopping the fuzzer, so that CI stays green and
    the fuzzer keeps searching for new bugs; delete the entry together with the fix."""

    exception: type[BaseException]
    function: str  # the innermost sealer function in the traceback
    note: str


KNOWN_UNFIXED: tuple[KnownBug, ...] = ()  # none left: the three found were fixed
known_hits: dict[str, int] = {}
_SEALER_PACKAGE = str(Path(sealer.__file__).resolve().parent) + os.sep


def innermost_sealer_function(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if str(Path(f.filename).resolve()).startswith(_SEALER_PACKAGE)]
    return inside[-1].name if inside else ""


def known_bug(exc: BaseException) -> KnownBug | None:
    function = innermost_sealer_function(exc)
    for bug in KNOWN_UNFIXED:
        if isinstance(exc, bug.exception) and function == bug.function:
            return bug
    return None


def one_input(target: Target, data: bytes) -> None:
    """Run ``target`` on ``data`` the way the fuzzer does: refusals by SealerError are fine,
    known unfixed bugs are counted, and anything else propagates as a crash."""
    try:
        target.run(data)
    except SealerError:
        pass
    except Exception as exc:
        bug = known_bug(exc)
        if bug is None:
            raise
        key = f"{type(exc).__name__} in {bug.function}"
        if key not in known_hits:
            # One line per bug and process, which run.py counts.
            print(f"sealer-fuzz: known unfixed bug: {key}: {bug.note}", file=sys.stderr)
        known_hits[key] = known_hits.get(key, 0) + 1
