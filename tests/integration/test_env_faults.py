"""Faults of the machine around sealer: no TPM, a busy or dying TPM, an evicted storage root
key, a state directory that cannot be written, foreign tokens in the LUKS2 header, a full disk.

Each ends in one line saying what happened and what to do, a documented exit code and no
traceback; nothing is lost (the passphrase still opens the volume), and what should work
again once the fault is gone does. Related bad inputs live in test_bad_input.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import eventlogs
import pytest
from conftest import PASSPHRASE, SealerCli
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm
from test_boot_unlocker import run_module

from sealer.luks import cryptsetup

EXIT_TPM, EXIT_AUTH, EXIT_SRK = 4, 6, 7
EXIT_HEADER_FULL, EXIT_STATE, EXIT_REFUSED = 10, 11, 12
PIN = b"2468"


def stderr_line(result: Any) -> str:
    """The one line a failure prints (asserting there is exactly one, and no traceback)."""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def header_doc(image: Path) -> dict[str, Any]:
    """Keyslots and tokens as cryptsetup reports them: equal before and after = unchanged."""
    dump = subprocess.run(
        ["cryptsetup", "luksDump", "--dump-json-metadata", str(image)],
        check=True, capture_output=True, text=True,
    ).stdout
    doc = json.loads(dump)
    return {"keyslots": doc["keyslots"], "tokens": doc["tokens"]}


def reseal(sealer: SealerCli, image: Path, state_dir: Path, tcti: str | None = None) -> Any:
    return sealer(
        "reseal", "--quiet", "--eventlog", str(eventlogs.UKI_BOOT_LOG),
        "--state-dir", str(state_dir), str(image), tcti=tcti,
    )


def import_token(image: Path, doc: dict[str, Any]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["cryptsetup", "token", "import", "--json-file", "-", str(image)],
        input=json.dumps(doc).encode(), capture_output=True,
    )


# 1. No TPM: the device node is missing, or swtpm is not running.


def test_no_tpm_for_enroll_unlock_status_and_reseal(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    with Swtpm(luks_image.parent / "gone") as stopped:
        gone = stopped.tcti  # nobody listens there any more
    spare = make_luks_image(luks_image.parent / "spare.img", PASSPHRASE)
    before = header_doc(luks_image), header_doc(spare)
    for tcti, expected in [
        ("device:/dev/tpmrm9", "no TPM found: /dev/tpmrm9 does not exist: enable the TPM in "
         "the firmware setup, or point SEALER_TCTI/--tcti at one"),
        (gone, f"cannot reach the TPM through '{gone}' (tcti:IO failure): check that the TPM "
         "(or swtpm) is running and that you are root"),
    ]:
        for result in (
            sealer("enroll", "-q", "--unlock-key-file", "-", "--state-dir",
                   str(sealer.state_dir), str(spare), stdin=PASSPHRASE, tcti=tcti),
            sealer("unlock", "--test", str(luks_image), tcti=tcti),
            reseal(sealer, luks_image, sealer.state_dir, tcti),
        ):
            assert result.returncode == EXIT_TPM
            assert stderr_line(result) == f"sealer: {expected}"
        status = sealer("status", str(luks_image), tcti=tcti)
        assert status.returncode == 0 and status.stderr == ""
        assert f"    TPM: {expected}" in status.stdout.splitlines()
        report = json.loads(sealer("status", "--json", str(luks_image), tcti=tcti).stdout)
        assert report["tpm"] == {"error": expected}
    assert (header_doc(luks_image), header_doc(spare)) == before
    assert opens_with(luks_image, PASSPHRASE) and opens_with(spare, PASSPHRASE)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0  # the TPM is back


# 2. A busy TPM: swtpm serves one client connection at a time, and libtss2's swtpm module
# waits for it without a limit. sealer gives each exchange SEALER_TPM_TIMEOUT seconds.


def test_a_tpm_held_by_another_client_is_waited_for_a_bounded_time(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    spare = make_luks_image(tmp_path / "spare.img", PASSPHRASE)
    monkeypatch.setenv("SEALER_TPM_TIMEOUT", "1")
    no_answer = f"the TPM ({swtpm.tcti}) did not answer within 1 s"
    hint = (
        "another program may be holding it (swtpm serves one client at a time), or it is "
        "stopped; nothing was changed, try again"
    )
    # Connected and silent: swtpm accepts nobody else; the first command waits.
    with socket.create_connection(("127.0.0.1", swtpm.port)):
        started = time.monotonic()
        unlock = sealer("unlock", "--test", str(luks_image))
        assert time.monotonic() - started < 10
        refused = (EXIT_TPM, f"sealer: {no_answer}: {hint}")
        assert (unlock.returncode, stderr_line(unlock)) == refused
        enroll = sealer.enroll(spare)
        assert (enroll.returncode, stderr_line(enroll)) == refused
    # Half a command sent: swtpm itself is stuck reading it, so even opening the TCTI waits.
    with socket.create_connection(("127.0.0.1", swtpm.port)) as holder:
        holder.sendall(b"\x80\x01\x00\x00")
        boot = run_module(
            "sealer.boot.keyscript", swtpm, tmp_path,
            CRYPTTAB_SOURCE=str(luks_image), CRYPTTAB_NAME="cryptroot",
        )
        assert (boot.returncode, boot.stdout) == (EXIT_TPM, b"")
        assert boot.stderr.decode().splitlines() == [
            f"sealer: cryptroot: {no_answer}; asking for the passphrase instead"
        ]
    assert header_doc(spare)["tokens"] == {}
    assert opens_with(luks_image, PASSPHRASE)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0  # the holder is gone


# 3. swtpm dies in the middle of an unlock.


def _wait_reading_stdin(pid: int, timeout: float = 20.0) -> None:
    """Until process ``pid`` sits in read(0, ...): sealer asks for the PIN only after its
    first TPM commands (SRK, PCRs, revocation field, lockout state) and before the unseal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            call = Path(f"/proc/{pid}/syscall").read_text().split()
        except OSError:
            call = []
        if call[:2] == ["0", "0x0"]:
            return
        time.sleep(0.02)
    raise AssertionError("sealer never waited for the PIN")


def test_swtpm_killed_mid_unlock_loses_the_connection_and_changes_nothing(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    before = header_doc(luks_image)
    argv = [sys.executable, "-m", "sealer", "--tcti", swtpm.tcti, "unlock", "--test",
            "--pin-file", "-", str(luks_image)]
    unlock = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert unlock.stdin is not None and swtpm._process is not None
    swtpm_pid = swtpm._process.pid
    try:
        _wait_reading_stdin(unlock.pid)
        os.kill(swtpm_pid, signal.SIGSTOP)  # the TPM stops answering ...
        unlock.stdin.write(PIN)
        unlock.stdin.close()
        time.sleep(0.3)  # ... while sealer sends the unseal's first command ...
        os.kill(swtpm_pid, signal.SIGKILL)  # ... and then it is gone.
        unlock.wait(timeout=30)
    finally:
        if unlock.poll() is None:
            unlock.kill()
            unlock.wait()
    assert unlock.stderr is not None
    err = unlock.stderr.read().decode()
    assert unlock.returncode == EXIT_TPM
    assert err == (
        "sealer: lost the connection to the TPM (tcti:IO failure): check that the TPM (or "
        "swtpm) is still there; nothing was changed, try again\n"
    )
    assert header_doc(luks_image) == before
    assert opens_with(luks_image, PASSPHRASE)
    swtpm.stop()
    swtpm.start()  # the same TPM state, as after a reboot
    sealer.tcti = swtpm.tcti
    again = sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=PIN)
    assert again.returncode == 0, again.stderr


# 4. The storage root key was evicted after enrollment.


def test_an_evicted_srk_is_named_and_enrolling_again_recreates_it(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    subprocess.run(
        ["tpm2_evictcontrol", "-T", swtpm.tcti, "-C", "o", "-c", "0x81000001"],
        check=True, capture_output=True,
    )
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == EXIT_SRK
    assert stderr_line(refused) == (
        "sealer: this TPM has no storage root key at 0x81000001: it was evicted, the TPM was "
        "cleared, or this volume was enrolled with another TPM: unlock with the passphrase or "
        "recovery key, then run 'sealer enroll' (it recreates the key; unless the TPM was "
        "cleared, this enrollment then works too)"
    )
    status = sealer("status", str(luks_image)).stdout.splitlines()
    assert "    TPM: no SRK at that handle (TPM cleared, or another TPM)" in status
    assert opens_with(luks_image, PASSPHRASE)
    # The SRK derives from the owner seed: the recreated one has the pinned name again.
    assert sealer.enroll(luks_image).returncode == 0
    for token in ("0", "1"):
        result = sealer("unlock", "--test", "--token", token, str(luks_image))
        assert result.returncode == 0, result.stderr


# 5. The state directory cannot be written: read-only (root ignores mode bits, so a
# read-only bind mount), or on a full file system (7, below).


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    mounted = subprocess.run(["mount", "--bind", str(directory), str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_read_only_state_directory(swtpm: Swtpm, luks_image: Path, tmp_path: Path) -> None:
    mount = tmp_path / "ro"  # not tmp_path: the images must stay writable
    state = mount / "state"
    state.mkdir(mode=0o700, parents=True)
    sealer = SealerCli(tcti=swtpm.tcti, state_dir=state)
    before = header_doc(luks_image)
    with read_only(mount):
        for state_dir in (state, state / "missing"):  # no key yet / not even the directory
            result = SealerCli(tcti=swtpm.tcti, state_dir=state_dir).enroll(luks_image)
            assert result.returncode == EXIT_STATE
            assert stderr_line(result) == (
                f"sealer: cannot write {state_dir}/policy-key.pem: Read-only file system: its "
                "file system is mounted read-only: remount it read-write, or pick a writable "
                f"directory with --state-dir (now {state_dir})"
            )
    assert header_doc(luks_image) == before and os.listdir(state) == []
    assert sealer.enroll(luks_image).returncode == 0  # writable: the key is made
    spare = make_luks_image(tmp_path / "spare.img", PASSPHRASE)
    with read_only(mount):
        # With the key in place, enroll and reseal only read it.
        assert sealer.enroll(spare).returncode == 0
        resealed = reseal(sealer, luks_image, state)
        assert resealed.returncode == 0, resealed.stderr
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    assert sealer("unlock", "--test", str(spare)).returncode == 0


# 6. Other tools' tokens in the LUKS2 header.


def test_enrolls_next_to_systemd_and_clevis_tokens_and_leaves_them_alone(
    sealer: SealerCli, luks_image: Path
) -> None:
    foreign: list[tuple[int, dict[str, Any]]] = [
        (1, {"type": "systemd-tpm2", "keyslots": ["1"], "tpm2-blob": "AA==",
             "tpm2-pcrs": [7], "tpm2-policy-hash": "00"}),
        (2, {"type": "clevis", "keyslots": ["2"], "jwe": {}}),
    ]
    for slot, token in foreign:
        cryptsetup.add_keyslot(str(luks_image), unlock_key=PASSPHRASE,
                               new_key=os.urandom(32), slot=slot, minimal_kdf=True)
        assert import_token(luks_image, token).returncode == 0
    before = header_doc(luks_image)
    enrolled = sealer.enroll(luks_image, "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    doc = json.loads(enrolled.stdout)
    assert (doc["token"], doc["keyslot"]) == (2, 3)
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0  # sealer's own token
    status = sealer("status", str(luks_image)).stdout.splitlines()
    assert "  token 0: systemd-tpm2 (not sealer's)" in status
    assert "  token 1: clevis (not sealer's)" in status
    assert sealer("remove", str(luks_image)).returncode == 0
    assert header_doc(luks_image) == before  # theirs untouched, ours gone
    assert opens_with(luks_image, PASSPHRASE)


def test_token_slots_full_of_foreign_tokens(sealer: SealerCli, luks_image: Path) -> None:
    for _ in range(32):
        assert import_token(luks_image, {"type": "x-other", "keyslots": []}).returncode == 0
    before = header_doc(luks_image)
    result = sealer.enroll(luks_image)
    assert result.returncode == EXIT_HEADER_FULL
    assert stderr_line(result) == (
        f"sealer: {luks_image} has no free LUKS2 token slot (all 32 are used): remove an "
        "unused token with 'cryptsetup token remove --token-id N' first"
    )
    assert header_doc(luks_image) == before
    assert opens_with(luks_image, PASSPHRASE)


def test_a_json_area_full_of_foreign_tokens(sealer: SealerCli, luks_image: Path) -> None:
    filler = {"type": "x-other", "keyslots": [], "blob": "A" * 800}
    count = 0
    while import_token(luks_image, filler).returncode == 0:
        count += 1
    assert count < 32  # the 12 KiB JSON area, not the 32 slots, ran out
    before = header_doc(luks_image)
    result = sealer.enroll(luks_image)
    # cryptsetup says no more than "Failed to import token from file."; sealer measures.
    assert result.returncode == EXIT_HEADER_FULL
    line = stderr_line(result)
    assert line.startswith(
        f"sealer: cannot write token {count} to {luks_image}: the LUKS2 metadata area is full ("
    ), line
    assert line.endswith(
        "remove unused tokens ('cryptsetup token remove --token-id N'); a new volume can have "
        "a larger area (luksFormat --luks2-metadata-size)"
    ), line
    assert header_doc(luks_image) == before
    assert opens_with(luks_image, PASSPHRASE)


def test_a_foreign_token_on_the_passphrase_keyslot(sealer: SealerCli, luks_image: Path) -> None:
    # A token cannot claim a keyslot that does not exist (cryptsetup refuses it, and killing
    # a keyslot takes it off its tokens), so a foreign claim is always on a used keyslot;
    # sealer only ever takes a free one.
    assert import_token(luks_image, {"type": "clevis", "keyslots": ["5"], "jwe": {}}).returncode
    claim = {"type": "clevis", "keyslots": ["0"], "jwe": {}}
    assert import_token(luks_image, claim).returncode == 0
    assert sealer.enroll(luks_image).returncode == 0
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0
    # sealer cannot tell the passphrase from a key only clevis knows: it refuses to remove
    # what would then be the last keyslot a person can open.
    before = header_doc(luks_image)
    removed = sealer("remove", str(luks_image))
    assert removed.returncode == EXIT_REFUSED
    assert stderr_line(removed) == (
        f"sealer: removing token 1 would leave {luks_image} with no passphrase or recovery key "
        "keyslot: add a passphrase first (cryptsetup luksAddKey), then remove the enrollment"
    )
    assert header_doc(luks_image) == before
    assert opens_with(luks_image, PASSPHRASE)


# 7. The disk holding the state directory is full.


@contextmanager
def tiny_tmpfs(directory: Path) -> Iterator[Path]:
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_disk_leaves_no_partial_key_behind(
    swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "small") as small:
        filler = small / "filler"
        filler.write_bytes(b"\0" * 8192)
        state = small / "state"
        sealer = SealerCli(tcti=swtpm.tcti, state_dir=state)
        before = header_doc(luks_image)
        full = sealer.enroll(luks_image)
        assert full.returncode == EXIT_STATE
        assert stderr_line(full) == (
            f"sealer: cannot write {state}/policy-key.pem: No space left on device: free some "
            f"space on its file system, or pick a writable directory with --state-dir "
            f"(now {state})"
        )
        assert os.listdir(state) == []  # no empty or partial key for the next run to trip on
        assert header_doc(luks_image) == before
        filler.unlink()
        enrolled = sealer.enroll(luks_image)
        assert enrolled.returncode == 0, enrolled.stderr
        assert sorted(os.listdir(state)) == ["policy-key.pem", "tpm-lockout.auth"]
        assert sealer("unlock", "--test", str(luks_image)).returncode == 0
