"""The initramfs' Python runtime laid out in a folder on the host, as the hook lays it out.

``python -m sealer.install.bundle`` writes the bytecode and prints the native files to copy;
this copies them too. The interpreter then runs from the folder with ``-I -S`` exactly as in
the initramfs (its own standard library, sealer, the compiled ESAPI binding, nothing else).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

BUNDLED_PYTHON = "usr/lib/sealer/python/bin/python3"


def lay_out_bundle(tree: Path) -> Path:
    """Lay the bundle out under ``tree``; return the path of its interpreter."""
    manifest = subprocess.run(
        [sys.executable, "-m", "sealer.install.bundle", "--destdir", str(tree)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    for line in manifest.splitlines():
        kind, source, dest = line.split()
        if kind not in ("exec", "file"):
            raise ValueError(f"unknown manifest line: {line}")
        target = tree / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return tree / BUNDLED_PYTHON
