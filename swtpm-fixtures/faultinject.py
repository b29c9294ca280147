"""Run the ``sealer`` CLI and end it abruptly just before its K-th durable write.

    python faultinject.py STOP_AT RECORD_FILE SEALER_ARG...

Every write sealer announces (``sealer.host.checkpoint.before_write``) is appended to RECORD_FILE
as it happens; at write number STOP_AT (counting from 1; 0 never stops) the process sends
itself SIGKILL: no ``finally`` block, no flush of buffered output, no cleanup, as when the
power fails or the OOM killer strikes. Only the tests run this; the product has no way
to stop itself early.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sealer.cli import main
from sealer.host import checkpoint

KILLED = -signal.SIGKILL  # the return code subprocess reports for a process ended by SIGKILL


def run(stop_at: int, record: Path, argv: list[str]) -> None:
    seen = 0

    def stop_before(what: str) -> None:
        nonlocal seen
        seen += 1
        with record.open("a") as log:
            log.write(what + "\n")
        if seen == stop_at:
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.observe(stop_before)
    sys.argv = ["sealer", *argv]
    main()


if __name__ == "__main__":
    run(int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
