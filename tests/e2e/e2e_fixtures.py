"""Fixtures of the real-boot tests (a pytest plugin loaded by tests/conftest.py).

The building blocks live in bootkit.py. This is not a conftest.py of its own because two
conftest modules in folders without __init__.py collide, for pytest and mypy alike.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bootkit import (
    BootKit,
    DracutKit,
    Provisioned,
    enroll_on_host,
    make_boot_kit,
    make_dracut_kit,
    missing_boot_parts,
    type_passphrase,
)
from dracut_image import missing_dracut
from qemu import Machine


@pytest.fixture(scope="session")
def boot_kit(tmp_path_factory: pytest.TempPathFactory) -> BootKit:
    reason = missing_boot_parts()
    if reason is not None:
        pytest.skip(f"no real boot chain on this machine: {reason}")
    return make_boot_kit(tmp_path_factory.mktemp("boot"))


@pytest.fixture(scope="session")
def dracut_kit(boot_kit: BootKit, tmp_path_factory: pytest.TempPathFactory) -> DracutKit:
    reason = missing_dracut()
    if reason is not None:
        pytest.skip(f"no dracut initramfs on this machine: {reason}")
    return make_dracut_kit(boot_kit, tmp_path_factory.mktemp("dracut"))


@pytest.fixture(scope="module")
def provisioned(
    boot_kit: BootKit, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Provisioned]:
    directory = tmp_path_factory.mktemp("provisioned")
    disk = boot_kit.new_root(directory)
    machine = Machine(
        directory, boot_kit.owner.vars_template, [boot_kit.esp(keys=boot_kit.owner), disk]
    )
    first = machine.boot(answers=type_passphrase())
    assert "SEALER-E2E: root file system is up" in first.transcript, first.transcript[-3000:]
    enroll_on_host(machine, disk, first.pcrs(), directory / "state")
    yield Provisioned(directory, machine, disk, first)
