"""Secure Boot test keys and OVMF variable stores enrolled with them.

A set of keys is one "owner" of a machine: PK, KEK and db certificates made by openssl, and
an OVMF variable store with Secure Boot on and those keys enrolled (virt-fw-vars, from the
virt-firmware package). Two sets model "Secure Boot keys changed" in the tampering tests.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_TEMPLATE = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The owner GUID recorded with each enrolled certificate; any fixed GUID will do.
OWNER_GUID = "6f0a1b52-5ea1-4c1e-9a21-5ea1e25ea1e2"


@dataclass(frozen=True)
class SecureBootKeys:
    directory: Path

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    @property
    def vars_template(self) -> Path:
        """OVMF variables with these keys enrolled and Secure Boot on; copy before booting."""
        return self.directory / "OVMF_VARS.fd"


def virt_fw_vars() -> str:
    """virt-fw-vars from the same virtualenv as the running Python, else from PATH."""
    beside = Path(sys.executable).parent / "virt-fw-vars"
    found = str(beside) if beside.exists() else shutil.which("virt-fw-vars")
    if found is None:
        raise FileNotFoundError("virt-fw-vars (pip install virt-firmware)")
    return found


def make_keys(directory: Path, owner: str) -> SecureBootKeys:
    """PK, KEK and db key pairs (RSA 2048, as UEFI firmware requires) and the enrolled vars."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = SecureBootKeys(directory)
    for name in ("PK", "KEK", "db"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                "-days", "3650", "-subj", f"/CN={owner} {name}/",
                "-keyout", str(keys.key(name)), "-out", str(keys.cert(name)),
            ],
            check=True, capture_output=True,
        )
    subprocess.run(
        [
            virt_fw_vars(), "--input", str(OVMF_VARS_TEMPLATE),
            "--output", str(keys.vars_template),
            "--set-pk", OWNER_GUID, str(keys.cert("PK")),
            "--add-kek", OWNER_GUID, str(keys.cert("KEK")),
            "--add-db", OWNER_GUID, str(keys.cert("db")),
            "--secure-boot", "--no-microsoft",
        ],
        check=True, capture_output=True,
    )
    return keys


def sign(image: Path, keys: SecureBootKeys, output: Path) -> Path:
    """Sign a PE image with the db key, so that the firmware with these keys runs it."""
    subprocess.run(
        [
            "sbsign", "--key", str(keys.key("db")), "--cert", str(keys.cert("db")),
            "--output", str(output), str(image),
        ],
        check=True, capture_output=True,
    )
    return output
