"""Issue 18: sealer's life on a real installed Debian 12, from its .deb to its kernel updates.

One machine (swtpm-fixtures/debian_system.py: mmdebstrap root with systemd, a Debian-signed
kernel, shim + GRUB, cryptsetup-initramfs on a LUKS2 root, sealer installed with ``apt install
./sealer_VERSION_amd64.deb`` from this tree), driven at its serial console as a person would:

0. the installer's last step: update-grub on the installed system (passphrase typed);
1. ``sealer enroll --recovery-key`` against the real TPM and volume (the passphrase typed at
   its prompt); ``sealer boot enable`` against the real /etc/crypttab, which runs the real
   update-initramfs and, through the update hook, the reseal; it says the next boot unlocks,
   and ``status --next-boot`` agrees;
2. unlocks with nothing typed, under systemd; sealer-prune.service ran; a kernel update
   (``dpkg -i`` of the next ABI's signed package) runs initramfs-tools', GRUB's and sealer's
   hooks with no warning; ``status --next-boot`` says the new kernel's boot unlocks;
3. unlocks with nothing typed on the new kernel; ``apt-get purge`` of the old kernel
   (update-grub rewrites grub.cfg; sealer's removal hook approves it);
4. unlocks with nothing typed; a change sealer cannot predict (GRUB's menu timeout) with a
   kernel package install: dpkg's output carries the hook's warning banner with the reason,
   ``status --next-boot`` says it will not unlock;
5. asks for the passphrase, says why on the console, and boots with the recovery key;
   ``apt-get remove sealer`` unwires it, and update-initramfs still works.

Each boot's time (power-on to the shell) is written to ``lifecycle.json`` in the work folder
and printed. The run takes about fifteen minutes here: it has its own marker (``lifecycle``)
and README command, and is not in the default run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from debian_system import PASSPHRASE, DebianSystem, build_debian_system, missing_debian_system_parts
from serialconsole import Console

PROMPT = "Please unlock disk cryptroot"
DEVICE = "/dev/vdc"


def _deb() -> Path:
    given = os.environ.get("SEALER_DEB")
    if given:
        return Path(given)
    found = sorted(Path(__file__).resolve().parents[2].joinpath("dist").glob("sealer_*.deb"))
    if not found:
        pytest.skip("no dist/sealer_*.deb: run 'make deb' first (or set SEALER_DEB)")
    return found[-1]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> DebianSystem:
    missing = missing_debian_system_parts()
    if missing:
        pytest.skip(missing)
    return build_debian_system(tmp_path_factory.mktemp("debian-system"), _deb())


def _ok(console: Console, command: str, timeout: float = 600) -> str:
    result = console.run(command, timeout=timeout)
    assert result.status == 0, f"{command} exited {result.status}:\n{result.output}"
    return result.output


def _unattended_login(console: Console) -> float:
    """Boot to the shell; fail if the passphrase prompt shows up instead."""
    found = console.wait_for(rf"{re.escape(PROMPT)}|root@sealer-guest:~#", 600, regex=True)
    assert found.group(0) != PROMPT, "the boot asked for the passphrase:\n" + console.tail()
    seconds = console.elapsed()
    console.prepare_shell()
    return seconds


def _next_boot(console: Console) -> object:
    """``status --next-boot --json`` (its exit status says whether the TPM unlocks now)."""
    result = console.run(f"sealer status --next-boot --json {DEVICE} 2>/dev/null", timeout=300)
    return json.loads(result.output)


def test_life_cycle(system: DebianSystem) -> None:
    times: dict[str, float] = {}
    logs = system.work

    # Boot 0: the installer's last step, on the installed system: update-grub with the
    # guest's own devices (the first grub.cfg was made on the build host).
    with Console(system.machine, logs / "boot0-install.log") as console:
        console.wait_for(PROMPT, 600)
        console.type(PASSPHRASE + "\n")
        times["boot0_to_shell"] = console.login()
        assert _ok(console, "uname -r").strip() == system.first_kernel
        assert "sealer" in _ok(console, "dpkg-query -W sealer")
        _ok(console, "update-grub")
        console.power_off()

    # Boot 1: the passphrase is typed; sealer is set up at the console.
    with Console(system.machine, logs / "boot1-enroll.log") as console:
        console.wait_for(PROMPT, 600)
        console.type(PASSPHRASE + "\n")
        times["boot1_to_shell"] = console.login()
        enroll = console.run(
            f"sealer enroll --recovery-key {DEVICE}", timeout=300,
            answers=((f"Passphrase or recovery key for {DEVICE}:", PASSPHRASE + "\n"),),
        )
        assert enroll.status == 0, enroll.output
        recovery = re.search(r"^\s+([0-9a-z]{5}(?:-[0-9a-z]{5})+)\s*$", enroll.output,
                             re.MULTILINE)
        assert recovery is not None, enroll.output
        enable = console.run("sealer boot enable 2>&1", timeout=1200)
        assert enable.status == 0, enable.output
        assert "At the next boot the TPM unlocks these volumes" in enable.output, enable.output
        times["boot_enable_seconds"] = enable.seconds
        assert "keyscript=/usr/lib/sealer/keyscript" in _ok(console, "cat /etc/crypttab")
        assert verdict_unlocks(_next_boot(console)) is True
        console.power_off()

    # Boot 2: unlocks by itself; the prune unit ran; a kernel update is approved ahead.
    with Console(system.machine, logs / "boot2-update.log") as console:
        times["boot2_to_shell"] = _unattended_login(console)
        prune_ran_and_kernel_update_approved(console, system, times)
        console.power_off()

    # Boot 3: the new kernel, unlocked by itself; the old kernel is removed (update-grub
    # rewrites grub.cfg, which GRUB measures: the removal hook approves it).
    with Console(system.machine, logs / "boot3-remove.log") as console:
        times["boot3_to_shell"] = _unattended_login(console)
        assert _ok(console, "uname -r").strip() == system.update_kernel
        removal = console.run(f"apt-get purge -y linux-image-{system.first_kernel} 2>&1",
                              timeout=900)
        assert removal.status == 0 and "NOT approved" not in removal.output, removal.output
        times["kernel_removal_seconds"] = removal.seconds
        assert verdict_unlocks(_next_boot(console)) is True
        console.power_off()

    # Boot 4: unlocked by itself after the removal; then an update sealer cannot approve:
    # the menu timeout changed (GRUB measures 'set timeout=N'; sealer predicts GRUB only
    # where it runs what this boot ran) and the kernel package is installed again.
    with Console(system.machine, logs / "boot4-unapproved.log") as console:
        times["boot4_to_shell"] = _unattended_login(console)
        _ok(console, "sed -i 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=2/' /etc/default/grub")
        failed = console.run(f"dpkg -i {system.update_deb} 2>&1", timeout=1800)
        assert failed.status == 0, failed.output  # the hook never fails the package
        assert "WARNING: the next boot (kernel" in failed.output, failed.output
        assert "set timeout=2" in failed.output, failed.output
        verdict = _next_boot(console)
        assert verdict_unlocks(verdict) is not True, verdict
        console.power_off()

    # Boot 5: asks for the passphrase and says why; the recovery key opens the volume.
    with Console(system.machine, logs / "boot5-fallback.log") as console:
        console.wait_for(PROMPT, 600)
        times["boot5_to_prompt"] = console.elapsed()
        why = re.findall(r"^sealer: .*$", console.text, re.MULTILINE)
        assert any("PCR" in line for line in why), console.tail()
        console.type(recovery.group(1) + "\n")
        times["boot5_to_shell"] = console.login()
        # Removing the package unwires the unlocker first: a hook naming the removed
        # interpreter would fail every later update-initramfs, so every kernel install.
        removed = _ok(console, "apt-get remove -y sealer 2>&1", timeout=600)
        assert "sealer boot disable" in removed, removed
        assert "keyscript=" not in _ok(console, "cat /etc/crypttab")
        assert _ok(console, "ls /etc/initramfs-tools/hooks /etc/kernel/postinst.d").count(
            "sealer") == 0
        _ok(console, "update-initramfs -u 2>&1", timeout=900)
        console.power_off()

    (system.work / "lifecycle.json").write_text(json.dumps(times, indent=2))
    print("boot 5 said:", *why, sep="\n  ")
    print(json.dumps(times, indent=2))


def prune_ran_and_kernel_update_approved(
    console: Console, system: DebianSystem, times: dict[str, float]
) -> None:
    """The first unattended boot, with either initramfs: the prune unit ran, and a kernel
    update (dpkg -i of the next ABI) is approved ahead, with no warning."""
    prune = _ok(console, "systemctl show -p Result -p ExecMainStatus sealer-prune.service")
    assert "Result=success" in prune and "ExecMainStatus=0" in prune, prune
    assert "sealer" in _ok(console, "journalctl -b -u sealer-prune.service")
    update = console.run(f"dpkg -i {system.update_deb} 2>&1", timeout=2400)
    assert update.status == 0 and "NOT approved" not in update.output, update.output
    times["kernel_update_seconds"] = update.seconds
    verdict = _next_boot(console)
    assert verdict_unlocks(verdict) is True, verdict
    assert system.update_kernel in json.dumps(verdict), verdict


def next_boot_verdicts(report: object) -> list[dict[str, object]]:
    """Every ``next_boot`` object in a ``status --json`` report (one per enrollment)."""
    if isinstance(report, dict):
        found = [report["next_boot"]] if isinstance(report.get("next_boot"), dict) else []
        return found + [v for value in report.values() for v in next_boot_verdicts(value)]
    if isinstance(report, list):
        return [v for value in report for v in next_boot_verdicts(value)]
    return []


def verdict_unlocks(report: object) -> object:
    """The next boot's verdict for the one enrollment: True, False or None (cannot tell)."""
    verdicts = next_boot_verdicts(report)
    assert len(verdicts) == 1, report
    return verdicts[0]["unlocks"]

