"""The keyscript Debian's cryptroot runs for a volume: print its key, or say why not.

Run as ``python -m sealer.boot.keyscript`` by
``sealer/install/hookfiles/initramfs-tools/keyscript``, with cryptroot's environment
(CRYPTTAB_NAME, CRYPTTAB_SOURCE, ...). On success the key goes to standard output,
unterminated, which cryptroot pipes to ``cryptsetup --key-file=-``. On failure one line on
the console says why, nothing is printed on standard output, and the exit status is
non-zero: the shell wrapper then runs Debian's askpass, the passphrase prompt the user would
have had without sealer.
"""

from __future__ import annotations

import os
import sys

from sealer.boot.unlocker import (
    TPM_WAIT_SECONDS,
    fallback_line,
    record_cap_of,
    released_line,
    unlock_for_boot,
)
from sealer.errors import AuthError, SealerError
from sealer.host.proc import ask

ASKPASS = "/lib/cryptsetup/askpass"


def _say(line: str) -> None:
    # stderr is the console in the initramfs; cryptroot only reads our stdout.
    print(line, file=sys.stderr, flush=True)


class PinPrompt:
    """Asks for the TPM PIN through askpass, only when the unlocker needs it."""

    def __init__(self, volume: str) -> None:
        self.volume = volume

    def __call__(self, note: str = "") -> bytes:
        # One line: askpass may show it in a splash screen (plymouth), not on the console.
        prompt = f"Enter the TPM PIN for {self.volume}: "
        if note:
            prompt = f"sealer: {note}. {prompt}"
        answer = ask([ASKPASS, prompt])
        if answer is None:
            raise AuthError("no PIN was entered")
        return answer.rstrip(b"\n")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def main() -> int:
    """Print the key of the crypttab volume in the environment; returns the exit status.

    0 when the key was written to standard output; otherwise non-zero, with one console line
    saying why, so that the wrapper falls back to the passphrase prompt (even after a bug).
    """
    source = os.environ.get("CRYPTTAB_SOURCE", "")
    volume = os.environ.get("CRYPTTAB_NAME") or source
    if not source:
        _say("sealer: CRYPTTAB_SOURCE is not set: this program is a crypttab keyscript")
        return 2
    try:
        result = unlock_for_boot(
            source,
            # Tests on the host point this at swtpm; in the initramfs it is unset (device).
            tcti=os.environ.get("SEALER_TCTI") or None,
            read_pin=PinPrompt(volume),
            tpm_timeout=TPM_WAIT_SECONDS,
        )
    except SealerError as error:
        _say(fallback_line(volume, error))
        return int(error.exit_code)
    except Exception as error:  # a bug must never cost the user the passphrase prompt
        _say(fallback_line(volume, error))
        return 1
    try:
        problem = record_cap_of(result, volume)
    except Exception as error:  # a bug: the cap might miss this PCR, so release nothing
        _say(fallback_line(volume, error))
        return 1
    if problem is not None:
        _say(problem)
    _write_all(sys.stdout.fileno(), result.unsealed.key)
    _say(released_line(volume, result.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
