#!/usr/bin/env python3
"""Benchmark: a dependency graph of sleeping tasks under max_parallel, against its
critical path (the longest chain of dependencies: no schedule can be shorter).

    .venv/bin/python bench/parallel_graph.py [--scale 1.0] [--max-ratio 1.05] [--json]

Builds a fixed, seeded graph of 16 tasks (sleeps of 0.2-0.8 s times --scale), runs the
real `runner -n 1` on it with max_parallel as wide as the graph, and measures the chain's
wall time from runner's own log (first task start to last task end, so interpreter
start-up is not counted) and the whole command. Prints the ratio to the critical path
and exits 1 when it is above --max-ratio. Ratios, not seconds, so a noisy shared machine
compares like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from runner.config import load  # noqa: E402
from runner.graph import critical_path, waves  # noqa: E402
from runner.tasks import discover  # noqa: E402

RUNNER = str(Path(sys.executable).parent / "runner")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO (\S+): (starting|OK)")


def build(root: Path, scale: float, seed: int = 6) -> dict[str, float]:
    """Task files and runner.cfg for a layered random graph; the durations by task."""
    rng = random.Random(seed)
    tasks = root / "tasks.d"
    tasks.mkdir()
    durations, names, sections = {}, [], []
    for layer in range(4):
        for index in range(4):
            name = f"t{layer}{index}"
            seconds = round(rng.uniform(0.2, 0.8) * scale, 3)
            path = tasks / name
            path.write_text(f"#!/bin/sh\nsleep {seconds}\n")
            path.chmod(0o755)
            durations[name] = seconds
            if layer:
                parents = rng.sample([n for n in names if n[1] == str(layer - 1)], 2)
                sections.append(f"[{name}]\ndepends_on = {', '.join(parents)}\n")
            names.append(name)
    (root / "runner.cfg").write_text(
        "[runner]\nmax_parallel = 4\nsleep_time = 0\nretry_jitter = 0\nmax_tries = 1\n"
        f"state_dir = {root / 'state'}\nruntime_dir = {root / 'run'}\n" + "".join(sections)
    )
    return durations


def chain_seconds(log: str) -> float:
    """From the first task start to the last task end, by runner's log timestamps."""
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
             for m in map(STAMP.match, log.splitlines()) if m]
    return (max(times) - min(times)).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every sleep")
    parser.add_argument("--max-ratio", type=float, default=1.05)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        root = Path(tmp)
        durations = build(root, args.scale)
        config = load(str(root / "runner.cfg"))
        plan = discover(config, str(root / "tasks.d"))
        critical, path = critical_path(plan.tasks, durations, plan.needs)
        started = time.monotonic()
        proc = subprocess.run([RUNNER, "-c", str(root / "runner.cfg"), "-n", "1",
                               str(root / "tasks.d")], capture_output=True, text=True,
                              env={**os.environ, "TZ": "UTC"})
        command_s = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 2
    chain = chain_seconds(proc.stderr)
    result = {
        "tasks": len(durations), "max_parallel": 4,
        "waves": len(waves(plan.tasks, 4, plan.needs)),
        "sum_s": round(sum(durations.values()), 3), "critical_path_s": round(critical, 3),
        "critical_path": path, "chain_s": round(chain, 3), "command_s": round(command_s, 3),
        "ratio": round(chain / critical, 4), "max_ratio": args.max_ratio,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['tasks']} tasks, {result['sum_s']} s of work, critical path "
              f"{result['critical_path_s']} s ({' -> '.join(path)})")
        print(f"chain {result['chain_s']} s, whole command {result['command_s']} s: "
              f"{result['ratio']:.3f} x the critical path (limit {args.max_ratio})")
    return 0 if result["ratio"] <= args.max_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
