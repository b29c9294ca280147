"""ESAPI through tpm2-pytss's compiled binding alone: the TPM calls of every boot.

tpm2-pytss's Python layer imports ``cryptography`` and most of itself on first use: about
100 ms of an unlock on the host, seconds under emulation, and 14 MB of the initramfs, for
types the unlock never needs. Its compiled module (``tpm2_pytss._libtpm2_pytss``, cffi over
libtss2-esys, -mu, -rc and -tctildr) is the same ESAPI; here it is loaded without running the
package's ``__init__``. Structures cross as the TPM's own marshalled bytes (TPM 2.0 Part 2),
which libtss2-mu turns into C structures: there is no Python mirror of the TPM's types. The
salted sessions and parameter encryption are ESAPI's, in C, as everywhere else in sealer.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sealer.errors import TPMUnavailableError
from sealer.tpm.tcti import Deadline, Stuck

_MODULE = "tpm2_pytss._libtpm2_pytss"

# ESAPI's handles for what is not a TPM object (tss2_esys.h), and TPM 2.0 Part 2 constants.
TR_NONE = 0xFFF
TR_PASSWORD = 0x0FF
TR_OWNER = 0x101
SE_POLICY = 0x01
SE_TRIAL = 0x03
ALG_SHA256 = 0x000B
SESSION_CONTINUE = 0x01
SESSION_ENCRYPT = 0x40
CAP_PCRS = 0x00000005
# IESYS_RESOURCE's type tags in an ESAPI-serialized handle (tpm2-tss, esys_types.h).
RESOURCE_KEY = 1
RESOURCE_NV = 2
# TPMT_SYM_DEF: AES (0x0006), 128 bits, CFB (0x0043): the sessions' parameter encryption.
_AES128_CFB = bytes.fromhex("000600800043")
# Large enough for any TPM structure: a TPM's whole command or response fits in 4 kB.
_MAX_MARSHALLED = 4096


def tpm2b(data: bytes) -> bytes:
    """A TPM2B_*: the data after its 16-bit size."""
    return len(data).to_bytes(2, "big") + data


def binding() -> ModuleType:
    """The compiled ESAPI binding, loaded once, without tpm2-pytss's Python layer.

    When the whole tpm2-pytss is already imported (the sealer command on a running system), its
    module is used: one copy of the library state per process.
    """
    loaded = sys.modules.get(_MODULE)
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("tpm2_pytss")  # finds the folder; runs nothing
    folders = [] if spec is None else list(spec.submodule_search_locations or [])
    for folder in folders:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"_libtpm2_pytss{suffix}"
            if path.exists():
                return _load_extension(path)
    raise TPMUnavailableError(
        "tpm2-pytss's compiled module (_libtpm2_pytss) is not installed",
        "reinstall sealer; in an initramfs, run 'sealer boot enable' again",
    )


def _load_extension(path: Path) -> ModuleType:
    loader = importlib.machinery.ExtensionFileLoader(_MODULE, str(path))
    spec = importlib.util.spec_from_loader(_MODULE, loader, origin=str(path))
    if spec is None:
        raise TPMUnavailableError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    # Under its own name: a later 'import tpm2_pytss' in this process reuses it.
    sys.modules[_MODULE] = module
    return module


class EsysError(Exception):
    """A call into libtss2 failed; ``rc`` is its return code, ``text`` libtss2's words for it."""

    def __init__(self, rc: int, text: str) -> None:
        super().__init__(text)
        self.rc = rc
        self.text = text


class Tpm:
    """An ESAPI context on one TPM. Use as a context manager; every call checks its result.

    With ``deadline`` (a TPM behind a socket), every call into libtss2 is bounded by it.
    """

    def __init__(self, spec: str, deadline: Deadline | None = None) -> None:
        module = binding()
        self.ffi: Any = module.ffi
        self.lib: Any = module.lib
        self.spec = spec
        self.deadline = deadline
        self._tcti = self.ffi.new("TSS2_TCTI_CONTEXT **")
        self._esys = self.ffi.new("ESYS_CONTEXT **")

    def __enter__(self) -> Tpm:
        self._check(self.lib.Tss2_TctiLdr_Initialize, self.spec.encode(), self._tcti)
        try:
            self._check(self.lib.Esys_Initialize, self._esys, self._tcti[0], self.ffi.NULL)
        except BaseException:
            self._finalize_tcti()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.deadline is not None and self.deadline.stuck:
            return  # a worker thread still uses the context: the process's exit closes it
        if self._esys[0] != self.ffi.NULL:
            self.lib.Esys_Finalize(self._esys)
        self._finalize_tcti()

    def _finalize_tcti(self) -> None:
        if self._tcti[0] != self.ffi.NULL:
            self.lib.Tss2_TctiLdr_Finalize(self._tcti)

    @property
    def stuck(self) -> bool:
        return self.deadline is not None and self.deadline.stuck

    def _check(self, function: Callable[..., int], *args: Any) -> None:
        def call() -> int:
            return int(function(*args))

        if self.deadline is None:
            rc = call()
        else:
            try:
                rc = self.deadline.run(call)
            except Stuck:
                raise self.deadline.no_answer() from None
        if rc != 0:
            raise EsysError(rc, self.ffi.string(self.lib.Tss2_RC_Decode(rc)).decode())

    def _esys_call(self, name: str, *args: Any) -> None:
        self._check(getattr(self.lib, f"Esys_{name}"), self._esys[0], *args)

    # Structures in and out, as marshalled bytes.

    def struct(self, type_name: str, data: bytes) -> Any:
        """A pointer to a C ``type_name`` unmarshalled from ``data`` (all of it)."""
        pointer = self.ffi.new(f"{type_name} *")
        offset = self.ffi.new("size_t *")
        unmarshal = getattr(self.lib, f"Tss2_MU_{type_name}_Unmarshal")
        self._check(unmarshal, data, len(data), offset, pointer)
        if offset[0] != len(data):
            raise EsysError(0, f"{len(data) - offset[0]} bytes after a {type_name}")
        return pointer

    def marshal(self, type_name: str, pointer: Any) -> bytes:
        buffer = self.ffi.new(f"uint8_t[{_MAX_MARSHALLED}]")
        offset = self.ffi.new("size_t *")
        marshal = getattr(self.lib, f"Tss2_MU_{type_name}_Marshal")
        self._check(marshal, pointer, buffer, _MAX_MARSHALLED, offset)
        return bytes(self.ffi.buffer(buffer, offset[0]))

    def _taken(self, type_name: str, out: Any, wipe: bool = False) -> bytes:
        """The marshalled bytes of a structure ESAPI allocated, which is then freed."""
        try:
            return self.marshal(type_name, out[0])
        finally:
            if wipe:  # a secret: not left in freed memory
                size = self.ffi.sizeof(type_name)
                self.ffi.memmove(out[0], b"\0" * size, size)
            self.lib.Esys_Free(out[0])

    # ESYS_TR handles.

    def tr_deserialize(self, handle: int, name: bytes, kind: int, public: bytes) -> int:
        """A handle for a TPM entity whose public area is known: no command is sent.

        ``public`` is the marshalled TPM2B_PUBLIC (keys) or TPM2B_NV_PUBLIC (NV indices);
        the layout is ESAPI's serialized IESYS_RESOURCE.
        """
        resource = handle.to_bytes(4, "big") + tpm2b(name) + kind.to_bytes(4, "big") + public
        out = self.ffi.new("ESYS_TR *")
        self._esys_call("TR_Deserialize", resource, len(resource), out)
        return int(out[0])

    def tr_from_public(self, handle: int) -> int:
        """A handle for a persistent object or NV index, read from the TPM (ReadPublic or
        NV_ReadPublic)."""
        out = self.ffi.new("ESYS_TR *")
        self._esys_call("TR_FromTPMPublic", handle, TR_NONE, TR_NONE, TR_NONE, out)
        return int(out[0])

    def tr_name(self, tr: int) -> bytes:
        out = self.ffi.new("TPM2B_NAME **")
        self._esys_call("TR_GetName", tr, out)
        return self._taken("TPM2B_NAME", out)[2:]

    def tr_close(self, tr: int) -> None:
        """Forget a handle in ESAPI only (the TPM is not told): to read it again afresh."""
        tr_pointer = self.ffi.new("ESYS_TR *", tr)
        self._esys_call("TR_Close", tr_pointer)

    def flush(self, tr: int) -> None:
        self._esys_call("FlushContext", tr)

    def set_auth(self, tr: int, auth: bytes) -> None:
        self._esys_call("TR_SetAuth", tr, self.struct("TPM2B_AUTH", tpm2b(auth)))

    # Commands.

    def get_capability(self, capability: int, first: int, count: int) -> tuple[bool, bytes]:
        """(more data, the marshalled TPMS_CAPABILITY_DATA)."""
        more = self.ffi.new("TPMI_YES_NO *")
        out = self.ffi.new("TPMS_CAPABILITY_DATA **")
        self._esys_call(
            "GetCapability", TR_NONE, TR_NONE, TR_NONE, capability, first, count, more, out
        )
        return bool(more[0]), self._taken("TPMS_CAPABILITY_DATA", out)

    def pcr_read(self, selection: bytes) -> tuple[bytes, bytes]:
        """(the marshalled TPML_PCR_SELECTION read, the marshalled TPML_DIGEST of values)."""
        counter = self.ffi.new("UINT32 *")
        selected = self.ffi.new("TPML_PCR_SELECTION **")
        values = self.ffi.new("TPML_DIGEST **")
        self._esys_call(
            "PCR_Read", TR_NONE, TR_NONE, TR_NONE,
            self.struct("TPML_PCR_SELECTION", selection), counter, selected, values,
        )
        return self._taken("TPML_PCR_SELECTION", selected), self._taken("TPML_DIGEST", values)

    def pcr_extend(self, pcr: int, digests: bytes) -> None:
        """Extend PCR ``pcr`` with the marshalled TPML_DIGEST_VALUES ``digests``."""
        self._esys_call(
            "PCR_Extend", pcr, TR_PASSWORD, TR_NONE, TR_NONE,
            self.struct("TPML_DIGEST_VALUES", digests),
        )

    def load_external(self, public: bytes, hierarchy: int) -> int:
        out = self.ffi.new("ESYS_TR *")
        self._esys_call(
            "LoadExternal", TR_NONE, TR_NONE, TR_NONE, self.ffi.NULL,
            self.struct("TPM2B_PUBLIC", public), hierarchy, out,
        )
        return int(out[0])

    def verify_signature(self, key: int, digest: bytes, signature: bytes) -> bytes:
        """The marshalled TPMT_TK_VERIFIED ticket for a marshalled TPMT_SIGNATURE."""
        out = self.ffi.new("TPMT_TK_VERIFIED **")
        self._esys_call(
            "VerifySignature", key, TR_NONE, TR_NONE, TR_NONE,
            self.struct("TPM2B_DIGEST", tpm2b(digest)), self.struct("TPMT_SIGNATURE", signature),
            out,
        )
        return self._taken("TPMT_TK_VERIFIED", out)

    def load(self, parent: int, private: bytes, public: bytes) -> int:
        out = self.ffi.new("ESYS_TR *")
        self._esys_call(
            "Load", parent, TR_PASSWORD, TR_NONE, TR_NONE,
            self.struct("TPM2B_PRIVATE", private), self.struct("TPM2B_PUBLIC", public), out,
        )
        return int(out[0])

    def start_session(self, kind: int, salt_key: int = TR_NONE) -> int:
        """A policy (or trial) session; salted with ``salt_key``, with AES-128-CFB for
        parameter encryption, when it is given."""
        out = self.ffi.new("ESYS_TR *")
        symmetric = (
            _AES128_CFB if salt_key != TR_NONE else (0x0010).to_bytes(2, "big")  # TPM_ALG_NULL
        )
        self._esys_call(
            "StartAuthSession", salt_key, TR_NONE, TR_NONE, TR_NONE, TR_NONE, self.ffi.NULL,
            kind, self.struct("TPMT_SYM_DEF", symmetric), ALG_SHA256, out,
        )
        return int(out[0])

    def set_session_attributes(self, session: int, attributes: int) -> None:
        self._esys_call("TRSess_SetAttributes", session, attributes, 0xFF)

    def policy_pcr(self, session: int, pcr_digest: bytes, selection: bytes) -> None:
        self._esys_call(
            "PolicyPCR", session, TR_NONE, TR_NONE, TR_NONE,
            self.struct("TPM2B_DIGEST", tpm2b(pcr_digest)),
            self.struct("TPML_PCR_SELECTION", selection),
        )

    def policy_or(self, session: int, digests: list[bytes]) -> None:
        hash_list = len(digests).to_bytes(4, "big") + b"".join(tpm2b(d) for d in digests)
        self._esys_call(
            "PolicyOR", session, TR_NONE, TR_NONE, TR_NONE, self.struct("TPML_DIGEST", hash_list)
        )

    def policy_nv(self, nv: int, session: int, operand: bytes, operation: int) -> None:
        """PolicyNV on ``nv`` (offset 0), authorized by the index itself with its empty
        password (the indices sealer checks are AUTHREAD)."""
        self._esys_call(
            "PolicyNV", nv, nv, session, TR_PASSWORD, TR_NONE, TR_NONE,
            self.struct("TPM2B_OPERAND", tpm2b(operand)), 0, operation,
        )

    def policy_authorize(
        self, session: int, approved: bytes, policy_ref: bytes, key_name: bytes, ticket: bytes
    ) -> None:
        self._esys_call(
            "PolicyAuthorize", session, TR_NONE, TR_NONE, TR_NONE,
            self.struct("TPM2B_DIGEST", tpm2b(approved)),
            self.struct("TPM2B_NONCE", tpm2b(policy_ref)),
            self.struct("TPM2B_NAME", tpm2b(key_name)),
            self.struct("TPMT_TK_VERIFIED", ticket),
        )

    def policy_auth_value(self, session: int) -> None:
        self._esys_call("PolicyAuthValue", session, TR_NONE, TR_NONE, TR_NONE)

    def policy_digest(self, session: int) -> bytes:
        out = self.ffi.new("TPM2B_DIGEST **")
        self._esys_call("PolicyGetDigest", session, TR_NONE, TR_NONE, TR_NONE, out)
        return self._taken("TPM2B_DIGEST", out)[2:]

    def unseal(self, item: int, session: int) -> bytes:
        out = self.ffi.new("TPM2B_SENSITIVE_DATA **")
        self._esys_call("Unseal", item, session, TR_NONE, TR_NONE, out)
        return self._taken("TPM2B_SENSITIVE_DATA", out, wipe=True)[2:]

    def nv_read(self, nv: int, size: int) -> bytes:
        """``size`` bytes from offset 0, authorized by the index's empty password."""
        out = self.ffi.new("TPM2B_MAX_NV_BUFFER **")
        self._esys_call("NV_Read", nv, nv, TR_PASSWORD, TR_NONE, TR_NONE, size, 0, out)
        return self._taken("TPM2B_MAX_NV_BUFFER", out)[2:]
