"""Every durable write sealer makes announces itself here first.

A write is anything that outlives the process: a LUKS2 header update, a TPM persistent
object or NV index, a file in the state directory. Each operation is built so that it can be
stopped before any of its writes and still leave a volume that opens with its passphrase and
recovery key, a state ``sealer status`` describes truthfully, and a rerun that completes it.

The interruption tests (tests/integration/test_interruptions.py) prove that claim by
subscribing here and killing the process at each write in turn. Nothing in the product
subscribes, so in normal use ``before_write`` only loops over an empty list: there is no
environment variable or option that can make a production run stop early.
"""

from __future__ import annotations

from collections.abc import Callable

Observer = Callable[[str], None]

_observers: list[Observer] = []


def before_write(what: str) -> None:
    """Announce a durable write, e.g. ``"luks: add keyslot 1"``, just before it happens."""
    for observer in tuple(_observers):
        observer(what)


def observe(observer: Observer) -> Callable[[], None]:
    """Call ``observer`` before every durable write; returns the function that stops it."""
    _observers.append(observer)
    return lambda: _observers.remove(observer)
