"""The chain: results and what follows, tries, backoff, the halt task, order (SPEC §3, §4)."""

from __future__ import annotations

import re
import subprocess
import time
from datetime import datetime

import pytest
from conftest import RUNNER, output_of, started

HALT = "halt.sh"


def halt_task(ws, body: str = "echo halt ran") -> None:
    ws.task(HALT, body)


def fail_on_first_try(code: int = 1) -> str:
    """A task body that fails on try 1 of the chain and passes after."""
    return f'[ "$RUNNER_TRY" -lt 2 ] && exit {code}\nexit 0'


def log_time(line: str) -> datetime:
    """The timestamp of one of runner's log lines (`2026-01-01 10:00:00,123 INFO ...`)."""
    return datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")


def assert_clean(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr


# -- results -----------------------------------------------------------------


def test_exit_0_runs_the_next_task_and_runner_exits_0(ws):
    halt_task(ws)
    for name in ("a", "b", "c"):
        ws.task(name, f"echo ran {name}")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "c"]
    assert output_of(proc.stderr, "c") == ["ran c"]


def test_exit_2_runs_the_halt_task_and_runner_exits_2(ws):
    halt_task(ws)
    ws.task("a")
    ws.task("b", "exit 2")
    ws.task("c")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert started(proc.stderr) == ["a", "b", HALT]
    assert output_of(proc.stderr, HALT) == ["halt ran"]


def test_exit_3_exits_3_without_running_the_halt_task(ws):
    halt_task(ws)
    ws.task("a")
    ws.task("b", "exit 3")
    ws.task("c")
    proc = ws.run("-n", "1")
    assert proc.returncode == 3, proc.stderr
    assert started(proc.stderr) == ["a", "b"]
    assert output_of(proc.stderr, HALT) == []


@pytest.mark.parametrize(
    ("body", "shebang", "expect_in_log"),
    [
        ("exit 1", "#!/bin/sh", "RETRY (exit 1)"),
        ("exit 7", "#!/bin/sh", "RETRY (exit 7)"),
        ("exit 255", "#!/bin/sh", "RETRY (exit 255)"),
        ("kill -KILL $$", "#!/bin/sh", "RETRY (signal 9)"),
        ("kill -TERM $$", "#!/bin/sh", "RETRY (signal 15)"),
        ("exit 0", "", "cannot start"),  # no #! line
        ("exit 0", "#!/nonexistent/interpreter", "cannot start"),
    ],
    ids=["exit-1", "exit-7", "exit-255", "sigkill", "sigterm", "no-shebang", "no-interpreter"],
)
def test_failure_retries_the_chain_from_the_first_task(ws, body, shebang, expect_in_log):
    halt_task(ws)
    ws.task("a")
    ws.task("b", body, shebang=shebang)
    ws.task("c")
    ws.config(max_tries=2)
    proc = ws.run("-n", "1")
    assert_clean(proc)
    assert started(proc.stderr) == ["a", "b", "a", "b", HALT]
    assert proc.returncode == 1, proc.stderr
    assert expect_in_log in proc.stderr


def test_a_task_that_cannot_start_names_the_missing_shebang(ws):
    ws.task("a", "exit 0", shebang="")
    proc = ws.run("-n", "1")
    assert_clean(proc)
    assert proc.returncode == 1
    assert re.search(r"a: RETRY \(cannot start .*#!", proc.stderr), proc.stderr


def test_a_retry_that_passes_continues_the_chain(ws):
    ws.task("a")
    ws.task("b", fail_on_first_try())
    ws.task("c")
    ws.config(max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "a", "b", "c"]


def test_retry_from_failed_resumes_at_the_failed_task(ws):
    ws.task("a")
    ws.task("b", fail_on_first_try())
    ws.task("c")
    ws.config(max_tries=3, retry_from="failed")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "b", "c"]


def test_retry_from_failed_still_gives_up_after_max_tries(ws):
    halt_task(ws)
    ws.task("a")
    ws.task("b", "exit 1")
    ws.task("c")
    ws.config(max_tries=3, retry_from="failed")
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["a", "b", "b", "b", HALT]


# -- tries --------------------------------------------------------------------


def test_original_say_foo_say_bar_gives_up_after_max_tries(ws):
    """The original's own test: bar always fails; foo, bar, foo, bar, halt; reflect never runs."""
    halt_task(ws)
    ws.task("0-say-foo", "echo foo")
    ws.task("1-say-bar", "echo bar\nexit 1")
    ws.task("reflect", "echo reflecting")
    ws.config(max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["0-say-foo", "1-say-bar", "0-say-foo", "1-say-bar", HALT]
    assert output_of(proc.stderr, "0-say-foo") == ["foo", "foo"]
    assert output_of(proc.stderr, "reflect") == []
    assert "1-say-bar failed on try 2 of 2: giving up" in proc.stderr


def test_tries_are_counted_per_chain_not_per_task(ws):
    halt_task(ws)
    ws.task("a", fail_on_first_try())  # fails on try 1
    ws.task("b", '[ "$RUNNER_TRY" -eq 2 ] && exit 1\nexit 0')  # fails on try 2
    ws.task("c")
    ws.config(max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["a", "a", "b", HALT]


def test_tries_start_again_in_each_iteration(ws):
    ws.task("a", fail_on_first_try())
    ws.config(max_tries=2)
    proc = ws.run("-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a"] * 6
    assert proc.stderr.count("a: starting (try 1/2") == 3


def test_failing_tasks_own_max_tries_decides_when_to_give_up(ws):
    halt_task(ws)
    ws.task("0-say-foo.sh")
    ws.task("1-say-bar.py", "exit 1")
    ws.config("[say-bar]\nmax_tries = 2\n", max_tries=5)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["0-say-foo.sh", "1-say-bar.py"] * 2 + [HALT]


def test_per_task_max_tries_may_allow_more_tries_than_the_global(ws):
    halt_task(ws)
    ws.task("1-say-bar.py", "exit 1")
    ws.config("[say-bar]\nmax_tries = 3\n", max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["1-say-bar.py"] * 3 + [HALT]


def test_giving_up_without_a_halt_task_exits_1_with_a_clear_error(ws):
    ws.task("a", "exit 1")
    ws.config(max_tries=2)
    proc = ws.run("-n", "1")
    assert_clean(proc)
    assert proc.returncode == 1
    assert started(proc.stderr) == ["a", "a"]
    assert re.search(r"ERROR a halt is needed but halt task halt\.sh is not in", proc.stderr)


# -- backoff ------------------------------------------------------------------


def test_backoff_pause_grows_by_backoff_per_try(ws):
    ws.task("a", "exit 1")
    ws.config(sleep_time=0.2, backoff=2, max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    pauses = re.findall(r"retrying in (\S+)s \(try (\d+) of 3 next\)", proc.stderr)
    assert pauses == [("0.4", "2"), ("0.8", "3")]
    # ...and runner really waits that long before the next try starts.
    lines = proc.stderr.splitlines()
    retry = next(i for i, line in enumerate(lines) if "retrying in 0.4s" in line)
    next_start = next(line for line in lines[retry:] if "a: starting (try 2/3" in line)
    waited = (log_time(next_start) - log_time(lines[retry])).total_seconds()
    assert 0.35 <= waited < 3, waited


def test_backoff_uses_the_failing_tasks_sleep_time(ws):
    ws.task("0-ok")
    ws.task("1-flaky.sh", fail_on_first_try())
    ws.config("[flaky]\nsleep_time = 0.1\n", sleep_time=0, backoff=2, max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "retrying in 0.2s (try 2 of 2 next)" in proc.stderr


# -- iterations and the halt task ---------------------------------------------


def test_times_runs_that_many_iterations_then_exits_0(ws):
    halt_task(ws)
    ws.task("a")
    ws.task("b")
    proc = ws.run("-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b"] * 3
    assert "iteration 3" in proc.stderr and "iteration 4" not in proc.stderr


def test_times_in_the_config_bounds_the_iterations(ws):
    ws.task("a")
    ws.config(times=2)
    proc = ws.run()
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "a"]


def test_each_iteration_rescans_the_task_directory(ws):
    new_task = ws.tasks / "z"
    ws.task("a", f"""
        [ -e '{new_task}' ] && exit 0
        printf '#!/bin/sh\\nexit 0\\n' > '{new_task}'
        chmod +x '{new_task}'
    """)
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "a", "z"]


def test_halt_after_runs_the_halt_task_after_the_last_iteration(ws):
    halt_task(ws)
    ws.task("a")
    proc = ws.run("-n", "2", "-H")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "a", HALT]


def test_without_halt_after_the_halt_task_does_not_run(ws):
    halt_task(ws)
    ws.task("a")
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "a"]


def test_halt_task_is_never_part_of_the_chain(ws):
    halt_task(ws)
    ws.task("a")
    ws.task("z")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "z"]


def test_a_renamed_halt_task_is_not_part_of_the_chain_but_runs_on_halt(ws):
    ws.task("99-power-off", "echo powering off")
    ws.task("a", "exit 2")
    ws.config(halt_task="99-power-off")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert started(proc.stderr) == ["a", "99-power-off"]
    assert output_of(proc.stderr, "99-power-off") == ["powering off"]


def test_missing_halt_task_still_exits_2_with_a_clear_error(ws):
    ws.task("a", "exit 2")
    proc = ws.run("-n", "1")
    assert_clean(proc)
    assert proc.returncode == 2
    assert re.search(r"WARNING halt task halt\.sh not found in ", proc.stderr)
    assert re.search(r"ERROR a halt is needed but halt task halt\.sh is not in", proc.stderr)


def test_halt_task_failure_is_logged_and_keeps_the_exit_status(ws):
    halt_task(ws, "echo halting\nexit 5")
    ws.task("a", "exit 2")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert re.search(r"halt task halt\.sh failed: RETRY \(exit 5\)", proc.stderr), proc.stderr


def test_halt_task_gets_env_and_the_interpreter(ws):
    ws.task(HALT, 'echo "role=$ROLE"', mode=0o644, shebang="")
    ws.task("a", "exit 2", mode=0o644, shebang="")
    ws.config("[env]\nROLE = builder\n", interpreter="/bin/sh")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert output_of(proc.stderr, HALT) == ["role=builder"]


def test_halt_task_has_its_own_time_limit(ws):
    halt_task(ws, "sleep 30")
    ws.task("a", "exit 2")
    ws.config("[halt]\nmax_time = 0.5\n", kill_grace=0.5)
    begin = time.monotonic()
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert "halt task halt.sh failed: TIMEOUT" in proc.stderr
    assert time.monotonic() - begin < 10


# -- which files are tasks, and their order ----------------------------------


def test_leftovers_hidden_files_and_directories_are_not_tasks(ws):
    ran = ws.root / "ran"
    ran.mkdir()
    body = f'touch "{ran}/$(basename "$0")"'
    ws.task("good", body)
    for name in [".hidden", "backup~", "x.dpkg-old", "x.dpkg-new", "x.dpkg-dist",
                 "x.rpmnew", "x.rpmsave", "x.swp"]:
        ws.task(name, body)
    (ws.tasks / "subdir").mkdir()
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["good"]
    assert sorted(p.name for p in ran.iterdir()) == ["good"]


def test_non_executable_file_is_skipped_with_a_warning(ws):
    ws.task("a")
    ws.task("b", "echo should not run", mode=0o644)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a"]
    assert re.search(r"WARNING .*\bb\b.*not executable", proc.stderr), proc.stderr


def test_non_executable_file_runs_when_an_interpreter_is_set(ws):
    ws.task("a", "echo ran by interpreter", mode=0o644, shebang="")
    ws.config(interpreter="/bin/sh")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "a") == ["ran by interpreter"]


def test_per_task_interpreter_runs_only_that_task(ws):
    ws.task("1-plain.txt", "echo plain", mode=0o644, shebang="")
    ws.task("2-other", "echo other", mode=0o644, shebang="")
    ws.config("[plain]\ninterpreter = /bin/sh\n")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["1-plain.txt"]


def test_tasks_run_in_byte_order(ws):
    for name in ["a", "z", "y", "0", "9", "B"]:
        ws.task(name)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["0", "9", "B", "a", "y", "z"]


def test_numeric_prefixes_sort_as_bytes_so_10_runs_before_2(ws):
    ws.task("2-y")
    ws.task("10-x")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-x", "2-y"]


def test_depends_on_puts_each_task_after_its_dependencies(ws):
    for name in ["final", "bees", "birds", "oranges", "apples"]:
        ws.task(name)
    ws.config("""
        [final]
        depends_on = bees
        [bees]
        depends_on = birds
        [birds]
        depends_on = oranges
        [oranges]
        depends_on = apples
    """)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["apples", "oranges", "birds", "bees", "final"]


# -- command line, summary, speed ----------------------------------------------


def test_production_command_line_is_accepted(ws):
    halt_task(ws)
    ws.task("0-check_ami.py", "echo checked")
    ws.task(".hidden")  # skipped, said at debug level only
    # Exactly the fleet's form, with relative paths; /dev/log may be missing.
    proc = subprocess.run(
        [RUNNER, "-v", "--syslog", "-n", "1", "-H", "-c", "runner.cfg", "tasks.d"],
        capture_output=True, text=True, timeout=60, cwd=ws.root,
    )
    assert_clean(proc)
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["0-check_ami.py", HALT]
    assert re.search(r" DEBUG skipping \.hidden", proc.stderr), proc.stderr  # -v


def test_failed_tries_are_summarized_at_the_end(ws):
    ws.task("a", fail_on_first_try(code=9))
    ws.task("b", '[ "$RUNNER_TRY" -eq 2 ] && exit 4\nexit 0')
    ws.config(max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    head = next(i for i, line in enumerate(lines) if "2 failed tries during this run" in line)
    summary = lines[head + 1:head + 3]
    assert re.search(r"a iteration 1 try 1: RETRY \(exit 9\) after ", summary[0]), summary
    assert re.search(r"b iteration 1 try 2: RETRY \(exit 4\) after ", summary[1]), summary


def test_no_summary_when_nothing_failed(ws):
    ws.task("a")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "failed tr" not in proc.stderr


def test_a_hundred_tasks_run_without_per_task_polling_delay(ws):
    for number in range(100):
        ws.task(f"{number:03d}-noop")
    begin = time.monotonic()
    proc = ws.run("-n", "1")
    elapsed = time.monotonic() - begin
    assert proc.returncode == 0, proc.stderr
    assert len(started(proc.stderr)) == 100
    assert elapsed < 10, elapsed


def test_the_log_keeps_the_chains_order_though_lines_are_written_after_the_next_start(ws):
    # runner logs a task's end and the next one's start once that next process has
    # started (Dispatcher.transition's defer): the log must read as if it had not.
    ws.task("10-a", "exit 0")
    ws.task("20-b", "echo b says hello")
    ws.task("25-skipped", "echo never")
    ws.task("30-c", "exit 0")
    ws.task("40-d", "echo d fails; exit 1")
    ws.config("[skipped]\ncheck = /bin/true\n", max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    lines = [line.split(" ", 3)[3] for line in proc.stderr.splitlines()
             if re.search(r"\] |: (starting|OK|SKIPPED|RETRY)|failed on try", line)]
    # (the summary at exit repeats the failure: not part of the chain's order)
    assert [line.split(" (")[0].split(" after")[0] for line in lines][:12] == [
        "10-a: starting", "10-a: OK",
        "20-b: starting", "[20-b] b says hello", "20-b: OK",
        "25-skipped: SKIPPED",
        "30-c: starting", "30-c: OK",
        "40-d: starting", "[40-d] d fails", "40-d: RETRY",
        "40-d failed on try 1 of 1: giving up",
    ], proc.stderr
