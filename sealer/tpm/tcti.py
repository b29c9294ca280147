"""Which TPM to talk to (the TCTI string), and a deadline for TPMs behind a socket.

Pure: shared by tpm2-pytss's ESAPI (sealer.tpm.connection) and the boot path's bare binding
(sealer.tpm.esys).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

from sealer.errors import TPMUnavailableError

DEFAULT_TCTI = "device:/dev/tpmrm0"
TCTI_ENV = "SEALER_TCTI"
# TCTIs that reach a TPM simulator over a socket, whose libtss2 modules wait for an answer
# without any limit (the kernel bounds every command sent to /dev/tpm*).
SOCKET_TCTIS = ("swtpm", "mssim")
TIMEOUT_ENV = "SEALER_TPM_TIMEOUT"
# Seconds one exchange with a socket TPM may take; swtpm answers in milliseconds, and its
# slowest command (an RSA CreatePrimary) in a few seconds.
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


def resolve_tcti(tcti: str | None) -> str:
    """The TCTI to use: the one given, else $SEALER_TCTI, else the kernel's resource manager."""
    return tcti or os.environ.get(TCTI_ENV) or DEFAULT_TCTI


def check_device(spec: str) -> None:
    """TPMUnavailableError when ``spec`` names a TPM device node that does not exist."""
    kind, _, conf = spec.partition(":")
    if kind != "device":
        return
    device = conf or "/dev/tpm0"
    if not os.path.exists(device):
        raise TPMUnavailableError(
            f"no TPM found: {device} does not exist",
            "enable the TPM in the firmware setup, or point SEALER_TCTI/--tcti at one",
        )


def deadline_of(spec: str) -> float | None:
    """Seconds each exchange with the TPM ``spec`` may take; None: the kernel bounds them."""
    if spec.partition(":")[0] not in SOCKET_TCTIS:
        return None
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return seconds if seconds > 0 else DEFAULT_TIMEOUT


class Stuck(Exception):
    """A call overran its deadline; the TPM connection it used is dead."""


class Deadline:
    """Runs calls into a socket TCTI, each given ``seconds``.

    swtpm serves one client connection at a time, and libtss2's swtpm and mssim modules wait
    for its answer without a limit: while another program holds the connection, or swtpm is
    stopped, sealer would hang, and a boot with it. Each call runs in a worker thread; one that
    overruns leaves the connection dead (later calls fail at once, so no ``finally`` block
    waits again) and sets ``stuck``.
    """

    def __init__(self, spec: str, seconds: float) -> None:
        self.spec = spec
        self.seconds = seconds
        self.stuck = False

    def run(self, call: Callable[[], T]) -> T:
        if self.stuck:
            raise Stuck(self.spec)
        outcome: list[T] = []
        failure: list[BaseException] = []

        def work() -> None:
            try:
                outcome.append(call())
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)

        # A daemon thread: one stuck in the TCTI must not keep the process from exiting.
        worker = threading.Thread(target=work, name="sealer-tcti", daemon=True)
        worker.start()
        worker.join(self.seconds)
        if worker.is_alive():
            self.stuck = True
            raise Stuck(self.spec)
        if failure:
            raise failure[0]
        return outcome[0]

    def no_answer(self) -> TPMUnavailableError:
        return TPMUnavailableError(
            f"the TPM ({self.spec}) did not answer within {self.seconds:g} s",
            "another program may be holding it (swtpm serves one client at a time), or it is "
            "stopped; nothing was changed, try again",
        )
