#!/usr/bin/env python3
"""Where one task's time goes: each part of a task run, measured alone with runner's own
classes, against the floor of starting the same no-op program.

  spawn floor      os.posix_spawn + waitpid of a `#!/bin/sh` no-op (no pipe, no thread)
  process          runner.process.run_process of it, from / as systemd starts runner:
                   posix_spawn (vfork), its output pipe (a reader thread only if it
                   writes), the pidfd wait, wait4
  journal          the two journal records of a run: RUNNING (a line of the start log,
                   runner.startlog) and OK, both committed to SQLite in one transaction
                   at the next idle(), as in a chain
  status file      the two rewrites of status.json (runtime_dir, not durable)
  logging          the two log lines of a run (`starting`, `OK after`), to /dev/null
  whole chain      `runner -n 1` over N no-op tasks, per task, minus an empty chain

Each figure is the median of --rounds rounds of --tasks runs, in ms per task. The parts
add up to more or less than the whole chain: in a chain the log lines, the status file
and the OK record are made while the next task runs, and the rest is the scheduler, the
state machine and each run's settings and environment.

    .venv/bin/python bench/task_profile.py [--tasks 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import compileall
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import runner as runner_package
from runner.identity import RunIdentity
from runner.journal import JournalListener
from runner.livestatus import LiveStatus
from runner.masking import Masker
from runner.process import Limits, run_process
from runner.settings import TaskSettings
from runner.signals import SignalState
from runner.states import TaskRun, TaskState
from runner.tasks import Task

NOOP = "#!/bin/sh\nexit 0\n"


def per_task(fn, n: int, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(n)
        times.append((time.perf_counter() - start) / n * 1000)
    return statistics.median(times)


def spawn_floor(program: str):
    def go(n: int) -> None:
        for _ in range(n):
            pid = os.posix_spawn(program, [program], dict(os.environ))
            os.waitpid(pid, 0)
    return go


def process(program: str):
    signals, masker, env = SignalState(), Masker(()), dict(os.environ)

    def go(n: int) -> None:
        for _ in range(n):
            run_process([program], env=env, cwd="/", limits=Limits(), signals=signals,
                        on_line=lambda line: None, masker=masker)
    return go


def _runs(program: str, n: int) -> list[TaskRun]:
    settings = TaskSettings(max_time=0, max_tries=1, sleep_time=0, retry_jitter=0,
                            interpreter=None, kill_grace=1)
    task = Task("t001", program, "t001", settings)
    return [TaskRun(task, 1, 1, 1) for _ in range(n)]


def _transitions(listener, runs: list[TaskRun]) -> None:
    for run in runs:
        run.state = TaskState.RUNNING
        run.mark_started()
        listener.task_changed(run)
        run.state, run.exit_code, run.duration_s = TaskState.OK, 0, 0.001
        listener.task_changed(run)
        listener.idle()  # runner waits for the next task: what was kept back is written


def journal(root: Path, program: str):
    identity = RunIdentity.current()
    listener = JournalListener(str(root / "journal.sqlite"), identity, run_info={})
    listener.started()

    def go(n: int) -> None:
        _transitions(listener, _runs(program, n))
    return go


def status_file(root: Path, program: str):
    live = LiveStatus(str(root / "run"), RunIdentity.current(), run_info={},
                      health=lambda: {})
    live.started()

    def go(n: int) -> None:
        _transitions(live, _runs(program, n))
    return go


def logging_lines():
    log = logging.getLogger("runner.profile")
    handler = logging.StreamHandler(open(os.devnull, "w"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    def go(n: int) -> None:
        for _ in range(n):
            log.info("%s: starting (try %d/%d, iteration %d)", "t001", 1, 5, 1)
            log.info("%s: %s after %.2fs", "t001", "OK", 0.001)
    return go


def whole_chain(root: Path, n: int, rounds: int) -> float:
    runner = str(Path(sys.executable).with_name("runner"))
    tasks, empty = root / "chain", root / "empty"
    tasks.mkdir()
    empty.mkdir()
    for i in range(n):
        path = tasks / f"t{i:05d}"
        path.write_text(NOOP)
        path.chmod(0o755)
    config = root / "chain.cfg"
    config.write_text(f"[runner]\nstate_dir = {root}/state\nruntime_dir = {root}/crun\n"
                      "sleep_time = 0\nhalt_task = none\n")
    # As installed: from compiled bytecode (see bench.py's clean_env).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    compileall.compile_dir(os.path.dirname(runner_package.__file__), quiet=1)
    per = []
    for _ in range(rounds):
        walls = []
        for directory in (tasks, empty):
            start = time.perf_counter()
            subprocess.run([runner, "-c", str(config), "-n", "1", str(directory)],
                           stderr=subprocess.DEVNULL, check=True, env=env, cwd="/")
            walls.append(time.perf_counter() - start)
        per.append((walls[0] - walls[1]) / n * 1000)
    return statistics.median(per)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.chdir("/")  # as systemd starts runner: tasks (task_cwd /) start by posix_spawn
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        program = str(root / "noop")
        Path(program).write_text(NOOP)
        os.chmod(program, 0o755)
        n, rounds = args.tasks, args.rounds
        rows = {
            "spawn floor": per_task(spawn_floor(program), n, rounds),
            "process": per_task(process(program), n, rounds),
            "journal": per_task(journal(root, program), n, rounds),
            "status file": per_task(status_file(root, program), n, rounds),
            "logging": per_task(logging_lines(), n, rounds),
            "whole chain": whole_chain(root, n, rounds),
        }
    floor = rows["spawn floor"]
    print(f"where one task's time goes ({n} no-op tasks, median of {rounds} rounds)")
    for name, value in rows.items():
        extra = "" if name == "spawn floor" else f"  ({value / floor:.2f}x the spawn floor)"
        print(f"  {name:<12} {value:7.3f} ms/task{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
