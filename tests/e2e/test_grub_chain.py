"""Debian's own boot chain: Microsoft-keyed OVMF -> signed shim -> signed GRUB -> Debian's
signed kernel, with /boot/grub/grub.cfg from the real grub-mkconfig (swtpm-fixtures/
grubchain.py), a LUKS2 root and initramfs-tools with sealer's hook.

The first boot asks for the passphrase (nothing enrolled yet); what its event log holds is
what sealer's GRUB support reads: PCR 4 shim, GRUB and the kernel twice; PCR 7 shim's
``SbatLevel`` and ``MokListRT`` after the db authority that verified shim; PCR 8 every GRUB
command and the kernel command line; PCR 9 every file GRUB read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from grubchain import (
    INITRAMFS_SHELL,
    PASSPHRASE,
    PROMPT,
    GrubChainMachine,
    make_grub_chain_machine,
    menu_edit_answers,
    missing_grub_chain_parts,
)
from qemu import Answer, Boot

from sealer.boot.pcrcap import capped_value
from sealer.measure.eventlog import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_IPL,
    EV_SEPARATOR,
    Event,
    EventLog,
    parse,
    variable_data,
)
from sealer.measure.pe import authenticode_digest
from sealer.pcrs import BANKS

ROOT_UP = "SEALER-E2E: root file system is up"
SHA256 = BANKS["sha256"]


@pytest.fixture(scope="module")
def grub_chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GrubChainMachine, Boot]]:
    reason = missing_grub_chain_parts()
    if reason is not None:
        # The README's test command installs every part: a missing one is a broken setup.
        pytest.fail(f"no Debian shim + GRUB chain on this machine: {reason}")
    chain = make_grub_chain_machine(tmp_path_factory.mktemp("grubchain"))
    first = chain.boot("first")
    assert ROOT_UP in first.transcript, first.transcript[-3000:]
    yield chain, first


def _log(boot: Boot) -> EventLog:
    return parse(boot.event_log())


def _strings(log: EventLog, pcr: int) -> list[str]:
    """The text of GRUB's EV_IPL events in ``pcr``, without the terminating NUL."""
    return [
        e.data.removesuffix(b"\0").decode()
        for e in log.events
        if e.pcr == pcr and e.type == EV_IPL
    ]


def _authenticode(path: Path) -> bytes:
    return authenticode_digest(path.read_bytes(), SHA256)


def test_first_boot_asks_for_the_passphrase(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    _, first = grub_chain
    assert PROMPT in first.transcript
    assert "has no sealer TPM enrollment" in first.transcript
    assert first.pcrs()[15] == capped_value()


def test_the_log_replays_to_the_firmware_pcrs(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    _, first = grub_chain
    live = {pcr: value for pcr, value in first.pcrs().items() if pcr <= 9}
    assert _log(first).mismatches(SHA256, live) == []


def test_pcr4_holds_shim_grub_and_the_kernel_twice(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    chain, first = grub_chain
    images = [
        e for e in _log(first).events
        if e.pcr == 4 and e.type == EV_EFI_BOOT_SERVICES_APPLICATION
    ]  # fmt: skip
    kernel = _authenticode(chain.tree / f"vmlinuz-{chain.version}")
    assert [e.digests["sha256"] for e in images] == [
        _authenticode(chain.loaders.shim),
        _authenticode(chain.loaders.grub),
        kernel,
        kernel,
    ]
    assert "BOOTX64.EFI" in images[0].description
    assert "grubx64.efi" in images[1].description
    assert " at " not in images[2].description  # the kernel's events name no device path


def test_pcr7_holds_shims_events_after_the_db_authority(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    _, first = grub_chain
    events = [e for e in _log(first).events if e.pcr == 7]
    names = [
        "separator" if e.type == EV_SEPARATOR else (variable_data(e) or ("?", b""))[0]
        for e in events
    ]
    assert names == [
        "SecureBoot", "PK", "KEK", "db", "dbx", "separator", "db", "SbatLevel", "MokListRT",
    ]  # fmt: skip
    authorities = [e for e in events if e.type == EV_EFI_VARIABLE_AUTHORITY]
    assert len(authorities) == 3


def _grub_event_digest_is_its_text(event: Event) -> bool:
    """GRUB hashes the command or command line without its ``grub_cmd: `` (or
    ``kernel_cmdline: ``) prefix and without the NUL the event's text ends with."""
    text = event.data.removesuffix(b"\0")
    _, _, measured = text.partition(b": ")
    return hashlib.sha256(measured).digest() == event.digests["sha256"]


def test_pcr8_holds_every_grub_command_and_the_kernel_command_line(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    chain, first = grub_chain
    log = _log(first)
    pcr8 = [e for e in log.events if e.pcr == 8]
    assert all(e.type == EV_IPL and e.data.endswith(b"\0") for e in pcr8)
    assert all(_grub_event_digest_is_its_text(e) for e in pcr8)
    strings = _strings(log, 8)
    kernel = f"/vmlinuz-{chain.version}"
    assert "grub_cmd: source (hd0)/EFI/debian/grub.cfg" in strings
    assert "grub_cmd: load_env" in strings
    assert "grub_cmd: setparams Debian GNU/Linux" in strings
    # The whole default entry is one command (its definition), then each command it runs.
    entry = next(s for s in strings if s.startswith("grub_cmd: menuentry Debian GNU/Linux "))
    assert f"\tlinux\t{kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet\n" in entry
    linux = f"grub_cmd: linux {kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet"
    assert linux in strings
    cmdline = f"kernel_cmdline: {kernel} root=/dev/mapper/cryptroot ro {chain.cmdline} quiet"
    assert strings.index(cmdline) > strings.index(linux)
    assert strings[-1] == f"grub_cmd: initrd /initrd.img-{chain.version}"
    assert f"SEALER-E2E: cmdline BOOT_IMAGE={kernel} " in first.transcript


def test_pcr9_holds_every_file_grub_read(grub_chain: tuple[GrubChainMachine, Boot]) -> None:
    chain, first = grub_chain
    log = _log(first)
    read = [
        (e.data.removesuffix(b"\0").decode(), e.digests["sha256"])
        for e in log.events
        if e.pcr == 9
    ]

    def sha256(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    def on_boot(name: str) -> bytes:
        return sha256((chain.tree / name).read_bytes())

    kernel, initrd = f"vmlinuz-{chain.version}", f"initrd.img-{chain.version}"
    assert read == [
        ("(hd0)/EFI/debian/grub.cfg", sha256(chain.esp_cfg.encode())),
        ("(hd1)/grub/grub.cfg", on_boot("grub/grub.cfg")),
        ("(hd1)/grub/grubenv", on_boot("grub/grubenv")),  # [ -s $prefix/grubenv ] opens it
        ("(hd1)/grub/grubenv", on_boot("grub/grubenv")),  # load_env
        (f"/{kernel}", on_boot(kernel)),
        (f"/{initrd}", on_boot(initrd)),
    ]


def test_an_entry_edited_at_the_menu_changes_only_pcr8(
    grub_chain: tuple[GrubChainMachine, Boot],
) -> None:
    chain, first = grub_chain
    boot = chain.boot(
        "menu-edit",
        answers=[
            *menu_edit_answers(chain.grub_cfg, "break=bottom"),
            Answer(PROMPT, PASSPHRASE + "\n"),
            Answer(INITRAMFS_SHELL, "exit\n"),  # sealer's panic hook capped PCR 15 first
        ],
    )
    assert ROOT_UP in boot.transcript, boot.transcript[-3000:]
    assert boot.lines_with("SEALER-E2E: cmdline ")[0].endswith(" break=bottom")
    before, after = first.pcrs(), boot.pcrs()
    assert {pcr for pcr in range(10) if before[pcr] != after[pcr]} == {8}
    changed = [
        a for b, a in zip(_strings(_log(first), 8), _strings(_log(boot), 8), strict=True)
        if b != a
    ]  # fmt: skip
    assert [s.split(" ", 2)[1] for s in changed] == ["linux", f"/vmlinuz-{chain.version}"]
