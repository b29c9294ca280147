"""The TPM's hierarchy authorizations and dictionary-attack (DA) parameters.

Linux leaves every hierarchy authorization of a TPM empty. An empty *lockout* authorization
lets anyone who can send TPM commands (root, or a live system booted from a USB stick) reset
the DA counter (TPM2_DictionaryAttackLockReset), switch DA protection off
(TPM2_DictionaryAttackParameters with recoveryTime 0), or clear the TPM (TPM2_Clear with
TPM_RH_LOCKOUT): then a PIN's lockout protects nothing. sealer sets the DA parameters and then
a random lockout authorization, which it keeps in its state directory.

The owner authorization stays empty on purpose: systemd-cryptenroll and clevis create their
primary keys under the owner hierarchy with an empty authorization.

Secrets on the wire: the new authorization travels as HierarchyChangeAuth's first parameter,
encrypted by a session salted with the SRK (AES-128-CFB), as sealed secrets do. Commands that
only *use* the authorization (DictionaryAttackLockReset, DictionaryAttackParameters) run in an
HMAC session: the authorization itself never crosses the bus, only an HMAC keyed with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_PT,
    TPM2_RC,
    TPM2_SE,
    TPMA_PERMANENT,
    TPMA_SESSION,
)
from tpm2_pytss.types import TPMT_SYM_DEF, TPMU_SYM_KEY_BITS, TPMU_SYM_MODE

from sealer.errors import AuthError, LockoutError
from sealer.host.checkpoint import before_write
from sealer.tpm.nv import nv_handle
from sealer.tpm.srk import Srk

LOCKOUT_AUTH_BYTES = 32
Tpm = ESAPI  # for services' type hints: only sealer.tpm imports tpm2_pytss

_AES128_CFB = TPMT_SYM_DEF(
    algorithm=TPM2_ALG.AES,
    keyBits=TPMU_SYM_KEY_BITS(aes=128),
    mode=TPMU_SYM_MODE(aes=TPM2_ALG.CFB),
)
_NO_SYMMETRIC = TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL)


@dataclass(frozen=True)
class DaParameters:
    """TPM2_DictionaryAttackParameters' three values (TPM 2.0 Part 3, 25.3)."""

    max_tries: int  # failures of DA-protected authorizations before lockout
    recovery_time_s: int  # one failure forgotten this often (0 would switch DA off)
    lockout_recovery_s: int  # after a wrong lockout authorization, wait this long


# What sealer sets at enrollment. maxTries and recoveryTime are the values Windows sets on a
# TPM 2.0 it provisions (BitLocker's TPM+PIN): 32 tries leave room for a person's typos and for
# other DA-protected users of the TPM; past them, one guess every 2 hours is 12 a day, so a
# 6-digit PIN takes over 100 years on average. The rightful user is not stuck: the passphrase
# or recovery key opens the volume, and 'sealer tpm clear-lockout' (with the kept lockout
# authorization) ends a lockout at once. lockoutRecovery differs from Windows' 24 hours on
# purpose: sealer's lockout authorization is 256 random bits, which no rate of guessing
# finds, so the only effect of a long lockoutRecovery is that anyone who sends one wrong
# lockout authorization keeps the rightful holder out for that long (0 would mean until
# the next reboot). 10 minutes bounds that denial of service.
SEALER_DA = DaParameters(max_tries=32, recovery_time_s=7200, lockout_recovery_s=600)


@dataclass(frozen=True)
class Hierarchies:
    """TPMA_PERMANENT (TPM 2.0 Part 2, 8.6): which hierarchy authorizations are set."""

    owner_auth_set: bool
    endorsement_auth_set: bool
    lockout_auth_set: bool
    disable_clear: bool  # TPM2_Clear refused until the platform allows it again

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_hierarchies(ctx: ESAPI) -> Hierarchies:
    """Read TPM_PT_PERMANENT (no authorization needed)."""
    _, data = ctx.get_capability(TPM2_CAP.TPM_PROPERTIES, int(TPM2_PT.PERMANENT), 1)
    found = {int(p.property): int(p.value) for p in data.data.tpmProperties}
    bits = found.get(int(TPM2_PT.PERMANENT), 0)
    return Hierarchies(
        owner_auth_set=bool(bits & int(TPMA_PERMANENT.OWNERAUTHSET)),
        endorsement_auth_set=bool(bits & int(TPMA_PERMANENT.ENDORSEMENTAUTHSET)),
        lockout_auth_set=bool(bits & int(TPMA_PERMANENT.LOCKOUTAUTHSET)),
        disable_clear=bool(bits & int(TPMA_PERMANENT.DISABLECLEAR)),
    )


@contextmanager
def _session(ctx: ESAPI, salt_key: ESYS_TR | None) -> Iterator[ESYS_TR]:
    """An HMAC session; salted by ``salt_key`` with parameter encryption when given."""
    session = ctx.start_auth_session(
        tpm_key=ESYS_TR.NONE if salt_key is None else salt_key,
        bind=ESYS_TR.NONE,
        session_type=TPM2_SE.HMAC,
        symmetric=_NO_SYMMETRIC if salt_key is None else _AES128_CFB,
        auth_hash=TPM2_ALG.SHA256,
    )
    try:
        attributes = TPMA_SESSION.CONTINUESESSION
        if salt_key is not None:
            attributes |= TPMA_SESSION.DECRYPT
        ctx.trsess_set_attributes(session, attributes)
        yield session
    finally:
        ctx.flush_context(session)


def _lockout_refused(exc: TSS2_Exception) -> AuthError | LockoutError | None:
    """What a refused lockout authorization means to a person; None: another error."""
    if exc.error == TPM2_RC.LOCKOUT:
        return LockoutError(
            "the TPM refuses lockout authorizations for now: a wrong one was tried earlier",
            "wait for the TPM's lockout recovery time (see 'sealer tpm status'), or reboot "
            "if it is 0",
        )
    if exc.error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
        return AuthError(
            "the TPM rejected the lockout authorization: it is not the one in force",
            "someone changed it since sealer set it; ask whoever did, or use the escrowed copy",
        )
    return None


@contextmanager
def _lockout_session(ctx: ESAPI, auth: bytes, salt_key: ESYS_TR | None) -> Iterator[ESYS_TR]:
    """A session for a command authorized by the lockout hierarchy with ``auth``; a refused
    authorization comes out as the error a person can act on."""
    ctx.tr_set_auth(ESYS_TR.LOCKOUT, auth)
    try:
        with _session(ctx, salt_key) as session:
            yield session
    except TSS2_Exception as exc:
        refused = _lockout_refused(exc)
        if refused is None:
            raise
        raise refused from exc


def set_da_parameters(ctx: ESAPI, auth: bytes, params: DaParameters = SEALER_DA) -> None:
    """TPM2_DictionaryAttackParameters, authorized by the lockout hierarchy's ``auth``."""
    before_write("tpm: set dictionary-attack parameters")
    with _lockout_session(ctx, auth, None) as session:
        ctx.dictionary_attack_parameters(
            params.max_tries, params.recovery_time_s, params.lockout_recovery_s,
            lock_handle=ESYS_TR.LOCKOUT, session1=session,
        )


def lockout_auth_in_force(ctx: ESAPI, auth: bytes, params: DaParameters = SEALER_DA) -> bool:
    """Does ``auth`` authorize the lockout hierarchy? Tried by setting ``params`` with it.

    Costs one lockout-authorization failure when it does not (the hierarchy is then locked
    for lockoutRecovery seconds): only for the case an interrupted run left undecidable.
    """
    try:
        set_da_parameters(ctx, auth, params)
    except AuthError:
        return False
    return True


def change_lockout_auth(ctx: ESAPI, srk: Srk, old: bytes, new: bytes) -> None:
    """TPM2_HierarchyChangeAuth(TPM_RH_LOCKOUT): ``new`` travels encrypted (a session salted
    with the SRK, parameter encryption)."""
    before_write("tpm: change the lockout authorization")
    with _lockout_session(ctx, old, srk.handle) as session:
        ctx.hierarchy_change_auth(ESYS_TR.LOCKOUT, new, session1=session)


def reset_lockout(ctx: ESAPI, auth: bytes) -> None:
    """TPM2_DictionaryAttackLockReset: the DA failure count back to 0, tries back at once."""
    with _lockout_session(ctx, auth, None) as session:
        ctx.dictionary_attack_lock_reset(lock_handle=ESYS_TR.LOCKOUT, session1=session)


def nv_index_exists(ctx: ESAPI, index: int) -> bool:
    """Is an NV index defined at ``index`` (NV_ReadPublic, no authorization)?"""
    return nv_handle(ctx, index) is not None
