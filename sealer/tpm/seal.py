"""Sealing the disk secret under an authorized policy (unsealing: sealer.tpm.release).

Both directions use a session salted with the SRK and AES-128-CFB parameter encryption: the
secret is encrypted on the wire when it goes into the TPM (Create's inSensitive) and when it
comes back out (Unseal's outData), so an interposer on the TPM bus sees only ciphertext.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE, TPMA_OBJECT, TPMA_SESSION
from tpm2_pytss.types import (
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMS_KEYEDHASH_PARMS,
    TPMS_SENSITIVE_CREATE,
    TPMT_KEYEDHASH_SCHEME,
    TPMT_PUBLIC,
    TPMT_SYM_DEF,
    TPMU_PUBLIC_PARMS,
    TPMU_SYM_KEY_BITS,
    TPMU_SYM_MODE,
)

from sealer.tpm.release import SealedBlob
from sealer.tpm.srk import Srk

_AES128_CFB = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(aes=128),
    mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
)


@contextmanager
def _salted_session(ctx: ESAPI, srk: Srk, kind: TPM2_SE, attributes: int) -> Iterator[ESYS_TR]:
    session = ctx.start_auth_session(
        tpm_key=srk.handle,
        bind=ESYS_TR.NONE,
        session_type=kind,
        symmetric=_AES128_CFB,
        auth_hash=TPM2_ALG.SHA256,
    )
    try:
        ctx.trsess_set_attributes(session, attributes | TPMA_SESSION.CONTINUESESSION)
        yield session
    finally:
        ctx.flush_context(session)


def seal(ctx: ESAPI, srk: Srk, secret: bytes, auth_policy: bytes, auth_value: bytes) -> SealedBlob:
    """Create a keyedhash object holding ``secret`` under the SRK, usable only by policy."""
    attributes = TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
    if not auth_value:
        # Without a PIN there is nothing to guess, so wrong attempts must not count toward
        # the TPM's lockout; with a PIN, guessing it must.
        attributes |= TPMA_OBJECT.NODA
    template = TPMT_PUBLIC(
        type=TPM2_ALG.KEYEDHASH,
        nameAlg=TPM2_ALG.SHA256,
        objectAttributes=attributes,
        authPolicy=auth_policy,
        parameters=TPMU_PUBLIC_PARMS(
            keyedHashDetail=TPMS_KEYEDHASH_PARMS(
                scheme=TPMT_KEYEDHASH_SCHEME(scheme=TPM2_ALG.NULL)
            )
        ),
    )
    sensitive = TPM2B_SENSITIVE_CREATE(
        sensitive=TPMS_SENSITIVE_CREATE(userAuth=auth_value, data=secret)
    )
    with _salted_session(ctx, srk, TPM2_SE.HMAC, TPMA_SESSION.DECRYPT) as session:
        private, public, _, _, _ = ctx.create(
            srk.handle, sensitive, TPM2B_PUBLIC(publicArea=template), session1=session
        )
    return SealedBlob(public=public.marshal(), private=private.marshal())
