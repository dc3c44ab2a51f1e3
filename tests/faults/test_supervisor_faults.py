"""Faults around the supervisor loop, one per test, each against the real `runner`:
a hook that hangs or is missing, a halt task that fails or is missing, SIGTERM during
the backoff pause, SIGHUP with a broken config, the task directory changing under a
running chain, a full disk under state_dir and runtime_dir, and jumps of the wall clock
(every time limit runs on the monotonic clock)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import (
    LogWatcher,
    Workspace,
    alive,
    journal_rows,
    libfaketime,
    output_of,
    run_in_mount_namespace,
    skip_unless,
    started,
    wait_for,
    wait_for_file,
)


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body.strip("\n") + "\n")
    path.chmod(0o755)
    return path


def flaky(ws: Workspace, name: str, failures: int = 1) -> None:
    """A task that fails its first `failures` runs (a count in state_dir), then passes."""
    ws.task(name, f"""
        count="$RUNNER_STATE_DIR/{name}.count"
        n=$(cat "$count" 2>/dev/null || echo 0); echo $((n + 1)) > "$count"
        [ "$n" -ge {failures} ] || {{ echo "failing ({name} run $((n + 1)))"; exit 1; }}
        echo "{name} passes"
    """)


def stamps(log: str) -> list[datetime]:
    """The timestamps of runner's log lines (its wall clock)."""
    return [datetime.strptime(m, "%Y-%m-%d %H:%M:%S,%f")
            for m in re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", log, re.M)]


def stamp_of(log: str, pattern: str) -> datetime:
    match = re.search(r"^(\S+ \S+) .*" + pattern, log, re.M)
    assert match, (pattern, log)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")


def no_trouble(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert " CRITICAL " not in stderr, stderr


# -- task_hook that hangs or is missing ------------------------------------------

HOOK_TIMEOUT = 0.2
HOOK_GRACE = 0.2


@pytest.mark.slow
@pytest.mark.parametrize("ignores_sigterm", [False, True], ids=["hangs", "hangs-ignoring-TERM"])
def test_a_hanging_hook_is_killed_after_hook_timeout_and_changes_no_result(ws, ignores_sigterm):
    calls, kids = ws.root / "calls", ws.root / "hook-children"
    trap = "trap '' TERM" if ignores_sigterm else ""
    hook = script(ws.root / "hook", f"""
        {trap}
        printf '%s\\n' "$1" >> '{calls}'
        sleep 300 &
        echo $! >> '{kids}'
        while :; do sleep 0.05; done
    """)
    ws.task("a")
    flaky(ws, "b")
    ws.task("c")
    ws.config(task_hook=hook, hook_timeout=HOOK_TIMEOUT, kill_grace=HOOK_GRACE)
    begin = time.monotonic()
    proc = ws.run("-n", "1")
    elapsed = time.monotonic() - begin
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    # Try 1: a OK, b RETRY; try 2: a, b, c OK. The hook's end never leaks into a result.
    assert started(proc.stderr) == ["a", "b", "a", "b", "c"]
    assert re.search(r"WARNING b: RETRY \(exit 1\)", proc.stderr)
    assert proc.stderr.count(": OK after") == 4
    runs = 5
    records = [json.loads(line) for line in calls.read_text().splitlines()]
    assert [(r["task"], r["result"]) for r in records] == [
        ("a", "RUNNING"), ("a", "OK"), ("b", "RUNNING"), ("b", "RETRY"),
        ("a", "RUNNING"), ("a", "OK"), ("b", "RUNNING"), ("b", "OK"),
        ("c", "RUNNING"), ("c", "OK"),
    ]
    warnings = re.findall(r"WARNING task_hook for (\w+) (\w+): killed after hook_timeout "
                          r"\(0\.2s\)", proc.stderr)
    assert warnings == [(r["task"], r["result"]) for r in records]
    # Each call costs hook_timeout (plus kill_grace when SIGTERM is ignored), never more.
    per_call = HOOK_TIMEOUT + (HOOK_GRACE if ignores_sigterm else 0)
    assert 2 * runs * per_call <= elapsed < 2 * runs * (HOOK_TIMEOUT + HOOK_GRACE) + 3, elapsed
    # The hook's whole process group went, its background child too.
    for pid in map(int, kids.read_text().split()):
        wait_for(lambda pid=pid: not alive(pid), 5, f"hook child {pid} to be gone")
    results = journal_rows(ws.state / "journal.sqlite",
                           "SELECT task, result FROM task_runs ORDER BY seq")
    assert [(r["task"], r["result"]) for r in results] == [
        ("a", "OK"), ("b", "RETRY"), ("a", "OK"), ("b", "OK"), ("c", "OK")]


@pytest.mark.parametrize("kind", ["missing", "not-executable", "directory", "bad-interpreter"])
def test_a_hook_that_cannot_start_warns_at_every_call_and_tasks_run_on(ws, kind):
    hook = ws.root / "hook"
    if kind == "not-executable":
        hook.write_text("#!/bin/sh\nexit 0\n")
    elif kind == "directory":
        hook.mkdir()
    elif kind == "bad-interpreter":
        hook.write_text("#!/no/such/interpreter\n")
        hook.chmod(0o755)
    ws.task("halt.sh", "echo halt ran")
    ws.task("a", "echo a ran")
    flaky(ws, "b")
    ws.task("c", "echo c ran")
    ws.config(task_hook=hook)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    assert started(proc.stderr) == ["a", "b", "a", "b", "c"]
    assert output_of(proc.stderr, "c") == ["c ran"]
    warnings = re.findall(r"WARNING task_hook for (\w+) (\w+): cannot start (\S+)",
                          proc.stderr)
    assert len(warnings) == 2 * 5, proc.stderr
    assert {w[2].rstrip(":") for w in warnings} == {str(hook)}
    assert [w[:2] for w in warnings][:4] == [("a", "RUNNING"), ("a", "OK"),
                                             ("b", "RUNNING"), ("b", "RETRY")]
    assert "halt ran" not in proc.stderr


# -- the halt task fails or is missing -------------------------------------------

HALT_FAULTS = {
    # fault: (halt.sh body or None, what the ERROR line says)
    "fails": ("echo halting; exit 1", r"halt task halt\.sh failed: RETRY \(exit 1\)"),
    "killed": ("kill -9 $$", r"halt task halt\.sh failed: RETRY \(signal 9\)"),
    "hangs": ("exec sleep 30", r"halt task halt\.sh failed: TIMEOUT \(signal 15\)"),
    "missing": (None, r"a halt is needed but halt task halt\.sh is not in "),
    "vanishes": ("echo never", r"halt task halt\.sh failed: RETRY \(cannot start "
                               r"\S+/halt\.sh: No such file or directory\)"),
}
TRIGGERS = {
    # trigger: (the body of task a, extra runner arguments, runner's exit status)
    "halted": ("exit 2", (), 2),
    "gave-up": ("exit 1", (), 1),
    "halt-after": ("exit 0", ("-H",), 0),
}


@pytest.mark.parametrize("trigger", list(TRIGGERS))
@pytest.mark.parametrize("fault", list(HALT_FAULTS))
def test_a_failing_or_missing_halt_task_keeps_the_prescribed_exit_status(ws, fault, trigger):
    body, error = HALT_FAULTS[fault]
    task_body, args, status = TRIGGERS[trigger]
    if body is not None:
        ws.task("halt.sh", body)
    if fault == "vanishes":  # there when the last try starts, gone when it is needed
        last_try = 2 if trigger == "gave-up" else 1
        task_body = (f"[ \"$RUNNER_TRY\" = {last_try} ] && rm -f '{ws.tasks / 'halt.sh'}'\n"
                     f"{task_body}")
    ws.task("a", task_body)
    ws.task("b", "echo b ran")
    ws.config("[halt]\nmax_time = 0.3\n", max_tries=2, kill_grace=0.2)
    begin = time.monotonic()
    proc = ws.run("-n", "1", *args)
    assert proc.returncode == status, proc.stderr
    assert time.monotonic() - begin < 10
    no_trouble(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert [line for line in errors if re.search(error, line)], proc.stderr
    assert len([line for line in errors if "halt task" in line]) == 1, errors
    tasks = [name for name in started(proc.stderr) if name != "halt.sh"]
    assert tasks == {"halted": ["a"], "gave-up": ["a", "a"], "halt-after": ["a", "b"]}[trigger]
    if fault == "missing":
        assert re.search(r"WARNING halt task halt\.sh not found in ", proc.stderr)
    [run] = journal_rows(ws.state / "journal.sqlite", "SELECT * FROM runs")
    assert run["exit_status"] == status
    halts = journal_rows(ws.state / "journal.sqlite",
                         "SELECT result FROM task_runs WHERE kind = 'halt'")
    expected = {"fails": "RETRY", "killed": "RETRY", "hangs": "TIMEOUT", "vanishes": "RETRY"}
    assert [h["result"] for h in halts] == ([expected[fault]] if fault in expected else [])


# -- SIGTERM / SIGINT during a pause ----------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_the_backoff_pause_exits_at_once_without_another_try(
        ws, signum, status):
    ledger = ws.root / "ledger"
    ws.task("halt.sh", f"echo halt >> '{ledger}'")
    ws.task("a", f"echo \"a try $RUNNER_TRY\" >> '{ledger}'; exit 1")
    ws.config(sleep_time=60, retry_jitter=60, max_tries=3)
    with LogWatcher(ws.start("-n", "1")) as runner:
        runner.wait_for(r"retrying in \d+\.\ds \(try 2 of 3 next\)")
        time.sleep(0.2)  # well inside the pause
        begin = time.monotonic()
        runner.proc.send_signal(signum)
        assert runner.finish() == status, runner.text()
        assert time.monotonic() - begin < 2
        log = runner.text()
    no_trouble(log)
    assert started(log) == ["a"]
    time.sleep(0.3)
    assert ledger.read_text() == "a try 1\n"  # no second try, no halt task
    assert journal_rows(ws.state / "journal.sqlite", "SELECT result, exit_status FROM runs") == [
        {"result": signal.Signals(signum).name, "exit_status": status}]
    tries = journal_rows(ws.state / "journal.sqlite", "SELECT try_num, result FROM tries")
    assert tries == [{"try_num": 1, "result": "RETRY"}]
    live = json.loads((ws.root / "run" / "status.json").read_text())
    assert live["exit_status"] == status and live["state"] == "finished"


def test_sighup_during_the_backoff_pause_neither_cuts_it_short_nor_stops_runner(ws):
    """A reload waits for the pause to end; the next try runs with the new config."""
    ws.task("a", """
        echo "sees $DEMO"
        [ "$RUNNER_TRY" -ge 2 ] || exit 1
    """)
    ws.config("[env]\nDEMO = old\n", sleep_time=1.5, backoff=1, max_tries=3)
    with LogWatcher(ws.start("-n", "1")) as runner:
        runner.wait_for(r"retrying in 1\.5s")
        ws.config("[env]\nDEMO = new\n", sleep_time=1.5, backoff=1, max_tries=3)
        for _ in range(3):
            time.sleep(0.1)
            runner.proc.send_signal(signal.SIGHUP)
        assert runner.finish() == 0, runner.text()
        log = runner.text()
    no_trouble(log)
    assert output_of(log, "a") == ["sees old", "sees new"]
    paused = stamp_of(log, r"a: starting \(try 2/3") - stamp_of(log, r"retrying in 1\.5s")
    assert timedelta(seconds=1.45) <= paused < timedelta(seconds=3), paused
    assert log.count("SIGHUP: configuration reloaded") == 1


# -- SIGHUP with a broken new config ------------------------------------------------

BROKEN_CONFIGS = {
    # name: (text of the broken runner.cfg, fragments of the ERROR line)
    "type": ("[runner]\nmax_tries = five\n", ("max_tries", "five")),
    "unknown-key": ("[runner]\nmax_trys = 3\n", ("max_trys",)),
    "syntax": ("[runner\nmax_tries = 3\n", ("cannot parse", "[runner")),
    "not-utf8": (b"[runner]\nmax_tries = 3\n\xff\n", ("not valid UTF-8",)),
    "missing-dependency": ("[runner]\n[print]\ndepends_on = no-such-task\n",
                           ("depends_on", "no-such-task")),
    "cycle": ("[runner]\n[break]\ndepends_on = fix\n[fix]\ndepends_on = break\n", ("cycle",)),
    "deleted": (None, ("No such file or directory",)),
}


@pytest.mark.parametrize("broken", list(BROKEN_CONFIGS))
def test_sighup_with_a_broken_config_keeps_the_old_one_and_a_good_one_applies_later(
        ws, broken):
    text, fragments = BROKEN_CONFIGS[broken]
    bad, good = ws.root / "bad.cfg", ws.root / "good.cfg"
    if isinstance(text, bytes):
        bad.write_bytes(text)
    elif text is not None:
        bad.write_text(text)
    # The good config: a new [env] value and a new max_tries that later tasks show.
    ws.config("[env]\nDEMO = new\n[demo]\nvalue = new\n", max_tries=9)
    good.write_text(ws.cfg.read_text())
    ws.config("[env]\nDEMO = old\n[demo]\nvalue = old\n", max_tries=7)
    install_bad = f"cp '{bad}' '{ws.cfg}'" if text is not None else f"rm '{ws.cfg}'"
    ws.task("1-break", f"{install_bad}\nkill -HUP $PPID")
    show = 'echo "env=$DEMO cfg=$($RUNNER_CONFIG_CMD -g demo.value)"'
    ws.task("2-print", show)
    ws.task("3-fix", f"cp '{good}' '{ws.cfg}'\nkill -HUP $PPID")
    ws.task("4-print", show)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, proc.stderr
    assert "SIGHUP: new configuration is invalid, keeping the old one" in errors[0]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    assert started(proc.stderr) == ["1-break", "2-print", "3-fix", "4-print"]
    assert re.search(r"2-print: starting \(try 1/7,", proc.stderr)
    assert output_of(proc.stderr, "2-print") == ["env=old cfg=old"]
    assert proc.stderr.count("SIGHUP: configuration reloaded") == 1
    assert re.search(r"4-print: starting \(try 1/9,", proc.stderr)
    assert output_of(proc.stderr, "4-print") == ["env=new cfg=new"]


# -- the task directory changes under a running chain --------------------------------


def test_tasks_added_and_removed_during_a_try_apply_from_the_next_try(ws):
    """The plan of a try is fixed when it starts (README: "a new order or task set
    applies from the next try"). Pinned as it is: a task removed before its turn fails
    to start, which is a RETRY like any other (it costs a try, so with max_tries = 1 it
    would run the halt task); the next try's plan has the added task and not the
    removed one. A task replaced before its turn runs in its new form."""
    ledger = ws.root / "ledger"
    ws.task("10-first", f"echo first >> '{ledger}'")
    ws.task("20-mutate", f"""
        printf '#!/bin/sh\\necho added >> {ledger}\\n' > '{ws.tasks}/25-added'
        chmod +x '{ws.tasks}/25-added'
        rm -f '{ws.tasks}/30-doomed'
        printf '#!/bin/sh\\necho replaced >> {ledger}\\n' > '{ws.tasks}/40-last.new'
        chmod +x '{ws.tasks}/40-last.new'
        mv '{ws.tasks}/40-last.new' '{ws.tasks}/40-last'
        echo mutate >> '{ledger}'
    """)
    ws.task("30-doomed", f"echo doomed >> '{ledger}'")
    ws.task("40-last", f"echo original >> '{ledger}'")
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    assert started(proc.stderr) == [
        "10-first", "20-mutate", "30-doomed",  # try 1 of iteration 1: 30 is gone
        "10-first", "20-mutate", "25-added", "40-last",  # try 2: the new plan
        "10-first", "20-mutate", "25-added", "40-last",  # iteration 2
    ]
    assert re.search(r"WARNING 30-doomed: RETRY \(cannot start \S+/30-doomed: "
                     r"No such file or directory\)", proc.stderr)
    assert ledger.read_text().split() == [
        "first", "mutate", "first", "mutate", "added", "replaced",
        "first", "mutate", "added", "replaced"]


def test_a_task_added_late_in_the_chain_runs_from_the_next_iteration(ws):
    ws.task("10-adds", f"""
        printf '#!/bin/sh\\necho late task ran\\n' > '{ws.tasks}/90-late'
        chmod +x '{ws.tasks}/90-late'
    """)
    ws.task("20-ok")
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-adds", "20-ok", "10-adds", "20-ok", "90-late"]


def test_the_task_directory_vanishing_for_a_while_does_not_end_the_run(ws):
    away = ws.root / "tasks.away"
    ws.task("10-first")
    ws.task("20-move-away", f"""
        [ -e "$RUNNER_STATE_DIR/moved" ] && exit 0
        touch "$RUNNER_STATE_DIR/moved"
        mv '{ws.tasks}' '{away}'
        (sleep 1.2; mv '{away}' '{ws.tasks}') >/dev/null 2>&1 &
    """)
    ws.task("30-last")
    ws.config(sleep_time=0.4, backoff=1, max_tries=10)
    proc = ws.run("-n", "1")
    wait_for(lambda: ws.tasks.exists(), 5, "the task directory to come back")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr)[-1] == "30-last"


# -- a full disk under state_dir (and runtime_dir) -------------------------------------


def full_disk_setup(ws: Workspace, inodes: bool, size: str = "256k") -> tuple[Path, str]:
    """Config with state_dir, runtime_dir and metrics_file on one tiny tmpfs (mounted by
    the returned shell), filled before runner starts (also of inodes, if asked)."""
    disk = ws.root / "disk"
    disk.mkdir()
    ws.config(state_dir=disk / "state", runtime_dir=disk / "run",
              metrics_file=disk / "runner.prom", max_tries=5, max_boot_tries=20)
    options = f"size={size},nr_inodes=16" if inodes else f"size={size}"
    fill = f"dd if=/dev/zero of='{disk}/filler' bs=64k 2>/dev/null"
    if inodes:  # runtime_dir exists, but not even a socket can be made in it
        fill = (f"mkdir '{disk}/state' '{disk}/run' && i=0; "
                f"while touch '{disk}/inode'$i 2>/dev/null; do i=$((i+1)); done; {fill}")
    return disk, f"mount -t tmpfs -o {options} tmpfs '{disk}' && {{ {fill}; true; }}"


@pytest.mark.root
@pytest.mark.parametrize("inodes", [False, True], ids=["no-space", "no-space-no-inodes"])
def test_a_long_chain_with_retries_on_a_full_disk_only_warns(ws, slow, inodes):
    count = 40 if slow else 12
    ledger = ws.root / "ledger"
    for number in range(count):
        ws.task(f"{number:02d}-step", f'echo "$RUNNER_TASK $RUNNER_TRY" >> \'{ledger}\'')
    flaky_name = f"{count // 2:02d}-flaky"
    ws.task(flaky_name, f"""
        n=$(cat '{ws.root}/flaky.count' 2>/dev/null || echo 0)
        echo $((n + 1)) > '{ws.root}/flaky.count'
        [ "$n" -ge 2 ]
    """)
    _disk, mount = full_disk_setup(ws, inodes)
    proc = run_in_mount_namespace(ws, mount, "-n", "2")
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    assert " ERROR " not in proc.stderr, proc.stderr
    # Tries 1 and 2 end at the flaky task; try 3 and iteration 2 run everything.
    assert len(ledger.read_text().splitlines()) == 2 * (count // 2) + 2 * count
    warnings = [line for line in proc.stderr.splitlines() if " WARNING " in line]

    def once(fragment: str) -> None:
        assert sum(fragment in w for w in warnings) == 1, (fragment, proc.stderr)

    once("journal ")
    once("status file ")
    once("metrics file ")
    once("runner.lock")  # no inode for it, or no block for the pid: the lock still applies
    if inodes:
        once("control socket ")
    # What may repeat: boot-tries.json at every try (it is written once a try), and the
    # two failed tries.
    expected = {"journal ", "status file ", "metrics file ", "control socket ", "runner.lock",
                "boot-tries.json", "halt task halt.sh not found", "flaky: RETRY",
                "failed tries during this run", "flaky iteration 1 try"}
    assert all(any(e in w for e in expected) for w in warnings), warnings


@pytest.mark.root
def test_a_full_disk_that_frees_up_brings_back_the_journal_and_the_status_file(ws):
    for number in range(6):
        ws.task(f"{number}0-step", f"echo step {number}")
    disk, mount = full_disk_setup(ws, inodes=False, size="2m")  # room for the WAL once freed
    ws.task("35-free", f"rm -f '{disk}/filler'")
    copy = ws.root / "copy"
    proc = run_in_mount_namespace(ws, mount, "-n", "1",
                                  after=f"cp -r '{disk}' '{copy}'")
    assert proc.returncode == 0, proc.stderr
    no_trouble(proc.stderr)
    assert re.search(r"WARNING journal \S+: cannot write", proc.stderr)
    assert re.search(r"WARNING journal \S+: writable again; wrote \d+ held record", proc.stderr)
    assert re.search(r"WARNING status file \S+: cannot write it", proc.stderr)
    assert re.search(r"INFO status file \S+: written again", proc.stderr)
    rows = journal_rows(copy / "state" / "journal.sqlite",
                        "SELECT task, result FROM task_runs ORDER BY seq")
    assert [r["task"] for r in rows] == [
        "00-step", "10-step", "20-step", "30-step", "35-free", "40-step", "50-step"]
    assert {r["result"] for r in rows} == {"OK"}
    live = json.loads((copy / "run" / "status.json").read_text())
    assert live["exit_status"] == 0 and live["journal"]["ok"] is True, (live, proc.stderr)


@pytest.mark.root
def test_a_full_runtime_directory_as_under_systemd_only_warns(ws):
    ws.task("10-step", "$RUNNER_CONFIG_CMD -g runner.max_tries")
    disk, mount = full_disk_setup(ws, inodes=False)
    proc = run_in_mount_namespace(
        ws, f"{mount} && export RUNTIME_DIRECTORY='{disk}'", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-step") == ["5"]


@pytest.mark.root
def test_sighup_while_the_runtime_directory_is_full_keeps_runner_going(ws):
    disk = ws.root / "disk"
    disk.mkdir()
    good = ws.root / "good.cfg"
    ws.config("[env]\nDEMO = new\n")
    good.write_text(ws.cfg.read_text())
    ws.config("[env]\nDEMO = old\n")
    ws.task("10-fill", f"""
        dd if=/dev/zero of='{disk}/filler' bs=64k 2>/dev/null
        cp '{good}' '{ws.cfg}'
        kill -HUP $PPID
    """)
    ws.task("20-after", 'echo "env=$DEMO"')
    proc = run_in_mount_namespace(
        ws, f"mount -t tmpfs -o size=256k tmpfs '{disk}' && export RUNTIME_DIRECTORY='{disk}'",
        "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-fill", "20-after"]


# -- the wall clock jumps -----------------------------------------------------------


@pytest.mark.slow
def test_wall_clock_jumps_change_neither_max_time_nor_the_backoff_pause(ws):
    """libfaketime shifts runner's wall clock (time(), CLOCK_REALTIME) back and forth
    while a task runs into max_time and during the pause; the monotonic clock stays
    real. The timeout comes after max_time and the pause lasts what it says."""
    library = libfaketime()
    skip_unless(library is not None, "needs libfaketime (Debian package faketime)")
    offset, ready = ws.root / "faketime", ws.root / "ready"
    offset.write_text("+0\n")
    env = {
        **os.environ, "LD_PRELOAD": str(library),
        "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1",
    }
    ws.task("10-slow", f"""
        [ "$RUNNER_TRY" -ge 2 ] && exit 0
        echo "$$" > '{ready}.tmp' && mv '{ready}.tmp' '{ready}'
        exec sleep 30
    """)
    ws.config("[slow]\nmax_time = 1.5\n", sleep_time=1.5, backoff=1, max_tries=2,
              kill_grace=0.3)
    with LogWatcher(ws.start("-n", "1", env=env)) as runner:
        wait_for_file(ready)
        forked = started_since_boot(int(ready.read_text()))
        offset.write_text("+10h\n")
        time.sleep(0.5)
        offset.write_text("-10h\n")
        runner.wait_for(r"10-slow: TIMEOUT", timeout=10)
        # From the fork of the task (the kernel's record, on the clock of /proc/uptime
        # that libfaketime does not fake), not from when the task or the test got going:
        # a busy machine takes a good part of a second to start a shell under LD_PRELOAD.
        timed_out = uptime() - forked
        runner.wait_for(r"retrying in 1\.5s")
        pause_began = time.monotonic()
        offset.write_text("-1y\n")
        time.sleep(0.5)
        offset.write_text("+1d\n")
        runner.wait_for(r"10-slow: starting \(try 2/2", timeout=10)
        paused = time.monotonic() - pause_began
        assert runner.finish() == 0, runner.text()
        log = runner.text()
    no_trouble(log)
    # max_time runs from just before the spawn, which a loaded machine delays (CI saw the
    # fork 0.12 s after it); a wall clock jump obeyed would end it at once (~0.5 s here).
    assert 1.2 <= timed_out < 3, timed_out
    assert 1.3 <= paused < 3, paused
    duration = float(re.search(r"10-slow: TIMEOUT \(signal 15\) after (\d+\.\d+)s", log)[1])
    assert 1.5 <= duration < 2.5, duration
    # The jumps were real for runner: its log's timestamps went back and forth.
    steps = [b - a for a, b in zip(stamps(log), stamps(log)[1:], strict=False)]
    assert any(step < -timedelta(hours=9) for step in steps), log
    assert any(step > timedelta(hours=30) for step in steps), log
    [row] = journal_rows(ws.state / "journal.sqlite",
                         "SELECT * FROM task_runs WHERE result = 'TIMEOUT'")
    assert 1.5 <= row["duration_s"] < 2.5  # monotonic, whatever started/ended_at say


def started_since_boot(pid: int) -> float:
    """When the process was forked, in seconds since boot (/proc/PID/stat field 22)."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def uptime() -> float:
    with open("/proc/uptime") as file:
        return float(file.read().split()[0])


def test_absurdly_large_times_neither_crash_nor_overflow(ws):
    # Finite but enormous values pass validation; runner caps its waits instead of crashing.
    ws.task("10-fails.sh", "exit 1")
    ws.config(sleep_time="1e300", max_time="1e300", hook_timeout="1e300", retry_jitter="0")
    proc = ws.start("-n", "1")
    wait_for(lambda: '"state": "waiting"' in _status_text(ws), what="the backoff pause")
    proc.terminate()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, err
    assert "internal error" not in err and "Traceback" not in err


def _status_text(ws) -> str:
    try:
        return (ws.root / "run" / "status.json").read_text()
    except OSError:
        return ""
