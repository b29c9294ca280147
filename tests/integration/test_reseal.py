"""Re-sealing for an update, pruning and explaining, against swtpm and a real LUKS2 header.

The machine is simulated on swtpm from a captured boot (swtpm-fixtures/simboot.py); the new
UKI's boot is built by hand there, not by sealer's predictor: if the prediction were wrong,
the TPM would refuse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import eventlogs
import pytest
from bootimage import STUB
from conftest import SealerCli
from conftest import SealerMachine as Machine
from header_edit import token_doc, write_token
from simboot import (
    APPLICATION_EVENT,
    SHA256,
    boot_of,
    captured_boot,
    make_uki,
)

from sealer.measure.pe import authenticode_digest

EXIT_POLICY = 5
EXIT_MEASUREMENT = 14


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    machine = Machine(tmp_path)
    yield machine
    machine.stop()


@pytest.fixture
def enrolled(machine: Machine, luks_image: Path, tmp_path: Path) -> SealerCli:
    """The volume enrolled to PCRs 4 and 11 in the captured boot."""
    machine.boot(captured_boot())
    sealer = machine.sealer
    result = sealer.enroll(luks_image, "--pcrs", "4,11", "--eventlog", str(eventlogs.UKI_BOOT_LOG))
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr  # a UKI in PCR 4 measures kernel, initrd, cmdline
    return sealer


def reseal(sealer: SealerCli, image: Path, *extra: str) -> dict[str, object]:
    result = sealer(
        "reseal", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--state-dir",
        str(sealer.state_dir), "--json", *extra, str(image),
    )
    assert result.returncode == 0, result.stderr
    [volume] = json.loads(result.stdout)
    assert isinstance(volume, dict)
    return volume


def unlocks(sealer: SealerCli, image: Path) -> int:
    return sealer("unlock", "--test", str(image)).returncode


def test_an_update_approved_ahead_unlocks_at_its_first_boot_and_prune_drops_the_old_one(
    machine: Machine, enrolled: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    sealer = enrolled
    uki, contents = make_uki(tmp_path / "v2", initrd=b"new initramfs " * 999, cmdline=b"quiet")
    predicted = sealer(
        "predict", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--uki", str(uki),
        "--pcrs", "4,11", "--json",
    )
    assert predicted.returncode == 0, predicted.stderr
    volume = reseal(sealer, luks_image, "--uki", str(uki))
    states = volume["approved_states"]
    assert isinstance(states, list)
    assert [s["label"] for s in states] == ["this boot", f"next boot: UKI {uki}"]
    prediction = json.loads(predicted.stdout)[0]["pcrs"]
    assert {p: states[1]["pcrs"][p] for p in ("4", "11")} == {
        p: prediction[p]["predicted"] for p in ("4", "11")
    }

    machine.boot(boot_of(uki, contents))  # the new UKI boots: no passphrase needed
    assert unlocks(sealer, luks_image) == 0
    pruned = sealer("prune", "--state-dir", str(sealer.state_dir), "--json", str(luks_image))
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)[0]["dropped_states"] == 1

    machine.boot(captured_boot())  # a rollback to the old UKI no longer unlocks
    assert unlocks(sealer, luks_image) == EXIT_POLICY


def test_a_pending_update_survives_prune_in_the_boot_that_approved_it(
    machine: Machine, enrolled: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    sealer = enrolled
    uki, contents = make_uki(tmp_path / "v2", initrd=b"initramfs", cmdline=b"ro")
    reseal(sealer, luks_image, "--uki", str(uki))
    pruned = sealer("prune", "--state-dir", str(sealer.state_dir), "--json", str(luks_image))
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)[0]["dropped_states"] == 0
    machine.boot(boot_of(uki, contents))
    assert unlocks(sealer, luks_image) == 0


def test_explain_names_the_boot_application_of_an_unapproved_uki(
    machine: Machine, enrolled: SealerCli, luks_image: Path, tmp_path: Path
) -> None:
    sealer = enrolled
    uki, contents = make_uki(tmp_path / "v3", initrd=b"evil initramfs", cmdline=b"init=/bin/sh")
    v3_boot = boot_of(uki, contents)
    machine.boot(v3_boot)
    assert unlocks(sealer, luks_image) == EXIT_POLICY
    # The log of that boot: the captured one with the new digests of PCRs 4 and 11.
    pcr11 = [d for p, d in v3_boot if p == 11]
    replaced = {APPLICATION_EVENT: authenticode_digest(uki.read_bytes(), SHA256)}
    replaced.update(zip(range(25, 33), pcr11, strict=True))
    v3_log = tmp_path / "v3.log"
    v3_log.write_bytes(
        eventlogs.rewrite(eventlogs.UKI_BOOT_LOG.read_bytes(), SHA256, replaced)
    )
    result = sealer("explain", "--eventlog", str(v3_log), "--json", str(luks_image))
    assert result.returncode == 0, result.stderr
    [explained] = json.loads(result.stdout)
    assert explained["unlocks"] is False and explained["log_verified"] is True
    [state] = explained["approved_states"]
    differing = {d["pcr"]: d for d in state["differing"]}
    assert sorted(differing) == [4, 11]
    [application] = differing[4]["unapproved_events"]
    assert application["event"] == APPLICATION_EVENT
    assert application["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    # Section names are the same; the contents of all four sections changed.
    assert [e["event"] for e in differing[11]["unapproved_events"]] == [26, 28, 30, 32]
    assert differing[11]["missing_events"] == 4
    text = sealer("explain", "--eventlog", str(v3_log), str(luks_image))
    assert "PCR 4,11 differ" in text.stdout
    assert "not approved: #24  PCR 4  EV_EFI_BOOT_SERVICES_APPLICATION" in text.stdout
    assert "image of 34897296 bytes at \\EFI\\BOOT\\BOOTX64.EFI" in text.stdout

    # And reseal refuses to take this boot as the base of a prediction.
    refused = sealer(
        "reseal", "--eventlog", str(v3_log), "--state-dir", str(sealer.state_dir),
        "--uki", str(uki), str(luks_image),
    )
    assert refused.returncode == EXIT_POLICY
    assert "this boot is not an approved state (PCR 4,11 differ)" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_uki_by_another_signer_cannot_be_predicted_for_pcr_7(
    machine: Machine, luks_image: Path, tmp_path: Path
) -> None:
    machine.boot(captured_boot())
    sealer = machine.sealer
    assert sealer.enroll(luks_image, "--pcrs", "4,7").returncode == 0
    uki, _ = make_uki(tmp_path / "v2", initrd=b"x", cmdline=b"y")
    result = sealer(
        "reseal", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--state-dir",
        str(sealer.state_dir), "--uki", str(uki), str(luks_image),
    )
    assert result.returncode == EXIT_MEASUREMENT, result.stderr
    assert "cannot predict PCR 7" in result.stderr and "not signed" in result.stderr
    assert unlocks(sealer, luks_image) == 0  # nothing was changed


def test_enroll_warns_when_the_pcrs_leave_the_boot_image_unmeasured(
    machine: Machine, luks_image: Path, tmp_path: Path
) -> None:
    machine.boot(captured_boot())
    sealer = machine.sealer
    # Refused unless --allow-unbound, which leaves them warnings.
    result = sealer.enroll(
        luks_image, "--pcrs", "7", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--allow-unbound"
    )
    assert result.returncode == 0, result.stderr
    # The Linux EFI stub measures the initrd and its load options into PCR 9 too.
    for what, pcrs in (("kernel", "4,11"), ("initrd", "4,9,11"), ("kernel command line", "4,9,11")):
        assert (
            f"warning: --pcrs 7 leaves the {what} unmeasured: on this boot the firmware and "
            f"systemd-stub measure it into PCR {pcrs}; add PCR 4 to bind it"
        ) in result.stderr


def test_a_log_that_does_not_match_the_tpm_is_reported_per_pcr(
    machine: Machine, tmp_path: Path
) -> None:
    machine.boot(captured_boot()[:-3])  # the TPM misses the last events (PCR 9 and 5)
    sealer = machine.sealer
    result = sealer("eventlog", "--eventlog", str(eventlogs.UKI_BOOT_LOG), "--json")
    assert result.returncode == 0, result.stderr
    pcrs = json.loads(result.stdout)["pcrs"]
    assert {p for p, v in pcrs.items() if not v["matches"]} == {"5", "9"}
    assert pcrs["4"]["matches"] is True


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["eventlog", "--eventlog", "{missing}", "--offline"], 14, "no such file"),
        (["eventlog", "--eventlog", "{truncated}", "--offline"], 14, "truncated or corrupted"),
        (["eventlog", "--eventlog", "{log}", "--pcr", "99", "--offline"], 2, "not a PCR index"),
        (["predict", "--eventlog", "{log}", "--offline"], 2, "no boot image given"),
        (["predict", "--eventlog", "{log}", "--offline", "--uki", "{missing}"], 14,
         "cannot read the boot image"),
        (["predict", "--eventlog", "{log}", "--offline", "--uki", "{log}"], 14,
         "not a PE/COFF image"),
        (["predict", "--eventlog", "{log}", "--offline", "--initrd", "{log}"], 2,
         "--initrd goes with --kernel"),
        (["reseal", "--eventlog", "{log}", "--offline", "--state-dir", "{missing}", "{image}"], 11,
         "there is no policy key"),
        (["explain", "--eventlog", "{log}", "--offline", "{log}"], 3, ""),
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(
    machine: Machine, enrolled: SealerCli, luks_image: Path, tmp_path: Path,
    args: list[str], code: int, expected: str,
) -> None:
    truncated = tmp_path / "truncated.log"
    truncated.write_bytes(eventlogs.UKI_BOOT_LOG.read_bytes()[:5000])
    names = {
        "missing": str(tmp_path / "missing"), "truncated": str(truncated),
        "log": str(eventlogs.UKI_BOOT_LOG), "image": str(luks_image),
    }
    before = luks_image.read_bytes()
    result = enrolled(*[a.format(**names) for a in args])
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sealer: ") and expected in lines[0], lines
    assert luks_image.read_bytes() == before


def test_reseal_gives_an_older_token_the_srk_public_area(
    enrolled: SealerCli, luks_image: Path
) -> None:
    """A token enrolled before the SRK's public area was kept costs every boot a ReadPublic;
    the next reseal (every kernel update runs one) adds it, checked against the pinned name."""
    sealer = enrolled
    doc = token_doc(luks_image)
    kept = doc.pop("srk_public")
    write_token(luks_image, 0, doc)
    assert unlocks(sealer, luks_image) == 0  # still unlocks, reading the SRK from the TPM
    reseal(sealer, luks_image, "--approve-current")
    assert token_doc(luks_image)["srk_public"] == kept
    assert unlocks(sealer, luks_image) == 0
