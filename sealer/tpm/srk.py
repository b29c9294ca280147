"""The storage root key: the TCG-standard ECC P-256 SRK, persisted at 0x81000001."""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_ECC, TPM2_RC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMS_ECC_PARMS,
    TPMS_ECC_POINT,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_SYM_DEF_OBJECT,
    TPMU_PUBLIC_ID,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from sealer.host.checkpoint import before_write
from sealer.tpm.primary import create_owner_primary

SRK_HANDLE = 0x81000001


@dataclass(frozen=True)
class Srk:
    """The storage root key the secret is sealed under: a persistent primary key in the TPM."""

    handle: ESYS_TR  # ESAPI handle for the persistent key; never flushed
    persistent: int
    name: bytes
    public: bytes  # marshalled TPM2B_PUBLIC: kept in the token (sealer.tpm.release)


def _srk(ctx: ESAPI, handle: ESYS_TR, persistent: int) -> Srk:
    # ESAPI's serialized handle holds the public area it already read: no command.
    resource = bytes(ctx.tr_serialize(handle))
    name_size = int.from_bytes(resource[4:6], "big")
    public = resource[6 + name_size + 4:]
    return Srk(handle, persistent, bytes(ctx.tr_get_name(handle)), public)


def srk_template() -> TPM2B_PUBLIC:
    """TCG EK Credential Profile / Provisioning Guidance: 'ECC NIST P256 SRK'."""
    attributes = (
        TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.NODA
        | TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.DECRYPT
    )
    parameters = TPMU_PUBLIC_PARMS(
        eccDetail=TPMS_ECC_PARMS(
            symmetric=TPMT_SYM_DEF_OBJECT(
                algorithm=TPM2_ALG.AES,
                keyBits=TPMU_SYM_KEY_BITS(aes=128),
                mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
            ),
            scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
            curveID=TPM2_ECC.NIST_P256,
            kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
        )
    )
    public = TPMT_PUBLIC(
        type=TPM2_ALG.ECC,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=attributes,
        parameters=parameters,
        unique=TPMU_PUBLIC_ID(ecc=TPMS_ECC_POINT(x=b"\0" * 32, y=b"\0" * 32)),
    )
    return TPM2B_PUBLIC(publicArea=public)


def read_srk(ctx: ESAPI, persistent: int = SRK_HANDLE) -> Srk | None:
    """The SRK at ``persistent``, or None when nothing is persisted there."""
    try:
        handle = ctx.tr_from_tpmpublic(persistent)
    except TSS2_Exception as exc:
        if exc.error == TPM2_RC.HANDLE:
            return None
        raise
    return _srk(ctx, handle, persistent)


def ensure_srk(ctx: ESAPI, persistent: int = SRK_HANDLE) -> Srk:
    """Use the persisted SRK, creating and persisting the standard one if absent."""
    existing = read_srk(ctx, persistent)
    if existing is not None:
        return existing
    before_write(f"tpm: persist the SRK at 0x{persistent:08x}")
    transient = create_owner_primary(
        ctx,
        srk_template(),
        "create the storage root key",
        "create the SRK at 0x81000001 yourself (tpm2_createprimary + tpm2_evictcontrol)",
    )
    try:
        handle = ctx.evict_control(ESYS_TR.OWNER, transient, persistent)
    finally:
        ctx.flush_context(transient)
    return _srk(ctx, handle, persistent)


def pinned_srk_public(ctx: ESAPI, persistent: int, pinned_name: bytes) -> bytes | None:
    """The marshalled public area of the SRK at ``persistent`` if it is the one named
    ``pinned_name``; None when it is gone or another (never stored for a foreign key)."""
    srk = read_srk(ctx, persistent)
    return srk.public if srk is not None and srk.name == pinned_name else None
