"""Run a command with secrets handed over in pipes, as sealer's users do (never in argv)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence


def run_with_pipes(
    argv: Sequence[str],
    args: Sequence[str],
    *,
    stdin: bytes = b"",
    fds: Sequence[bytes] = (),
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv + args``; each of ``fds`` goes in a pipe that ``args`` name "{fd0}", ...."""
    pipes = []
    for data in fds:
        read_fd, write_fd = os.pipe()
        os.write(write_fd, data)
        os.close(write_fd)
        pipes.append(read_fd)
    names = {f"fd{i}": f"/dev/fd/{fd}" for i, fd in enumerate(pipes)}
    full = [*argv, *(arg.format(**names) if "{fd" in arg else arg for arg in args)]
    try:
        return subprocess.run(
            full, input=stdin, capture_output=True, pass_fds=pipes, env=env, timeout=120
        )
    finally:
        for fd in pipes:
            os.close(fd)
