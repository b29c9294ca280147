"""Finding sealer enrollments in a LUKS2 header."""

from __future__ import annotations

from dataclasses import dataclass

from sealer.errors import TokenError, UsageError
from sealer.luks.header import LuksHeader, Token, require_uuid
from sealer.luks.token import TOKEN_TYPE, SealerToken, parse_token
from sealer.pcrs import BANKS
from sealer.policy.binding import CAP_PCRS, Binding


@dataclass(frozen=True)
class Enrollment:
    """One sealer enrollment of a volume: a parsed sealer token and its id in the header."""

    token_id: int
    token: SealerToken

    @property
    def binding(self) -> Binding:
        """What the sealed object's policy fixes, as the token says: the TPM checks it."""
        token = self.token
        bank = BANKS.get(token.pcr_bank)
        if bank is None:
            raise TokenError(f"token {self.token_id} names unknown PCR bank {token.pcr_bank!r}")
        if token.cap_pcr not in CAP_PCRS:
            raise TokenError(
                f"token {self.token_id} caps PCR {token.cap_pcr}, which can be reset without "
                "a reboot: refused (the header was changed)",
                "unlock with the passphrase or recovery key, then enroll again",
            )
        return Binding(bank, token.pcrs, token.cap_pcr, token.enrollment_id)

    @property
    def counter_index(self) -> int | None:
        """The TPM NV index of the enrollment's retirement counter (None: a legacy token)."""
        return None if self.token.retirement is None else self.token.retirement.nv_index

    @property
    def legacy(self) -> bool:
        """Enrolled by a sealer whose approvals were not bound to the enrollment."""
        return self.token.enrollment_id is None


def enrollments(header: LuksHeader, *, interrupted: bool = False) -> list[Enrollment]:
    """The volume's sealer enrollments, parsed; a corrupted token raises TokenError.

    An enrollment interrupted before its token was complete never unlocks anything, so it
    is left out unless ``interrupted`` asks for those too.
    """
    parsed = [
        Enrollment(t.token_id, parse_token(t.token_id, t.data))
        for t in header.tokens_of_type(TOKEN_TYPE)
    ]
    return [e for e in parsed if interrupted or e.token.complete]


def interrupted_error(header: LuksHeader, token_id: int) -> TokenError:
    """The error for an enrollment that stopped half-way: 'sealer enroll' finishes it, 'sealer
    remove' takes it away.
    """
    return TokenError(
        f"the enrollment in token {token_id} of {header.device} was interrupted before it "
        "was complete",
        f"run 'sealer enroll' again to finish it, or 'sealer remove --token {token_id}'",
    )


def select_tokens(header: LuksHeader, token_id: int | None = None) -> list[Token]:
    """The volume's sealer tokens, unparsed (or only ``token_id``); never an empty list."""
    tokens = header.tokens_of_type(TOKEN_TYPE)
    if token_id is not None:
        tokens = [t for t in tokens if t.token_id == token_id]
        if not tokens:
            raise UsageError(
                f"{header.device} has no sealer token {token_id}",
                "see 'sealer status' for its tokens",
            )
    if not tokens:
        raise TokenError(
            f"{header.device} has no sealer TPM enrollment",
            "enroll it first with 'sealer enroll'",
        )
    return tokens


def require_enrollments(header: LuksHeader, token_id: int | None = None) -> list[Enrollment]:
    """The complete enrollments among ``select_tokens``; TokenError when there is none."""
    found = [
        Enrollment(t.token_id, parse_token(t.token_id, t.data))
        for t in select_tokens(header, token_id)
    ]
    complete = [e for e in found if e.token.complete]
    if not complete:
        raise interrupted_error(header, found[0].token_id)
    return complete


def default_mapping_name(header: LuksHeader) -> str:
    """The mapping name when none is given, ``luks-<UUID>``; the UUID is checked, since it names
    a path.
    """
    # The UUID comes from the header: only a real UUID may name /dev/mapper/luks-UUID.
    return f"luks-{require_uuid(header.uuid, header.device)}"
