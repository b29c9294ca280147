"""Writes the seed corpora fuzz/corpus/TARGET/ and the libFuzzer dictionaries fuzz/dicts/.

    .venv/bin/python fuzz/make_corpus.py            # as root: runs the real tools

Seeds are real wherever a real producer exists: the event logs OVMF wrote (swtpm-fixtures),
a LUKS2 header cryptsetup formatted, holding the tokens that `sealer enroll`,
systemd-cryptenroll (with and without a PIN) and `clevis luks bind` wrote, each against its
own swtpm. Approval files are signed with sealer's own code (seeds.py), as sign-release does.
The corpora are committed: rerun this only to refresh them (the keys and sealed blobs differ
each time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import seeds
from cryptography.hazmat.primitives.asymmetric import ec
from luks_image import make_luks_image
from swtpm import Swtpm

from sealer.measure import eventlog
from sealer.pcrs import BANKS

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent

PASSPHRASE = b"correct horse battery staple"
SEALER = Path(sys.executable).parent / "sealer"
JSON_OFFSET = 4096  # the binary header's size; its hdr_size field counts it too


def write(target: str, name: str, data: bytes) -> None:
    folder = FUZZ / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    print(f"  corpus/{target}/{name}: {len(data)} bytes")


def compact(doc: Any) -> bytes:
    """JSON as cryptsetup prints a token (no spaces)."""
    return json.dumps(doc, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Seeds that need no tool


def eventlog_seeds() -> None:
    for log in sorted((ROOT / "swtpm-fixtures" / "eventlogs").glob("*.bin")):
        write("eventlog", log.name, log.read_bytes())
    write("eventlog", "sample-sha1-sha256.bin", seeds.sample_event_log())
    write("eventlog", "sample-sha256.bin", seeds.sample_event_log([BANKS["sha256"]]))


def approval_seeds() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    variants = {
        "release-sha256.json": seeds.approval_file(key),
        "release-sha384-3-states.json": seeds.approval_file(
            key, bank=BANKS["sha384"], branches=3, release=0, with_events=False
        ),
        "release-sha1-8-states.json": seeds.approval_file(
            key, bank=BANKS["sha1"], branches=8, release=63
        ),
    }
    for name, doc in variants.items():
        # Written as write_json writes approval files.
        write("approval", name, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# Seeds from the real tools


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, capture_output=True, **kwargs)
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result


def sealer_enroll(tpm: Swtpm, image: Path, state: Path) -> None:
    argv = [str(SEALER), "--tcti", tpm.tcti, "enroll", "--unlock-key-file", "-", "--pcrs", "7",
            "--state-dir", str(state), "-q", str(image)]
    run(argv, input=PASSPHRASE)


def systemd_enroll(tpm: Swtpm, image: Path, *args: str, pin: str | None = None) -> None:
    env = {**os.environ, "PASSWORD": PASSPHRASE.decode()}
    if pin is not None:
        env["NEWPIN"] = pin
        args += ("--tpm2-with-pin=yes",)
    run(["systemd-cryptenroll", f"--tpm2-device={tpm.tcti}", *args, str(image)], env=env)


def clevis_bind(tpm: Swtpm, image: Path, config: str) -> None:
    env = {**os.environ, "TPM2TOOLS_TCTI": tpm.tcti}
    run(["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2", config],
        input=PASSPHRASE, env=env)
    # clevis leaves tpm2_createpolicy's session loaded; swtpm has no resource manager.
    run(["tpm2_flushcontext", "-T", tpm.tcti, "-l"])


def header_bytes(image: Path) -> bytes:
    """The binary header and the JSON area up to its NUL padding, as they lie on disk."""
    with open(image, "rb") as handle:
        binary = handle.read(JSON_OFFSET)
        if binary[6:8] != b"\x00\x02":  # LUKS1: the binary header is all there is
            return binary
        (hdr_size,) = struct.unpack_from(">Q", binary, 8)
        area = handle.read(hdr_size - JSON_OFFSET)
    return binary + area.split(b"\0", 1)[0]


def tokens_of(image: Path) -> dict[str, Any]:
    dump = run(["cryptsetup", "luksDump", "--dump-json-metadata", str(image)])
    tokens: dict[str, Any] = json.loads(dump.stdout)["tokens"]
    return tokens


@contextmanager
def fresh_tpm(base: Path, name: str) -> Iterator[Swtpm]:
    """One swtpm per tool: systemd 252 and clevis leave sessions loaded, and swtpm has three
    session slots."""
    with Swtpm(base / name) as tpm:
        yield tpm


def real_tool_seeds() -> None:
    missing = [t for t in ("cryptsetup", "swtpm", "systemd-cryptenroll", "clevis") if not
               shutil.which(t)]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)} (run scripts/setup.sh --boot-chain)")
    with tempfile.TemporaryDirectory(prefix="sealer-corpus-") as tmp:
        base = Path(tmp)
        image = make_luks_image(base / "volume.img", PASSPHRASE)
        write("luks_header", "luks2-plain.bin", header_bytes(image))
        with fresh_tpm(base, "sealer") as tpm:
            sealer_enroll(tpm, image, base / "state")
        with fresh_tpm(base, "systemd") as tpm:
            systemd_enroll(tpm, image, "--tpm2-pcrs=7")
            systemd_enroll(tpm, image, "--tpm2-pcrs=0+7", pin="4711")
        with fresh_tpm(base, "clevis") as tpm:
            clevis_bind(tpm, image, '{"pcr_bank":"sha256","pcr_ids":"7"}')
            clevis_bind(tpm, image, "{}")
        write("luks_header", "luks2-four-kinds-of-token.bin", header_bytes(image))
        for token_id, token in sorted(tokens_of(image).items()):
            write("token", f"{token['type']}-{token_id}.json", compact(token))
        luks1 = make_luks_image(base / "luks1.img", PASSPHRASE, luks_type="luks1")
        write("luks_header", "luks1.bin", header_bytes(luks1))


# ---------------------------------------------------------------------------------------------
# libFuzzer dictionaries: the tokens a mutation could not guess


def json_words(doc: Any) -> Iterator[str]:
    """Every key, and every short string value, of a JSON document."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from json_words(value)
    elif isinstance(doc, list):
        for item in doc:
            yield from json_words(item)
    elif isinstance(doc, str) and len(doc) <= 24:
        yield doc


def dictionary_entry(word: bytes) -> str:
    escaped = "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in word
    )
    return f'"{escaped}"'


def write_dictionary(target: str, words: set[bytes]) -> None:
    folder = FUZZ / "dicts"
    folder.mkdir(exist_ok=True)
    lines = [dictionary_entry(w) for w in sorted(words) if w]
    (folder / f"{target}.dict").write_text("\n".join(lines) + "\n")
    print(f"  dicts/{target}.dict: {len(lines)} entries")


JSON_SYNTAX = {b"{", b"}", b"[", b"]", b":", b",", b"null", b"true", b"false", b'""', b"-1",
               b"1e999", b"\\u0000", b"\\ud800"}


def json_dictionary(documents: list[Any]) -> set[bytes]:
    return JSON_SYNTAX | {f'"{w}"'.encode() for doc in documents for w in json_words(doc)}


def json_documents(target: str) -> list[Any]:
    found = []
    for path in sorted((FUZZ / "corpus" / target).iterdir()):
        data = path.read_bytes()
        if target == "luks_header":
            data = data[JSON_OFFSET:]
        try:
            found.append(json.loads(data))
        except ValueError:
            continue  # LUKS1: no JSON area
    return found


def dictionaries() -> None:
    log_words = {
        eventlog.SPEC_ID_SIGNATURE, eventlog.STARTUP_LOCALITY_SIGNATURE,
        *(struct.pack("<H", bank.alg_id) for bank in BANKS.values()),
        *(struct.pack("<I", kind) for kind in eventlog.EVENT_TYPES),
        struct.pack("<I", 0xFFFFFFFF),
    }
    write_dictionary("eventlog", log_words)
    write_dictionary("token", json_dictionary(json_documents("token")))
    write_dictionary("approval", json_dictionary(json_documents("approval")))
    luks_magic = {b"LUKS\xba\xbe", b"\x00\x01", b"\x00\x02"}
    write_dictionary("luks_header", json_dictionary(json_documents("luks_header")) | luks_magic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--no-tools",
        action="store_true",
        help="only the seeds that need no cryptsetup, swtpm, systemd or clevis",
    )
    args = parser.parse_args()
    eventlog_seeds()
    approval_seeds()
    if not args.no_tools:
        real_tool_seeds()
    dictionaries()


if __name__ == "__main__":
    main()
