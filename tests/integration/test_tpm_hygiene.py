"""After ``sealer enroll`` the TPM is closed to whoever holds no secret (issue 15, part 5).

sealer sets the dictionary-attack (DA) parameters and a random lockout authorization, kept in
the state directory. Checked with tpm2-tools, as an attacker with a root shell or a live
system would try: reconfiguring or resetting the DA lockout, or clearing the TPM through the
lockout hierarchy, fails without the kept authorization, and works with it. The revocation
field can still be deleted by the (empty) owner authorization: unlock then fails closed.
systemd-cryptenroll and clevis keep working on the same TPM.
"""

from __future__ import annotations

import functools
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PASSPHRASE, ROOT, SealerCli
from escrow_certs import org_pair
from faultinject import KILLED
from luks_image import make_luks_image, opens_with
from swtpm import Swtpm

from sealer.interop import clevis
from sealer.interop import systemd_tpm2 as systemd
from sealer.luks import cryptsetup

PIN = b"2468"
EXIT_AUTH, EXIT_TPM_MISMATCH, EXIT_LOCKOUT, EXIT_STATE = 6, 7, 8, 11
AUTH_FILE = "tpm-lockout.auth"
INJECTOR = ROOT / "swtpm-fixtures" / "faultinject.py"
# The injector runs as a script (sys.path[0] is swtpm-fixtures/): this checkout's sealer must
# come first, not whichever one an editable install of the virtualenv points at.
INJECTOR_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# sealer's DA parameters (sealer/tpm/hierarchy.py: SEALER_DA, README "What enroll does")
SEALER_DA = {"max_tries": 32, "interval_s": 7200, "lockout_recovery_s": 600}


def tools(tpm: Swtpm, *argv: str) -> subprocess.CompletedProcess[str]:
    """A tpm2-tools command against ``tpm`` (never raises: the result is the point)."""
    return subprocess.run(
        [argv[0], "-T", tpm.tcti, *argv[1:]], capture_output=True, text=True, timeout=60
    )


def properties(tpm: Swtpm) -> dict[str, int]:
    """TPM2_PT_* variable properties as tpm2_getcap prints them (not sealer's reader)."""
    out = tools(tpm, "tpm2_getcap", "properties-variable").stdout
    found = {m[0]: int(m[1], 16) for m in re.findall(r"^(TPM2_PT_\w+):\s+(0x[0-9a-fA-F]+)$",
                                                     out, re.M)}
    for flag in ("ownerAuthSet", "lockoutAuthSet", "endorsementAuthSet", "inLockout"):
        bit = re.search(rf"^\s+{flag}:\s+(\d)$", out, re.M)
        assert bit, out
        found[flag] = int(bit.group(1))
    return found


def da_parameters(tpm: Swtpm) -> tuple[int, int, int]:
    p = properties(tpm)
    return (p["TPM2_PT_MAX_AUTH_FAIL"], p["TPM2_PT_LOCKOUT_INTERVAL"],
            p["TPM2_PT_LOCKOUT_RECOVERY"])


ATTACKS = [
    # DA protection off: unlimited PIN guesses.
    ("tpm2_dictionarylockout", "--setup-parameters", "--max-tries=4096", "--recovery-time=0"),
    # The failure count back to 0: 32 more guesses, again and again.
    ("tpm2_dictionarylockout", "--clear-lockout"),
    # TPM2_Clear through the lockout hierarchy: every key, NV index and authorization gone.
    ("tpm2_clear", "-c", "l"),
    # Take the lockout hierarchy over.
    ("tpm2_changeauth", "-c", "l", "attacker"),
]


def test_no_one_without_the_kept_authorization_can_touch_the_da_state(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    for attack in ATTACKS:
        result = tools(swtpm, *attack)
        assert result.returncode != 0, f"{' '.join(attack)} succeeded: {result.stdout}"
    assert da_parameters(swtpm) == (32, 7200, 600)
    assert properties(swtpm)["ownerAuthSet"] == 0  # left empty for the other Linux tools
    assert properties(swtpm)["lockoutAuthSet"] == 1
    # Nothing was cleared: the enrollment still unlocks.
    assert sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=PIN).returncode == 0


def test_the_kept_authorization_is_private_and_ends_a_pin_lockout(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    kept = sealer.state_dir / AUTH_FILE
    assert len(kept.read_bytes()) == 32 and 0 not in kept.read_bytes()  # tpm2-tools: C string
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE(sealer.state_dir.stat().st_mode) == 0o700
    assert not (sealer.state_dir / (AUTH_FILE + ".new")).exists()
    # tpm2-tools reads it as it is (-p file:...): an administrator needs no sealer for it.
    lower = tools(swtpm, "tpm2_dictionarylockout", "--setup-parameters", "--max-tries=2",
                  "--recovery-time=7200", "--lockout-recovery-time=600", "-p", f"file:{kept}")
    assert lower.returncode == 0, lower.stderr
    for wrong in (b"1111", b"2222"):
        sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=wrong)
    locked = sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=PIN)
    assert locked.returncode == EXIT_LOCKOUT

    cleared = sealer("tpm", "clear-lockout", "--state-dir", str(sealer.state_dir), "--json")
    assert cleared.returncode == 0, cleared.stderr
    doc = json.loads(cleared.stdout)
    assert (doc["before"]["failed_tries"], doc["after"]["failed_tries"]) == (2, 0)
    assert sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=PIN).returncode == 0
    # The authorization is in no output.
    assert kept.read_bytes().hex() not in cleared.stdout + cleared.stderr


def test_clear_lockout_without_a_kept_authorization_says_so(
    sealer: SealerCli, tmp_path: Path
) -> None:
    result = sealer("tpm", "clear-lockout", "--state-dir", str(tmp_path / "none"))
    assert result.returncode == EXIT_STATE
    assert result.stderr == (
        f"sealer: sealer holds no TPM lockout authorization ({tmp_path}/none/{AUTH_FILE} does "
        "not exist): give the state directory it was kept in with --state-dir, or ask whoever "
        "set the TPM's lockout authorization\n"
    )


def test_a_kept_authorization_that_is_no_longer_in_force_is_named(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    assert sealer.enroll(luks_image).returncode == 0
    kept = sealer.state_dir / AUTH_FILE
    changed = tools(swtpm, "tpm2_changeauth", "-c", "l", "-p", f"file:{kept}", "hex:" + "cd" * 16)
    assert changed.returncode == 0, changed.stderr
    args = ("tpm", "clear-lockout", "--state-dir", str(sealer.state_dir))
    wrong = sealer(*args)
    assert (wrong.returncode, wrong.stderr) == (EXIT_AUTH, (
        "sealer: the TPM rejected the lockout authorization: it is not the one in force: someone "
        "changed it since sealer set it; ask whoever did, or use the escrowed copy\n"
    ))
    again = sealer(*args)  # the TPM now refuses every lockout authorization for 600 s
    assert (again.returncode, again.stderr) == (EXIT_LOCKOUT, (
        "sealer: the TPM refuses lockout authorizations for now: a wrong one was tried earlier: "
        "wait for the TPM's lockout recovery time (see 'sealer tpm status'), or reboot if it "
        "is 0\n"
    ))


def test_status_reports_the_tpms_hygiene(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    state = str(sealer.state_dir)
    before = json.loads(sealer("status", "--json", "--state-dir", state, str(luks_image)).stdout)
    assert before["tpm"]["hygiene"] == {
        "owner_auth_set": False, "endorsement_auth_set": False, "lockout_auth_set": False,
        "disable_clear": False, "lockout_auth_holder": "nobody",
        "sealer_lockout_auth_file": None,
        "revocation_field": {"nv_index": "0x01335ea1", "present": False},
    }
    assert sealer.enroll(luks_image).returncode == 0
    report = json.loads(sealer("status", "--json", "--state-dir", state, str(luks_image)).stdout)
    assert report["tpm"]["hygiene"] == {
        "owner_auth_set": False, "endorsement_auth_set": False, "lockout_auth_set": True,
        "disable_clear": False, "lockout_auth_holder": "sealer",
        "sealer_lockout_auth_file": f"{state}/{AUTH_FILE}",
        "revocation_field": {"nv_index": "0x01335ea1", "present": True},
    }
    lockout = report["tpm"]["lockout"]
    assert {k: lockout[k] for k in SEALER_DA} == SEALER_DA
    lines = sealer("status", "--state-dir", state, str(luks_image)).stdout.splitlines()
    assert lines[-4:] == [
        "  TPM lockout authorization: set (held by sealer)",
        "  TPM owner authorization: EMPTY (as Linux tools expect)",
        "  TPM DA parameters: max tries 32, one forgotten every 7200 s, 600 s after a wrong "
        "lockout authorization; failed tries now 0",
        "  TPM revocation field 0x01335ea1: present",
    ]
    # The TPM alone, and without the state directory sealer cannot say it holds it.
    alone = json.loads(sealer("tpm", "status", "--json", "--state-dir", "/nonexistent").stdout)
    assert alone["hygiene"]["lockout_auth_holder"] == "someone else"
    assert alone["lockout"] == lockout


def test_a_lockout_authorization_set_by_someone_else_is_left_alone(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    theirs = tools(swtpm, "tpm2_changeauth", "-c", "l", "hex:" + "ab" * 16)
    assert theirs.returncode == 0, theirs.stderr
    params = da_parameters(swtpm)
    enrolled = sealer("enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir),
                      str(luks_image), stdin=PASSPHRASE)
    assert enrolled.returncode == 0, enrolled.stderr
    assert (
        "sealer: warning: the TPM's lockout authorization was set by someone else, so sealer "
        "leaves it (and the dictionary-attack parameters) alone; whoever holds it can reset a "
        "PIN lockout\n"
    ) in enrolled.stderr
    assert not (sealer.state_dir / AUTH_FILE).exists()
    assert da_parameters(swtpm) == params
    status = json.loads(sealer("status", "--json", "--state-dir", str(sealer.state_dir),
                               str(luks_image)).stdout)
    assert status["tpm"]["hygiene"]["lockout_auth_holder"] == "someone else"
    # Theirs still works.
    mine = tools(swtpm, "tpm2_dictionarylockout", "--clear-lockout", "-p", "hex:" + "ab" * 16)
    assert mine.returncode == 0, mine.stderr


def test_a_pending_authorization_that_is_not_the_tpms_is_tried_once(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    """An interrupted run left ``.new``, and meanwhile someone else set the authorization."""
    sealer.state_dir.mkdir(mode=0o700)
    (sealer.state_dir / (AUTH_FILE + ".new")).write_bytes(b"\x01" * 32)
    theirs = tools(swtpm, "tpm2_changeauth", "-c", "l", "hex:" + "ab" * 16)
    assert theirs.returncode == 0, theirs.stderr
    first = sealer("enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir),
                   str(luks_image), stdin=PASSPHRASE)
    assert first.returncode == 0, first.stderr
    aside = sealer.state_dir / (AUTH_FILE + ".not-in-force")
    assert f"an interrupted enrollment's value is not it: kept as {aside})" in first.stderr
    assert aside.read_bytes() == b"\x01" * 32
    assert sorted(p.name for p in sealer.state_dir.iterdir() if "lockout" in p.name) == [
        aside.name
    ]
    other = make_luks_image(tmp_path / "other.img", PASSPHRASE)
    second = sealer("enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir),
                    str(other), stdin=PASSPHRASE)
    assert second.returncode == 0, second.stderr
    assert "set by someone else" in second.stderr and "interrupted" not in second.stderr


def test_a_lockout_hierarchy_locked_by_a_wrong_try_does_not_stop_enrollment(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """Someone tried a wrong lockout authorization first: the TPM refuses every one (the
    empty one too) for lockoutRecovery; enroll goes on, says so, and leaves it open."""
    assert tools(swtpm, "tpm2_dictionarylockout", "-c", "-p", "wrong").returncode != 0
    enrolled = sealer("enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir),
                      str(luks_image), stdin=PASSPHRASE)
    assert enrolled.returncode == 0, enrolled.stderr
    assert (
        "sealer: warning: the TPM's lockout hierarchy was not closed (the TPM refuses lockout "
        "authorizations for now: a wrong one was tried earlier): until it is, anyone can reset "
        "or switch off the PIN lockout; run 'sealer enroll' again later\n"
    ) in enrolled.stderr
    assert properties(swtpm)["lockoutAuthSet"] == 0
    assert not (sealer.state_dir / AUTH_FILE).exists()
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0


def test_the_lockout_authorization_is_escrowed_with_the_recovery_key(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    org = org_pair(tmp_path / "org")
    enrolled = sealer.enroll(luks_image, "--recovery-key", "--escrow-cert", str(org.cert),
                             "--machine-id", "m1")
    assert enrolled.returncode == 0, enrolled.stderr
    record = sealer.state_dir / "escrow" / "m1-tpm-lockout.cms"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    opened = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "PEM", "-inkey", str(org.key)],
        input=record.read_bytes(), capture_output=True, check=True,
    )
    assert opened.stdout == (sealer.state_dir / AUTH_FILE).read_bytes().hex().encode()


# Every write of the lockout takeover, interrupted: the next enroll finishes it, and the
# authorization kept is the one in force.
TAKEOVER_WRITES = [
    "tpm: set dictionary-attack parameters",
    f"state: write {AUTH_FILE}.new",
    "tpm: change the lockout authorization",
    f"state: rename {AUTH_FILE}.new to {AUTH_FILE}",
]


@pytest.mark.parametrize("write", TAKEOVER_WRITES)
def test_an_interrupted_takeover_is_finished_by_the_next_enroll(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path, write: str
) -> None:
    record = tmp_path / "writes.txt"
    args = ["enroll", "--unlock-key-file", "-", "--state-dir", str(sealer.state_dir), "--quiet",
            str(luks_image)]
    listing = subprocess.run(
        [sys.executable, str(INJECTOR), "0", str(record), "--tcti", swtpm.tcti, *args[:-1],
         str(make_luks_image(tmp_path / "listing.img", PASSPHRASE))],
        input=PASSPHRASE, capture_output=True, timeout=120, env=INJECTOR_ENV,
    )
    assert listing.returncode == 0, listing.stderr
    writes = record.read_text().splitlines()
    assert [w for w in writes if w in TAKEOVER_WRITES] == TAKEOVER_WRITES, writes
    # A fresh TPM and state directory, stopped just before ``write``.
    with Swtpm(tmp_path / "tpm2") as tpm:
        stopped_sealer = SealerCli(tcti=tpm.tcti, state_dir=tmp_path / "state2")
        record.unlink()
        args[4] = str(stopped_sealer.state_dir)
        stopped = subprocess.run(
            [sys.executable, str(INJECTOR), str(writes.index(write) + 1), str(record), "--tcti",
             tpm.tcti, *args], input=PASSPHRASE, capture_output=True, timeout=120,
            env=INJECTOR_ENV,
        )
        assert stopped.returncode == KILLED, stopped.stderr
        assert record.read_text().splitlines()[-1] == write
        assert opens_with(luks_image, PASSPHRASE)
        rerun = stopped_sealer.enroll(luks_image)
        assert rerun.returncode == 0, rerun.stderr
        assert "warning" not in rerun.stderr
        kept = stopped_sealer.state_dir / AUTH_FILE
        assert not (stopped_sealer.state_dir / (AUTH_FILE + ".new")).exists()
        assert da_parameters(tpm) == (32, 7200, 600)
        # The kept authorization is the one in force, and nothing else is (a wrong one
        # locks the lockout hierarchy for 600 s: tried last).
        works = tools(tpm, "tpm2_dictionarylockout", "--clear-lockout", "-p", f"file:{kept}")
        assert works.returncode == 0, works.stderr
        assert tools(tpm, "tpm2_dictionarylockout", "--clear-lockout").returncode != 0
        assert stopped_sealer("unlock", "--test", str(luks_image)).returncode == 0


def test_a_deleted_revocation_field_fails_closed(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """Known limit: the owner authorization (empty, as Linux tools need it) deletes the field.

    The field is an owner index: NV_UndefineSpace takes the owner authorization, and
    TPMA_NV_POLICY_DELETE (deletion only by policy) is allowed only with
    TPMA_NV_PLATFORMCREATE, which the firmware's hidden platform authorization gives. What
    sealer guarantees is that a missing field never releases the key.
    """
    assert sealer.enroll(luks_image).returncode == 0
    deleted = tools(swtpm, "tpm2_nvundefine", "0x01335ea1")
    assert deleted.returncode == 0, deleted.stderr  # cannot be prevented without platform auth
    refused = sealer("unlock", "--test", "--json", str(luks_image))
    assert refused.returncode == EXIT_TPM_MISMATCH
    assert json.loads(refused.stdout)["exit_code"] == EXIT_TPM_MISMATCH  # an error, no key
    assert refused.stderr.startswith(
        "sealer: the revocation field (TPM NV index 0x01335ea1) is missing or was replaced: "
        "the TPM was cleared"
    )
    report = json.loads(sealer("status", "--json", "--state-dir", str(sealer.state_dir),
                               str(luks_image)).stdout)
    assert report["tpm"]["hygiene"]["revocation_field"]["present"] is False
    assert report["enrollments"][0]["unlocks_now"] is False
    assert opens_with(luks_image, PASSPHRASE)


def test_only_the_platform_can_define_an_index_deletable_by_policy_alone(
    swtpm: Swtpm, tmp_path: Path
) -> None:
    """Why sealer cannot make its field undeletable: TPMA_NV_POLICY_DELETE (deletion only
    through NV_UndefineSpaceSpecial and the index's policy) is refused for an owner index,
    and TPMA_NV_PLATFORMCREATE needs the platform authorization, which firmware keeps from
    the OS (swtpm's is empty, so the last command works here and nowhere real)."""
    policy = tmp_path / "policy.bin"
    policy.write_bytes(bytes(32))

    def define(hierarchy: str, attributes: str, index: str) -> subprocess.CompletedProcess[str]:
        return tools(swtpm, "tpm2_nvdefine", "-C", hierarchy, "-s", "8", "-a", attributes,
                     "-L", str(policy), index)

    owner = define("o", "authread|authwrite|policydelete", "0x01335ea2")
    assert "Esys_NV_DefineSpace(0x2C2) - tpm:parameter(2):inconsistent attributes" in owner.stderr
    owner = define("o", "authread|authwrite|policydelete|platformcreate", "0x01335ea2")
    assert "Esys_NV_DefineSpace(0x182) - tpm:handle(1):inconsistent attributes" in owner.stderr
    platform = define("p", "authread|authwrite|policydelete|platformcreate", "0x01800010")
    assert platform.returncode == 0, platform.stderr


def test_a_redefined_revocation_field_resets_revocation_known_limit(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    """What the empty owner authorization still allows (docs/faults.md): delete the field,
    define it anew (here by the next enrollment; anyone can, its public area is public), and
    releases revoked before unlock again. The lead's NV counter (part of issue 15) retires
    approvals by a value that survives this."""
    assert sealer.enroll(luks_image).returncode == 0
    revoked = sealer("revoke", "--below", "1", "--state-dir", str(sealer.state_dir),
                     str(luks_image))
    assert revoked.returncode == 0, revoked.stderr
    assert sealer("unlock", "--test", str(luks_image)).returncode != 0
    assert tools(swtpm, "tpm2_nvundefine", "0x01335ea1").returncode == 0
    other = make_luks_image(tmp_path / "other.img", PASSPHRASE)
    assert sealer.enroll(other).returncode == 0  # defines the field again, all bits clear
    assert sealer("unlock", "--test", str(luks_image)).returncode == 0  # the limit, shown


def test_systemd_cryptenroll_and_clevis_still_enroll_and_unlock(
    sealer: SealerCli, swtpm: Swtpm, luks_image: Path, tmp_path: Path
) -> None:
    for tool in ("systemd-cryptenroll", "clevis"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            pytest.fail(f"{tool} is not installed: run the README's test command")
    assert sealer.enroll(luks_image, pin=PIN).returncode == 0
    assert properties(swtpm)["lockoutAuthSet"] == 1

    # systemd-cryptenroll 252 (primary key under the owner hierarchy, empty owner auth),
    # with a PIN: a DA-protected object under sealer's DA parameters. It unseals once itself
    # to check the enrollment; sealer's reader of its token unseals again.
    for pin in (None, b"1357"):
        image = make_luks_image(tmp_path / f"systemd-{pin is not None}.img", PASSPHRASE)
        env = {**os.environ, "PASSWORD": PASSPHRASE.decode()}
        extra = []
        if pin is not None:
            env["NEWPIN"] = pin.decode()
            extra.append("--tpm2-with-pin=yes")
        result = subprocess.run(
            ["systemd-cryptenroll", f"--tpm2-device={swtpm.tcti}", "--tpm2-pcrs=7", *extra,
             str(image)], env=env, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        [token] = cryptsetup.read_header(str(image)).tokens_of_type(systemd.TOKEN_TYPE)
        parsed = systemd.parse(token.token_id, dict(token.data))
        key = systemd.passphrase(parsed, swtpm.tcti, functools.partial(bytes, pin or b""))
        assert opens_with(image, key)
        subprocess.run(["tpm2_flushcontext", "-T", swtpm.tcti, "-l"], check=True)

    # clevis luks bind, then clevis's own unseal (clevis luks pass).
    image = make_luks_image(tmp_path / "clevis.img", PASSPHRASE)
    env = {**os.environ, "TPM2TOOLS_TCTI": swtpm.tcti}
    subprocess.run(
        ["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2",
         '{"pcr_bank":"sha256","pcr_ids":"7"}'],
        input=PASSPHRASE, env=env, check=True, capture_output=True, timeout=60,
    )
    subprocess.run(["tpm2_flushcontext", "-T", swtpm.tcti, "-l"], check=True)
    [token] = cryptsetup.read_header(str(image)).tokens_of_type(clevis.TOKEN_TYPE)
    [slot] = clevis.parse(token.token_id, dict(token.data)).keyslots
    passed = subprocess.run(
        ["clevis", "luks", "pass", "-d", str(image), "-s", str(slot)],
        env=env, check=True, capture_output=True, timeout=60,
    ).stdout
    assert opens_with(image, passed)

    # And sealer's own enrollment, and the lockout, are untouched by all of it.
    assert sealer("unlock", "--test", "--pin-file", "-", str(luks_image), stdin=PIN).returncode == 0
    assert properties(swtpm)["lockoutAuthSet"] == 1
    assert da_parameters(swtpm) == (32, 7200, 600)
