"""max_parallel: tasks whose depends_on are through run side by side, byte order decides
among ready tasks, output lines stay whole, and a failure stops new starts (on_failure
says what happens to the tasks running beside it) before the usual retry and halt rules."""

from __future__ import annotations

import itertools
import json
import re
import signal
from datetime import datetime

from conftest import LogWatcher, Workspace, alive, output_of, started, wait_for

HALT = "halt.sh"


# -- helpers ------------------------------------------------------------------------


def timed(body: str = "sleep 0.4") -> str:
    """A task body that records when it started and ended (per try) in $RUNNER_STATE_DIR."""
    return f"""
        date +%s.%N > "$RUNNER_STATE_DIR/$RUNNER_TASK.$RUNNER_TRY.start"
        {body}
        date +%s.%N > "$RUNNER_STATE_DIR/$RUNNER_TASK.$RUNNER_TRY.end"
    """


def moment(ws: Workspace, task: str, what: str, try_num: int = 1) -> float:
    return float((ws.state / f"{task}.{try_num}.{what}").read_text())


def interval(ws: Workspace, task: str, try_num: int = 1) -> tuple[float, float]:
    return moment(ws, task, "start", try_num), moment(ws, task, "end", try_num)


def has(ws: Workspace, task: str, what: str, try_num: int = 1) -> bool:
    return (ws.state / f"{task}.{try_num}.{what}").exists()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment (an end before a start at the same moment)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _moment, delta in events:
        now += delta
        most = max(most, now)
    return most


def history(ws: Workspace) -> list[dict]:
    proc = ws.run("history", "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def results(ws: Workspace) -> list[tuple[str, int, str]]:
    """(task, try, result) of every task run in the journal, sorted (parallel runs may
    end in any order)."""
    return sorted((r["task"], r["try_num"], r["result"]) for r in history(ws))


def log_time(line: str) -> datetime:
    return datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f")


def parallel(ws: Workspace, text: str = "", **runner: object) -> None:
    ws.config(text, **{"max_parallel": 2, **runner})


def diamond(ws: Workspace, body: str = "sleep 0.4") -> None:
    """a, then b and c (both need a), then d (needs b and c)."""
    for name in ("a", "b", "c", "d"):
        ws.task(name, timed(body))


DIAMOND = """
    [b]
    depends_on = a
    [c]
    depends_on = a
    [d]
    depends_on = b, c
"""


# -- concurrency -----------------------------------------------------------------------


def test_independent_tasks_run_concurrently_but_never_more_than_max_parallel(ws):
    names = ["1-a", "2-b", "3-c", "4-d", "5-e"]
    for name in names:
        ws.task(name, timed("sleep 0.5"))
    parallel(ws, max_parallel=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert max_overlap([interval(ws, name) for name in names]) == 3
    assert sorted(started(proc.stderr)) == names


def test_a_dependent_starts_only_after_all_its_dependencies_ended(ws):
    diamond(ws)
    parallel(ws, DIAMOND)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    a, b, c, d = (interval(ws, name) for name in "abcd")
    assert b[0] >= a[1] and c[0] >= a[1]
    assert d[0] >= max(b[1], c[1])
    assert max_overlap([b, c]) == 2  # the two siblings really ran side by side
    assert started(proc.stderr) == ["a", "b", "c", "d"]


def test_byte_order_decides_which_ready_task_starts_when_max_parallel_limits(ws):
    # Byte order: "1-z" < "10-x" < "2-y" ('-' sorts before '0').
    for name in ("2-y", "10-x", "1-z"):
        ws.task(name, timed("sleep 0.4"))
    parallel(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["1-z", "10-x", "2-y"]
    first, second, third = (interval(ws, name) for name in ("1-z", "10-x", "2-y"))
    assert max_overlap([first, second]) == 2
    assert third[0] >= min(first[1], second[1])


def test_a_ready_task_is_not_held_back_by_an_earlier_name_still_waiting_for_its_deps(ws):
    # 1-late needs 3-slow, so 2-free (ready at once) runs beside 3-slow.
    ws.task("1-late", timed("true"))
    ws.task("2-free", timed("sleep 0.4"))
    ws.task("3-slow", timed("sleep 0.4"))
    parallel(ws, "[late]\ndepends_on = 3-slow\n")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["2-free", "3-slow", "1-late"]
    assert max_overlap([interval(ws, "2-free"), interval(ws, "3-slow")]) == 2
    assert moment(ws, "1-late", "start") >= moment(ws, "3-slow", "end")


def test_max_parallel_1_is_the_default_and_runs_one_task_after_another(ws):
    names = ["a", "b", "c"]
    for name in names:
        ws.task(name, timed("sleep 0.2"))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == names
    spans = [interval(ws, name) for name in names]
    assert max_overlap(spans) == 1
    assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(spans))


def test_output_lines_of_tasks_running_side_by_side_stay_whole_and_labelled(ws):
    count, width = 300, 2000
    for letter in "ab":
        ws.task(letter, f"""
            line=$(printf '{letter}%.0s' $(seq {width}))
            i=0
            while [ $i -lt {count} ]; do echo "$line"; i=$((i + 1)); done
        """)
    parallel(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    for letter in "ab":
        assert output_of(proc.stderr, letter) == [letter * width] * count
    # No line of the log holds a piece of a task's output but the whole, labelled line.
    for line in proc.stderr.splitlines():
        if "aaaa" in line or "bbbb" in line:
            pattern = rf"\S+ \S+ INFO \[(a|b)\] \1{{{width}}}"
            assert re.fullmatch(pattern, line), line[:200]


def test_the_diamond_takes_about_its_critical_path_of_runners_own_time(ws):
    diamond(ws)
    parallel(ws, DIAMOND)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    first = next(line for line in lines if ": starting (" in line)
    last = [line for line in lines if re.search(r" \S+: OK after ", line)][-1]
    took = (log_time(last) - log_time(first)).total_seconds()
    assert took < 1.6 * 1.5, took  # coarse: three steps of 0.4 s, not four; no benchmark


# -- failures ----------------------------------------------------------------------------


def failing_beside_a_slow_sibling(ws: Workspace, fail_body: str = "sleep 0.2; exit 1",
                                  slow: str = "sleep 1") -> None:
    """1-fail fails while 2-slow runs; 3-queued waits for a free slot, 4-after for 2-slow."""
    ws.task(HALT, 'date +%s.%N > "$RUNNER_STATE_DIR/halt.start"')
    ws.task("1-fail", timed(fail_body))
    ws.task("2-slow", timed(slow))
    ws.task("3-queued", timed("true"))
    ws.task("4-after", timed("true"))


def test_a_failure_stops_new_starts_and_lets_a_running_sibling_finish(ws):
    failing_beside_a_slow_sibling(ws)
    parallel(ws, "[after]\ndepends_on = 2-slow\n", max_tries=1, on_failure="wait")
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["1-fail", "2-slow", HALT]
    assert not has(ws, "3-queued", "start") and not has(ws, "4-after", "start")
    assert has(ws, "2-slow", "end")
    assert results(ws) == [("1-fail", 1, "RETRY"), ("2-slow", 1, "OK"), (HALT, 1, "OK")]
    # Giving up (and the halt task) waits for the sibling.
    assert float((ws.state / "halt.start").read_text()) >= moment(ws, "2-slow", "end")
    assert "1-fail failed on try 1 of 1: giving up" in proc.stderr


def test_on_failure_stop_stops_running_siblings_and_retries_the_whole_try(ws):
    failing_beside_a_slow_sibling(
        ws, fail_body='[ "$RUNNER_TRY" -lt 2 ] && { sleep 0.2; exit 1; }; true',
        slow='[ "$RUNNER_TRY" -lt 2 ] && sleep 10',
    )
    parallel(ws, "[after]\ndepends_on = 2-slow\n", max_tries=2, on_failure="stop")
    proc = ws.run("-n", "1", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert has(ws, "2-slow", "start") and not has(ws, "2-slow", "end")  # stopped, not done
    assert not has(ws, "3-queued", "start", 1) and not has(ws, "4-after", "start", 1)
    assert results(ws) == [
        ("1-fail", 1, "RETRY"), ("1-fail", 2, "OK"),
        ("2-slow", 1, "STOPPED"), ("2-slow", 2, "OK"),
        ("3-queued", 2, "OK"), ("4-after", 2, "OK"),
    ]
    assert has(ws, "4-after", "start", 2)


def test_on_failure_stop_gives_up_after_max_tries_with_the_sibling_stopped_each_time(ws):
    failing_beside_a_slow_sibling(ws, slow="sleep 10")
    parallel(ws, max_tries=2, on_failure="stop")
    proc = ws.run("-n", "1", timeout=20)
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["1-fail", "2-slow"] * 2 + [HALT]
    assert results(ws) == [
        ("1-fail", 1, "RETRY"), ("1-fail", 2, "RETRY"),
        ("2-slow", 1, "STOPPED"), ("2-slow", 2, "STOPPED"), (HALT, 2, "OK"),
    ]


def test_exit_2_beside_a_sibling_runs_the_halt_task_after_it_finished_and_exits_2(ws):
    failing_beside_a_slow_sibling(ws, fail_body="sleep 0.2; exit 2")
    parallel(ws, on_failure="wait")
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert started(proc.stderr) == ["1-fail", "2-slow", HALT]
    assert results(ws) == [("1-fail", 1, "HALT"), ("2-slow", 1, "OK"), (HALT, 1, "OK")]
    assert float((ws.state / "halt.start").read_text()) >= moment(ws, "2-slow", "end")


def test_exit_3_beside_a_sibling_exits_3_without_the_halt_task(ws):
    failing_beside_a_slow_sibling(ws, fail_body="sleep 0.2; exit 3", slow="sleep 0.5")
    parallel(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 3, proc.stderr
    assert started(proc.stderr) == ["1-fail", "2-slow"]
    assert has(ws, "2-slow", "end")


def test_a_flaky_task_is_retried_and_the_chain_passes(ws):
    ws.task("a", timed("sleep 0.2"))
    ws.task("b", timed('[ "$RUNNER_TRY" -lt 2 ] && exit 1; true'))
    ws.task("c", timed("true"))
    parallel(ws, "[c]\ndepends_on = a, b\n", max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "a", "b", "c"]
    assert results(ws) == [
        ("a", 1, "OK"), ("a", 2, "OK"), ("b", 1, "RETRY"), ("b", 2, "OK"), ("c", 2, "OK"),
    ]


def test_retry_from_failed_keeps_the_tasks_already_ok(ws):
    counter = 'echo x >> "$RUNNER_STATE_DIR/$RUNNER_TASK.count"'
    ws.task("a", f"{counter}\nsleep 0.3")  # still running when b fails: finishes OK
    ws.task("b", f'{counter}\n[ "$RUNNER_TRY" -lt 2 ] && exit 1; true')
    ws.task("c", counter)
    parallel(ws, "[c]\ndepends_on = b\n", max_tries=3, retry_from="failed")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "b", "c"]
    runs = {name: len((ws.state / f"{name}.count").read_text().split()) for name in "abc"}
    assert runs == {"a": 1, "b": 2, "c": 1}


def test_sigterm_stops_every_running_task_group_and_exits_143(ws):
    # A plain task, and one whose shell and child ignore SIGTERM (SIGKILL after kill_grace).
    for name, trap in (("a", ""), ("b", "trap '' TERM")):
        ws.task(name, f"""
            {trap}
            sleep 30 &
            echo $! > "$RUNNER_STATE_DIR/{name}.child"
            echo $$ > "$RUNNER_STATE_DIR/{name}.pid"
            wait
            wait
        """)
    ws.task("c", "true")
    parallel(ws, "[c]\ndepends_on = a\n", kill_grace=0.5)
    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for(lambda: all((ws.state / f"{n}.{w}").exists() for n in "ab"
                             for w in ("pid", "child")), what="both tasks running")
        pids = [int((ws.state / f"{n}.{w}").read_text()) for n in "ab" for w in ("pid", "child")]
        assert all(alive(pid) for pid in pids)
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.finish(timeout=15) == 143
        log = watcher.text()
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=5, what="task groups dead")
    assert started(log) == ["a", "b"]
    assert results(ws) == [("a", 1, "STOPPED"), ("b", 1, "STOPPED")]


def test_a_second_iteration_runs_the_parallel_chain_again(ws):
    diamond(ws, "true")
    parallel(ws, DIAMOND)
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b", "c", "d"] * 2


def test_sigterm_while_a_check_runs_starts_no_task(ws):
    ws.task("b", timed("true"))
    checking = ws.root / "checking"
    parallel(ws, f"[b]\ncheck = sh -c 'touch {checking}; exec sleep 10'\n")
    with LogWatcher(ws.start("-n", "1")) as watcher:
        wait_for(checking.exists, what="the check running")
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.finish(timeout=15) == 143
    assert not has(ws, "b", "start")
    # No process of b ran: a STOPPED record (if any) has neither exit code nor signal.
    records = json.loads(ws.run("history", "--json", tasks=False).stdout)
    assert all(r["exit_code"] is None and r["signal"] is None for r in records)
