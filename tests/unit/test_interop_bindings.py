"""The other-tool binding dispatcher names the token types the readers parse."""

from __future__ import annotations

from sealer.interop import bindings, clevis, systemd_tpm2


def test_the_dispatch_table_names_each_readers_token_type() -> None:
    # The table holds literals so that the readers load only when needed; they must agree.
    assert set(bindings._READERS) == {systemd_tpm2.TOKEN_TYPE, clevis.TOKEN_TYPE}
