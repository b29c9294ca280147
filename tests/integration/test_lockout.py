"""The TPM's dictionary-attack lockout with a PIN, against swtpm: what the person is told,
that only wrong PINs count, and that the passphrase still opens the volume in lockout.

After enrollment the TPM's lockout authorization is the one sealer keeps in its state
directory (test_tpm_hygiene.py), so tpm2_dictionarylockout uses it (``-p file:...``) to set
short DA parameters (3 tries, one forgiven every 600 s) and to clear the lockout. The
counter is read with tpm2_getcap, not with sealer's own reader, so the two check each other.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from luks_image import opens_with
from swtpm import Swtpm
from test_password_agent import Request, console, run_agent

from sealer.errors import LockoutError, SealerError
from sealer.luks import cryptsetup
from sealer.luks.enrollment import enrollments
from sealer.services import unlock as unlock_service
from sealer.services.matching import Match, approvals_of, authorized_policy
from sealer.tpm.bare import open_tpm
from sealer.tpm.connection import connect
from sealer.tpm.lockout import LockoutState, read_lockout
from sealer.tpm.release import SealedBlob, handles_of, unseal

PIN = b"2468"
EXIT_AUTH, EXIT_POLICY, EXIT_LOCKOUT = 6, 5, 8
COMES_BACK = "one try comes back every 600 s while the TPM is powered, the next within 600 s"
LOCKED = f"the TPM is in dictionary-attack lockout after too many wrong PINs ({COMES_BACK})"
NOW_LOCKED = f"the TPM rejected the PIN and is now in dictionary-attack lockout ({COMES_BACK})"
MEANWHILE = "unlock with the passphrase or recovery key meanwhile"
TRY_AGAIN = "try again, or unlock with the passphrase or recovery key"
DA_LINE = "  TPM dictionary-attack lockout:"  # in 'sealer status'


def _auth(state_dir: Path | None) -> list[str]:
    """The lockout authorization sealer kept at enrollment (none before: empty)."""
    return [] if state_dir is None else ["-p", f"file:{state_dir / 'tpm-lockout.auth'}"]


def set_lockout(tpm: Swtpm, max_tries: int = 3, state_dir: Path | None = None,
                recovery: int = 600) -> None:
    subprocess.run(
        ["tpm2_dictionarylockout", "-T", tpm.tcti, "--setup-parameters",
         "--max-tries", str(max_tries), "--recovery-time", str(recovery),
         "--lockout-recovery-time", "600", *_auth(state_dir)],
        check=True, capture_output=True,
    )


def clear_lockout(tpm: Swtpm, state_dir: Path) -> None:
    subprocess.run(
        ["tpm2_dictionarylockout", "-T", tpm.tcti, "--clear-lockout", *_auth(state_dir)],
        check=True, capture_output=True,
    )


def counter(tpm: Swtpm) -> int:
    """TPM2_PT_LOCKOUT_COUNTER, as tpm2-tools reads it."""
    out = subprocess.run(
        ["tpm2_getcap", "-T", tpm.tcti, "properties-variable"],
        check=True, capture_output=True, text=True,
    ).stdout
    found = re.search(r"^TPM2_PT_LOCKOUT_COUNTER:\s+(0x[0-9a-fA-F]+)$", out, re.M)
    assert found, out
    return int(found.group(1), 16)


def unlock_with(sealer: SealerCli, image: Path, pin: bytes) -> tuple[int, str]:
    result = sealer("unlock", "--test", "--pin-file", "-", str(image), stdin=pin)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr


def test_each_wrong_pin_counts_and_says_how_many_tries_are_left(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=3, state_dir=sealer.state_dir)
    assert counter(swtpm) == 0
    assert unlock_with(sealer, luks_image, b"1111") == (EXIT_AUTH, (
        f"sealer: the TPM rejected the PIN: 2 tries left before the TPM locks out: {TRY_AGAIN}\n"
    ))
    assert counter(swtpm) == 1
    assert unlock_with(sealer, luks_image, b"2222") == (EXIT_AUTH, (
        f"sealer: the TPM rejected the PIN: 1 try left before the TPM locks out: {TRY_AGAIN}\n"
    ))
    assert counter(swtpm) == 2
    assert unlock_with(sealer, luks_image, b"3333") == (
        EXIT_AUTH, f"sealer: {NOW_LOCKED}: {MEANWHILE}\n"
    )
    assert counter(swtpm) == 3

    # In lockout the right PIN is refused too, and sealer does not even ask for it: without
    # a PIN source or a terminal, asking would have ended in a usage error (exit 2).
    refused = (EXIT_LOCKOUT, f"sealer: {LOCKED}: {MEANWHILE}\n")
    assert unlock_with(sealer, luks_image, PIN) == refused
    unasked = sealer("unlock", "--test", str(luks_image))
    assert (unasked.returncode, unasked.stderr) == refused
    assert counter(swtpm) == 3  # refusals in lockout do not count (nor restart the timer)

    report = json.loads(sealer("status", "--json", str(luks_image)).stdout)
    assert report["tpm"]["lockout"] == {
        "failed_tries": 3, "max_tries": 3, "tries_left": 0, "interval_s": 600,
        "lockout_recovery_s": 600, "in_lockout": True,
    }
    lines = sealer("status", str(luks_image)).stdout.splitlines()
    assert f"{DA_LINE} LOCKED OUT, every PIN is refused ({COMES_BACK})" in lines
    # The passphrase keyslot never involves the TPM.
    assert opens_with(luks_image, PASSPHRASE)

    # Whoever holds the lockout authorization can end it; the right PIN then works.
    clear_lockout(swtpm, sealer.state_dir)
    assert unlock_with(sealer, luks_image, PIN)[0] == 0
    assert counter(swtpm) == 0
    lines = sealer("status", str(luks_image)).stdout.splitlines()
    assert f"{DA_LINE} 3 of 3 PIN tries left (one comes back every 600 s)" in lines


def test_a_try_comes_back_one_interval_after_the_last_failure(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """What the messages promise, on a short clock: the TPM forgets one failure every
    interval, counted from the last one, and then the right PIN works again."""
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=2, state_dir=sealer.state_dir, recovery=2)
    unlock_with(sealer, luks_image, b"1111")
    code, said = unlock_with(sealer, luks_image, b"2222")
    locked_at = time.monotonic()
    assert code == EXIT_AUTH
    assert "(one try comes back every 2 s while the TPM is powered, the next within 2 s)" in said
    assert counter(swtpm) == 2
    while counter(swtpm) == 2:
        assert time.monotonic() - locked_at < 10
        time.sleep(0.1)
    assert time.monotonic() - locked_at > 1  # not before the interval is over
    assert counter(swtpm) == 1
    assert unlock_with(sealer, luks_image, PIN)[0] == 0


def test_sealers_reader_agrees_with_tpm2_tools(swtpm: Swtpm) -> None:
    set_lockout(swtpm, max_tries=5)  # no enrollment: still empty
    with connect(swtpm.tcti) as ctx:
        state = read_lockout(ctx)
    assert state == LockoutState(
        failed_tries=counter(swtpm), max_tries=5, tries_left=5, interval_s=600,
        lockout_recovery_s=600, in_lockout=False,
    )


def test_the_tpms_own_lockout_answer_is_explained_too(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sealer checks for lockout before asking for the PIN; with that check bypassed, the
    TPM's own TPM_RC_LOCKOUT gets the same words."""
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=1, state_dir=sealer.state_dir)
    assert unlock_with(sealer, luks_image, b"1111")[0] == EXIT_AUTH
    monkeypatch.setattr(unlock_service, "refuse_if_locked_out", lambda ctx: None)
    with pytest.raises(LockoutError) as refused:
        unlock_service.release_key(
            str(luks_image), token_id=None, tcti=swtpm.tcti, read_pin=lambda: PIN
        )
    assert refused.value.message == LOCKED
    assert counter(swtpm) == 1


def test_without_a_pin_refused_unlocks_never_count(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    set_lockout(swtpm, max_tries=3, state_dir=sealer.state_dir)
    subprocess.run(["tpm2_pcrextend", "-T", swtpm.tcti, "7:sha256=" + "11" * 32], check=True)
    for _ in range(5):  # more refusals than the TPM allows wrong PINs
        assert sealer("unlock", "--test", str(luks_image)).returncode == EXIT_POLICY
    # The TPM itself refusing (sealer's PCR check bypassed) does not count either: the sealed
    # object of an enrollment without PIN is NODA.
    [enrollment] = enrollments(cryptsetup.read_header(str(luks_image)))
    [approval] = approvals_of(enrollment)
    policy = authorized_policy(enrollment, Match(0, approval, 0))  # the approved, stale state
    token = enrollment.token
    blob = SealedBlob(token.sealed_public, token.sealed_private)
    for _ in range(3):
        with pytest.raises(SealerError), open_tpm(swtpm.tcti) as tpm:
            unseal(tpm, handles_of(tpm, token), blob, policy, b"wrong")
    assert counter(swtpm) == 0
    with connect(swtpm.tcti) as ctx:
        assert not read_lockout(ctx).in_lockout


# The boot-time keyscript, with Debian's askpass played by a script that answers from a list
# and records every prompt it was given.
FAKE_ASKPASS = """#!/bin/sh
printf '%s\\n' "$1" >> "$ASKPASS_PROMPTS"
n=$(wc -l < "$ASKPASS_PROMPTS")
answer=$(sed -n "${n}p" "$ASKPASS_ANSWERS")
[ -n "$answer" ] || exit 1
printf '%s\\n' "$answer"
"""
RUN_KEYSCRIPT = (
    "import sys, sealer.boot.keyscript as k; k.ASKPASS = sys.argv[1]; sys.exit(k.main())"
)


def keyscript(
    swtpm: Swtpm, image: Path, tmp_path: Path, answers: list[bytes]
) -> tuple[subprocess.CompletedProcess[bytes], list[str]]:
    askpass = tmp_path / "askpass"
    askpass.write_text(FAKE_ASKPASS)
    askpass.chmod(0o755)
    prompts = tmp_path / "prompts"
    prompts.write_text("")
    (tmp_path / "answers").write_bytes(b"".join(a + b"\n" for a in answers))
    env = dict(
        os.environ, SEALER_TCTI=swtpm.tcti, CRYPTTAB_SOURCE=str(image), CRYPTTAB_NAME="cryptroot",
        SEALER_CAP_RECORD=str(tmp_path / "run" / "cap-pcrs"),
        ASKPASS_PROMPTS=str(prompts), ASKPASS_ANSWERS=str(tmp_path / "answers"),
    )
    result = subprocess.run(
        [sys.executable, "-c", RUN_KEYSCRIPT, str(askpass)],
        env=env, capture_output=True, timeout=60,
    )
    return result, prompts.read_text().splitlines()


PROMPT = "Enter the TPM PIN for cryptroot: "


def test_boot_reprompts_with_the_tries_left_and_a_right_pin_still_unlocks(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=3, state_dir=sealer.state_dir)
    result, prompts = keyscript(swtpm, luks_image, tmp_path, [b"1111", PIN])
    assert result.returncode == 0, result.stderr
    assert opens_with(luks_image, result.stdout)
    assert prompts == [
        PROMPT,
        f"sealer: the TPM rejected the PIN: 2 tries left before the TPM locks out. {PROMPT}",
    ]
    assert counter(swtpm) == 1


def test_boot_stops_asking_in_lockout_and_the_passphrase_still_opens(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=2, state_dir=sealer.state_dir)
    # Two wrong PINs lock the TPM out: the third prompt is not shown, the passphrase is next.
    result, prompts = keyscript(swtpm, luks_image, tmp_path, [b"1111", b"2222", PIN])
    assert (result.returncode, result.stdout) == (EXIT_LOCKOUT, b"")
    assert prompts == [
        PROMPT,
        f"sealer: the TPM rejected the PIN: 1 try left before the TPM locks out. {PROMPT}",
    ]
    fallback = f"sealer: cryptroot: {LOCKED}; asking for the passphrase instead"
    assert result.stderr.decode().splitlines() == [fallback]
    assert counter(swtpm) == 2
    # The next boot in lockout asks for no PIN at all.
    result, prompts = keyscript(swtpm, luks_image, tmp_path, [PIN])
    assert (result.returncode, result.stdout, prompts) == (EXIT_LOCKOUT, b"", [])
    assert result.stderr.decode().splitlines() == [fallback]
    # What askpass asks for next, the passphrase, opens the volume without the TPM.
    assert opens_with(luks_image, PASSPHRASE)
    assert counter(swtpm) == 2


def test_the_password_agent_in_lockout_asks_no_pin_and_leaves_the_passphrase_prompt(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    set_lockout(swtpm, max_tries=1, state_dir=sealer.state_dir)
    assert unlock_with(sealer, luks_image, b"1111")[0] == EXIT_AUTH
    request = Request(tmp_path / "ask-password", luks_image)
    try:
        result = run_agent(swtpm, tmp_path)
        assert result.returncode == 0, result.stderr
        assert request.answer() is None  # left to the console agent's passphrase prompt
    finally:
        request.sock.close()
    # The console is a plain file here: had the agent asked for the PIN, it would say
    # "the console is not a terminal".
    assert console(tmp_path) == [
        f"sealer: {luks_image}: {LOCKED}; asking for the passphrase instead"
    ]
    assert opens_with(luks_image, PASSPHRASE)
