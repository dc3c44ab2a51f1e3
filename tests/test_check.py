"""Per-task `check = COMMAND`: exit 0 means the work is already done and the task is
SKIPPED (hooks and journal say so); otherwise the task runs and the check runs again, and
a check that still fails makes the result RETRY. Also `runner run --dry-run`."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import sys

import pytest
from conftest import LogWatcher, Workspace, output_of, started, wait_for

HALT = "halt.sh"
TASK = "20-puppet.sh"  # its section is [puppet]


# -- helpers ------------------------------------------------------------------------


def marker(ws: Workspace, name: str = "done"):
    return ws.state / name


def puppet(ws: Workspace, body: str = "") -> None:
    """The task counts its runs in $RUNNER_STATE_DIR/ran and leaves the `done` marker."""
    ws.task(TASK, f"""
        echo x >> "$RUNNER_STATE_DIR/ran"
        {body}
        touch "$RUNNER_STATE_DIR/done"
    """)


def runs(ws: Workspace) -> int:
    path = marker(ws, "ran")
    return len(path.read_text().split()) if path.exists() else 0


def with_check(ws: Workspace, check: str, extra: str = "", **runner: object) -> None:
    ws.config(f"[puppet]\ncheck = {check}\n{extra}", **runner)


def done_check(ws: Workspace) -> str:
    """A check that passes once the task left its marker."""
    return f"test -e {shlex.quote(str(marker(ws)))}"


def history(ws: Workspace, task: str = TASK) -> list[dict]:
    proc = ws.run("history", "--task", task, "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def recording_hook(ws: Workspace):
    """A task_hook that appends the JSON stats it gets to calls.jsonl; (path, reader)."""
    calls = ws.root / "calls.jsonl"
    hook = ws.root / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"with open({str(calls)!r}, 'a') as out:\n"
        "    out.write(sys.argv[-1] + '\\n')\n"
    )
    hook.chmod(0o755)

    def read() -> list[dict]:
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    return str(hook), read


# -- the check passes: SKIPPED ------------------------------------------------------------


def test_a_passing_check_skips_the_task_and_the_journal_says_already_done(ws):
    puppet(ws)
    ws.state.mkdir()
    marker(ws).touch()
    with_check(ws, done_check(ws))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert runs(ws) == 0
    assert started(proc.stderr) == []
    assert f"{TASK}: SKIPPED (check: already done)" in proc.stderr
    [record] = history(ws)
    assert (record["result"], record["error"]) == ("SKIPPED", "check: already done")


def test_a_skipped_task_calls_the_hook_once_with_result_skipped(ws):
    hook, calls = recording_hook(ws)
    puppet(ws)
    ws.task("30-next.sh")
    ws.state.mkdir()
    marker(ws).touch()
    with_check(ws, done_check(ws), task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    seen = [(c["task"], c["result"], c["kind"]) for c in calls()]
    assert seen == [
        (TASK, "SKIPPED", "task"),
        ("30-next.sh", "RUNNING", "task"), ("30-next.sh", "OK", "task"),
    ]


def test_the_task_after_a_skipped_one_still_runs(ws):
    puppet(ws)
    ws.task("30-next.sh", "echo next ran")
    ws.state.mkdir()
    marker(ws).touch()
    with_check(ws, done_check(ws))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "30-next.sh") == ["next ran"]


def test_a_skipped_task_does_not_end_the_try_in_the_journal(ws):
    puppet(ws)
    ws.task("30-flaky.sh", '[ "$RUNNER_TRY" -lt 2 ] && exit 1; true')
    ws.state.mkdir()
    marker(ws).touch()
    with_check(ws, done_check(ws), max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(ws.state / "journal.sqlite") as conn:
        tries = conn.execute("SELECT try_num, result, failed_task FROM tries "
                             "ORDER BY try_num").fetchall()
    assert tries == [(1, "RETRY", "30-flaky.sh"), (2, "OK", None)]


# -- the check fails: the task runs, then the check again -------------------------------


def test_a_failing_check_runs_the_task_and_a_passing_recheck_makes_it_ok(ws):
    puppet(ws)
    with_check(ws, done_check(ws))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert runs(ws) == 1
    [record] = history(ws)
    assert (record["result"], record["error"]) == ("OK", None)


def test_the_next_run_skips_a_task_whose_check_now_passes(ws):
    puppet(ws)
    with_check(ws, done_check(ws))
    assert ws.run("-n", "1").returncode == 0
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert runs(ws) == 1
    assert [r["result"] for r in history(ws)] == ["OK", "SKIPPED"]


def test_a_recheck_that_still_fails_is_retry_and_gives_up_after_max_tries(ws):
    ws.task(HALT, "echo halt ran")
    puppet(ws)
    with_check(ws, "sh -c 'exit 5'", max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert runs(ws) == 3
    assert started(proc.stderr) == [TASK] * 3 + [HALT]
    records = history(ws)
    assert [r["result"] for r in records] == ["RETRY"] * 3
    for record in records:
        assert record["exit_code"] == 0  # the task itself passed
        assert "check still fails" in record["error"] and "exit 5" in record["error"]
    assert f"{TASK} failed on try 3 of 3: giving up" in proc.stderr


def test_a_recheck_that_passes_on_the_second_try_continues_the_chain(ws):
    # The task leaves its marker only on try 2, so try 1's recheck fails.
    ws.task(TASK, """
        echo x >> "$RUNNER_STATE_DIR/ran"
        [ "$RUNNER_TRY" -ge 2 ] && touch "$RUNNER_STATE_DIR/done"
        exit 0
    """)
    ws.task("30-next.sh")
    with_check(ws, done_check(ws), max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert runs(ws) == 2
    assert started(proc.stderr) == [TASK, TASK, "30-next.sh"]
    assert [r["result"] for r in history(ws)] == ["RETRY", "OK"]


def test_a_failing_task_is_retry_without_running_the_check_again(ws):
    puppet(ws, "exit 1")
    calls = ws.root / "check-calls"
    with_check(ws, f"sh -c 'echo x >> {calls}; exit 1'", max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert len(calls.read_text().split()) == 1  # the check before the run, no recheck
    [record] = history(ws)
    assert (record["result"], record["exit_code"]) == ("RETRY", 1)


def test_the_check_gets_the_tasks_environment_and_env_section(ws):
    out = ws.root / "check-env"
    puppet(ws)
    script = (f'echo "$RUNNER_TASK $RUNNER_TRY $RUNNER_ITERATION $ROLE '
              f'$RUNNER_STATE_DIR" >> {out}; exit 1')
    with_check(ws, f"sh -c '{script}'", extra="[env]\nROLE = builder\n", max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert out.read_text().splitlines() == [f"{TASK} 1 1 builder {ws.state}"] * 2


def test_check_output_is_logged_labelled_check_and_recheck(ws):
    puppet(ws)
    script = 'echo looking for the marker; test -e "$RUNNER_STATE_DIR/done"'
    with_check(ws, f"sh -c '{script}'")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, f"{TASK} check") == ["looking for the marker"]
    assert output_of(proc.stderr, f"{TASK} recheck") == ["looking for the marker"]
    assert output_of(proc.stderr, TASK) == []  # the check's lines are not the task's


def test_a_check_that_cannot_start_runs_the_task_with_a_warning(ws):
    puppet(ws)
    with_check(ws, "/nonexistent/check-command", max_tries=1)
    proc = ws.run("-n", "1")
    assert runs(ws) == 1
    assert started(proc.stderr) == [TASK]
    assert "Traceback" not in proc.stderr
    assert f"WARNING {TASK}: check: cannot start /nonexistent/check-command" in proc.stderr


def test_a_check_that_hangs_is_stopped_after_the_tasks_max_time(ws):
    puppet(ws)
    with_check(ws, "sleep 30", extra="max_time = 0.5\n", max_tries=1)
    proc = ws.run("-n", "1", timeout=20)
    assert runs(ws) == 1  # a check that timed out did not say "already done"
    assert proc.returncode == 1, proc.stderr  # ...and the recheck times out too


def hanging_recheck(ws: Workspace) -> str:
    """A check that fails at once before the run and hangs in the recheck (after the task
    left $RUNNER_STATE_DIR/done), touching `rechecking` first."""
    return ("sh -c 'test -e \"$RUNNER_STATE_DIR/done\" || exit 1; "
            "touch \"$RUNNER_STATE_DIR/rechecking\"; exec sleep 10'")


def test_sigterm_during_the_recheck_stops_runner_without_the_halt_task(ws):
    ws.task(HALT, 'touch "$RUNNER_STATE_DIR/halted"')
    puppet(ws)
    with_check(ws, hanging_recheck(ws), max_tries=1)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for((ws.state / "rechecking").exists, what="the recheck running")
        watcher.proc.send_signal(signal.SIGTERM)
        status = watcher.finish(timeout=15)
    assert not (ws.state / "halted").exists()
    assert status == 143
    [record] = history(ws)
    assert record["result"] == "STOPPED"


# -- side by side ----------------------------------------------------------------------


@pytest.mark.slow
def test_checks_skip_and_recheck_with_max_parallel(ws):
    ws.task("10-done.sh", 'echo x >> "$RUNNER_STATE_DIR/done-ran"')
    ws.task("20-todo.sh", 'sleep 0.5; touch "$RUNNER_STATE_DIR/todo"')
    ws.task("30-broken.sh")  # fails (its recheck) while 20-todo.sh runs: 40-last never starts
    ws.task("40-last.sh")
    ws.state.mkdir()
    (ws.state / "already").touch()
    ws.config(f"""
        [done]
        check = test -e {ws.state}/already
        [todo]
        check = test -e {ws.state}/todo
        [broken]
        check = sh -c 'echo broken check; exit 7'
        [last]
        depends_on = 20-todo.sh
    """, max_parallel=2, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert not (ws.state / "done-ran").exists()
    assert (ws.state / "todo").exists()
    assert started(proc.stderr) == ["20-todo.sh", "30-broken.sh"]
    by_task = {r["task"]: r for r in history(ws, "done") + history(ws, "todo")
               + history(ws, "broken")}
    assert by_task["10-done.sh"]["result"] == "SKIPPED"
    assert by_task["20-todo.sh"]["result"] == "OK"
    assert by_task["30-broken.sh"]["result"] == "RETRY"
    assert "check still fails" in by_task["30-broken.sh"]["error"]
    assert output_of(proc.stderr, "30-broken.sh recheck") == ["broken check"]


def test_a_passing_check_with_max_parallel_lets_dependents_start(ws):
    ws.task("10-done.sh", 'echo x >> "$RUNNER_STATE_DIR/done-ran"')
    ws.task("20-after.sh", "echo after ran")
    ws.config("""
        [done]
        check = true
        [after]
        depends_on = done
    """, max_parallel=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert not (ws.state / "done-ran").exists()
    assert output_of(proc.stderr, "20-after.sh") == ["after ran"]


# -- runner run --dry-run -----------------------------------------------------------------


def test_dry_run_runs_only_the_checks_and_prints_what_would_run(ws):
    ws.task("10-done.sh", 'echo x >> "$RUNNER_STATE_DIR/ran"')
    ws.task("20-todo.sh", 'echo x >> "$RUNNER_STATE_DIR/ran"')
    ws.task("30-plain.sh", 'echo x >> "$RUNNER_STATE_DIR/ran"')
    ws.task(HALT, 'echo x >> "$RUNNER_STATE_DIR/ran"')
    ws.config("""
        [done]
        check = sh -c 'echo dry check of $RUNNER_TASK; exit 0'
        [todo]
        check = sh -c 'exit 3'
    """)
    proc = ws.run("run", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert not (ws.state / "ran").exists()
    rows = [line.split(None, 2) for line in proc.stdout.splitlines()]
    assert rows[0] == ["TASK", "WOULD", "WHY"]
    assert rows[1:4] == [
        ["10-done.sh", "skip", "check: already done"],
        ["20-todo.sh", "run", "check fails (exit 3)"],
        ["30-plain.sh", "run", "no check"],
    ]
    assert proc.stdout.splitlines()[-1] == "2 of 3 task(s) would run"
    assert output_of(proc.stderr, "10-done.sh check") == ["dry check of 10-done.sh"]


def test_dry_run_records_nothing_in_the_journal(ws):
    ws.task("10-todo.sh")
    ws.config("[todo]\ncheck = false\n")
    assert ws.run("run", "--dry-run").returncode == 0
    proc = ws.run("history", "--json", tasks=False)
    assert proc.returncode == 1, proc.stdout  # nothing to show


def test_on_failure_stop_during_a_siblings_recheck_records_it_stopped(ws):
    puppet(ws)
    ws.task("10-fail.sh", """
        while [ ! -e "$RUNNER_STATE_DIR/rechecking" ]; do sleep 0.05; done
        exit 1
    """)
    with_check(ws, hanging_recheck(ws), max_parallel=2, on_failure="stop", max_tries=1)
    proc = ws.run("-n", "1", timeout=30)
    assert proc.returncode == 1, proc.stderr
    [record] = history(ws)
    assert record["result"] == "STOPPED", record
