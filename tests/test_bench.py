"""The benchmarks run and measure what they claim (their speed targets are checked by
running them, not here: these machines are shared and noisy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_parallel_graph_benchmark_never_beats_its_critical_path():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "parallel_graph.py"), "--scale", "0.3",
         "--max-ratio", "100", "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["tasks"] == 16 and result["waves"] >= 4
    # Shorter than the critical path would mean a dependency was not waited for; the
    # sum of the work is what running one at a time would cost.
    assert result["ratio"] >= 0.99
    assert result["chain_s"] < result["sum_s"]
    assert result["critical_path"][0].startswith("t0")
    assert result["critical_path"][-1].startswith("t3")
