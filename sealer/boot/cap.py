"""Cap the PCRs recorded by this boot's unlocks: run once, after the last volume is open.

``python -m sealer.boot.cap`` runs from initramfs-tools' init-bottom (in a dracut
initramfs: sealer-cap.service, ordered where dracut's pre-pivot hook runs). It runs whatever
happened before, so that after the initramfs no process, root included, can have the TPM
release a key again until the next reboot.
"""

from __future__ import annotations

import os
import sys

from sealer.boot.capping import cap, recorded_caps
from sealer.errors import SealerError
from sealer.pcrs import format_pcrs


def main() -> int:
    pcrs = recorded_caps()
    try:
        banks = cap(pcrs, tcti=os.environ.get("SEALER_TCTI") or None)
    except SealerError as error:
        print(f"sealer: cannot cap PCR {format_pcrs(pcrs)}: {error.message}", file=sys.stderr)
        return int(error.exit_code)
    print(f"sealer: capped PCR {format_pcrs(pcrs)} ({', '.join(banks)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
