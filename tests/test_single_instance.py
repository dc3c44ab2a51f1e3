"""One runner per state_dir (the lock in state_dir/runner.lock) and stale pidfiles,
end to end through the real `runner` command.

Every task here appends its pid to a marker file before it does anything else, so the
marker's lines count the task runs (and name the processes to clean up).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import (
    LogWatcher,
    Workspace,
    alive,
    assert_one_line_error,
    need_root,
    run_in_mount_namespace,
    wait_for,
)

from runner.identity import process_start

NOBODY = 65534


# -- helpers --------------------------------------------------------------------------


def marked_task(ws: Workspace, name: str = "10-mark.sh") -> tuple[Path, Path]:
    """A task that appends its pid to `marker`, then sleeps while `hold` exists.
    Returns (marker, hold); `hold` is created."""
    marker, hold = ws.root / f"{name}.runs", ws.root / "hold"
    hold.touch()
    ws.task(name, f"""
        echo $$ >> '{marker}'
        [ -e '{hold}' ] && exec sleep 300
        exit 0
    """)
    return marker, hold


def runs(marker: Path) -> list[int]:
    """The pids of the task runs recorded in `marker`."""
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def wait_for_runs(marker: Path, count: int = 1) -> list[int]:
    wait_for(lambda: len(runs(marker)) >= count, 15, f"{count} run(s) in {marker.name}")
    return runs(marker)


def status_json(ws: Workspace) -> dict:
    proc = ws.run("status", "--json", tasks=False)
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def wait_for_live_task(ws: Workspace) -> None:
    """Until the live status shows a task running (written up to 50 ms after it starts)."""
    wait_for(lambda: (status_json(ws).get("runner") or {}).get("state") == "running", 10,
             "the live status to show the task")


def lock_pid(ws: Workspace) -> int:
    return int((ws.state / "runner.lock").read_text().split()[0])


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def stop(pid: int | None) -> None:
    """SIGTERM a runner (it stops its task), SIGKILL if it lingers; no error if gone."""
    if pid is None or not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 10, f"pid {pid} to exit")
    except (ProcessLookupError, AssertionError):
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def kill_groups(pids: list[int]) -> None:
    """SIGKILL the process groups of tasks (each task leads one) still running."""
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def start_daemon(ws: Workspace, pidfile: Path, *args: str) -> subprocess.CompletedProcess:
    return ws.run("--daemon", "--pidfile", str(pidfile), "--log-file",
                  str(ws.root / "daemon.log"), *args, timeout=30)


def asking_task(ws: Workspace) -> Path:
    """A task that saves `runner status --json` as its runner runs; returns where."""
    out = ws.root / "asked-status.json"
    ws.task("10-ask.sh", ws.until_live("10-ask.sh")
            + f"'{ws.command()[0]}' -c '{ws.cfg}' status --json > '{out}'")
    return out


def run_on_tmpfs_state(ws: Workspace, size: str, then: str) -> subprocess.CompletedProcess:
    """`runner -n 1` with state_dir on a tmpfs of `size` that shell `then` prepares."""
    ws.state.mkdir()
    return run_in_mount_namespace(
        ws, f"mount -t tmpfs -o size={size} tmpfs '{ws.state}' && {then}", "-n", "1")


def other_workspace(ws: Workspace) -> Workspace:
    """A second setup with a state_dir and runtime_dir of its own."""
    root = ws.root / "other"
    root.mkdir()
    return Workspace(root)


# -- one runner per state_dir ---------------------------------------------------------


def test_a_second_runner_exits_75_naming_the_first_and_runs_no_task(ws):
    marker, hold = marked_task(ws)
    with LogWatcher(ws.start("-n", "1")) as first:
        try:
            wait_for_runs(marker)
            second = ws.run("-n", "1", timeout=30)
            assert_one_line_error(second, f"runner is already running with pid {first.proc.pid}",
                                  str(ws.state), status=75)
            assert len(runs(marker)) == 1  # the second never ran a task
            assert lock_pid(ws) == first.proc.pid
            first.proc.send_signal(signal.SIGTERM)
            assert first.finish() == 143
        finally:
            kill_groups(runs(marker))
    hold.unlink()
    third = ws.run("-n", "1")
    assert third.returncode == 0, third.stderr
    assert len(runs(marker)) >= 2


def test_a_runner_starting_while_status_probes_the_lock_waits_for_the_probe(ws):
    # `runner status` takes a shared lock for an instant; here one is held for 0.5 s.
    ws.task("10-ok.sh")
    ws.state.mkdir()
    lock_file = ws.state / "runner.lock"
    lock_file.touch()
    fd = os.open(lock_file, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    release = threading.Timer(0.5, fcntl.flock, (fd, fcntl.LOCK_UN))
    release.start()
    try:
        proc = ws.run("-n", "1")
    finally:
        release.join()
        os.close(fd)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_status_says_running_with_the_lock_holders_pid_and_not_running_after(ws):
    marker, _ = marked_task(ws)
    with LogWatcher(ws.start("-n", "1")) as first:
        try:
            wait_for_runs(marker)
            wait_for_live_task(ws)
            doc = status_json(ws)
            assert (doc["running"], doc["pid"], doc["runner"]["pid"]) == (
                True, first.proc.pid, first.proc.pid)
            text = ws.run("status", tasks=False).stdout.splitlines()[0]
            assert "running since" in text and f"pid {first.proc.pid}," in text
            first.proc.send_signal(signal.SIGTERM)
            assert first.finish() == 143
        finally:
            kill_groups(runs(marker))
    doc = status_json(ws)
    assert (doc["running"], doc["pid"], doc["runner"]) == (False, None, None)


@pytest.mark.slow
def test_status_believes_the_lock_not_a_status_file_that_says_otherwise(ws):
    # What a second runner sharing runtime_dir used to leave: a status file of its own
    # (finished, dead pid) while the first still runs — and a live pid whose lock is free.
    marker, _ = marked_task(ws)
    status_file = ws.root / "run" / "status.json"
    with LogWatcher(ws.start("-n", "1")) as first:
        try:
            wait_for_runs(marker)
            # Written once the task runs, the file is not rewritten while it sleeps.
            wait_for_live_task(ws)
            lie = {**json.loads(status_file.read_text()), "pid": 999999, "state": "finished"}
            status_file.write_text(json.dumps(lie))
            doc = status_json(ws)
            assert (doc["running"], doc["pid"]) == (True, first.proc.pid)
            line = ws.run("status", tasks=False).stdout.splitlines()[0]
            assert f"running (pid {first.proc.pid})" in line, line
            first.proc.send_signal(signal.SIGTERM)
            assert first.finish() == 143
        finally:
            kill_groups(runs(marker))
    # A status file naming a live process (this test) that claims the lock, which is free.
    me = os.getpid()
    lie = {**json.loads(status_file.read_text()), "pid": me, "pid_start": process_start(me),
           "state": "running"}
    status_file.write_text(json.dumps(lie))
    assert status_json(ws)["running"] is False


def test_after_a_sigkill_the_lock_is_gone_though_the_task_lives_on(ws):
    marker, hold = marked_task(ws)
    with LogWatcher(ws.start("-n", "1")) as first:
        try:
            [task] = wait_for_runs(marker)
            first.proc.kill()
            assert first.finish() == -signal.SIGKILL
            # The orphaned task did not inherit the lock (O_CLOEXEC): it is free.
            assert alive(task)
            fds = [os.readlink(f) for f in Path(f"/proc/{task}/fd").iterdir()]
            assert not any(f.endswith("runner.lock") for f in fds), fds
            doc = status_json(ws)
            assert (doc["running"], doc["pid"]) == (False, None)
            assert doc["last_run"]["result"] == "INTERRUPTED"
            hold.unlink()
            again = ws.run("-n", "1")
            assert again.returncode == 0, again.stderr
            assert len(runs(marker)) == 2
        finally:
            kill_groups(runs(marker))


def test_a_task_that_runs_runner_status_sees_its_runner_running(ws):
    out = asking_task(ws)
    proc = ws.start("-n", "1")
    with LogWatcher(proc) as watcher:
        assert watcher.finish() == 0, watcher.text()
    doc = json.loads(out.read_text())
    assert (doc["running"], doc["pid"]) == (True, proc.pid)
    assert doc["runner"]["task"] == "10-ask.sh"


@pytest.mark.slow
def test_a_foreground_runner_is_refused_while_a_daemon_runs_on_its_state_dir(ws):
    marker, _ = marked_task(ws)
    pidfile = ws.root / "runner.pid"
    daemon = None
    try:
        assert start_daemon(ws, pidfile).returncode == 0
        wait_for_runs(marker)
        wait_for(lambda: read_pid(pidfile) is not None, 10, "the pidfile")
        daemon = read_pid(pidfile)
        # The lock names the daemon, rewritten after detaching (not the foreground pid).
        assert lock_pid(ws) == daemon and alive(daemon)
        second = ws.run("-n", "1", timeout=30)
        assert_one_line_error(second, f"already running with pid {daemon}", str(ws.state),
                              status=75)
        assert len(runs(marker)) == 1
        assert (status_json(ws)["running"], status_json(ws)["pid"]) == (True, daemon)
    finally:
        stop(daemon)
        kill_groups(runs(marker))


@pytest.mark.slow
def test_a_daemon_is_refused_on_the_terminal_while_a_foreground_runner_runs(ws):
    marker, _ = marked_task(ws)
    pidfile = ws.root / "runner.pid"
    with LogWatcher(ws.start()) as first:
        try:
            wait_for_runs(marker)
            second = start_daemon(ws, pidfile)
            assert_one_line_error(second, f"already running with pid {first.proc.pid}",
                                  status=75)
            assert not pidfile.exists()
            assert len(runs(marker)) == 1
        finally:
            kill_groups(runs(marker))


# -- state_dir: made with a fixed mode, or run on without the lock ---------------------


def test_state_dir_is_made_0755_whatever_the_umask_and_the_lock_file_0644(ws):
    ws.config(state_dir=str(ws.root / "deep" / "state"))
    ws.task("10-ok.sh")
    proc = subprocess.run(["sh", "-c", 'umask 077 && exec "$@"', "sh",
                           *ws.command("-n", "1")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for path in (ws.root / "deep", ws.root / "deep" / "state"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    assert stat.S_IMODE((ws.root / "deep" / "state" / "runner.lock").stat().st_mode) == 0o644


def test_an_existing_state_dir_keeps_its_mode(ws):
    ws.state.mkdir(mode=0o700)
    ws.state.chmod(0o700)
    ws.task("10-ok.sh")
    assert ws.run("-n", "1").returncode == 0
    assert stat.S_IMODE(ws.state.stat().st_mode) == 0o700


def test_a_state_dir_that_cannot_be_created_is_one_warning_and_the_tasks_run(ws):
    (ws.root / "a-file").write_text("")
    ws.config(state_dir=str(ws.root / "a-file" / "state"))
    marker, hold = marked_task(ws)
    hold.unlink()
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "single-instance lock" in line]
    assert "a-file/state: cannot create it (Not a directory)" in warning, warning
    assert len(runs(marker)) == 1


@pytest.mark.root
def test_a_read_only_state_dir_warns_once_and_runs_without_the_lock(ws):
    out = asking_task(ws)
    # A lock file left from before the remount: free, and not openable for writing.
    proc = run_on_tmpfs_state(ws, "1m", f"touch '{ws.state}/runner.lock' && "
                              f"mount -o remount,ro '{ws.state}'")
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "single-instance lock" in line]
    assert len(warnings) == 1, proc.stderr
    assert "runner.lock" in warnings[0] and "Read-only file system" in warnings[0]
    # runner says it holds no lock, so status trusts the status file's pid.
    assert json.loads(out.read_text())["running"] is True


@pytest.mark.root
def test_a_full_state_dir_keeps_the_lock_without_a_pid_and_runs(ws):
    out = asking_task(ws)
    proc = run_on_tmpfs_state(ws, "64k", f"(dd if=/dev/zero of='{ws.state}/filler' bs=4k "
                              "2>/dev/null; true)")
    assert proc.returncode == 0, proc.stderr
    [warning] = [line for line in proc.stderr.splitlines() if "runner.lock" in line]
    assert "cannot write runner's pid" in warning and "No space left" in warning, warning
    doc = json.loads(out.read_text())
    # The lock says running; the pid comes from the live status file then.
    assert doc["running"] is True and doc["pid"] == doc["runner"]["pid"] is not None


# -- stale pidfiles -------------------------------------------------------------------


# An unprivileged process behind the pidfile's pid: a plain one, and one that calls
# itself runner (argv[0]) to look like the pidfile's writer.
SQUATTERS = {
    "sleep": (["sleep", "60"], "sleep", "it is not a runner"),
    "disguised": (["/usr/bin/python3", "-c", "import os; os.execv('/bin/sleep', "
                   "['runner', '60'])"], "runner", f"it runs as uid {NOBODY}, the pidfile "
                  "belongs to uid 0"),
}


@pytest.mark.root
@pytest.mark.parametrize("kind", list(SQUATTERS))
def test_a_pidfile_naming_a_process_that_is_not_runner_is_replaced_with_one_warning(ws, kind):
    need_root("needs root to run the squatter as nobody")
    argv, argv0, reason = SQUATTERS[kind]
    marker, _ = marked_task(ws)
    pidfile = ws.root / "runner.pid"
    squatter = subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                 "--clear-groups", *argv])
    daemon = None
    try:
        wait_for(lambda: cmdline(squatter.pid)[0] == argv0, 5, "setpriv to exec sleep")
        squatter_start = process_start(squatter.pid)
        pidfile.write_text(f"{squatter.pid}\n")
        proc = start_daemon(ws, pidfile)
        assert proc.returncode == 0, proc.stderr
        [warning] = [line for line in proc.stderr.splitlines() if "WARNING" in line]
        assert f"pid {squatter.pid}" in warning and "'sleep'" in warning, warning
        assert f"uid {NOBODY}" in warning and reason in warning, warning
        wait_for(lambda: read_pid(pidfile) not in (None, squatter.pid), 10, "the new pidfile")
        daemon = read_pid(pidfile)
        assert alive(daemon) and "runner" in " ".join(cmdline(daemon))
        assert lock_pid(ws) == daemon
        wait_for_runs(marker)
        # The squatter is untouched: the same process, still running as nobody.
        assert squatter.poll() is None and process_start(squatter.pid) == squatter_start
        assert Path(f"/proc/{squatter.pid}").stat().st_uid == NOBODY
    finally:
        stop(daemon)
        kill_groups(runs(marker))
        squatter.kill()
        squatter.wait()


def live_runner_elsewhere(ws: Workspace) -> tuple[LogWatcher, list[int]]:
    """A foreground runner on another state_dir, its task started; (watcher, task pids)."""
    other = other_workspace(ws)
    marker, _ = marked_task(other)
    watcher = LogWatcher(other.start())
    return watcher, wait_for_runs(marker)


def test_a_pidfile_naming_a_live_runner_still_gives_75(ws):
    ws.task("10-ok.sh")
    pidfile = ws.root / "runner.pid"
    watcher, tasks = live_runner_elsewhere(ws)
    with watcher:
        try:
            pidfile.write_text(f"{watcher.proc.pid}\n")
            proc = start_daemon(ws, pidfile)
            assert_one_line_error(proc, str(pidfile), f"already running with pid "
                                  f"{watcher.proc.pid}", status=75)
            assert read_pid(pidfile) == watcher.proc.pid
        finally:
            kill_groups(tasks)


def test_a_pidfile_older_than_the_runner_it_names_is_replaced(ws):
    # pid reuse: the runner behind the pid started after the pidfile was written.
    marker, _ = marked_task(ws)
    pidfile = ws.root / "runner.pid"
    watcher, tasks = live_runner_elsewhere(ws)
    daemon = None
    with watcher:
        try:
            pidfile.write_text(f"{watcher.proc.pid}\n")
            an_hour_ago = pidfile.stat().st_mtime - 3600
            os.utime(pidfile, (an_hour_ago, an_hour_ago))
            proc = start_daemon(ws, pidfile)
            assert proc.returncode == 0, proc.stderr
            assert "started after the pidfile was written" in proc.stderr
            wait_for(lambda: read_pid(pidfile) not in (None, watcher.proc.pid), 10,
                     "the new pidfile")
            daemon = read_pid(pidfile)
            wait_for_runs(marker)
            assert watcher.proc.poll() is None
        finally:
            stop(daemon)
            kill_groups(tasks + runs(marker))
