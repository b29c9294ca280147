"""The subprocess wrapper's "not installed" error names the package that brings the program."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealer.errors import SealerError
from sealer.host import proc


@pytest.fixture
def empty_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing can be found


@pytest.mark.usefixtures("empty_path")
@pytest.mark.parametrize(
    ("program", "package"),
    [
        ("cryptsetup", "cryptsetup-bin"),
        ("update-initramfs", "initramfs-tools"),
        ("dracut", "dracut"),
    ],
)
def test_the_hint_names_the_missing_programs_package(program: str, package: str) -> None:
    with pytest.raises(SealerError) as info:
        proc.run([program, "--version"])
    assert info.value.message == f"{program} is not installed"
    assert info.value.hint == f"install it (Debian: apt-get install {package}) and try again"


@pytest.mark.usefixtures("empty_path")
def test_an_unknown_program_gets_no_wrong_package_name() -> None:
    with pytest.raises(SealerError) as info:
        proc.run(["sealer-no-such-tool"])
    assert info.value.message == "sealer-no-such-tool is not installed"
    assert "cryptsetup" not in (info.value.hint or "")
