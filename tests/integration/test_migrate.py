"""Volumes bound by systemd-cryptenroll or clevis: `sealer unlock` opens them, `sealer migrate`
moves them to sealer, with the real tools against swtpm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PASSPHRASE, SealerCli
from luks_image import opens_with
from swtpm import Swtpm

from sealer.luks import cryptsetup

EXIT_POLICY = 5


def bind_systemd(tpm: Swtpm, image: Path) -> None:
    subprocess.run(
        ["systemd-cryptenroll", f"--tpm2-device=swtpm:host=127.0.0.1,port={tpm.port}",
         "--tpm2-pcrs=7", str(image)],
        env={**os.environ, "PASSWORD": PASSPHRASE.decode()}, check=True, capture_output=True,
    )


def bind_clevis(tpm: Swtpm, image: Path) -> None:
    tcti = f"swtpm:host=127.0.0.1,port={tpm.port}"
    subprocess.run(
        ["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2",
         '{"pcr_bank":"sha256","pcr_ids":"7"}'],
        input=PASSPHRASE, env={**os.environ, "TPM2TOOLS_TCTI": tcti},
        check=True, capture_output=True,
    )


BINDERS = {"systemd-tpm2": bind_systemd, "clevis": bind_clevis}


@pytest.fixture(params=sorted(BINDERS))
def bound(request: pytest.FixtureRequest, swtpm: Swtpm, luks_image: Path) -> str:
    kind = str(request.param)
    tool = "systemd-cryptenroll" if kind == "systemd-tpm2" else "clevis"
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run the README's test command, which installs it")
    BINDERS[kind](swtpm, luks_image)
    return kind


def extend_pcr7(tpm: Swtpm) -> None:
    subprocess.run(["tpm2_pcrextend", "-T", tpm.tcti, "7:sha256=" + "11" * 32], check=True)


def test_unlock_opens_a_volume_bound_by_another_tool(
    bound: str, sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    result = sealer("unlock", "--test", "--json", str(luks_image))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["binding"] == bound and doc["opened"] is False
    extend_pcr7(swtpm)
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == EXIT_POLICY, refused.stderr
    assert len(refused.stderr.splitlines()) == 1 and "PCR 7" in refused.stderr


def test_migrate_replaces_the_binding_and_the_volume_stays_openable(
    bound: str, sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    before = cryptsetup.read_header(str(luks_image))
    [old] = before.tokens_of_type(bound)
    result = sealer("migrate", "--json", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["old_binding"] == bound and doc["old_removed"] is True
    assert doc["pcrs"] == [7] and doc["pcr_bank"] == "sha256"
    after = cryptsetup.read_header(str(luks_image))
    assert not after.tokens_of_type(bound)
    assert not set(old.keyslots) & set(after.keyslots)
    assert after.tokens_of_type("sealer-tpm2")
    assert opens_with(luks_image, PASSPHRASE)  # the passphrase keyslot is untouched
    unlocked = sealer("unlock", "--test", "--json", str(luks_image))
    assert unlocked.returncode == 0 and json.loads(unlocked.stdout)["binding"] == "sealer-tpm2"


def test_migrate_keep_old_leaves_both_bindings(
    bound: str, sealer: SealerCli, luks_image: Path
) -> None:
    result = sealer("migrate", "--keep-old", "--state-dir", str(sealer.state_dir),
                    str(luks_image))
    assert result.returncode == 0, result.stderr
    header = cryptsetup.read_header(str(luks_image))
    assert header.tokens_of_type(bound) and header.tokens_of_type("sealer-tpm2")
    # Running it again finishes the job (as after an interruption before the removal).
    again = sealer("migrate", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert again.returncode == 0, again.stderr
    header = cryptsetup.read_header(str(luks_image))
    assert not header.tokens_of_type(bound) and len(header.tokens_of_type("sealer-tpm2")) == 1


def test_migrate_with_changed_pcrs_changes_nothing(
    bound: str, sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    extend_pcr7(swtpm)
    before = luks_image.read_bytes()
    result = sealer("migrate", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == EXIT_POLICY and "Traceback" not in result.stderr
    assert luks_image.read_bytes() == before


EXIT_USAGE = 2


def bind_without_pcrs(kind: str, tpm: Swtpm, image: Path) -> None:
    """The other tool's binding to no PCRs at all: its TPM releases the key on any boot."""
    if kind == "systemd-tpm2":
        argv = ["systemd-cryptenroll", f"--tpm2-device=swtpm:host=127.0.0.1,port={tpm.port}",
                "--tpm2-pcrs=", str(image)]
        subprocess.run(argv, env={**os.environ, "PASSWORD": PASSPHRASE.decode()}, check=True,
                       capture_output=True)
    else:
        tcti = f"swtpm:host=127.0.0.1,port={tpm.port}"
        subprocess.run(["clevis", "luks", "bind", "-y", "-k", "-", "-d", str(image), "tpm2",
                        '{"pcr_bank":"sha256"}'], input=PASSPHRASE,
                       env={**os.environ, "TPM2TOOLS_TCTI": tcti}, check=True,
                       capture_output=True)


@pytest.mark.parametrize("kind", sorted(BINDERS))
def test_migrate_of_a_binding_to_no_pcrs_needs_pcrs(
    kind: str, sealer: SealerCli, swtpm: Swtpm, luks_image: Path
) -> None:
    """Issue 15: no PCRs would become an approval of the cap PCR alone, which every boot
    satisfies; migrate refuses it unless --pcrs chooses the PCRs."""
    bind_without_pcrs(kind, swtpm, luks_image)
    [old] = cryptsetup.read_header(str(luks_image)).tokens_of_type(kind)
    before = luks_image.read_bytes()
    result = sealer("migrate", "--state-dir", str(sealer.state_dir), str(luks_image))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("sealer: the ") and "is bound to no PCRs" in lines[0]
    assert "--pcrs" in lines[0]
    assert luks_image.read_bytes() == before  # nothing was changed
    # --pcrs 7: the new binding holds PCR 7, so a changed PCR 7 no longer unlocks.
    chosen = sealer("migrate", "--json", "--pcrs", "7", "--state-dir", str(sealer.state_dir),
                    str(luks_image))
    assert chosen.returncode == 0, chosen.stderr
    assert json.loads(chosen.stdout)["pcrs"] == [7]
    header = cryptsetup.read_header(str(luks_image))
    assert not header.tokens_of_type(kind) and old.token_id not in header.tokens
    extend_pcr7(swtpm)
    refused = sealer("unlock", "--test", str(luks_image))
    assert refused.returncode == EXIT_POLICY, refused.stderr
    assert opens_with(luks_image, PASSPHRASE)
