"""The foreign-binding dispatcher names the token types the readers parse."""

from __future__ import annotations

from sealer.interop import clevis, systemd_tpm2
from sealer.services import foreign


def test_the_dispatch_table_names_each_readers_token_type() -> None:
    # The table holds literals so that the readers load only when needed; they must agree.
    assert set(foreign._READERS) == {systemd_tpm2.TOKEN_TYPE, clevis.TOKEN_TYPE}
