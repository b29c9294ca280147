"""The latency proxy (swtpm-fixtures/latency_proxy.py) in front of a real swtpm: tpm2-tools
works through it and every command is counted. Counted, never timed: no assertion on a clock."""

from __future__ import annotations

import subprocess

import pytest
from latency_proxy import LatencyProfile, LatencyProxy
from swtpm import Swtpm

CC_GET_CAPABILITY = 0x17A
CC_GET_RANDOM = 0x17B


def test_tpm2_tools_through_the_proxy_succeed_and_are_counted(swtpm: Swtpm) -> None:
    table = LatencyProfile("tiny", "test", default_ms=0.0,
                           per_command_ms={CC_GET_RANDOM: 30.0, CC_GET_CAPABILITY: 30.0})
    with LatencyProxy(swtpm.port, table) as proxy:
        for _ in range(2):  # two processes: the proxy serves each new connection
            result = subprocess.run(["tpm2_getrandom", "-T", proxy.tcti, "--hex", "8"],
                                    capture_output=True, timeout=30)
            assert result.returncode == 0, result.stderr.decode()
            assert len(result.stdout.strip()) == 16
        counts = proxy.command_counts()
    assert counts["GetRandom"] == 2
    assert proxy.errors == []
    # Only the delays of the table's own commands were added.
    assert proxy.delayed_seconds == pytest.approx(
        0.03 * (counts["GetRandom"] + counts["GetCapability"])
    )
