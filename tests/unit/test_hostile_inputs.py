"""Hostile inputs for every parser sealer exposes, built by hypothesis from real seeds.

The seeds are the fuzz corpus (fuzz/corpus/: OVMF event logs, a cryptsetup header, tokens
written by sealer, systemd-cryptenroll and clevis, signed approval files). Each strategy
makes inputs that are *almost* valid, so that they get past the first checks: real seeds
with flipped bits, lying length fields and truncations; JSON with fields deleted, retyped
or replaced by huge numbers, huge strings, lone surrogates and deep nesting.

The property everywhere: a parser refuses with its own module's error (EventLogError,
TokenError, DeviceError...), never with anything else, and never allocates much more than
its input. The same targets run under libFuzzer (fuzz/, test_fuzz_budget.py).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mutators
import pytest
import seeds
import targets
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sealer.errors import DeviceError, PolicyMismatchError, SealerError, TokenError
from sealer.luks.header import LUKS_MAGIC, PROBE_LENGTH, Probe, parse_metadata, probe
from sealer.measure import eventlog
from sealer.measure.eventlog import EventLogError
from sealer.pcrs import BANKS
from sealer.policy.approval import parse_approval, verify_approval
from sealer.services.vendor import read_approval_file

# Deterministic for CI (derandomize, no example database); no per-example deadline, since
# a slow CI machine must not turn into a flaky failure: hangs are libFuzzer's -timeout job.
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FEW = settings(FAST, max_examples=60)


def corpus(target: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((targets.CORPUS_DIR / target).iterdir())]


def corpus_json(target: str, prefix: str = "") -> list[dict[str, Any]]:
    return [
        json.loads(p.read_bytes())
        for p in sorted((targets.CORPUS_DIR / target).iterdir())
        if p.name.startswith(prefix)
    ]


def refuses_only_with(errors: tuple[type[SealerError], ...], call: Callable[[], object]) -> None:
    """Run ``call``; a refusal must be one of ``errors``. Anything else fails the test."""
    with contextlib.suppress(*errors):
        call()


# ---------------------------------------------------------------------------------------------
# Strategies: bytes


# Length fields that lie: zero, one, the signed and unsigned extremes, 4 GiB.
HUGE_U32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


@st.composite
def mutated_bytes(draw: st.DrawFn, sources: list[bytes]) -> bytes:
    """A seed with a few bit flips, overwritten bytes, lying u32 fields, cuts and inserts."""
    data = bytearray(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "byte", "u32", "truncate", "insert", "delete"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "u32":
            data[at : at + 4] = struct.pack("<I", draw(st.sampled_from(HUGE_U32)))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Strategies: JSON

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


# Values that broke or could break a reader: int() past 4300 digits, negative handles,
# lone surrogates (valid JSON, not encodable), NUL, nesting deep enough to reach repr().
HOSTILE_VALUES = st.sampled_from(
    [
        10**4000, -(10**4000), -1, 2**64, 2**32, 0, 1, True, False, None,
        "9" * 5000, "0" * 5000, "-1", "0x-1", " 1", "1_0", "", " ", "\ud800", "\x00",
        "٣", "00", "ff" * 300, "=" * 8, "AAAA", "0x", float("nan"), float("inf"), -0.0,
        [], {}, [[]], {"": None}, nested(200), {"9" * 5000: []},
    ]
).map(copy.deepcopy) | JSON_VALUES  # a copy: later mutations may change what they are put in


def _pick_container(draw: st.DrawFn, doc: Any) -> Any:
    """A dict or list somewhere in ``doc``: a random walk from the root."""
    node = doc
    while True:
        children = [
            child
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list) and child
        ]
        if not children or draw(st.booleans()):
            return node
        node = draw(st.sampled_from(children))


def _mutate_once(draw: st.DrawFn, doc: Any) -> None:
    node = _pick_container(draw, doc)
    if isinstance(node, dict):
        keys = sorted(node)
        action = draw(st.sampled_from(["replace", "delete", "add"] if keys else ["add"]))
        if action == "add":
            node[draw(st.text(max_size=12) | st.sampled_from(keys or ["x"]))] = draw(HOSTILE_VALUES)
            return
        key = draw(st.sampled_from(keys))
        if action == "delete":
            del node[key]
        else:
            node[key] = draw(HOSTILE_VALUES)
    elif node:
        index = draw(st.integers(0, len(node) - 1))
        if draw(st.booleans()):
            node[index] = draw(HOSTILE_VALUES)
        else:
            del node[index]
    else:
        node.append(draw(HOSTILE_VALUES))


@st.composite
def mutated_json(draw: st.DrawFn, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """A seed document with one to three fields deleted, added or replaced."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 3))):
        _mutate_once(draw, doc)
    return doc


# ---------------------------------------------------------------------------------------------
# 1. The TCG event log

LOGS = corpus("eventlog")
ALGORITHMS = st.dictionaries(
    st.sampled_from([b.alg_id for b in BANKS.values()]) | st.integers(0, 0xFFFF),
    st.sampled_from([b.size for b in BANKS.values()]) | st.integers(0, 80),
    max_size=4,
)
DECODED_TYPES = st.sampled_from(sorted(eventlog.EVENT_TYPES)) | st.integers(0, 2**32 - 1)


def _duplicate_digest_log() -> bytes:
    """Regression: two SHA-1 digests instead of SHA-1 and SHA-256; replaying SHA-256 raised
    KeyError before the parser refused repeated algorithms."""
    sha1, sha256 = BANKS["sha1"], BANKS["sha256"]
    head = seeds.spec_id_event({sha1.alg_id: 20, sha256.alg_id: 32})
    digests = [(sha1.alg_id, bytes(20)), (sha1.alg_id, bytes(20))]
    return head + seeds.event2(7, eventlog.EV_SEPARATOR, digests, bytes(4))


@st.composite
def structured_logs(draw: st.DrawFn) -> bytes:
    """A log built field by field: announced algorithms, then events whose digests and data
    are right, wrong or random, one of them possibly with a lying length."""
    algorithms = draw(ALGORITHMS)
    log = seeds.spec_id_event(algorithms)
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(DECODED_TYPES)
        data = draw(
            st.binary(max_size=64)
            | st.builds(seeds.variable_event_data, st.text(max_size=8), st.binary(max_size=8))
            | st.builds(seeds.image_event_data, st.text(max_size=12))
            | st.builds(
                lambda t, s: struct.pack("<II", t, s),
                st.integers(0, 2**32 - 1),
                st.sampled_from(HUGE_U32),
            )
        )
        listed = list(algorithms.items())
        digests = draw(st.permutations(listed)) if draw(st.booleans()) else draw(
            st.lists(st.sampled_from(listed), max_size=4) if listed else st.just([])
        )
        log += seeds.event2(draw(st.integers(0, 30)), kind,
                            [(alg, bytes(size)) for alg, size in digests], data)
    if draw(st.booleans()) and len(log) >= 4:
        at = draw(st.integers(0, len(log) - 4))
        log = log[:at] + struct.pack("<I", draw(st.sampled_from(HUGE_U32))) + log[at + 4 :]
    return log


@FAST
@given(mutated_bytes(LOGS))
def test_a_damaged_real_event_log_is_refused_only_with_event_log_error(data: bytes) -> None:
    refuses_only_with((EventLogError,), lambda: targets.eventlog_target(data))


@FAST
@given(structured_logs())
@example(_duplicate_digest_log())
def test_a_forged_event_log_is_refused_only_with_event_log_error(data: bytes) -> None:
    refuses_only_with((EventLogError,), lambda: targets.eventlog_target(data))


def test_repeated_digest_algorithm_is_refused() -> None:
    with pytest.raises(EventLogError, match="two digests of algorithm 4"):
        eventlog.parse(_duplicate_digest_log())


@FEW
@given(
    st.sampled_from(LOGS),
    st.integers(0, 2**16),
    st.sampled_from([0x7FFFFFFF, 0xFFFFFFFF, 0x80000000]),
)
def test_a_lying_length_field_allocates_nothing_near_its_claim(
    log: bytes, position: int, claim: int
) -> None:
    at = position % (len(log) - 4)
    data = log[:at] + struct.pack("<I", claim) + log[at + 4 :]
    tracemalloc.start()
    try:
        refuses_only_with((EventLogError,), lambda: targets.eventlog_target(data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data) + 2 * 2**20, f"{peak} bytes for a {len(data)}-byte log"


def test_an_absurdly_large_log_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.bin"
    with open(path, "wb") as handle:
        handle.truncate(4 * 2**30)  # sparse: claims 4 GiB, costs nothing
    tracemalloc.start()
    try:
        with pytest.raises(EventLogError, match="larger than"):
            eventlog.read_event_log(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < eventlog.MAX_LOG_BYTES + 2**20


# ---------------------------------------------------------------------------------------------
# 2. LUKS2 tokens: sealer-tpm2, systemd-tpm2, clevis

SEALER_TOKENS = corpus_json("token", "sealer-tpm2")
SYSTEMD_TOKENS = corpus_json("token", "systemd-tpm2")
CLEVIS_TOKENS = corpus_json("token", "clevis")
# A well-formed public key on a curve OpenSSL does not support (secp112r1).
UNSUPPORTED_CURVE_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MDIwEAYHKoZIzj0CAQYFK4EEAAYDHgAE17McOxmNrFMcBn7bsyFU0dWuyzGmMhsA\nPIWbXQ==\n"
    "-----END PUBLIC KEY-----\n"
)


def _sealer_token_with(**fields: Any) -> dict[str, Any]:
    doc = copy.deepcopy(SEALER_TOKENS[0])
    doc.update(fields)
    return doc


def _token_trusting(pem: str) -> dict[str, Any]:
    """Regression: the approvals' key swapped for one on an unsupported curve; verifying
    raised cryptography's UnsupportedAlgorithm."""
    doc = copy.deepcopy(SEALER_TOKENS[0])
    doc["policy_keys"][0]["public_pem"] = pem
    return doc


@FAST
@given(mutated_json(SEALER_TOKENS))
@example(_sealer_token_with(keyslots=["1" * 5000]))  # int() ValueError past 4300 digits
@example(_sealer_token_with(srk_handle="-1"))  # accepted, then unreadable once written back
@example(_sealer_token_with(revocation={"nv_index": "-0x1", "nv_name": "", "authority": "machine"}))
@example(_token_trusting(UNSUPPORTED_CURVE_PEM))
def test_a_damaged_sealer_token_is_refused_only_with_token_errors(doc: dict[str, Any]) -> None:
    # read_sealer_token also writes an accepted token back and reads it again, and runs the
    # unlock path's approval checks (which may refuse with PolicyMismatchError).
    refuses_only_with((TokenError, PolicyMismatchError), lambda: targets.read_sealer_token(doc))


@FAST
@given(mutated_json(SYSTEMD_TOKENS))
def test_a_damaged_systemd_token_is_refused_only_with_token_error(doc: dict[str, Any]) -> None:
    refuses_only_with((TokenError,), lambda: targets.read_systemd_token(doc))


@st.composite
def systemd_tokens_with_damaged_blob(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(SYSTEMD_TOKENS)))
    blob = base64.b64decode(doc["tpm2-blob"])
    doc["tpm2-blob"] = base64.b64encode(draw(mutated_bytes([blob]))).decode()
    return doc


@FEW
@given(systemd_tokens_with_damaged_blob())
def test_a_damaged_systemd_blob_is_refused_only_with_token_error(doc: dict[str, Any]) -> None:
    refuses_only_with((TokenError,), lambda: targets.read_systemd_token(doc))


@FAST
@given(mutated_json(CLEVIS_TOKENS))
def test_a_damaged_clevis_token_is_refused_only_with_token_error(doc: dict[str, Any]) -> None:
    refuses_only_with((TokenError,), lambda: targets.read_clevis_token(doc))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _protected(doc: dict[str, Any]) -> dict[str, Any]:
    text = doc["jwe"]["protected"]
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return header


def _clevis_with_protected(raw: bytes) -> dict[str, Any]:
    doc = copy.deepcopy(CLEVIS_TOKENS[0])
    doc["jwe"]["protected"] = _b64url(raw)
    return doc


@st.composite
def clevis_tokens_with_damaged_header(draw: st.DrawFn) -> dict[str, Any]:
    """The JWE protected header is JSON inside BASE64URL: mutate the inner document."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(CLEVIS_TOKENS)))
    header = draw(mutated_json([_protected(doc)]))
    doc["jwe"]["protected"] = _b64url(json.dumps(header).encode())
    return doc


@FAST
@given(clevis_tokens_with_damaged_header())
@example(_clevis_with_protected(b"[" * 5000))  # RecursionError from json.loads
@example(_clevis_with_protected(b"\xff\xfe"))
@example(_clevis_with_protected(b'{"clevis": ' + b"1" * 5000 + b"}"))
def test_a_damaged_clevis_header_is_refused_only_with_token_error(doc: dict[str, Any]) -> None:
    refuses_only_with((TokenError,), lambda: targets.read_clevis_token(doc))


@FEW
@given(st.binary(max_size=64) | mutated_bytes(corpus("token")))
def test_arbitrary_token_bytes_are_refused_only_with_sealer_errors(data: bytes) -> None:
    refuses_only_with((SealerError,), lambda: targets.token_target(data))


# ---------------------------------------------------------------------------------------------
# 3. Approvals: the files `sealer policy install` reads, and the approvals inside a token

APPROVAL_FILES = corpus_json("approval")


@FAST
@given(mutated_json(APPROVAL_FILES))
def test_a_damaged_approval_file_is_refused_only_with_sealer_errors(doc: dict[str, Any]) -> None:
    # Through a real file, as `sealer policy install` reads it. one_input: the bugs listed in
    # targets.KNOWN_UNFIXED are counted, not raised (the strict xfail tests below pin them).
    targets.one_input(targets.TARGETS["approval"], json.dumps(doc).encode())


@FAST
@given(mutated_json([f["approval"] for f in APPROVAL_FILES]))
def test_a_damaged_approval_is_refused_only_with_token_error(doc: dict[str, Any]) -> None:
    refuses_only_with((TokenError,), lambda: parse_approval(doc))


def _with_events(events: Any) -> dict[str, Any]:
    doc: dict[str, Any] = copy.deepcopy(APPROVAL_FILES[0]["approval"])
    doc["events"] = events
    return doc


@FAST
@given(st.builds(_with_events, HOSTILE_VALUES | st.lists(HOSTILE_VALUES, min_size=1, max_size=2)))
@example(_with_events([{"9" * 5000: ["00"]}]))  # int() ValueError made the approval unusable
@example(_with_events([{"7": ["\ud800"], "x": None}]))
def test_damaged_event_records_never_stand_between_the_user_and_an_unlock(
    doc: dict[str, Any],
) -> None:
    # They are unsigned and only explain: the approval must parse and verify all the same.
    approval = parse_approval(doc)
    verify_approval(approval, APPROVAL_FILES[0]["vendor_key"])


# Findings of the approval fuzz target, fixed in policy/keys.py and services/vendor.py.
def _approval_file_with(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "approval.json"
    path.write_text(text)
    return path


def test_a_vendor_key_on_an_unsupported_curve_is_refused(tmp_path: Path) -> None:
    doc = {**APPROVAL_FILES[0], "vendor_key": UNSUPPORTED_CURVE_PEM}
    with pytest.raises(SealerError):
        read_approval_file(_approval_file_with(tmp_path, json.dumps(doc)))


def test_a_vendor_key_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    doc = {**APPROVAL_FILES[0], "vendor_key": "\ud800"}
    with pytest.raises(SealerError):
        read_approval_file(_approval_file_with(tmp_path, json.dumps(doc)))


def test_a_deeply_nested_approval_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SealerError):
        read_approval_file(_approval_file_with(tmp_path, "[" * 5000))


def test_no_known_bug_is_left_unfixed() -> None:
    assert targets.KNOWN_UNFIXED == ()



# ---------------------------------------------------------------------------------------------
# 4. The LUKS2 header: the binary probe and cryptsetup's JSON metadata

HEADERS = corpus("luks_header")
METADATA = [json.loads(h[targets.LUKS2_JSON_OFFSET :]) for h in HEADERS if len(h) > 4096]


def _metadata_with(**fields: Any) -> dict[str, Any]:
    return {**METADATA[0], **fields}


@FAST
@given(mutated_json(METADATA))
@example(_metadata_with(config={"json_size": "9" * 5000}))  # int() ValueError (fuzzer)
def test_damaged_metadata_is_refused_only_with_device_error(doc: dict[str, Any]) -> None:
    refuses_only_with((DeviceError,), lambda: parse_metadata("/dev/x", "u", json.dumps(doc)))


@st.composite
def damaged_metadata_text(draw: st.DrawFn) -> str:
    """cryptsetup's JSON text with a few characters replaced, inserted or cut."""
    text = json.dumps(draw(st.sampled_from(METADATA)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=8)) + text[at + draw(st.integers(0, 4)) :]
    return text


@FAST
@given(damaged_metadata_text())
@example("[" * 5000)  # RecursionError escaped json.loads
@example('{"keyslots": ' + "1" * 5000 + "}")  # ValueError (4300 digits) escaped json.loads
def test_damaged_metadata_text_is_refused_only_with_device_error(text: str) -> None:
    refuses_only_with((DeviceError,), lambda: parse_metadata("/dev/x", "u", text))


@FAST
@given(mutated_bytes(HEADERS))
def test_a_damaged_header_on_disk_is_refused_only_with_device_error(data: bytes) -> None:
    refuses_only_with((DeviceError,), lambda: targets.luks_header_target(data))


@FAST
@given(
    st.sampled_from([b"", LUKS_MAGIC]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=PROBE_LENGTH + 8),
)
def test_probe_tells_luks2_or_refuses_with_device_error(
    magic: bytes, version: int, rest: bytes
) -> None:
    first = magic + struct.pack(">H", version) + rest
    try:
        found = probe("/dev/x", first)
    except DeviceError:
        return
    assert isinstance(found, Probe) and found.version == 2


# ---------------------------------------------------------------------------------------------
# The seeds themselves are accepted: otherwise every test above only tests the first check.


@pytest.mark.parametrize("target", sorted(targets.TARGETS))
def test_every_seed_but_luks1_is_accepted(target: str) -> None:
    for path in sorted((targets.CORPUS_DIR / target).iterdir()):
        if path.name == "luks1.bin":
            continue
        targets.TARGETS[target].run(path.read_bytes())


def test_the_seed_builders_make_what_the_parsers_accept() -> None:
    log = eventlog.parse(seeds.sample_event_log())
    assert log.startup_locality == 3
    assert {e.type_name for e in log.events} >= {"EV_EFI_VARIABLE_DRIVER_CONFIG", "EV_IPL"}
    key = ec.generate_private_key(ec.SECP256R1())
    approval = parse_approval(seeds.approval_file(key, branches=2)["approval"])
    assert len(approval.branches) == 2 and approval.release == 3


@FEW
@given(st.sampled_from(corpus("token") + corpus("approval")), st.integers(0, 2**32 - 1))
def test_the_json_mutator_changes_a_value_and_keeps_json(data: bytes, seed: int) -> None:
    def no_byte_mutation(data: bytes, max_size: int) -> bytes:
        return b"<libFuzzer's turn>"

    out = mutators.mutate_json(data, 1 << 20, seed, no_byte_mutation)
    if out != b"<libFuzzer's turn>":
        assert out != data and isinstance(json.loads(out), dict | list | str | int | float)
