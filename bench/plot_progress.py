#!/usr/bin/env python3
"""What issue 19's two pictures cost: the live progress line and `runner plot`.

    .venv/bin/python bench/plot_progress.py [--tasks N] [--rounds R] [--json]

progress  a chain of N no-op tasks (default 200) run by `runner -n 1` with its stderr on a
          pseudo-terminal, with the progress line (the default there) and with
          --no-progress, interleaved round by round (A B, B A, ...); the median wall
          and CPU time (runner's and its tasks', from wait4) of each and their ratios.
          Target: CPU within 1.05x (an event sets a field; a thread draws at most 4
          times a second).
plot      a journal of N tasks x 5 tries (the last task fails the first 4 tries:
          5N task runs), then `runner plot` and `runner history --limit 5N` on it,
          interleaved; the median wall time of each and their ratio (both read the
          same rows; plot also draws them). Information, with a bound: within 3x.

Standard library only; runner is the one beside this interpreter (the venv's).
Exit status 0 (a missed target is reported as MISS), 2 when a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RUNNER = str(Path(sys.executable).parent / "runner")
NOOP = "#!/bin/sh\nexit 0\n"
FAILS_4 = """#!/bin/sh
n=$(cat "$RUNNER_STATE_DIR/count" 2>/dev/null || echo 0)
echo $((n + 1)) > "$RUNNER_STATE_DIR/count"
[ "$n" -ge 4 ]
"""


def setup(root: Path, tasks: int, last: str = NOOP) -> Path:
    taskdir = root / "tasks.d"
    taskdir.mkdir(parents=True)
    for i in range(1, tasks + 1):
        path = taskdir / f"t{i:03d}"
        path.write_text(last if i == tasks else NOOP)
        path.chmod(0o755)
    config = root / "runner.cfg"
    config.write_text(f"[runner]\nsleep_time = 0\nretry_jitter = 0\nmax_tries = 5\n"
                      f"state_dir = {root / 'state'}\nruntime_dir = {root / 'run'}\n"
                      f"task_dir = {taskdir}\n")
    return config


def on_pty(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds of `argv` with stderr on a pseudo-terminal, drained as it
    writes."""
    master, slave = os.openpty()
    received = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "TERM": "xterm"}
    env.pop("JOURNAL_STREAM", None)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    os.close(slave)
    reader.join(timeout=5)
    os.close(master)
    if proc.returncode != 0:
        raise SystemExit(f"BROKEN: {argv} exited {proc.returncode}: {received[-500:]!r}")
    return wall, usage.ru_utime + usage.ru_stime


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"BROKEN: {argv} exited {proc.returncode}: {proc.stderr[-500:]!r}")
    return wall


def bench_progress(root: Path, tasks: int, rounds: int) -> dict:
    config = setup(root / "progress", tasks)
    base = [RUNNER, "-c", str(config), "-n", "1"]
    samples: dict[str, list[tuple[float, float]]] = {"progress": [], "no_progress": []}
    argvs = {"progress": base, "no_progress": [*base, "--no-progress"]}
    for index in range(rounds):  # A B, then B A: neither always goes first
        for name in sorted(argvs, reverse=bool(index % 2)):
            samples[name].append(on_pty(argvs[name]))
    on, off = (statistics.median(w for w, _ in samples[k]) for k in argvs)
    on_cpu, off_cpu = (statistics.median(c for _, c in samples[k]) for k in argvs)
    return {"tasks": tasks, "progress_s": round(on, 4), "no_progress_s": round(off, 4),
            "ratio": round(on / off, 3), "progress_cpu_s": round(on_cpu, 4),
            "no_progress_cpu_s": round(off_cpu, 4), "cpu_ratio": round(on_cpu / off_cpu, 3),
            "target": 1.05}


def bench_plot(root: Path, tasks: int, rounds: int) -> dict:
    config = setup(root / "plot", tasks, last=FAILS_4)
    timed([RUNNER, "-c", str(config), "-n", "1", "--no-progress"])
    runs = 5 * tasks  # tries 1-4 run every task, the last failing; try 5 passes
    out = root / "plot.svg"
    plot = [RUNNER, "-c", str(config), "plot", "-o", str(out)]
    history = [RUNNER, "-c", str(config), "history", "--limit", str(runs)]
    walls: dict[str, list[float]] = {"plot": [], "history": []}
    for index in range(rounds):
        for argv in (plot, history) if index % 2 else (history, plot):
            walls["plot" if argv is plot else "history"].append(timed(argv))
    drawn = out.read_text().count('class="run"')
    if drawn != runs:
        raise SystemExit(f"BROKEN: the plot has {drawn} bars, the journal {runs} task runs")
    p, h = (statistics.median(walls[k]) for k in ("plot", "history"))
    return {"task_runs": runs, "plot_s": round(p, 4), "history_s": round(h, 4),
            "ratio": round(p / h, 3), "target": 3.0, "svg_bytes": out.stat().st_size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runner-bench-plot-") as tmp:
        root = Path(tmp)
        result = {"progress": bench_progress(root, args.tasks, args.rounds),
                  "plot": bench_plot(root, args.tasks, args.rounds)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    p, q = result["progress"], result["plot"]
    print(f"progress  {p['tasks']} no-op tasks on a pty, with the line / without: wall "
          f"{p['progress_s']:.3f}s / {p['no_progress_s']:.3f}s = {p['ratio']:.3f}x, CPU "
          f"{p['progress_cpu_s']:.3f}s / {p['no_progress_cpu_s']:.3f}s = "
          f"{p['cpu_ratio']:.3f}x ({'ok' if p['cpu_ratio'] <= p['target'] else 'MISS'}, "
          f"target {p['target']}x)")
    print(f"plot      {q['task_runs']} task runs: runner plot {q['plot_s']:.3f}s, runner "
          f"history {q['history_s']:.3f}s: {q['ratio']:.2f}x "
          f"({'ok' if q['ratio'] <= q['target'] else 'MISS'}, target {q['target']}x); "
          f"SVG {q['svg_bytes'] // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
