"""Opening the TPM: TCTI choice and the mapping of TSS errors to sealer errors."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import TPM2_RC, TSS2_RC
from tpm2_pytss.TCTI import PyTCTI
from tpm2_pytss.TCTILdr import TCTILdr

from sealer.errors import (
    AuthError,
    PolicyMismatchError,
    SealerError,
    TPMError,
    TPMMismatchError,
    TPMUnavailableError,
)
from sealer.tpm.lockout import LockoutState, lockout_error, pin_rejected_error, read_lockout

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


def _device_path(tcti: str) -> str | None:
    kind, _, conf = tcti.partition(":")
    if kind != "device":
        return None
    return conf or "/dev/tpm0"


def _timeout_seconds() -> float:
    try:
        seconds = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return seconds if seconds > 0 else DEFAULT_TIMEOUT


class BoundedTcti(PyTCTI):  # type: ignore[misc]  # tpm2_pytss has no type hints
    """A socket TCTI (swtpm, mssim) whose every exchange with the TPM has a deadline.

    swtpm serves one client connection at a time, and libtss2's swtpm and mssim modules wait
    for its answer without a limit: while another program holds the connection, or swtpm is
    stopped, sealer would hang, and a boot with it. Each call into the real TCTI runs in a
    worker thread that is given ``seconds``; one that overruns leaves the TCTI dead (later
    calls fail at once, so no ``finally`` block waits again) and sets ``stuck``.
    """

    def __init__(self, spec: str, seconds: float) -> None:
        super().__init__()
        self.spec = spec
        self.seconds = seconds
        self.stuck = False
        self._inner: TCTILdr | None = None

    def open(self) -> BoundedTcti:
        self._inner = self._bounded(lambda: TCTILdr.parse(self.spec))
        return self

    def _bounded(self, call: Callable[[], T]) -> T:
        if self.stuck:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR)
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
            raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR)
        if failure:
            raise failure[0]
        return outcome[0]

    def _opened(self) -> TCTILdr:
        if self._inner is None:  # ESAPI sends nothing before open(); a bug if it did
            raise TSS2_Exception(TSS2_RC.TCTI_RC_BAD_SEQUENCE)
        return self._inner

    def do_transmit(self, command: bytes) -> None:
        inner = self._opened()
        self._bounded(lambda: inner.transmit(command))

    def do_receive(self, timeout: int) -> bytes:
        inner = self._opened()
        answer = self._bounded(lambda: inner.receive(-1, -1))
        return bytes(answer)

    def close(self) -> None:
        # A TCTI stuck in a worker thread is left alone: finalizing it under that thread
        # would free what the thread still uses. The process's exit closes its socket.
        if not self.stuck and self._inner is not None:
            self._inner.close()

    def no_answer(self) -> TPMUnavailableError:
        return TPMUnavailableError(
            f"the TPM ({self.spec}) did not answer within {self.seconds:g} s",
            "another program may be holding it (swtpm serves one client at a time), or it is "
            "stopped; nothing was changed, try again",
        )


def _open(spec: str) -> tuple[ESAPI, BoundedTcti | None]:
    transport = None
    try:
        if spec.partition(":")[0] in SOCKET_TCTIS:
            transport = BoundedTcti(spec, _timeout_seconds())
            transport.open()
        return ESAPI(transport or spec), transport
    except TSS2_Exception as exc:
        if transport is not None and transport.stuck:
            raise transport.no_answer() from exc
        raise TPMUnavailableError(
            f"cannot reach the TPM through {spec!r} ({exc})",
            "check that the TPM (or swtpm) is running and that you are root",
        ) from exc


@contextmanager
def connect(tcti: str | None = None) -> Iterator[ESAPI]:
    """An ESAPI context on the chosen TPM, closed on exit."""
    spec = resolve_tcti(tcti)
    device = _device_path(spec)
    if device is not None and not os.path.exists(device):
        raise TPMUnavailableError(
            f"no TPM found: {device} does not exist",
            "enable the TPM in the firmware setup, or point SEALER_TCTI/--tcti at one",
        )
    ctx, transport = _open(spec)
    try:
        yield ctx
    except TSS2_Exception as exc:
        if transport is not None and transport.stuck:
            raise transport.no_answer() from exc
        cause = first_tss_error(exc)
        raise translate(cause, _lockout_after(cause, ctx)) from exc
    finally:
        ctx.close()
        if transport is not None:
            transport.close()


def first_tss_error(exc: TSS2_Exception) -> TSS2_Exception:
    """The TSS error that started a chain: after a lost connection, the flushes in
    ``finally`` blocks fail too, and the last of those errors would hide the cause."""
    first = exc
    context = exc.__context__
    while context is not None:
        if isinstance(context, TSS2_Exception):
            first = context
        context = context.__context__
    return first


def _lockout_after(exc: TSS2_Exception, ctx: ESAPI) -> LockoutState | None:
    """The DA state after a refused PIN, to say how many tries are left; None if unknown."""
    if exc.error not in (TPM2_RC.AUTH_FAIL, TPM2_RC.LOCKOUT):
        return None
    try:
        return read_lockout(ctx)
    except TSS2_Exception:
        return None


def translate(exc: TSS2_Exception, lockout: LockoutState | None = None) -> SealerError:
    """Turn a TSS return code into the error a person can act on."""
    error = exc.error
    if error == TPM2_RC.LOCKOUT:
        return lockout_error(lockout)
    if error == TPM2_RC.AUTH_FAIL:  # a DA-protected object: the failure counted
        return pin_rejected_error(lockout)
    if error == TPM2_RC.BAD_AUTH:  # a NODA object: nothing counted
        return AuthError("the TPM rejected the PIN", "check it and try again")
    if error in (TPM2_RC.POLICY_FAIL, TPM2_RC.PCR_CHANGED):
        return PolicyMismatchError(
            "the TPM refused to release the key: the boot state matches no approval",
            "run 'sealer status' to see which PCRs differ",
        )
    if error == TPM2_RC.POLICY:  # PolicyNV: the revocation field says no
        return PolicyMismatchError(
            "the TPM refused to release the key: this boot image's release was revoked",
            "boot a newer release, or unlock with the passphrase or recovery key",
        )
    if error in (TPM2_RC.INTEGRITY, TPM2_RC.HANDLE):
        return TPMMismatchError(
            "this TPM cannot load the sealed key: the volume was enrolled with another TPM",
            "unlock with the passphrase or recovery key, then enroll again on this machine",
        )
    if error in (TPM2_RC.OBJECT_MEMORY, TPM2_RC.SESSION_MEMORY):
        return TPMError(
            "the TPM is out of memory for objects or sessions",
            "another program leaked TPM handles; use /dev/tpmrm0 or restart the TPM service",
        )
    text = str(exc)
    if text.startswith("tcti:"):
        return TPMUnavailableError(
            f"lost the connection to the TPM ({text})",
            "check that the TPM (or swtpm) is still there; nothing was changed, try again",
        )
    return TPMError(f"the TPM reported an error: {text} (0x{exc.rc:x})")
