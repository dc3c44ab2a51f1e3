"""Exit 4 and reboot_task: runner records durably where to resume, runs the reboot task
and waits to be stopped; the next start continues after the task that asked. And
max_boot_tries: failed tries of the chain counted across restarts, then the halt task."""

from __future__ import annotations

import json
import re
import signal
import time

from conftest import LogWatcher, Workspace, wait_for

HALT = "halt.sh"
REBOOT = "reboot.sh"
ASKS = "20-needs-reboot"


# -- helpers ------------------------------------------------------------------------


def started(log: str) -> list[str]:
    """Task names in the order runner started them, halt and reboot task runs included
    (conftest's started() only knows the `halt task ` prefix)."""
    return re.findall(r"INFO (?:(?:halt|reboot) task )?(\S+): starting \(", log)


def counting(name: str, extra: str = "") -> str:
    """A task body that counts its runs in $RUNNER_STATE_DIR/NAME.count."""
    return f'echo x >> "$RUNNER_STATE_DIR/{name}.count"\n{extra}'


def count(ws: Workspace, name: str) -> int:
    path = ws.state / f"{name}.count"
    return len(path.read_text().split()) if path.exists() else 0


def counts(ws: Workspace, *names: str) -> dict[str, int]:
    return {name: count(ws, name) for name in names}


def history(ws: Workspace) -> list[dict]:
    proc = ws.run("history", "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def resume_file(ws: Workspace):
    return ws.state / "resume.json"


def boot_tries_file(ws: Workspace):
    return ws.state / "boot-tries.json"


def boot_tries(ws: Workspace) -> int:
    return json.loads(boot_tries_file(ws).read_text())["count"]


def reboot_chain(ws: Workspace, reboot_body: str | None = None, **runner: object) -> None:
    """10-a; 20-needs-reboot exits 4 on its first run only; 30-c; a reboot task that
    counts its runs; and a halt task."""
    ws.task("10-a", counting("10-a"))
    ws.task(ASKS, counting(ASKS, """
        [ -e "$RUNNER_STATE_DIR/asked" ] && exit 0
        touch "$RUNNER_STATE_DIR/asked"
        exit 4
    """))
    ws.task("30-c", counting("30-c"))
    ws.task(REBOOT, reboot_body if reboot_body is not None else counting(REBOOT))
    ws.task(HALT, counting(HALT))
    ws.config(**{"reboot_task": REBOOT, **runner})


# -- exit 4 without reboot_task ------------------------------------------------------------


def test_without_reboot_task_exit_4_is_a_plain_retry(ws):
    ws.task(HALT, counting(HALT))
    ws.task("10-a", counting("10-a", "exit 4"))
    ws.task("20-b", counting("20-b"))
    ws.config(max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-a", "10-a", HALT]
    assert [(r["task"], r["result"], r["exit_code"]) for r in history(ws)] == [
        ("10-a", "RETRY", 4), ("10-a", "RETRY", 4), (HALT, "OK", 0),
    ]
    assert not resume_file(ws).exists()


# -- exit 4 with reboot_task -----------------------------------------------------------------


def test_exit_4_records_where_to_resume_runs_the_reboot_task_and_waits(ws):
    reboot_chain(ws)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        assert count(ws, REBOOT) == 1
        resume = json.loads(resume_file(ws).read_text())
        assert resume["after"] == ASKS
        assert (resume["iteration"], resume["try_num"]) == (1, 1)
        # runner waits for the reboot to stop it: it neither exits nor goes on.
        time.sleep(0.3)
        assert watcher.proc.poll() is None
        watcher.proc.kill()  # a real reboot
        watcher.finish()
        log = watcher.text()
    assert started(log) == ["10-a", ASKS, REBOOT]
    assert counts(ws, "10-a", ASKS, "30-c") == {"10-a": 1, ASKS: 1, "30-c": 0}
    assert f"{ASKS}: REBOOT (exit 4)" in log


def test_the_next_start_resumes_with_the_task_after_the_one_that_asked(ws):
    reboot_chain(ws)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.kill()  # a real reboot, simulated
        watcher.finish()
    assert json.loads(resume_file(ws).read_text())["after"] == ASKS
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["30-c"]
    assert counts(ws, "10-a", ASKS, "30-c", REBOOT) == {"10-a": 1, ASKS: 1, "30-c": 1,
                                                        REBOOT: 1}
    assert not resume_file(ws).exists()
    assert f"resuming after the reboot asked for by {ASKS}" in proc.stderr
    # The journal: REBOOT and the reboot task (kind "reboot") in the first run, 30-c after.
    records = history(ws)
    assert [(r["task"], r["kind"], r["result"]) for r in records] == [
        ("10-a", "task", "OK"), (ASKS, "task", "REBOOT"), (REBOOT, "reboot", "OK"),
        ("30-c", "task", "OK"),
    ]
    assert len({r["run_id"] for r in records[:3]}) == 1
    assert records[3]["run_id"] != records[0]["run_id"]


def test_a_resumed_chain_runs_its_next_iteration_from_the_first_task(ws):
    reboot_chain(ws)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.kill()
        watcher.finish()
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["30-c", "10-a", ASKS, "30-c"]


def test_a_reboot_task_that_fails_leaves_no_resume_point_and_is_a_retry(ws):
    reboot_chain(ws, reboot_body=counting(REBOOT, "exit 1"), max_tries=2)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert not resume_file(ws).exists()
    assert started(proc.stderr) == ["10-a", ASKS, REBOOT, "10-a", ASKS, "30-c"]
    assert "reboot task reboot.sh failed" in proc.stderr
    assert [(r["task"], r["try_num"], r["result"]) for r in history(ws)] == [
        ("10-a", 1, "OK"), (ASKS, 1, "REBOOT"), (REBOOT, 1, "RETRY"),
        ("10-a", 2, "OK"), (ASKS, 2, "OK"), ("30-c", 2, "OK"),
    ]


def test_a_reboot_task_that_fails_on_the_last_try_gives_up(ws):
    reboot_chain(ws, reboot_body=counting(REBOOT, "exit 1"), max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-a", ASKS, REBOOT, HALT]
    assert not resume_file(ws).exists()


def test_a_missing_reboot_task_is_an_error_and_a_retry(ws):
    reboot_chain(ws, max_tries=2)
    (ws.tasks / REBOOT).unlink()
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-a", ASKS, "10-a", ASKS, "30-c"]
    assert f"{ASKS} asked for a reboot but reboot_task {REBOOT} is not in" in proc.stderr
    assert not resume_file(ws).exists()


def test_sigterm_while_waiting_for_the_reboot_exits_143_and_keeps_the_resume_point(ws):
    reboot_chain(ws)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.finish() == 143
    assert json.loads(resume_file(ws).read_text())["after"] == ASKS
    proc = ws.run("-n", "1")  # the start after the real reboot
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["30-c"]


def test_the_reboot_task_is_never_part_of_the_chain(ws):
    ws.task("10-a", counting("10-a"))
    ws.task(REBOOT, counting(REBOOT))
    ws.config(reboot_task=REBOOT)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-a"]
    assert count(ws, REBOOT) == 0


def test_exit_4_beside_a_running_sibling_reboots_after_it_finished(ws):
    ws.task("10-slow", counting("10-slow", "sleep 0.5"))
    ws.task(ASKS, counting(ASKS, """
        [ -e "$RUNNER_STATE_DIR/asked" ] && exit 0
        touch "$RUNNER_STATE_DIR/asked"
        exit 4
    """))
    ws.task("30-c", counting("30-c"))
    ws.task(REBOOT, counting(REBOOT))
    ws.config(reboot_task=REBOOT, max_parallel=2)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.kill()
        watcher.finish()
        log = watcher.text()
    assert started(log) == ["10-slow", ASKS, REBOOT]
    assert sorted(json.loads(resume_file(ws).read_text())["done"]) == ["10-slow", ASKS]
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["30-c"]
    assert counts(ws, "10-slow", ASKS, "30-c") == {"10-slow": 1, ASKS: 1, "30-c": 1}


def test_the_reboot_task_run_is_logged_as_the_reboot_task(ws):
    reboot_chain(ws)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        watcher.wait_for(r"waiting for the reboot")
        watcher.proc.kill()
        watcher.finish()
        log = watcher.text()
    assert f"halt task {REBOOT}" not in log
    assert f"reboot task {REBOOT}: starting (" in log


def test_sigterm_while_the_reboot_task_runs_keeps_the_resume_point_and_never_halts(ws):
    # The reboot task asks for the reboot and waits for it, as `shutdown -r` may: the
    # shutdown then stops runner while the reboot task still runs.
    reboot_chain(ws, reboot_body=counting(REBOOT, "exec sleep 10"), max_tries=1)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for(lambda: count(ws, REBOOT) == 1, what="the reboot task running")
        watcher.proc.send_signal(signal.SIGTERM)
        status = watcher.finish(timeout=15)
    assert count(ws, HALT) == 0
    assert status == 143
    assert json.loads(resume_file(ws).read_text())["after"] == ASKS


def test_retry_from_failed_after_a_failed_reboot_task_runs_the_asking_task_again(ws):
    reboot_chain(ws, reboot_body=counting(REBOOT, "exit 1"), max_tries=2,
                 retry_from="failed")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-a", ASKS, REBOOT, ASKS, "30-c"]


def test_retry_from_failed_runs_the_asking_task_again_when_a_sibling_failure_won(ws):
    ws.task("10-fails", counting("10-fails", 'sleep 0.3; [ "$RUNNER_TRY" -lt 2 ] && exit 1; true'))
    ws.task(ASKS, counting(ASKS, """
        [ -e "$RUNNER_STATE_DIR/asked" ] && exit 0
        touch "$RUNNER_STATE_DIR/asked"
        exit 4
    """))
    ws.task(REBOOT, counting(REBOOT))
    ws.config(reboot_task=REBOOT, max_parallel=2, max_tries=2, retry_from="failed")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    # Try 1: 10-fails fails while 20-needs-reboot asks: the failure decides, no reboot.
    # Try 2 must give 20-needs-reboot its chance again (here it passes).
    assert counts(ws, "10-fails", ASKS, REBOOT) == {"10-fails": 2, ASKS: 2, REBOOT: 0}


# -- max_boot_tries ------------------------------------------------------------------------


def always_failing(ws: Workspace, **runner: object) -> None:
    ws.task(HALT, counting(HALT))
    ws.task("10-broken", counting("10-broken", "exit 1"))
    ws.config(**{"max_boot_tries": 3, "max_tries": 1, **runner})


def test_max_boot_tries_halts_instead_of_trying_again_after_that_many_failed_starts(ws):
    always_failing(ws)
    for n in (1, 2, 3):
        proc = ws.run("-n", "1")
        assert proc.returncode == 1, proc.stderr
        assert started(proc.stderr) == ["10-broken", HALT]  # gave up: max_tries reached
        assert boot_tries(ws) == n
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == [HALT]
    assert counts(ws, "10-broken", HALT) == {"10-broken": 3, HALT: 4}
    assert "max_boot_tries = 3" in proc.stderr


def test_max_boot_tries_counts_tries_within_one_run_too(ws):
    always_failing(ws, max_tries=5)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-broken"] * 3 + [HALT]


def test_a_passing_chain_resets_the_count_of_failed_tries(ws):
    always_failing(ws)
    assert ws.run("-n", "1").returncode == 1
    assert ws.run("-n", "1").returncode == 1
    assert boot_tries(ws) == 2
    ws.task("10-broken", counting("10-broken"))  # repaired
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert not boot_tries_file(ws).exists()
    ws.task("10-broken", counting("10-broken", "exit 1"))  # broken again: a fresh count
    for _ in range(3):
        assert started(ws.run("-n", "1").stderr) == ["10-broken", HALT]


def test_a_crash_in_the_middle_of_a_try_counts_as_a_failed_try(ws):
    ws.task(HALT, counting(HALT))
    ws.task("10-hangs", counting("10-hangs", "exec sleep 30"))
    ws.config(max_boot_tries=1)
    proc = ws.start("-n", "1")
    try:
        wait_for(lambda: count(ws, "10-hangs") == 1, what="10-hangs running")
    finally:
        proc.kill()  # a crash, an OOM kill, a power cut
        proc.communicate(timeout=10)
    assert boot_tries(ws) == 1
    again = ws.run("-n", "1")
    assert again.returncode == 1, again.stderr
    assert started(again.stderr) == [HALT]
    assert counts(ws, "10-hangs", HALT) == {"10-hangs": 1, HALT: 1}


def test_without_max_boot_tries_nothing_is_counted(ws):
    always_failing(ws, max_boot_tries=0)
    for _ in range(4):
        assert started(ws.run("-n", "1").stderr) == ["10-broken", HALT]
    assert not boot_tries_file(ws).exists()


def test_a_stop_by_sigterm_mid_task_is_not_a_failed_try(ws):
    # A shutdown or `systemctl stop` in the middle of a task says nothing about the chain.
    ws.task(HALT, counting(HALT))
    ws.task("10-slow", counting("10-slow", "exec sleep 30"))
    ws.config(max_boot_tries=1)
    proc = ws.start("-n", "1")
    wait_for(lambda: count(ws, "10-slow") == 1, what="10-slow running")
    assert boot_tries(ws) == 1  # counted before it ran ...
    proc.terminate()
    proc.communicate(timeout=20)
    assert proc.returncode == 143
    assert not boot_tries_file(ws).exists()  # ... and taken back by the stop
    again = ws.start("-n", "1")
    wait_for(lambda: count(ws, "10-slow") == 2, what="10-slow running again, not a halt")
    again.terminate()
    again.communicate(timeout=20)
    assert counts(ws, HALT) == {HALT: 0}


def test_reboots_that_tasks_asked_for_are_not_failed_boot_tries(ws):
    # Two tasks each ask for one reboot; with max_boot_tries = 2 the third boot used to
    # halt the machine although nothing had failed.
    for name in ("10-a", "20-b"):
        ws.task(name, counting(name, f"""
            [ -e "$RUNNER_STATE_DIR/{name}.asked" ] && exit 0
            touch "$RUNNER_STATE_DIR/{name}.asked"
            exit 4
        """))
    ws.task("30-c", counting("30-c"))
    ws.task(REBOOT, counting(REBOOT))
    ws.task(HALT, counting(HALT))
    ws.config(reboot_task=REBOOT, max_boot_tries=2)
    for boot in (1, 2):
        with LogWatcher(ws.start("-n", "1")) as watcher:
            watcher.wait_for(r"waiting for the reboot")
            assert not boot_tries_file(ws).exists(), boot  # asked for: not a failed try
            watcher.proc.kill()  # the reboot
            watcher.finish()
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["30-c"]
    assert counts(ws, "10-a", "20-b", "30-c", REBOOT, HALT) == {
        "10-a": 1, "20-b": 1, "30-c": 1, REBOOT: 2, HALT: 0}


def test_a_failed_reboot_task_counts_the_try_as_failed_again(ws):
    reboot_chain(ws, reboot_body="exit 1", max_boot_tries=5, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr  # gave up after the reboot task failed
    assert boot_tries(ws) == 1
