"""Issue 18 with dracut: sealer on a real installed Debian 12 whose initramfs dracut builds.

The machine of test_installed_system.py (swtpm-fixtures/debian_system.py), with Debian's
``dracut`` package in place of initramfs-tools and cryptsetup-initramfs: a generic systemd
initramfs, which holds no /etc/crypttab, so the kernel command line names the LUKS root
(``rd.luks.uuid=``, ``rd.luks.name=...=cryptroot``). systemd-cryptsetup asks for the
passphrase through systemd's password agents; sealer's dracut module adds an agent that
answers with the key the TPM releases. Driven at the serial console:

0. update-grub on the installed system (passphrase typed at systemd's console prompt);
1. ``sealer enroll --recovery-key``; ``sealer boot enable`` detects dracut, wires its
   module and rebuilds the initramfs with dracut; ``status --next-boot`` says it unlocks;
2. unlocks with nothing typed (sealer's agent says so on the console); sealer-prune.service
   ran; a kernel update (``dpkg -i``) runs dracut's and sealer's kernel hooks with no
   warning; ``status --next-boot`` says the new kernel's boot unlocks;
3. unlocks with nothing typed on the new kernel.

Each boot's time (power-on to the shell) and the durations of ``boot enable`` and the kernel
update are written to ``lifecycle-dracut.json`` in the work folder and printed. It has the
``lifecycle`` marker, like test_installed_system.py, and is not in the default run.
"""

from __future__ import annotations

import json
import re

import pytest
from debian_system import PASSPHRASE, DebianSystem, build_debian_system, missing_debian_system_parts
from serialconsole import SHELL_PROMPT, Console
from test_installed_system import (
    DEVICE,
    _deb,
    _next_boot,
    _ok,
    prune_ran_and_kernel_update_approved,
    verdict_unlocks,
)

# systemd-cryptsetup's request, as systemd-ask-password-console shows it on the serial
# console: "Please enter passphrase for disk <model> (cryptroot):".
PROMPT = "Please enter passphrase for disk"
AGENT_LINE = re.compile(r"^sealer: .*key released by the TPM.*$", re.MULTILINE)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> DebianSystem:
    missing = missing_debian_system_parts()
    if missing:
        pytest.skip(missing)
    return build_debian_system(tmp_path_factory.mktemp("debian-system"), _deb(),
                               generator="dracut")


def _typed_login(console: Console) -> float:
    """Wait for systemd's passphrase prompt, type the passphrase, log in."""
    console.wait_for(PROMPT, 600)
    console.type(PASSPHRASE + "\n")
    return console.login()


def _unattended_login(console: Console) -> float:
    """Boot to the shell with nothing typed; the console shows sealer's agent line and no
    passphrase prompt."""
    found = console.wait_for(rf"{re.escape(PROMPT)}|{re.escape(SHELL_PROMPT)}", 600,
                             regex=True)
    assert found.group(0) != PROMPT, "the boot asked for the passphrase:\n" + console.tail()
    seconds = console.elapsed()
    assert AGENT_LINE.search(console.text), "no agent line on the console:\n" + console.tail()
    assert PROMPT not in console.text, console.tail()
    console.prepare_shell()
    return seconds


def test_life_cycle_dracut(system: DebianSystem) -> None:
    times: dict[str, float] = {}
    logs = system.work

    # Boot 0: the installer's last step: update-grub with the guest's own devices.
    with Console(system.machine, logs / "boot0-install.log") as console:
        times["boot0_to_shell"] = _typed_login(console)
        assert _ok(console, "uname -r").strip() == system.first_kernel
        packages = _ok(console, "dpkg-query -W sealer dracut")
        assert "sealer" in packages and "dracut" in packages, packages
        _ok(console, "update-grub 2>&1")
        assert "rd.luks.uuid=" in _ok(console, "grep -m1 rd.luks.uuid= /boot/grub/grub.cfg")
        console.power_off()

    # Boot 1: the passphrase is typed; sealer is set up at the console.
    with Console(system.machine, logs / "boot1-enroll.log") as console:
        times["boot1_to_shell"] = _typed_login(console)
        enroll = console.run(
            f"sealer enroll --recovery-key {DEVICE}", timeout=300,
            answers=((f"Passphrase or recovery key for {DEVICE}:", PASSPHRASE + "\n"),),
        )
        assert enroll.status == 0, enroll.output
        enable = console.run("sealer boot enable 2>&1", timeout=1800)
        assert enable.status == 0, enable.output
        assert "Initramfs generator: dracut" in enable.output, enable.output
        assert "At the next boot the TPM unlocks these volumes" in enable.output, enable.output
        times["boot_enable_seconds"] = enable.seconds
        assert verdict_unlocks(_next_boot(console)) is True
        console.power_off()

    # Boot 2: unlocks by itself; the prune unit ran; a kernel update is approved ahead.
    with Console(system.machine, logs / "boot2-update.log") as console:
        times["boot2_to_shell"] = _unattended_login(console)
        prune_ran_and_kernel_update_approved(console, system, times)
        console.power_off()

    # Boot 3: the new kernel, unlocked by itself.
    with Console(system.machine, logs / "boot3-newkernel.log") as console:
        times["boot3_to_shell"] = _unattended_login(console)
        assert _ok(console, "uname -r").strip() == system.update_kernel
        console.power_off()

    (system.work / "lifecycle-dracut.json").write_text(json.dumps(times, indent=2))
    print(json.dumps(times, indent=2))
