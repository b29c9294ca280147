"""A fleet of machines simulated on this host, for the Ansible collection's tests and bench.

Each machine is an inventory host with ``connection: local`` and variables of its own: its
own swtpm (its own state directory and ports), its own LUKS2 image(s), sealer state
directory, machine id and boot root (a directory tree that ``sealer boot enable --root``
changes). A broken machine's TCTI points at loopback ports where no swtpm listens. The
passphrases are in Ansible Vault files (host_vars/NAME.yml), as a fleet keeps them.

Playbooks run with the real ``ansible-playbook`` of the virtualenv, nothing home-made.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from escrow_certs import org_pair
from luks_image import make_luks_image
from swtpm import Swtpm

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / "ansible"
PLAYBOOKS = COLLECTIONS / "ansible_collections" / "sealer" / "tpm" / "playbooks"
VENV_BIN = Path(sys.executable).parent
SEALER = VENV_BIN / "sealer"
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
CALLBACKS = Path(__file__).resolve().parent / "ansible_callbacks"
VAULT_PASSWORD = "fleet-test-vault-password"
CRYPTTAB_NAME = "cryptdata"

_RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failures>\d+)\s+skipped=(?P<skipped>\d+)"
    r"\s+rescued=(?P<rescued>\d+)\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)


@dataclass
class Volume:
    device: Path
    passphrase: str
    pcrs: str = "7"


@dataclass
class Machine:
    name: str
    directory: Path
    volumes: list[Volume]
    machine_id: str
    tpm: Swtpm | None = None  # None: broken, no TPM answers at ``tcti``
    dead_tcti: str = ""
    extra_vars: dict[str, Any] = field(default_factory=dict)
    # Holds the broken machine's port: bound, never listening, so connecting is refused and
    # no other test's swtpm can start there meanwhile.
    port_holder: socket.socket | None = None

    @property
    def tcti(self) -> str:
        return self.tpm.tcti if self.tpm is not None else self.dead_tcti

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def escrow_dir(self) -> Path:
        return self.state_dir / "escrow"

    @property
    def boot_root(self) -> Path:
        return self.directory / "root"

    def host_vars(self, cert: Path) -> dict[str, Any]:
        """The machine's inventory variables, without its secrets (those are in the vault)."""
        return {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "sealer_install": False,
            "sealer_bin": str(SEALER),
            "sealer_tcti": self.tcti,
            "sealer_state_dir": str(self.state_dir),
            "sealer_machine_id": self.machine_id,
            "sealer_escrow_cert": str(cert),
            "sealer_escrow_cert_dest": str(self.directory / "etc" / "escrow-cert.pem"),
            "sealer_boot_root": str(self.boot_root),
            **self.extra_vars,
        }

    def secret_vars(self) -> dict[str, Any]:
        return {
            "sealer_volumes": [
                {"device": str(v.device), "passphrase": v.passphrase, "pcrs": v.pcrs}
                for v in self.volumes
            ]
        }


@dataclass
class PlaybookRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    log: str  # ANSIBLE_LOG_PATH
    record: str  # what callbacks got, as JSON lines (ansible_callbacks/fleet_record.py)
    seconds: float

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """The play recap: per host ok, changed, unreachable, failures, skipped, ..."""
        return {
            m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
            for m in _RECAP.finditer(self.stdout)
        }

    def _events(self, task_name: str) -> list[dict[str, Any]]:
        events = [json.loads(line) for line in self.record.splitlines() if line.strip()]
        return [e for e in events if str(e["task"]).split(" : ")[-1] == task_name]

    def results(self, task_name: str) -> dict[str, dict[str, Any]]:
        """Per host, the result of the task named ``task_name`` (after its loop, if any)."""
        return {
            e["host"]: e["result"]
            for e in self._events(task_name)
            if not str(e["event"]).startswith("item_")
        }

    def items(self, task_name: str) -> dict[str, list[dict[str, Any]]]:
        """Per host, the result of each loop item of the task named ``task_name``."""
        found: dict[str, list[dict[str, Any]]] = {}
        for event in self._events(task_name):
            if str(event["event"]).startswith("item_"):
                found.setdefault(event["host"], []).append(event["result"])
        return found

    @property
    def everything(self) -> str:
        return self.stdout + self.stderr + self.log + self.record


class Fleet:
    """Machines, their inventory and vault, and ansible-playbook runs against them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.machines: list[Machine] = []
        org = org_pair(directory / "org")  # RSA 2048, keyEncipherment
        self.cert, self.key = org.cert, org.key
        self.collect_dir = directory / "collected"
        self.report_dir = directory / "report"
        self.inventory = directory / "inventory" / "hosts.yml"
        self.vault_password_file = directory / "vault-password"
        self.vault_password_file.write_text(VAULT_PASSWORD + "\n")
        self.vault_password_file.chmod(0o600)
        self._runs = 0
        # Only what this file and env() say: never an ansible.cfg of the user or the host.
        self.config = directory / "ansible.cfg"
        self.config.write_text("[defaults]\n")

    def add_machine(
        self,
        name: str,
        *,
        volumes: int = 1,
        broken: bool = False,
        pcrs: str = "7",
        booted: Sequence[tuple[int, bytes]] = (),
        disk: tuple[Path, str] | None = None,
        tpm_state: Path | None = None,
    ) -> Machine:
        """A machine with a fresh TPM (or none, when ``broken``) and fresh LUKS2 images.

        ``booted``: the (PCR, sha256 digest) extends of the boot it is in, e.g. a captured
        firmware boot (simboot.captured_boot()); none: every PCR is zero. ``disk`` (an
        image and its passphrase) and ``tpm_state`` (a swtpm state directory) adopt an
        existing machine's instead, e.g. a QEMU guest's.
        """
        directory = self.directory / "machines" / name
        directory.mkdir(parents=True)
        made = []
        if disk is not None:
            made.append(Volume(disk[0], disk[1], pcrs))
        for index in range(volumes if disk is None else 0):
            passphrase = f"{name}-passphrase-{secrets.token_hex(8)}"
            image = make_luks_image(directory / f"volume{index}.img", passphrase.encode())
            made.append(Volume(image, passphrase, pcrs))
        machine = Machine(name, directory, made, machine_id=secrets.token_hex(16))
        if broken:
            holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            holder.bind(("127.0.0.1", 0))
            machine.port_holder = holder
            machine.dead_tcti = f"swtpm:host=127.0.0.1,port={holder.getsockname()[1]}"
        else:
            machine.tpm = Swtpm(tpm_state or directory / "tpm").start()
            if booted:
                import eventlogs

                from sealer.pcrs import BANKS

                eventlogs.extend_into(machine.tpm.tcti, booted, BANKS["sha256"])
        crypttab = "".join(
            f"{CRYPTTAB_NAME}{i} {v.device} none luks,discard\n" for i, v in enumerate(made)
        )
        (machine.boot_root / "etc").mkdir(parents=True)
        (machine.boot_root / "etc" / "crypttab").write_text(crypttab)
        # A Debian root with cryptsetup-initramfs, as 'sealer boot enable' expects.
        hooks = machine.boot_root / "usr" / "share" / "initramfs-tools" / "hooks"
        hooks.mkdir(parents=True)
        (hooks / "cryptroot").write_text("#!/bin/sh\n# cryptsetup-initramfs's hook\n")
        self.machines.append(machine)
        return machine

    def write_inventory(self, **group_vars: Any) -> Path:
        from ansible.constants import DEFAULT_VAULT_ID_MATCH
        from ansible.parsing.vault import VaultLib, VaultSecret

        vault = VaultLib([(DEFAULT_VAULT_ID_MATCH, VaultSecret(VAULT_PASSWORD.encode()))])
        host_vars_dir = self.inventory.parent / "host_vars"
        host_vars_dir.mkdir(parents=True, exist_ok=True)
        hosts = {}
        for machine in self.machines:
            hosts[machine.name] = machine.host_vars(self.cert)
            plain = json.dumps(machine.secret_vars()).encode()  # JSON is YAML
            (host_vars_dir / f"{machine.name}.yml").write_bytes(vault.encrypt(plain))
        inventory = {
            "all": {
                "hosts": hosts,
                "vars": {
                    "sealer_escrow_collect_dir": str(self.collect_dir),
                    "sealer_report_dir": str(self.report_dir),
                    **group_vars,
                },
            }
        }
        self.inventory.write_text(json.dumps(inventory, indent=2))
        return self.inventory

    def env(self, log: Path, record: Path) -> dict[str, str]:
        home = self.directory / "ansible-home"
        env = dict(os.environ)
        env.update(
            ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
            ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
            ANSIBLE_HOME=str(home),
            ANSIBLE_LOCAL_TEMP=str(home / "tmp"),
            ANSIBLE_REMOTE_TMP=str(home / "remote-tmp"),
            ANSIBLE_LOG_PATH=str(log),
            ANSIBLE_STDOUT_CALLBACK="default",
            ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS),
            ANSIBLE_CALLBACKS_ENABLED="fleet_record",
            SEALER_FLEET_RECORD=str(record),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            ANSIBLE_RETRY_FILES_ENABLED="false",
            ANSIBLE_PIPELINING="true",
            ANSIBLE_FORKS=str(max(3, len(self.machines))),
            ANSIBLE_VAULT_PASSWORD_FILE=str(self.vault_password_file),
            ANSIBLE_CONFIG=str(self.config),
            ANSIBLE_DEPRECATION_WARNINGS="false",
            PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            LC_ALL="C.UTF-8",  # ansible-core refuses any locale that is not UTF-8
        )
        env.pop("SEALER_TCTI", None)
        return env

    def run(
        self,
        playbook: str,
        *options: str,
        timeout: float = 300,
    ) -> PlaybookRun:
        """Run ``ansible-playbook`` with a playbook of the collection against the fleet."""
        self._runs += 1
        log = self.directory / f"ansible-{self._runs}.log"
        record = self.directory / f"ansible-{self._runs}.jsonl"
        argv = [
            str(ANSIBLE_PLAYBOOK), "-i", str(self.inventory), str(PLAYBOOKS / playbook),
            *options,
        ]
        start = time.monotonic()
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=self.env(log, record), timeout=timeout
        )
        seconds = time.monotonic() - start
        logged, recorded = (p.read_text() if p.exists() else "" for p in (log, record))
        return PlaybookRun(
            argv, proc.returncode, proc.stdout, proc.stderr, logged, recorded, seconds
        )

    def stop(self) -> None:
        for machine in self.machines:
            if machine.tpm is not None:
                machine.tpm.stop()
            if machine.port_holder is not None:
                machine.port_holder.close()


def decrypt_escrow_record(record: Path, org_key: Path) -> bytes:
    """The recovery key in an escrow record, as the help desk gets it: openssl cms."""
    doc = json.loads(record.read_text())
    proc = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "PEM", "-inkey", str(org_key)],
        input=str(doc["cms"]).encode(),
        capture_output=True,
        check=True,
    )
    return proc.stdout
