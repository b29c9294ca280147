"""Benchmark: the wire audit of every sealer operation, on swtpm's level-20 wire log.

One run of every operation, as a user (or the initramfs) runs it, on a fresh swtpm booted by
replaying the captured event log and fresh LUKS2 images (swtpm-fixtures/wireaudit.py):
enroll with and without PIN and with a recovery key, status, unlock with and without PIN, the
boot-time keyscript and cap, reseal for a new UKI, prune, revoke (by the machine's key and by
a vendor statement), remove. For each: the TPM commands (succeeded/total), by command code,
and every secret searched for in clear in each command and response, whole and as 8-byte
fragments: the sealed secrets and their keyslot passphrases, the PIN and its TPM auth value,
the LUKS passphrase, the recovery keys, and the private scalars of the policy keys.
"Secrets in clear" must be 0 everywhere; the exit status is 1 otherwise.

Run: .venv/bin/python bench/wire_audit.py [--json FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from wireaudit import WireAudit, run_lifecycle, search


def report(audit: WireAudit, seconds: float) -> str:
    whole = audit.whole_log()
    leaks = [str(f) for f in search("whole log", whole, audit.needles)]
    needles = ", ".join(f"{name} ({len(value)} B)" for name, value in audit.needles.items())
    return "\n".join(
        [
            "## TPM wire audit (swtpm --log level=20)",
            "",
            audit.table(),
            "",
            "### Commands by command code",
            "",
            audit.code_table(),
            "",
            f"Needles, each searched whole and as its {audit.fragments_checked()} distinct "
            f"8-byte fragments in every command and response: {needles}.",
            "",
            f"Controls (meant to travel in clear): {', '.join(audit.controls)}.",
            "",
            f"Whole wire log of the run ({len(whole.exchanges)} exchanges, with the boot "
            "replays and the in-process unseals that obtained the secrets): "
            f"{len(leaks)} secrets in clear.",
            "",
            f"Run time: {seconds:.1f} s.",
        ]
        + [f"- FOUND: {leak}" for leak in audit.secrets_found() + leaks]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Write the audit as JSON here.")
    parser.add_argument("--markdown", type=Path, help="Write the report as Markdown here.")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sealer-wire-") as directory:
        start = time.perf_counter()
        audit = run_lifecycle(Path(directory))
        seconds = time.perf_counter() - start
        text = report(audit, seconds)
        leaks = audit.secrets_found() + [
            str(f) for f in search("whole log", audit.whole_log(), audit.needles)
        ]
        if options.json:
            doc = {
                "operations": audit.rows(),
                "needles": {name: len(value) for name, value in audit.needles.items()},
                "controls": sorted(audit.controls),
                "whole_log_exchanges": len(audit.whole_log().exchanges),
                "secrets_found": leaks,
                "seconds": round(seconds, 2),
            }
            options.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(text)
    if options.markdown:
        options.markdown.write_text(text + "\n")
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
