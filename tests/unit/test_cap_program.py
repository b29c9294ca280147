"""python -m sealer.boot.cap_or_poweroff on a machine with no TPM at all (the TPM-backed paths
are in tests/integration/test_boot_unlocker.py and the e2e boots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealer.boot import cap_or_poweroff as cap


@pytest.fixture
def no_tpm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("SEALER_TCTI", raising=False)
    monkeypatch.setattr(cap, "TPM_DEVICE", tmp_path / "tpmrm0")  # never appears
    monkeypatch.setattr(cap, "TPM_WAIT_SECONDS", 0.2)
    record = tmp_path / "cap-pcrs"
    monkeypatch.setattr(cap, "CAP_RECORD", record)
    return record


def test_no_tpm_and_no_release_means_nothing_to_cap(
    no_tpm: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A machine whose TPM is off in the firmware boots by passphrase, and may get its shell.
    assert cap.main([]) == 0
    assert (
        capsys.readouterr().err
        == f"sealer: no TPM ({cap.TPM_DEVICE} does not exist): nothing to cap\n"
    )


def test_a_release_record_is_what_makes_a_missing_tpm_fatal(no_tpm: Path) -> None:
    assert not cap._released(no_tpm)
    no_tpm.write_text("\n")
    assert not cap._released(no_tpm)  # empty: no unlock recorded anything
    no_tpm.write_text("15\n")
    assert cap._released(no_tpm)
