#!/usr/bin/env python3
"""Benchmarks of runner's own costs, each against a floor or a usual tool, in one table.

    .venv/bin/python bench/bench.py [--quick] [--repeat N] [--only ID,...] [--json] [--strict]

Standard library only. hyperfine and pyperf time one command at a time; here every
comparison is a ratio of runs made in the same round, interleaved (A B C A B C ...), so
that noise on a shared machine hits all alike, and every figure is the median of the
rounds (`--repeat`, default 5; `--quick`, for CI, takes fewer tasks and rounds: seconds).

  chain     200 no-op tasks (`#!/bin/sh` + `exit 0`, named t001... so run-parts runs them)
            run once by `runner -n 1`, by `run-parts` and by a plain
            `for f in dir/*; do "$f"; done` loop. Per-task time =
            (wall of the N-task chain - wall of the same command on an empty directory) / N,
            so start-up is not counted (the empty directory runs twice a round and the
            median of all those is subtracted); the totals are reported too.
            Targets: runner within 1.5x of run-parts per task (issue 17), under 5 ms per
            task.
  config    the same with 50 tasks that each call `$RUNNER_CONFIG_CMD -g section.key` 10
            times (run-parts and the loop get runner's real RUNNER_CONFIG_CMD, on a copy of
            its snapshot). Per-task time as above, within 2x of run-parts. The lookups
            dominate it and vary, so each task also records when its body started and
            ended (`date +%s%N`): overhead per task = (per-task time - mean body time), the
            cost of the chain itself, under 5 ms (run-parts' is shown beside it).
  getconf   latency of the real RUNNER_CONFIG_CMD (captured from a task that runner ran)
            `-g section.key`, against `PYTHON -I -S -c pass` with the very interpreter
            binary that command starts (the floor of any Python command) and against
            `crudini --get` (skipped with a note when not installed). Targets: within 1.5x
            of the floor, faster than crudini. The installed runner-config too: `-g` in a
            task's environment (RUNNER_CONFIG_SNAPSHOT names the snapshot; within 1.3x of
            the floor), `-c runner.cfg -g` from a warm cache (RUNNER_CACHE_DIR, primed by
            the check run; within 2x) and with no cache, parsing (information).
  wait      runner on one task that sleeps 10 s (3 s with --quick): runner's CPU time
            (utime+stime of /proc/PID/stat) from the task's start line to its end line, and
            its peak RSS (the largest VmHWM of /proc/PID/status, sampled by this script).
            Targets: under 0.05 s of CPU (no polling), peak RSS under 30 MB.
  graph     a seeded 30-task graph of sleeps (5 layers of 6, two parents each) under
            max_parallel = 6: the chain's wall time (first start to last end, from
            runner's log, as bench/parallel_graph.py measures it) against its critical
            path. Target: within 1.05x.
  strict    what strict_permissions costs per task: every path runner executes is checked
            along its whole chain right before the exec. In process: the median time of
            permissions.verify() on a task four directories deep (target: under 100 us).
            End to end: the chain benchmark's no-op tasks with strict_permissions off and
            on, interleaved, per-task time as in `chain`; the difference is shown (it is
            within the noise: information only). Needs root (without it the check does
            not apply, and the rows say SKIP).
  commands  the commands people type (issue 17): `runner status`, `runner ctl pause` (no
            runner runs: its one-line refusal), `runner history --limit 20` (on the journal
            of one run), `runner check TASKDIR` and `runner --help`, each against
            `PYTHON -I -S -c pass` with the real interpreter binary, in interleaved rounds,
            runner.confcache and runner.checkcache warm (RUNNER_CACHE_DIR, primed by
            the check run and the first call). Target: within 3x of the floor each.
            `runner check` with no cache (RUNNER_CACHE_DIR empty: it loads and validates
            everything, configobj, the task directory, preflight) is shown beside it as
            information.
  memory    runner's peak RSS (the kernel's ru_maxrss of the runner process, from wait4)
            over a whole `runner -n 1` of 200 no-op tasks and of 10,000 (quick: 2,000),
            each run once and checked like the chains. Targets (issue 17): under 30 MB
            and under 60 MB.

runner is the one beside this interpreter (the venv's), on a temporary config (state_dir
and runtime_dir in the temporary directory, sleep_time = 0, max_tries = 1) with the
journal on, as by default. Every run is checked: runner must exit 0 and log every task
OK, the tasks of run-parts and the loop must have run (they leave marks in a check run),
runner-config must print the right value. A check that fails makes the benchmark BROKEN
and the exit status 2; a missed target is reported (MISS) and exits 0, or 1 with
`--strict`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

BIN = Path(sys.executable).parent
RUNNER = str(BIN / "runner")
RUNNER_CONFIG = str(BIN / "runner-config")
BENCHMARKS = ("chain", "config", "getconf", "wait", "graph", "strict", "commands", "memory")
NOOP = "#!/bin/sh\nexit 0\n"
# The plain loop of the issue; `[ -e ]` only so that an empty directory (whose glob stays
# unexpanded) runs nothing, and `|| exit 1` so that a failing task is noticed.
LOOP = 'for f in "$1"/*; do [ -e "$f" ] || continue; "$f" || exit 1; done'
LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (\S+): (starting|OK after)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Broken(Exception):
    """The benchmark did not measure what it claims (tasks did not run, wrong output)."""


# --------------------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what would change runner's behaviour or log format."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                        "RUNTIME_DIRECTORY", "RUNNER_CONFIG_CMD", "RUNNER_CONFIG_SNAPSHOT",
                        "RUNNER_CACHE_DIR", "LISTEN_FDS",
                        # An installed runner starts from compiled bytecode (the packages
                        # compile it at install); a shell that forbids writing it would
                        # make every start pay for compiling the package.
                        "PYTHONDONTWRITEBYTECODE")}
    env["TZ"] = "UTC"
    env.update(extra)
    return env


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_task(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def write_config(root: Path, runner_extra: str = "", sections: str = "") -> Path:
    path = root / "runner.cfg"
    path.write_text(
        "[runner]\nsleep_time = 0\nmax_tries = 1\n"
        f"state_dir = {root / 'state'}\nruntime_dir = {root / 'run'}\n{runner_extra}"
        "\n[section]\nkey = value\n" + sections
    )
    return path


def run_timed(cmd: list[str], env: dict[str, str], log: Path | None = None
              ) -> tuple[float, int, str]:
    """(wall seconds, exit status, stderr) of one run; stderr goes to a file, not a pipe
    that this process would have to drain while timing. From /, as systemd starts runner
    (its tasks then start by posix_spawn: runner.process._start)."""
    with open(log or os.devnull, "w+b") as err:
        started = time.perf_counter()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=err, env=env, cwd="/")
        wall = time.perf_counter() - started
        err.seek(0)
        text = err.read().decode("utf-8", "replace") if log else ""
    return wall, proc.returncode, text


def run_measured(cmd: list[str], env: dict[str, str], log: Path
                 ) -> tuple[float, int, str, int]:
    """run_timed, plus the process's peak RSS in KiB (ru_maxrss, from wait4)."""
    with open(log, "w+b") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd="/")
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
    return wall, proc.returncode, text, usage.ru_maxrss


def ok_tasks(log: str) -> set[str]:
    return {m.group(2) for m in map(LOG_LINE.match, log.splitlines())
            if m and m.group(3) == "OK after"}


def runner_cmd(config: Path, taskdir: Path) -> list[str]:
    return [RUNNER, "-c", str(config), "-n", "1", str(taskdir)]


def last_lines(text: str, n: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-n:])


def row(bench: str, name: str, *, value: float | None, unit: str, text: str,
        reference: str = "", reference_value: float | None = None,
        ratio: float | None = None, target: str = "", status: str = "INFO") -> dict:
    return {"benchmark": bench, "name": name, "value": value, "unit": unit, "figure": text,
            "reference": reference, "reference_value": reference_value,
            "ratio": None if ratio is None else round(ratio, 3), "target": target,
            "status": status}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ------------------------------------------------------------------- 1 and 2: chains


def bench_memory(root: Path, args) -> tuple[dict, list[dict]]:
    config = write_config(root)
    result: dict = {}
    rows = []
    for n, limit_mb in ((200, 30), (args.memory_tasks, 60)):
        taskdir = root / f"noop-{n}.d"
        taskdir.mkdir()
        names = [f"t{i:05d}" for i in range(1, n + 1)]
        for name in names:
            write_task(taskdir / name, NOOP)
        wall, code, text, rss_kb = run_measured(runner_cmd(config, taskdir), clean_env(),
                                                root / f"run-{n}.log")
        if code != 0 or ok_tasks(text) != set(names):
            raise Broken(f"runner on {n} tasks exited {code}, {len(ok_tasks(text))} OK: "
                         f"{last_lines(text)}")
        shutil.rmtree(taskdir)
        mb = rss_kb / 1024
        result[str(n)] = {"peak_rss_mb": round(mb, 1), "wall_s": round(wall, 2)}
        rows.append(row("memory", f"8 peak RSS, {n} no-op tasks", value=mb, unit="MB",
                        text=f"{mb:.1f} MB ({wall:.1f} s, {wall / n * 1000:.2f} ms/task)",
                        target=f"< {limit_mb} MB", status=verdict(mb < limit_mb)))
    return result, rows


def chain_methods(config: Path, env: dict[str, str]) -> dict[str, tuple]:
    """How each method runs a directory: (command for a dir, env, is runner)."""
    return {
        "runner": (lambda d: runner_cmd(config, d), env, True),
        "run-parts": (lambda d: ["run-parts", "--exit-on-error", str(d)], env, False),
        "shell loop": (lambda d: ["sh", "-c", LOOP, "sh", str(d)], env, False),
    }


def measure_chains(root: Path, methods: dict[str, tuple], full: Path, empty: Path,
                   names: list[str], repeat: int, marks: Path | None) -> dict:
    """Interleaved rounds of every method on `full` and on `empty`; checks every run.
    With `marks`, each task writes `START END` (ns) to marks/NAME: the time spent in the
    tasks' bodies is then known and subtracted (`overhead_ms`)."""
    walls: dict[str, list[float]] = {m: [] for m in methods}
    bodies: dict[str, list[float]] = {m: [] for m in methods}
    empties: dict[str, list[float]] = {m: [] for m in methods}
    log = root / "runner.log"
    for _ in range(repeat):
        # The empty directory twice a round: the start-up subtracted is the median of all
        # of them (one noisy start-up paired with each chain moved the figure by ±20%).
        for target, store in ((full, walls), (empty, empties), (empty, empties)):
            for method, (cmd, env, is_runner) in methods.items():
                if marks is not None:
                    shutil.rmtree(marks, ignore_errors=True)
                    marks.mkdir()
                wall, code, text = run_timed(cmd(target), env, log if is_runner else None)
                if code != 0:
                    raise Broken(f"{method} on {target.name} exited {code}: {last_lines(text)}")
                expected = set(names) if target is full else set()
                if is_runner and ok_tasks(text) != expected:
                    raise Broken(f"runner logged {len(ok_tasks(text))} of {len(expected)} "
                                 f"tasks OK: {last_lines(text)}")
                if marks is not None and target is full:
                    done = {p.name: p.read_text().split() for p in marks.iterdir()}
                    if set(done) != expected:
                        raise Broken(f"{method}: {len(done)} of {len(expected)} tasks ran")
                    bodies[method].append(sum(int(end) - int(start)
                                              for start, end in done.values()) / 1e9)
                store[method].append(wall)
    n = len(names)
    start_up = {m: median(v) for m, v in empties.items()}
    per_task = {m: [(w - start_up[m]) / n * 1000 for w in walls[m]] for m in methods}
    return {
        "tasks": n, "rounds": repeat,
        "wall_s": {m: round(median(v), 4) for m, v in walls.items()},
        "empty_wall_s": {m: round(median(v), 4) for m, v in empties.items()},
        "per_task_ms": {m: round(median(v), 3) for m, v in per_task.items()},
        "total_per_task_ms": {m: round(median(v) / n * 1000, 3) for m, v in walls.items()},
        "ratio_to_run_parts": {
            m: round(median([a / b for a, b in zip(per_task[m], per_task["run-parts"],
                                                   strict=True)]), 3)
            for m in methods},
        "extra_over_run_parts_ms": {
            m: round(median([a - b for a, b in zip(per_task[m], per_task["run-parts"],
                                                   strict=True)]), 3)
            for m in methods},
        "samples_s": {m: [round(w, 4) for w in walls[m]] for m in methods},
        **(_overheads(walls, empties, bodies, n) if marks is not None else {}),
        "empty_samples_s": {m: [round(w, 4) for w in empties[m]] for m in methods},
    }


def _overheads(walls: dict, empties: dict, bodies: dict, n: int) -> dict:
    """Per task, what is neither start-up (the median of the empty runs) nor inside a
    task's body."""
    over = {m: [(w - median(empties[m]) - b) / n * 1000
                for w, b in zip(walls[m], bodies[m], strict=True)]
            for m in walls}
    return {
        "body_s": {m: round(median(v), 4) for m, v in bodies.items()},
        "overhead_ms": {m: round(median(v), 3) for m, v in over.items()},
        "overhead_ratio_to_run_parts": {
            m: round(median([a / b for a, b in zip(over[m], over["run-parts"], strict=True)]),
                     3) for m in over},
    }


def check_ran(root: Path, methods: dict[str, tuple], n: int) -> None:
    """Each method runs a directory of n marking tasks named like the timed ones."""
    marks = root / "marks-check"
    taskdir = root / "check.d"
    taskdir.mkdir()
    names = [f"t{i:03d}" for i in range(1, n + 1)]
    for name in names:
        write_task(taskdir / name, f'#!/bin/sh\n: > "{marks}/{name}"\nexit 0\n')
    for method, (cmd, env, is_runner) in methods.items():
        shutil.rmtree(marks, ignore_errors=True)
        marks.mkdir()
        _, code, text = run_timed(cmd(taskdir), env, root / "check.log" if is_runner else None)
        done = sorted(p.name for p in marks.iterdir())
        if code != 0 or done != names:
            raise Broken(f"check run: {method} exited {code} and ran {len(done)} of {n} "
                         f"tasks {last_lines(text)}")


def bench_chain(root: Path, args) -> tuple[dict, list[dict]]:
    n = args.chain_tasks
    config = write_config(root)
    methods = chain_methods(config, clean_env())
    check_ran(root, methods, n)
    full, empty = root / "noop.d", root / "empty.d"
    full.mkdir()
    empty.mkdir()
    names = [f"t{i:03d}" for i in range(1, n + 1)]
    for name in names:
        write_task(full / name, NOOP)
    result = measure_chains(root, methods, full, empty, names, args.chain_rounds, None)
    per, ratio = result["per_task_ms"], result["ratio_to_run_parts"]
    name = f"1 chain, {n} no-op tasks: runner"
    text = (f"{per['runner']:.2f} ms/task (total {result['wall_s']['runner']:.2f} s, "
            f"empty {result['empty_wall_s']['runner']:.2f} s)")
    ref = f"run-parts {per['run-parts']:.2f} ms/task"
    rows = [
        row("chain", name, value=per["runner"], unit="ms/task", text=text, reference=ref,
            reference_value=per["run-parts"], ratio=ratio["runner"],
            target="<= 1.5x run-parts", status=verdict(ratio["runner"] <= 1.5)),
        row("chain", name, value=per["runner"], unit="ms/task", text=text,
            target="< 5 ms/task", status=verdict(per["runner"] < 5)),
        row("chain", f"1 chain, {n} no-op tasks: shell loop", value=per["shell loop"],
            unit="ms/task", text=f"{per['shell loop']:.2f} ms/task", reference=ref,
            reference_value=per["run-parts"], ratio=ratio["shell loop"]),
    ]
    return result, rows


def bench_config(root: Path, args, config_cmd: str) -> tuple[dict, list[dict]]:
    n, calls = args.config_tasks, args.config_calls
    config = write_config(root)
    marks = root / "marks"
    full, empty = root / "config.d", root / "empty.d"
    full.mkdir()
    empty.mkdir()
    names = [f"t{i:03d}" for i in range(1, n + 1)]
    for name in names:
        write_task(full / name, f"""#!/bin/sh
start=$(date +%s%N)
i=0
while [ "$i" -lt {calls} ]; do
    v=$($RUNNER_CONFIG_CMD -g section.key) || exit 1
    [ "$v" = value ] || {{ echo "RUNNER_CONFIG_CMD printed '$v'" >&2; exit 1; }}
    i=$((i + 1))
done
echo "$start $(date +%s%N)" > "{marks}/{name}"
""")
    # runner sets its own RUNNER_CONFIG_CMD; the others get the one runner gives tasks.
    methods = chain_methods(config, clean_env(RUNNER_CONFIG_CMD=config_cmd))
    methods["runner"] = (methods["runner"][0], clean_env(), True)
    result = measure_chains(root, methods, full, empty, names, args.repeat, marks)
    result["calls_per_task"] = calls
    per, ratio = result["per_task_ms"], result["ratio_to_run_parts"]
    over = result["overhead_ms"]
    over_ratio = result["overhead_ratio_to_run_parts"]
    name = f"2 chain, {n} tasks x {calls} lookups: runner"
    text = f"{per['runner']:.1f} ms/task (total {result['wall_s']['runner']:.2f} s)"
    ref = f"run-parts {per['run-parts']:.1f} ms/task"
    rows = [
        row("config", name, value=per["runner"], unit="ms/task", text=text, reference=ref,
            reference_value=per["run-parts"], ratio=ratio["runner"], target="<= 2x run-parts",
            status=verdict(ratio["runner"] <= 2)),
        row("config", "2   runner's overhead per task (outside the tasks' bodies)",
            value=over["runner"], unit="ms/task", text=f"{over['runner']:.2f} ms/task",
            reference=f"run-parts {over['run-parts']:.2f} ms/task",
            reference_value=over["run-parts"], ratio=over_ratio["runner"],
            target="< 5 ms/task", status=verdict(over["runner"] < 5)),
        row("config", f"2 chain, {n} tasks x {calls} lookups: shell loop",
            value=per["shell loop"], unit="ms/task", text=f"{per['shell loop']:.1f} ms/task",
            reference=ref, reference_value=per["run-parts"], ratio=ratio["shell loop"]),
    ]
    return result, rows


# ---------------------------------------------------------------- 3: runner-config -g


def capture_config_cmd(root: Path) -> tuple[list[str], Path]:
    """runner's real RUNNER_CONFIG_CMD, pointed at a stable copy of its snapshot."""
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root)
    out = root / "captured"
    out.mkdir()
    taskdir = root / "capture.d"
    taskdir.mkdir()
    write_task(taskdir / "capture", f"""#!/bin/sh
set -eu
snapshot="${{RUNNER_CONFIG_CMD##*--snapshot }}"
cp "$snapshot" "{out}/config.snapshot"
# The root-only half (secret values; section.key is one: it matches *KEY*), which a
# lookup by root opens first.
if [ -e "$snapshot.private" ]; then cp -p "$snapshot.private" "{out}/config.snapshot.private"; fi
printf '%s\\n' "$RUNNER_CONFIG_CMD" > "{out}/cmd"
""")
    _, code, text = run_timed(runner_cmd(config, taskdir), clean_env(), root / "capture.log")
    if code != 0 or not (out / "cmd").exists():
        raise Broken(f"capturing RUNNER_CONFIG_CMD: runner exited {code}: {last_lines(text)}")
    parts = (out / "cmd").read_text().split()
    if "--snapshot" not in parts[:-1]:
        raise Broken(f"RUNNER_CONFIG_CMD has no --snapshot FILE: {parts}")
    parts[parts.index("--snapshot") + 1] = str(out / "config.snapshot")
    return parts, config


def is_binary(path: str) -> bool:
    try:
        with open(os.path.realpath(path), "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def floor_ratio(samples: dict[str, list[float]], name: str) -> float:
    """The median of `name`'s time over the interpreter's, paired within each round."""
    return round(median([a / b for a, b in zip(samples[name], samples["python -I -S -c pass"],
                                                strict=True)]), 3)


def bench_getconf(root: Path, args, parts: list[str], config: Path
                  ) -> tuple[dict, list[dict]]:
    python = parts[0]
    snapshot = parts[parts.index("--snapshot") + 1]
    base_env = clean_env(RUNNER_CACHE_DIR="")
    cached_env = clean_env(RUNNER_CACHE_DIR=str(root / "config-cache"))
    task_env = clean_env(RUNNER_CONFIG_SNAPSHOT=snapshot, RUNNER_CACHE_DIR="")
    get = ["-c", str(config), "-g", "section.key"]
    # name: (command, environment); the installed runner-config three ways (issue 17).
    commands = {
        "RUNNER_CONFIG_CMD -g": ([*parts, "-g", "section.key"], base_env),
        "python -I -S -c pass": ([python, "-I", "-S", "-c", "pass"], base_env),
        "runner-config -g (task)": ([RUNNER_CONFIG, "-g", "section.key"], task_env),
        "runner-config -c -g (cache)": ([RUNNER_CONFIG, *get], cached_env),
        "runner-config -c -g": ([RUNNER_CONFIG, *get], base_env),
    }
    crudini = shutil.which("crudini")
    if crudini:
        commands["crudini --get"] = ([crudini, "--get", str(config), "section", "key"],
                                     base_env)
    for name, (cmd, env) in commands.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        expected = "" if name.startswith("python") else "value\n"
        if proc.returncode != 0 or proc.stdout != expected:
            raise Broken(f"{name} printed {proc.stdout!r} (exit {proc.returncode}): "
                         f"{last_lines(proc.stderr)}")
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.latency_rounds):
        for name, (cmd, env) in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env)
            samples[name].append((time.perf_counter() - started) * 1000)
    ms = {name: round(median(v), 3) for name, v in samples.items()}
    base = samples["RUNNER_CONFIG_CMD -g"]

    def ratio_to(other: str) -> float:
        return median([a / b for a, b in zip(base, samples[other], strict=True)])

    result = {
        "rounds": args.latency_rounds, "config_cmd": parts, "interpreter": python,
        "interpreter_real": os.path.realpath(python),
        "interpreter_is_binary": is_binary(python), "median_ms": ms,
        "ratio_to_floor": round(ratio_to("python -I -S -c pass"), 3),
        "ratio_to_crudini": round(ratio_to("crudini --get"), 3) if crudini else None,
        "console_script_ratio_to_floor": floor_ratio(samples, "runner-config -c -g"),
        "task_ratio_to_floor": floor_ratio(samples, "runner-config -g (task)"),
        "cache_ratio_to_floor": floor_ratio(samples, "runner-config -c -g (cache)"),
        "crudini": crudini,
    }
    figure = f"{ms['RUNNER_CONFIG_CMD -g']:.1f} ms"
    name = "3 $RUNNER_CONFIG_CMD -g section.key"
    floor_note = "" if result["interpreter_is_binary"] else " (a shim, not the binary!)"
    rows = [
        row("getconf", name, value=ms["RUNNER_CONFIG_CMD -g"], unit="ms", text=figure,
            reference=f"python -I -S -c pass {ms['python -I -S -c pass']:.1f} ms{floor_note}",
            reference_value=ms["python -I -S -c pass"], ratio=result["ratio_to_floor"],
            target="<= 1.5x python -I -S",
            status=verdict(result["ratio_to_floor"] <= 1.5 and result["interpreter_is_binary"])),
    ]
    if crudini:
        rows.append(row("getconf", name, value=ms["RUNNER_CONFIG_CMD -g"], unit="ms",
                        text=figure, reference=f"crudini --get {ms['crudini --get']:.1f} ms",
                        reference_value=ms["crudini --get"], ratio=result["ratio_to_crudini"],
                        target="< 1x crudini", status=verdict(result["ratio_to_crudini"] < 1)))
    else:
        rows.append(row("getconf", name, value=None, unit="ms", text="-",
                        reference="crudini not installed", target="< 1x crudini",
                        status="SKIP"))
    floor = f"python -I -S -c pass {ms['python -I -S -c pass']:.1f} ms"
    for name, key, ratio, target in (
            ("3 runner-config -g in a task (RUNNER_CONFIG_SNAPSHOT)", "runner-config -g (task)",
             "task_ratio_to_floor", 1.3),
            ("3 runner-config -c runner.cfg -g, cache warm", "runner-config -c -g (cache)",
             "cache_ratio_to_floor", 2.0),
            ("3 runner-config -c runner.cfg -g, no cache (parses)", "runner-config -c -g",
             "console_script_ratio_to_floor", None)):
        rows.append(row("getconf", name, value=ms[key], unit="ms", text=f"{ms[key]:.1f} ms",
                        reference=floor, reference_value=ms["python -I -S -c pass"],
                        ratio=result[ratio],
                        **({"target": f"<= {target}x python -I -S",
                            "status": verdict(result[ratio] <= target)} if target else {})))
    return result, rows


# ------------------------------------------------------------------- 4: waiting costs


def proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def proc_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def interpreter_hwm_kb(python: str) -> int:
    """Peak RSS of the bare interpreter (`-I -S`), as the floor: its own VmHWM. (A child's
    ru_maxrss is no use: it counts the forking parent's memory from before the exec.)"""
    code = ("for line in open('/proc/self/status'):\n"
            " if line.startswith('VmHWM:'): print(line.split()[1])")
    proc = subprocess.run([python, "-I", "-S", "-c", code], capture_output=True, text=True,
                          env=clean_env())
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise Broken(f"cannot read the interpreter's VmHWM: {proc.stderr.strip()}")
    return int(proc.stdout)


def wait_once(root: Path, seconds: float, interval: float) -> dict:
    taskdir = root / f"wait-{time.monotonic_ns()}.d"
    taskdir.mkdir()
    write_task(taskdir / "sleeper", f"#!/bin/sh\nsleep {seconds}\n")
    config = write_config(root)
    proc = subprocess.Popen(runner_cmd(config, taskdir), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
    hwm = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(interval):
            kb = proc_hwm_kb(proc.pid)
            if kb:
                hwm[0] = max(hwm[0], kb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    marks: dict[str, tuple[float, float | None]] = {}
    lines = []
    try:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            m = LOG_LINE.match(line)
            if m and m.group(2) == "sleeper":
                marks[m.group(3)] = (time.monotonic(), proc_cpu_s(proc.pid))
                kb = proc_hwm_kb(proc.pid)
                if kb:
                    hwm[0] = max(hwm[0], kb)
    except BaseException:
        proc.kill()
        raise
    finally:
        done.set()
        sampler.join()
        proc.stderr.close()
        proc.wait()
    text = "".join(lines)
    if proc.returncode != 0 or set(marks) != {"starting", "OK after"}:
        raise Broken(f"runner on a sleeping task exited {proc.returncode}: {last_lines(text)}")
    (t0, cpu0), (t1, cpu1) = marks["starting"], marks["OK after"]
    if cpu0 is None or cpu1 is None or t1 - t0 < seconds * 0.9:
        raise Broken(f"the task did not sleep {seconds} s ({t1 - t0:.2f} s) or runner "
                     "was not readable in /proc")
    return {"waited_s": round(t1 - t0, 3), "cpu_wait_s": round(cpu1 - cpu0, 3),
            "cpu_before_task_s": round(cpu0, 3), "peak_rss_mb": round(hwm[0] / 1024, 2)}


def bench_wait(root: Path, args, python: str) -> tuple[dict, list[dict]]:
    runs = [wait_once(root, args.sleep, args.sample_interval) for _ in range(args.wait_runs)]
    cpu = median([r["cpu_wait_s"] for r in runs])
    rss = median([r["peak_rss_mb"] for r in runs])
    floor_mb = interpreter_hwm_kb(python) / 1024
    result = {"sleep_s": args.sleep, "runs": runs, "cpu_wait_s": cpu, "peak_rss_mb": rss,
              "interpreter_peak_rss_mb": round(floor_mb, 2),
              "cpu_start_up_s": median([r["cpu_before_task_s"] for r in runs])}
    rows = [
        row("wait", f"4 runner's CPU while a task sleeps {args.sleep:g} s", value=cpu,
            unit="s", text=f"{cpu:.3f} s",
            reference=f"start-up {result['cpu_start_up_s']:.2f} s CPU",
            target="< 0.05 s", status=verdict(cpu < 0.05)),
        row("wait", "4 runner's peak RSS (VmHWM)", value=rss, unit="MB",
            text=f"{rss:.1f} MB", reference=f"python -I -S {floor_mb:.1f} MB",
            reference_value=round(floor_mb, 2), ratio=rss / floor_mb, target="< 30 MB",
            status=verdict(rss < 30)),
    ]
    return result, rows


# ------------------------------------------------------------------ 5: parallel graph


def build_graph(root: Path, scale: float, layers: int = 5, width: int = 6, seed: int = 30
                ) -> tuple[Path, Path, dict[str, float], dict[str, list[str]]]:
    rng = random.Random(seed)
    taskdir = root / "graph.d"
    taskdir.mkdir()
    durations: dict[str, float] = {}
    needs: dict[str, list[str]] = {}
    sections = []
    for layer in range(layers):
        for index in range(width):
            name = f"g{layer}{index:02d}"
            seconds = round(rng.uniform(0.2, 0.8) * scale, 3)
            write_task(taskdir / name, f"#!/bin/sh\nsleep {seconds}\n")
            durations[name] = seconds
            needs[name] = sorted(rng.sample([f"g{layer - 1}{i:02d}" for i in range(width)], 2)
                                 ) if layer else []
            if needs[name]:
                sections.append(f"[{name}]\ndepends_on = {', '.join(needs[name])}\n")
    config = write_config(root, f"max_parallel = {width}\n", "".join(sections))
    return config, taskdir, durations, needs


def critical_path(durations: dict[str, float], needs: dict[str, list[str]]) -> float:
    finish: dict[str, float] = {}
    for name in sorted(durations):  # layer by layer: parents sort first
        finish[name] = durations[name] + max((finish[p] for p in needs[name]), default=0.0)
    return max(finish.values())


def bench_graph(root: Path, args) -> tuple[dict, list[dict]]:
    config, taskdir, durations, needs = build_graph(root, args.graph_scale)
    critical = critical_path(durations, needs)
    chains, commands = [], []
    for _ in range(args.graph_runs):
        wall, code, text = run_timed(runner_cmd(config, taskdir), clean_env(),
                                     root / "graph.log")
        if code != 0 or ok_tasks(text) != set(durations):
            raise Broken(f"graph run exited {code}, {len(ok_tasks(text))} of "
                         f"{len(durations)} tasks OK: {last_lines(text)}")
        stamps = {}
        for m in map(LOG_LINE.match, text.splitlines()):
            if m:
                stamps[(m.group(2), m.group(3))] = datetime.strptime(
                    m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        for name, parents in needs.items():
            for parent in parents:
                if stamps[(name, "starting")] < stamps[(parent, "OK after")]:
                    raise Broken(f"{name} started before its dependency {parent} ended")
        chain = (max(stamps.values()) - min(stamps.values())).total_seconds()
        chains.append(chain)
        commands.append(wall)
    chain, command = median(chains), median(commands)
    ratio = median([c / critical for c in chains])
    result = {"tasks": len(durations), "max_parallel": 6, "scale": args.graph_scale,
              "sum_s": round(sum(durations.values()), 3), "critical_path_s": round(critical, 3),
              "chain_s": round(chain, 3), "command_s": round(command, 3),
              "ratio": round(ratio, 4), "runs": args.graph_runs,
              "chain_samples_s": [round(c, 3) for c in chains]}
    rows = [
        row("graph", f"5 graph, {len(durations)} sleeping tasks, max_parallel 6: chain",
            value=chain, unit="s", text=f"{chain:.2f} s (command {command:.2f} s)",
            reference=f"critical path {critical:.2f} s", reference_value=round(critical, 3),
            ratio=ratio, target="<= 1.05x critical path", status=verdict(ratio <= 1.05)),
    ]
    return result, rows


# ---------------------------------------------------------------- 6: strict_permissions


def verify_us(task: Path, rounds: int = 2000) -> float:
    """Median microseconds of one exec-time check of `task`, in this process."""
    from runner import permissions  # the runner beside this interpreter

    trust = permissions.Trust("task")
    samples = []
    for _ in range(rounds):
        started = time.perf_counter_ns()
        _exe, reason = permissions.verify([str(task)], trust, cwd="/", search_path=None)
        samples.append((time.perf_counter_ns() - started) / 1000)
        if reason:
            raise Broken(f"the benchmark's own task is not trusted: {reason}")
    return median(samples)


def bench_strict(root: Path, args) -> tuple[dict, list[dict]]:
    if os.geteuid() != 0:
        skip = "not root: strict_permissions does not apply"
        return {"skipped": skip}, [row("strict", f"6 strict_permissions: {skip}", value=None,
                                       unit="", text="-", status="SKIP")]
    n = args.chain_tasks
    full, empty = root / "a" / "b" / "noop.d", root / "a" / "b" / "empty.d"
    full.mkdir(parents=True)
    empty.mkdir()
    names = [f"t{i:03d}" for i in range(1, n + 1)]
    for name in names:
        write_task(full / name, NOOP)
    per_call = verify_us(full / names[0])
    configs = {"off": write_config(root), "on": root / "strict.cfg"}
    configs["on"].write_text(configs["off"].read_text().replace(
        "[runner]\n", "[runner]\nstrict_permissions = true\n", 1))
    walls: dict[str, list[float]] = {"off": [], "on": []}
    empties: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.repeat):
        for mode, config in configs.items():
            # As in the chain: the empty directory twice, the median of all subtracted.
            for target, store in ((full, walls), (empty, empties), (empty, empties)):
                wall, code, text = run_timed(runner_cmd(config, target), clean_env(),
                                             root / "strict.log")
                want = set(names) if target is full else set()
                if code != 0 or ok_tasks(text) != want:
                    raise Broken(f"strict {mode}: runner exited {code}, "
                                 f"{len(ok_tasks(text))} tasks OK: {last_lines(text)}")
                store[mode].append(wall)
    per_task = {mode: [(wall - median(empties[mode])) / n * 1000 for wall in walls[mode]]
                for mode in configs}
    off, on = median(per_task["off"]), median(per_task["on"])
    extra = median([b - a for a, b in zip(per_task["off"], per_task["on"], strict=True)])
    result = {"tasks": n, "rounds": args.repeat, "verify_us": round(per_call, 2),
              "per_task_ms": {"off": round(off, 3), "on": round(on, 3)},
              "extra_ms": round(extra, 3)}
    rows = [
        row("strict", "6 strict_permissions: one exec-time check", value=per_call, unit="us",
            text=f"{per_call:.1f} us per task (4 directories deep)", target="< 100 us",
            status=verdict(per_call < 100)),
        row("strict", f"6 strict_permissions: {n} no-op tasks, on vs off", value=on,
            unit="ms/task", text=f"{on:.2f} ms/task (off {off:.2f}; extra {extra:+.3f} ms)",
            reference=f"off {off:.2f} ms/task", reference_value=off,
            ratio=on / off if off > 0 else None),
    ]
    return result, rows


# ------------------------------------------------------------- 7: commands people type

# `runner check` as it runs when runner.checkcache has no answer (information: the row
# with the target is the one answered from the cache, primed by the first call).
NO_CACHE_CHECK = "runner check, no cache (validates)"


def bench_commands(root: Path, args) -> tuple[dict, list[dict]]:
    python = os.path.realpath(sys.executable)
    config = write_config(root)
    taskdir = root / "tasks.d"
    taskdir.mkdir()
    write_task(taskdir / "10-noop", NOOP)
    cache = root / "cache"
    cache.mkdir(mode=0o700)
    env = clean_env(RUNNER_CACHE_DIR=str(cache), COLUMNS="80")
    _, code, text = run_timed(runner_cmd(config, taskdir), env, root / "run.log")
    if code != 0 or ok_tasks(text) != {"10-noop"}:
        raise Broken(f"the run that fills the journal exited {code}: {last_lines(text)}")
    base = [RUNNER, "-c", str(config)]
    no_cache = clean_env(RUNNER_CACHE_DIR="", COLUMNS="80")
    # name: (command, exit status, text its stdout or stderr must hold, environment)
    commands = {
        "python -I -S -c pass": ([python, "-I", "-S", "-c", "pass"], 0, "", env),
        "runner status": ([*base, "status"], 0, "not running; last run", env),
        "runner ctl pause": ([*base, "ctl", "pause"], 1, "runner is not running", env),
        "runner history --limit 20": ([*base, "history", "--limit", "20"], 0, "10-noop",
                                      env),
        "runner check": ([*base, "check", str(taskdir)], 0, "OK (", env),
        NO_CACHE_CHECK: ([*base, "check", str(taskdir)], 0, "OK (", no_cache),
        "runner --help": ([RUNNER, "--help"], 0, "usage: runner", env),
    }
    for name, (cmd, status, needle, environment) in commands.items():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=environment)
        if proc.returncode != status or needle not in proc.stdout + proc.stderr:
            raise Broken(f"{name} exited {proc.returncode} (expected {status}), without "
                         f"{needle!r}: {last_lines(proc.stdout + proc.stderr)}")
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.latency_rounds):
        for name, (cmd, _status, _needle, environment) in commands.items():
            started = time.perf_counter()
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=environment)
            samples[name].append((time.perf_counter() - started) * 1000)
    ms = {name: round(median(v), 3) for name, v in samples.items()}
    ratios = {name: floor_ratio(samples, name) for name in commands
              if name != "python -I -S -c pass"}
    result = {"rounds": args.latency_rounds, "interpreter": python,
              "interpreter_is_binary": is_binary(python), "median_ms": ms,
              "ratio_to_floor": ratios}
    floor = f"python -I -S -c pass {ms['python -I -S -c pass']:.1f} ms"
    rows = [
        row("commands", f"7 {name}", value=ms[name], unit="ms", text=f"{ms[name]:.1f} ms",
            reference=floor, reference_value=ms["python -I -S -c pass"], ratio=ratio,
            **({} if name == NO_CACHE_CHECK else {"target": "<= 3x python -I -S",
                                                  "status": verdict(ratio <= 3)}))
        for name, ratio in ratios.items()
    ]
    return result, rows


# ------------------------------------------------------------------------- the table


def table(rows: list[dict]) -> str:
    head = ("benchmark", "figure", "floor / reference", "ratio", "target", "result")
    body = [(r["name"], r["figure"], r["reference"],
             "" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"], r["status"])
            for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
           for line in [head, *body]]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Exit status: 0, or 1 with --strict when a target is missed, 2 when a "
               "benchmark is broken.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few rounds (CI: seconds)")
    parser.add_argument("--repeat", type=int, help="rounds per figure (default 5, quick 3)")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--runner", default=str(BIN / "runner"),
                        help="the runner under test (default: the one beside this python)")
    parser.add_argument("--dir", help="parent of the temporary directory (its file system "
                                      "is where the journal fsyncs; default $TMPDIR)")
    args = parser.parse_args(argv)
    global RUNNER
    RUNNER = args.runner
    only = [b for b in args.only.split(",") if b]
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    args.only = only
    quick = args.quick
    # The chain's figure is two whole runs' difference divided by 200 tasks: the noise of
    # runner's start (tens of ms on a shared VM) is magnified in it, so its median takes
    # more rounds than the other rows need (the same rounds for run-parts: no bias).
    args.chain_rounds = args.repeat or (3 if quick else 9)
    args.repeat = args.repeat or (3 if quick else 5)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.chain_tasks = 40 if quick else 200
    args.memory_tasks = 2000 if quick else 10000
    args.config_tasks, args.config_calls = (2, 10) if quick else (50, 10)
    args.latency_rounds = 10 if quick else 40
    args.sleep = 3.0 if quick else 10.0
    args.wait_runs = 1 if quick else min(args.repeat, 3)
    args.sample_interval = 0.25 if quick else 0.5
    args.graph_scale = 0.5 if quick else 1.0
    args.graph_runs = 1 if quick else min(args.repeat, 3)
    return args


def file_system(path: str) -> str:
    proc = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True)
    return proc.stdout.strip() or "?"


def precompile() -> None:
    """Bytecode for the package under test, as a package install leaves it."""
    import compileall

    import runner

    compileall.compile_dir(os.path.dirname(runner.__file__), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precompile()
    started = time.monotonic()
    rows: list[dict] = []
    results: dict[str, dict] = {}
    broken: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="runner-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        captured: tuple[list[str], Path] | None = None
        capture_error = ""
        if {"config", "getconf", "wait"} & set(args.only):
            try:
                captured = capture_config_cmd(base / "capture")
            except (Broken, OSError) as exc:
                capture_error = str(exc)
        for bench in args.only:
            root = base / bench
            root.mkdir(exist_ok=True)
            try:
                if bench in ("config", "getconf") and captured is None:
                    raise Broken(capture_error)
                if bench == "chain":
                    results[bench], new = bench_chain(root, args)
                elif bench == "config":
                    results[bench], new = bench_config(root, args, " ".join(captured[0]))
                elif bench == "getconf":
                    results[bench], new = bench_getconf(root, args, *captured)
                elif bench == "wait":
                    python = captured[0][0] if captured else sys.executable
                    results[bench], new = bench_wait(root, args, python)
                elif bench == "graph":
                    results[bench], new = bench_graph(root, args)
                elif bench == "commands":
                    results[bench], new = bench_commands(root, args)
                elif bench == "memory":
                    results[bench], new = bench_memory(root, args)
                else:
                    results[bench], new = bench_strict(root, args)
                rows.extend(new)
            except (Broken, OSError, subprocess.SubprocessError) as exc:
                broken[bench] = f"{type(exc).__name__}: {exc}"
                rows.append(row(bench, f"{bench}: {exc}", value=None, unit="", text="-",
                                status="BROKEN"))
        fs = file_system(tmp)
    misses = [r["name"] + " (" + r["target"] + ")" for r in rows if r["status"] == "MISS"]
    report = {
        "quick": args.quick, "repeat": args.repeat, "chain_rounds": args.chain_rounds,
        "benchmarks": args.only,
        "machine": {"python": platform.python_version(), "executable": sys.executable,
                    "runner": RUNNER, "cpus": os.cpu_count(), "tmp_fs": fs,
                    "platform": platform.platform()},
        "results": results, "rows": rows, "broken": broken, "misses": misses,
        "seconds": round(time.monotonic() - started, 1),
    }
    report["table"] = table(rows)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"runner benchmarks ({'quick' if args.quick else 'full'}, median of "
              f"{args.repeat} interleaved rounds, the chain's of {args.chain_rounds}; journal "
              f"on {fs}; {report['seconds']} s)")
        print(report["table"])
        for bench, error in broken.items():
            print(f"BROKEN {bench}: {error}", file=sys.stderr)
    if broken:
        return 2
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
