"""Finding sealer enrollments in a LUKS2 header."""

from __future__ import annotations

from dataclasses import dataclass

from sealer.errors import TokenError, UsageError
from sealer.luks.header import LuksHeader, Token, require_uuid
from sealer.luks.token import TOKEN_TYPE, SealerToken, parse_token


@dataclass(frozen=True)
class Enrollment:
    token_id: int
    token: SealerToken


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
    # The UUID comes from the header: only a real UUID may name /dev/mapper/luks-UUID.
    return f"luks-{require_uuid(header.uuid, header.device)}"
