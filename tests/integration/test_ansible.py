"""The Ansible collection (ansible/ansible_collections/sealer/tpm) against simulated machines.

Four inventory hosts on this host, ``connection: local``, each with its own swtpm, LUKS2
images, state directory, machine id and boot root; passphrases in Ansible Vault. m1 to m3
are in the boot of a captured firmware log (swtpm-fixtures/simboot.py), so that the fleet
report can tell about their next boot; "broken" has no TPM (its TCTI names ports where
nothing listens) and one volume enrolled earlier, while it had one, with its recovery key
escrowed.

One real ansible-playbook run per scenario, in the order a fleet sees them: a check-mode
run on the fresh machines, the first run, a rerun, then the fleet report.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import eventlogs
import pytest
from ansible_fleet import SEALER, Fleet, Machine, PlaybookRun, decrypt_escrow_record
from bootimage import STUB
from luks_image import opens_with
from simboot import captured_boot, make_uki
from swtpm import Swtpm

HEALTHY = ("m1", "m2", "m3")
ENROLL_TASK = "Enroll each volume with the TPM (recovery key escrowed)"
FAIL_TASK = "Fail the machine if a volume did not enroll"
BOOT_TASK = "Wire the unlocker into the initramfs"
NO_TPM = "cannot reach the TPM through 'swtpm:host=127.0.0.1,port="
MISSING_DISK = "/dev/disk/by-id/sealer-test-no-such-disk"


@dataclass
class Scenario:
    fleet: Fleet
    uki: Path
    before: dict[str, str] = field(default_factory=dict)  # file -> sha256, fresh machines
    after_check: dict[str, str] = field(default_factory=dict)
    runs: dict[str, PlaybookRun] = field(default_factory=dict)
    recovery_keys: dict[str, bytes] = field(default_factory=dict)  # record -> key

    def machine(self, name: str) -> Machine:
        return next(m for m in self.fleet.machines if m.name == name)


def _tree_digest(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` (images, state, boot roots, collected records)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.suffix != ".log" and "ansible-home" not in path.parts
    }


def _sealer(machine: Machine, *args: str, stdin: bytes = b"") -> None:
    result = subprocess.run(
        [str(SEALER), "--tcti", machine.tcti, *args], input=stdin, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    if not STUB.exists():
        pytest.fail(f"{STUB} is missing: run the README's test command, which installs it")
    directory = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(directory)
    uki, _ = make_uki(directory / "next-uki", initrd=b"new initramfs " * 99, cmdline=b"quiet")
    log = str(eventlogs.UKI_BOOT_LOG)
    try:
        # m1 and m2 bind PCRs 4 and 11 (the UKI), m3 PCR 7 (Secure Boot policy).
        for name, pcrs in zip(HEALTHY, ("4,11", "4,11", "7"), strict=True):
            machine = fleet.add_machine(name, pcrs=pcrs, booted=captured_boot())
            machine.extra_vars.update(sealer_next_boot_uki=str(uki), sealer_next_boot_eventlog=log)
        broken = fleet.add_machine("broken", volumes=2, broken=True)
        broken.extra_vars["sealer_report_devices"] = [
            *(str(v.device) for v in broken.volumes),
            MISSING_DISK,
        ]
        # Its first volume was enrolled while it had a TPM; the record is on the machine.
        with Swtpm(broken.directory / "old-tpm") as old_tpm:
            _enroll_with_escrow(old_tpm.tcti, broken, 0, fleet.cert)
        fleet.write_inventory()
        scenario = Scenario(fleet, uki)
        scenario.before = _tree_digest(directory / "machines")

        scenario.runs["check"] = fleet.run("provision.yml", "--check", "--diff")
        scenario.after_check = _tree_digest(directory / "machines")
        assert not fleet.collect_dir.exists() or not any(fleet.collect_dir.rglob("*.json"))
        # What a person sees: the default output, verbose, with diffs.
        scenario.runs["first"] = fleet.run("provision.yml", "--diff", "-v")
        scenario.runs["rerun"] = fleet.run("provision.yml", "--diff")
        # An update installs a new UKI on m1, and its hook approves it ahead of the reboot.
        m1 = scenario.machine("m1")
        _sealer(
            m1, "reseal", "--eventlog", log, "--state-dir", str(m1.state_dir), "--quiet",
            "--uki", str(uki), str(m1.volumes[0].device),
        )
        scenario.runs["report"] = fleet.run("fleet_report.yml")
        for record in sorted(fleet.collect_dir.rglob("*.json")):
            scenario.recovery_keys[str(record)] = decrypt_escrow_record(record, fleet.key)
        yield scenario
    finally:
        fleet.stop()


def _enroll_with_escrow(tcti: str, machine: Machine, index: int, cert: Path) -> None:
    volume = machine.volumes[index]
    result = subprocess.run(
        [
            str(SEALER), "--tcti", tcti, "enroll", "--unlock-key-file", "-", "--quiet",
            "--pcrs", volume.pcrs, "--state-dir", str(machine.state_dir), "--recovery-key",
            "--escrow-cert", str(cert),
            "--machine-id", machine.machine_id, str(volume.device),
        ],
        input=volume.passphrase.encode(), capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode()


def _records(scenario: Scenario, host: str) -> list[Path]:
    return sorted((scenario.fleet.collect_dir / host).glob("*.json"))


def test_check_mode_on_fresh_machines_changes_nothing(scenario: Scenario) -> None:
    run = scenario.runs["check"]
    assert scenario.after_check == scenario.before  # images byte for byte, state, boot roots
    stats = run.stats
    for host in HEALTHY:
        assert stats[host]["failures"] == 0 and stats[host]["changed"] >= 1, stats
        [result] = run.items(ENROLL_TASK)[host]
        assert result["changed"] is True
    # Even in check mode the broken host says why its enrollment would fail.
    assert stats["broken"]["failures"] == 1
    assert NO_TPM in run.results(FAIL_TASK)["broken"]["msg"]


def test_every_volume_enrolls_and_every_escrow_record_opens_its_volume(
    scenario: Scenario,
) -> None:
    run = scenario.runs["first"]
    assert run.returncode == 2, run.stdout[-3000:]  # one host failed
    for host in HEALTHY:
        assert run.stats[host]["failures"] == 0 and run.stats[host]["changed"] >= 2
    for machine in scenario.fleet.machines:
        records = _records(scenario, machine.name)
        on_machine = sorted(machine.escrow_dir.glob("*.json"))
        # Every record on every machine reached the controller, byte for byte.
        assert [r.name for r in records] == [r.name for r in on_machine]
        assert [r.read_bytes() for r in records] == [r.read_bytes() for r in on_machine]
        enrolled = machine.volumes if machine.name in HEALTHY else machine.volumes[:1]
        assert len(records) == len(enrolled)
        for volume in enrolled:
            uuid = subprocess.run(
                ["cryptsetup", "luksUUID", str(volume.device)],
                capture_output=True, text=True, check=True,
            ).stdout.strip()
            [record] = [r for r in records if r.name.startswith(f"{machine.machine_id}-{uuid}-")]
            key = scenario.recovery_keys[str(record)]
            assert opens_with(volume.device, key)
            assert not opens_with(volume.device, key + b"x")


def test_the_boot_hook_is_wired_in_each_boot_root(scenario: Scenario) -> None:
    first = scenario.runs["first"]
    for host in HEALTHY:
        root = scenario.machine(host).boot_root
        assert (root / "usr/lib/sealer/keyscript").stat().st_mode & 0o111
        assert (root / "etc/initramfs-tools/hooks/sealer").is_file()
        crypttab = (root / "etc/crypttab").read_text()
        assert "keyscript=/usr/lib/sealer/keyscript" in crypttab
        # --diff showed sealer's own diff of each file, crypttab included.
        assert f"--- /dev/null\n+++ {root}/usr/lib/sealer/keyscript\n" in first.stdout
        assert f"+{crypttab}" in first.stdout
        assert first.results(BOOT_TASK)[host]["changed"] is True
        assert scenario.runs["rerun"].results(BOOT_TASK)[host]["changed"] is False
    broken_root = scenario.machine("broken").boot_root
    assert not (broken_root / "usr/lib/sealer/keyscript").exists()


def test_a_second_run_changes_nothing(scenario: Scenario) -> None:
    run = scenario.runs["rerun"]
    for host in HEALTHY:
        assert run.stats[host]["changed"] == 0, run.stats
        assert run.stats[host]["failures"] == 0, run.stats
        [result] = run.items(ENROLL_TASK)[host]
        assert result["changed"] is False


def test_the_broken_host_fails_alone_with_sealers_message(scenario: Scenario) -> None:
    first = scenario.runs["first"]
    assert first.stats["broken"]["failures"] == 1
    broken = scenario.machine("broken")
    # The default output shows sealer's own line and exit status, naming the volume.
    expected = f"{broken.volumes[1].device}: sealer: {NO_TPM}"
    assert expected in first.stdout
    assert "(sealer exit status 4)" in first.stdout
    rerun = scenario.runs["rerun"].results(FAIL_TASK)["broken"]
    assert rerun["msg"].startswith(expected) and rerun["msg"].endswith("(sealer exit status 4)")
    # ... and the volume it had enrolled before keeps its record on the controller.
    assert len(_records(scenario, "broken")) == 1


def test_no_secret_in_any_output_or_log(scenario: Scenario) -> None:
    secrets = [v.passphrase for m in scenario.fleet.machines for v in m.volumes]
    secrets += [key.decode().strip() for key in scenario.recovery_keys.values()]
    assert len(secrets) == 5 + 4 and all(len(s) >= 20 for s in secrets)
    texts = {f"{name} run": run.everything for name, run in scenario.runs.items()}
    for path in (scenario.fleet.report_dir, scenario.fleet.collect_dir):
        texts.update({str(p): p.read_text() for p in path.rglob("*") if p.is_file()})
    texts["inventory"] = "".join(
        p.read_text() for p in scenario.fleet.inventory.parent.rglob("*") if p.is_file()
    )
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret is in {where}"
    assert all(run.log for run in scenario.runs.values())  # the logs were written


def test_the_fleet_report_tells_each_hosts_state(scenario: Scenario) -> None:
    run = scenario.runs["report"]
    assert run.returncode == 0, run.stdout[-3000:]
    report = json.loads((scenario.fleet.report_dir / "fleet-report.json").read_text())
    hosts = {h["host"]: h for h in report["hosts"]}
    assert sorted(hosts) == sorted([*HEALTHY, "broken"])
    assert report["summary"]["hosts"] == 4 and report["summary"]["error"] == 1
    for host in HEALTHY:
        [volume] = hosts[host]["volumes"]
        assert volume["enrolled"] is True and volume["unlocks_now"] is True
        assert volume["recovery_key"] is True and volume["recovery_escrowed"] is True
        assert volume["errors"] == []
        lockout = hosts[host]["tpm_lockout"]
        assert lockout["in_lockout"] is False and lockout["tries_left"] == lockout["max_tries"]
    next_boot = {h: hosts[h]["volumes"][0]["next_boot"] for h in HEALTHY}
    uki = scenario.uki
    assert next_boot["m1"] == {
        "unlocks": True,
        "image": f"UKI {uki}",
        "reason": "approval 0 (reseal) holds the predicted PCR values",
    }
    assert next_boot["m2"]["unlocks"] is False
    assert next_boot["m2"]["reason"].startswith("PCRs 4,11 differ from every approval")
    assert next_boot["m3"]["unlocks"] is None
    assert "the new UKI is not signed" in next_boot["m3"]["reason"]
    assert [hosts[h]["state"] for h in HEALTHY] == ["ok", "attention", "attention"]

    broken = hosts["broken"]
    assert broken["state"] == "error" and broken["tpm_lockout"] is None
    old, fresh, missing = broken["volumes"]
    assert old["enrolled"] is True and old["recovery_escrowed"] is True
    assert old["unlocks_now"] is None and NO_TPM in old["errors"][0]
    assert fresh["enrolled"] is False
    assert missing["device"] == MISSING_DISK and missing["errors"][0].startswith("sealer: ")
    assert any(NO_TPM in e for e in broken["errors"])

    text = (scenario.fleet.report_dir / "fleet-report.txt").read_text()
    table = text.split("\n\n")[1].splitlines()
    assert table[0].split() == [
        "HOST", "STATE", "VOLUME", "TPM", "NOW", "NEXT", "BOOT", "RECOVERY", "KEY", "TPM",
        "LOCKOUT",
    ]
    rows = {(row.split()[0], row.split()[2]): row.split() for row in table[1:]}
    m1 = rows[("m1", str(scenario.machine("m1").volumes[0].device))]
    assert m1[1:2] + m1[3:7] == ["ok", "yes", "yes", "escrowed", "32/32"]
    m2 = rows[("m2", str(scenario.machine("m2").volumes[0].device))]
    assert m2[4] == "NO"
    assert rows[("broken", MISSING_DISK)][1] == "error"
    assert "Reasons and errors:" in text and NO_TPM in text
