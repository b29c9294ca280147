"""Rewriting a LUKS2 token as an attacker with the disk would: cryptsetup keeps the header's
checksums valid, so what the tests write is exactly what a reader of the disk would find."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from sealer.luks import cryptsetup


def token_doc(image: Path, token_id: int = 0) -> dict[str, Any]:
    return dict(cryptsetup.read_header(str(image)).tokens[token_id].data)


def write_token(image: Path, token_id: int, doc: dict[str, Any]) -> None:
    subprocess.run(
        ["cryptsetup", "token", "import", "--token-replace", "--token-id", str(token_id),
         "--json-file", "-", str(image)],
        input=json.dumps(doc).encode(), check=True, capture_output=True,
    )


def edit_token(image: Path, token_id: int, **fields: Any) -> None:
    write_token(image, token_id, {**token_doc(image, token_id), **fields})
