"""A disk provisioned by the Ansible role (sealer.tpm.provision) boots and unlocks by TPM.

The guest boots once with its passphrase (as a new machine on the bench does). Then the
guest's own TPM state is opened on the host by swtpm, the firmware log of that boot is
replayed into it (so its PCRs are the guest's), and the collection's provision playbook
enrolls the guest's disk and escrows its recovery key: the same role a fleet runs, with
``connection: local``. The next QEMU boot must unlock with nothing typed, and the escrowed
recovery key must open the disk.
"""

from __future__ import annotations

from pathlib import Path

import eventlogs
from ansible_fleet import Fleet, decrypt_escrow_record
from bootkit import PROMPT, ROOT_PASSPHRASE, BootKit, assert_unlocked_by_tpm, type_passphrase
from luks_image import opens_with
from qemu import Machine
from rootdisk import ROOT_UP

from sealer.measure.eventlog import parse
from sealer.pcrs import BANKS


def test_a_disk_provisioned_by_the_playbook_unlocks_at_its_next_boot(
    boot_kit: BootKit, tmp_path: Path
) -> None:
    disk = boot_kit.new_root(tmp_path / "guest")
    guest = Machine(
        tmp_path / "guest", boot_kit.owner.vars_template, [boot_kit.esp(keys=boot_kit.owner), disk]
    )
    first = guest.boot(answers=type_passphrase())
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    booted = eventlogs.extends(parse(first.event_log()), BANKS["sha256"])

    fleet = Fleet(tmp_path / "fleet")
    try:
        host = fleet.add_machine(
            "guest", pcrs="4,7", disk=(disk, ROOT_PASSPHRASE), tpm_state=guest.tpm_state,
            booted=booted,
        )
        fleet.write_inventory()
        run = fleet.run("provision.yml")
    finally:
        fleet.stop()  # QEMU's own swtpm needs the state directory next
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert run.stats["guest"]["changed"] >= 1
    assert ROOT_PASSPHRASE not in run.everything

    boot = guest.boot(stop_at=PROMPT)
    assert_unlocked_by_tpm(boot, first, PROMPT, "cryptroot")

    [record] = (fleet.collect_dir / "guest").glob(f"{host.machine_id}-*-keyslot*.json")
    assert opens_with(disk, decrypt_escrow_record(record, fleet.key))
