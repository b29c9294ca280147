"""The keyslot passphrase of a TPM enrollment: what enroll adds and what unlock hands over.

One function, used both ways: if enrollment and unlock ever disagreed, every volume would
stop opening through the TPM.
"""

from __future__ import annotations

import base64


def keyslot_passphrase(secret: bytes) -> bytes:
    """The keyslot passphrase for a sealed secret: base64 text, so it can also be typed
    into or answered to any password prompt (systemd's agent protocol is text)."""
    return base64.b64encode(secret)
