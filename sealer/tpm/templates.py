"""The unrestricted-input storage primary key that systemd 252 and tpm2-tools both derive.

systemd-cryptenroll 252 (``tpm2_make_primary``) and ``tpm2_createprimary -C o`` (clevis's
tpm2 pin) ask the owner hierarchy for the same kind of key: restricted, decrypt, fixed to the
TPM, AES-128-CFB, NULL scheme, with authPolicy and ``unique`` left empty. A primary key is
derived from its template, so to recreate theirs, the template must match byte for byte. It is
not the TCG SRK template sealer persists for itself (that one has NODA and a 32-byte unique).
"""

from __future__ import annotations

from tpm2_pytss.constants import TPM2_ALG, TPM2_ECC, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPMS_ECC_PARMS,
    TPMS_ECC_POINT,
    TPMS_RSA_PARMS,
    TPMT_ECC_SCHEME,
    TPMT_KDF_SCHEME,
    TPMT_PUBLIC,
    TPMT_RSA_SCHEME,
    TPMT_SYM_DEF_OBJECT,
    TPMU_PUBLIC_ID,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

# No NODA (unlike the TCG SRK): an owner-auth failure while creating it counts toward the
# TPM's lockout, as it does for those tools. These are tpm2_createprimary's DEFAULT_ATTRS
# (clevis) and systemd's: any difference derives another key, and their sealed objects no
# longer load.
STORAGE_PRIMARY_ATTRIBUTES = (
    TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)


def storage_primary(
    name_alg: int, key_alg: int, *, curve: int = TPM2_ECC.NIST_P256, rsa_bits: int = 2048
) -> TPM2B_PUBLIC:
    """The template for an ECC (``curve``) or RSA (``rsa_bits``, exponent 0 = 65537) key."""
    symmetric = TPMT_SYM_DEF_OBJECT(
        algorithm=TPM2_ALG.AES,
        keyBits=TPMU_SYM_KEY_BITS(aes=128),
        mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
    )
    if key_alg == TPM2_ALG.ECC:
        parameters = TPMU_PUBLIC_PARMS(
            eccDetail=TPMS_ECC_PARMS(
                symmetric=symmetric,
                scheme=TPMT_ECC_SCHEME(scheme=TPM2_ALG.NULL),
                curveID=curve,
                kdf=TPMT_KDF_SCHEME(scheme=TPM2_ALG.NULL),
            )
        )
        unique = TPMU_PUBLIC_ID(ecc=TPMS_ECC_POINT(x=b"", y=b""))
    elif key_alg == TPM2_ALG.RSA:
        parameters = TPMU_PUBLIC_PARMS(
            rsaDetail=TPMS_RSA_PARMS(
                symmetric=symmetric,
                scheme=TPMT_RSA_SCHEME(scheme=TPM2_ALG.NULL),
                keyBits=rsa_bits,
                exponent=0,
            )
        )
        unique = TPMU_PUBLIC_ID(rsa=b"")
    else:
        raise ValueError(f"no storage primary template for algorithm {key_alg:#x}")
    public = TPMT_PUBLIC(
        type=key_alg,
        nameAlg=name_alg,
        objectAttributes=STORAGE_PRIMARY_ATTRIBUTES,
        parameters=parameters,
        unique=unique,
    )
    return TPM2B_PUBLIC(publicArea=public)
