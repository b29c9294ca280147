"""Opening the TPM: TCTI choice and the mapping of TSS errors to sealer errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import TSS2_RC
from tpm2_pytss.TCTI import PyTCTI
from tpm2_pytss.TCTILdr import TCTILdr

from sealer.errors import SealerError, TPMUnavailableError
from sealer.tpm import rc
from sealer.tpm.lockout import LockoutState, read_lockout
from sealer.tpm.tcti import Deadline, Stuck, check_device, deadline_of, resolve_tcti

T = TypeVar("T")


class BoundedTcti(PyTCTI):  # type: ignore[misc]  # tpm2_pytss has no type hints
    """A socket TCTI (swtpm, mssim) whose every exchange with the TPM has a deadline
    (sealer.tpm.tcti.Deadline says why)."""

    def __init__(self, spec: str, seconds: float) -> None:
        super().__init__()
        self.deadline = Deadline(spec, seconds)
        self._inner: TCTILdr | None = None

    @property
    def stuck(self) -> bool:
        return self.deadline.stuck

    def open(self) -> BoundedTcti:
        self._inner = self._bounded(lambda: TCTILdr.parse(self.deadline.spec))
        return self

    def _bounded(self, call: Callable[[], T]) -> T:
        try:
            return self.deadline.run(call)
        except Stuck:
            raise TSS2_Exception(TSS2_RC.TCTI_RC_IO_ERROR) from None

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
        return self.deadline.no_answer()


def _open(spec: str) -> tuple[ESAPI, BoundedTcti | None]:
    transport = None
    try:
        seconds = deadline_of(spec)
        if seconds is not None:
            transport = BoundedTcti(spec, seconds)
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
    check_device(spec)
    ctx, transport = _open(spec)
    try:
        yield ctx
    except TSS2_Exception as exc:
        if transport is not None and transport.stuck:
            raise transport.no_answer() from exc
        cause = rc.first_cause(exc, TSS2_Exception)
        raise translate(cause, _lockout_after(cause, ctx)) from exc
    finally:
        ctx.close()
        if transport is not None:
            transport.close()


def _lockout_after(exc: TSS2_Exception, ctx: ESAPI) -> LockoutState | None:
    """The DA state after a refused PIN, to say how many tries are left; None if unknown."""
    if not rc.is_pin_failure(int(exc.rc)):
        return None
    try:
        return read_lockout(ctx)
    except TSS2_Exception:
        return None


def translate(exc: TSS2_Exception, lockout: LockoutState | None = None) -> SealerError:
    """Turn a TSS error into the error a person can act on (sealer.tpm.rc)."""
    return rc.translate(int(exc.rc), str(exc), lockout)
