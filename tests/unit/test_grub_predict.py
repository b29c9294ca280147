"""Predicting a boot of Debian's shim + GRUB chain, checked against real captured boots.

The captures (swtpm-fixtures/eventlogs/debian-shim-grub-*, made by swtpm-fixtures/grubchain.py
in QEMU with Microsoft's keys, Debian's signed shim and GRUB and the real grub-mkconfig) hold
each boot's log, the PCRs the guest read, the grub.cfg and grubenv GRUB read and the digest of
every file. From boot 1's log and boot 2's files (a kernel update: a new version, a new
initrd, a new grub.cfg), the prediction must give boot 2's PCRs exactly; anything the model
cannot run must come out as unpredictable, never as a value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sealer.errors import MeasurementError
from sealer.measure.eventlog import EventLog, parse
from sealer.measure.grub import HostGrubFiles, predict_grub, read_grub_boot
from sealer.measure.grubscript import GrubRun, UnsupportedScript, parse_script
from sealer.measure.measurements import measurements_of, replay
from sealer.measure.predict import NextBoot, predict
from sealer.pcrs import BANKS, Bank

CAPTURED = Path(__file__).resolve().parents[2] / "swtpm-fixtures" / "eventlogs"
SHA256 = BANKS["sha256"]
HOST_CFG = Path("/boot/grub/grub.cfg")


def _load(name: str) -> tuple[EventLog, dict[str, Any]]:
    stem = CAPTURED / f"debian-shim-grub-{name}"
    log = parse(stem.with_suffix(".bin").read_bytes())
    return log, json.loads(stem.with_suffix(".json").read_text())


class RecordedFiles(HostGrubFiles):
    """A capture's /boot: the config texts it recorded and the digests of the big files."""

    def __init__(self, record: dict[str, Any], cfg: str | None = None, env: str | None = None):
        super().__init__("hd1", Path("/boot"))
        self.record = record
        self.texts = {
            "/grub/grub.cfg": record["boot_grub_cfg"] if cfg is None else cfg,
            "/grub/grubenv": record["grubenv"] if env is None else env,
        }

    def _key(self, path: str) -> str:
        return path[path.index(")") + 1 :]

    def exists(self, path: str) -> bool:
        return self._key(path) in self.texts or f"boot:{self._key(path)}" in self.record["files"]

    def read_text(self, path: str) -> str:
        return self.texts[self._key(path)]

    def digest(self, path: str, bank: Bank) -> bytes:
        if self._key(path) in self.texts:
            return bank.hash(self.texts[self._key(path)].encode())
        return bytes.fromhex(self.record["files"][f"boot:{self._key(path)}"]["sha256"])

    def image_digest(self, path: str, bank: Bank) -> bytes:
        entry = self.record["files"][f"boot:{self._key(path)}"]
        return bytes.fromhex(entry["authenticode_sha256"])


def _predicted_pcrs(log: EventLog, files: HostGrubFiles) -> dict[int, bytes]:
    measurements = measurements_of(log, SHA256)
    found = predict_grub(log, SHA256, measurements, HOST_CFG, files=files)
    gone = {n for numbers in found.replaced.values() for n in numbers}
    kept = [m for m in measurements if m.event not in gone]
    new = [m for pcr in (4, 8, 9) for m in found.measurements[pcr]]
    return replay(kept + new, SHA256, log.startup_locality)


def _pcrs(record: dict[str, Any], *pcrs: int) -> dict[int, bytes]:
    return {p: bytes.fromhex(record["sha256"][str(p)]) for p in pcrs}


@pytest.mark.parametrize("target", ["boot1", "boot2", "boot2-cfg-break"])
def test_boot1s_log_and_the_targets_files_give_the_targets_pcrs(target: str) -> None:
    log, _ = _load("boot1")
    _, record = _load(target)
    predicted = _predicted_pcrs(log, RecordedFiles(record))
    assert {p: predicted[p] for p in (4, 7, 8, 9)} == _pcrs(record, 4, 7, 8, 9)


def test_predict_after_a_kernel_update_on_a_real_boot_tree(tmp_path: Path) -> None:
    # The whole path 'sealer predict --grub-cfg' takes, on a /boot laid out as boot 2's: the
    # Debian-signed kernel GRUB started (this machine's, as the capture's), boot 2's grub.cfg
    # and grubenv, an initrd of our own.
    log, _ = _load("boot1")
    _, record = _load("boot2")
    signed = Path("/boot") / f"vmlinuz-{record['host_kernel']}"
    if not signed.is_file():
        pytest.skip(f"{signed} is not installed (scripts/setup.sh --boot-chain installs it)")
    boot = tmp_path / "boot"
    (boot / "grub").mkdir(parents=True)
    (boot / "grub" / "grub.cfg").write_text(record["boot_grub_cfg"])
    (boot / "grub" / "grubenv").write_text(record["grubenv"])
    for version in (record["host_kernel"], record["default_kernel_version"]):
        (boot / f"vmlinuz-{version}").write_bytes(signed.read_bytes())
    initrd = boot / f"initrd.img-{record['default_kernel_version']}"
    initrd.write_bytes(b"an initrd of our own")
    prediction = predict(log, SHA256, NextBoot(grub_cfg=boot / "grub" / "grub.cfg"))
    assert prediction.unpredictable == {}
    assert {p: prediction.value(p) for p in (4, 7, 8)} == _pcrs(record, 4, 7, 8)
    initrd_events = [m for m in prediction.measurements if m.description == initrd.name]
    assert [m.digest for m in initrd_events] == []  # GRUB names it by its path on /boot
    named = [m for m in prediction.measurements if m.description == f"/{initrd.name}"]
    assert [m.digest for m in named] == [SHA256.hash(b"an initrd of our own")]
    assert 8 in prediction.changed_pcrs() and 9 in prediction.changed_pcrs()


def test_an_entry_edited_at_the_menu_is_not_the_predicted_boot() -> None:
    # The attack: break=bottom typed into the default entry at GRUB's menu. The approved
    # (predicted) PCR 8 is that of the unedited entry, so the TPM refuses.
    log, _ = _load("boot1")
    _, edited = _load("boot2-menu-break")
    _, updated = _load("boot2")
    predicted = _predicted_pcrs(log, RecordedFiles(updated))
    assert predicted[8] != _pcrs(edited, 8)[8]
    assert predicted[8] == _pcrs(updated, 8)[8]


def test_the_log_names_grubs_devices_and_config() -> None:
    log, record = _load("boot1")
    boot = read_grub_boot(log)
    assert boot.config == "(hd1)/grub/grub.cfg"
    assert boot.prefix == "(hd1)/grub"
    assert boot.devices == {record["boot_fs_uuid"]: "hd1"}
    assert len(boot.kernel_events) == 2  # shim's load and the firmware's


def _unpredictable_with(cfg: str, env: str | None = None) -> str:
    log, _ = _load("boot1")
    _, record = _load("boot2")
    with pytest.raises(UnsupportedScript) as info:
        _predicted_pcrs(log, RecordedFiles(record, cfg=cfg, env=env))
    return info.value.message


def test_a_changed_setting_is_unpredictable_and_names_the_command() -> None:
    _, record = _load("boot2")
    cfg = record["boot_grub_cfg"].replace("set timeout=5", "set timeout=10")
    assert "set timeout=10" in _unpredictable_with(cfg)


def test_a_construct_the_model_does_not_run_is_unpredictable() -> None:
    _, record = _load("boot2")
    cfg = record["boot_grub_cfg"].replace(
        "terminal_output gfxterm", "for x in a b; do echo $x; done\nterminal_output gfxterm"
    )
    assert "'for'" in _unpredictable_with(cfg)


def test_a_one_time_entry_in_grubenv_is_unpredictable() -> None:
    _, record = _load("boot2")
    env = record["grubenv"].replace("#" * 20, "next_entry=1\n" + "#" * 7, 1)
    assert "save_env" in _unpredictable_with(record["boot_grub_cfg"], env)


def test_a_default_entry_grub_cannot_resolve_is_unpredictable() -> None:
    _, record = _load("boot2")
    cfg = record["boot_grub_cfg"].replace('set default="0"', 'set default="gnulinux-advanced>x"')
    assert "cannot resolve" in _unpredictable_with(cfg)


def test_another_grub_hashing_is_refused() -> None:
    log, record = _load("boot1")
    events = list(log.events)
    i = next(i for i, e in enumerate(events) if e.data.startswith(b"grub_cmd: load_env"))
    events[i] = type(events[i])(
        events[i].number, 8, events[i].type, {"sha256": bytes(32)}, events[i].data
    )
    tampered = EventLog(log.algorithms, tuple(events), log.startup_locality)
    with pytest.raises(UnsupportedScript, match="does not know"):
        _predicted_pcrs(tampered, RecordedFiles(record))


def test_predict_without_the_config_reports_grubs_pcrs_unpredictable(tmp_path: Path) -> None:
    log, _ = _load("boot1")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"MZ")
    prediction = predict(log, SHA256, NextBoot(grub_cfg=tmp_path / "grub" / "grub.cfg"))
    assert {8, 9} <= set(prediction.unpredictable)
    assert "grub.cfg" in prediction.unpredictable[8]


def test_a_grub_cfg_alone_says_nothing_on_a_boot_without_grub() -> None:
    uki_log = parse((CAPTURED / "ovmf-secureboot-uki.bin").read_bytes())
    with pytest.raises(MeasurementError, match="did not go through GRUB"):
        predict(uki_log, SHA256, NextBoot(grub_cfg=HOST_CFG))


# --- the script model on its own ---------------------------------------------------------


class _NoFiles(HostGrubFiles):
    def __init__(self) -> None:
        super().__init__("hd1", Path("/nonexistent"))

    def exists(self, path: str) -> bool:
        return False


def _commands(script: str, **env: str) -> list[str]:
    run = GrubRun(files=_NoFiles(), env={"root": "hd1", **env}, devices={})
    run.run(parse_script(script))
    return [m.description for m in run.measured]


def test_words_are_expanded_unquoted_and_joined_by_one_space() -> None:
    script = "set a='x y'\n[ x\"${b}\" = xy ]\necho\t'Loading  it' $a\n[ \"${none}\" ]\n"
    assert _commands(script, b="y") == [
        "grub_cmd: set a=x y",
        "grub_cmd: [ xy = xy ]",
        "grub_cmd: echo Loading  it x y",
        "grub_cmd: [  ]",
    ]


def test_an_unquoted_empty_variable_is_no_word_and_a_function_runs_its_body() -> None:
    script = "function f {\n  insmod $1\n}\nmenuentry 'T' $opt 'id' {\n\tf\n}\nf gzio\n"
    commands = _commands(script, opt="")
    assert commands == [
        "grub_cmd: menuentry T id {\n\tf\n}",
        "grub_cmd: f gzio",
        "grub_cmd: insmod gzio",
    ]


def test_if_elif_else_follow_the_tests() -> None:
    script = "if [ a = b ]; then echo 1; elif [ -z '' ]; then echo 2; else echo 3; fi\n"
    assert _commands(script) == ["grub_cmd: [ a = b ]", "grub_cmd: [ -z  ]", "grub_cmd: echo 2"]
