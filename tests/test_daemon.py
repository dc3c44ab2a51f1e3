"""Daemon mode (--daemon --pidfile) on hosts without systemd, driven through the real command."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from conftest import alive, wait_for


def proc_stat(pid: int) -> dict[str, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"ppid": int(fields[1]), "pgrp": int(fields[2]), "session": int(fields[3])}


def test_daemon_detaches_writes_pidfile_refuses_a_second_instance_and_stops_on_sigterm(ws):
    started_marker = ws.root / "task-started"
    ws.task("10-worker.sh", f"touch '{started_marker}'\nexec sleep 300")
    pidfile, log_file = ws.root / "runner.pid", ws.root / "runner.log"
    args = ("--daemon", "--pidfile", str(pidfile), "--log-file", str(log_file))
    first = ws.run(*args, timeout=20)
    # The foreground process returns at once; the daemon carries on.
    assert first.returncode == 0, first.stderr
    wait_for(pidfile.exists, 10, "the pidfile")
    wait_for(started_marker.exists, 10, "the task to start")
    pid = int(pidfile.read_text().strip())
    stat = proc_stat(pid)
    assert stat["session"] != os.getsid(0) and stat["pgrp"] != os.getpgid(0)
    assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")

    second = ws.run(*args, timeout=20)
    assert second.returncode == 75, second.stderr
    assert f"already running with pid {pid}" in second.stderr
    assert alive(pid)

    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 10, "the daemon to exit")
    wait_for(lambda: not pidfile.exists(), 5, "the pidfile to be removed")
    log = log_file.read_text()
    assert "10-worker.sh: STOPPED" in log
    assert "runner exits with status 143" in log


def test_stale_pidfile_of_a_dead_process_is_replaced(ws):
    ws.task("10-a.sh")
    pidfile = ws.root / "runner.pid"
    pidfile.write_text("999999\n")  # beyond pid_max defaults: no such process
    log_file = ws.root / "runner.log"
    proc = ws.run("-n", "1", "--daemon", "--pidfile", str(pidfile), "--log-file", str(log_file))
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: "10-a.sh: OK" in (log_file.read_text() if log_file.exists() else ""),
             10, "the chain to run in the daemon")
    wait_for(lambda: not pidfile.exists(), 10, "the pidfile to be removed at exit")


def test_daemon_reports_config_errors_on_the_terminal_before_detaching(ws):
    ws.config(max_tries="five")
    proc = ws.run("--daemon", "--pidfile", str(ws.root / "p"))
    assert proc.returncode == 78
    assert "max_tries: 'five' is not an integer" in proc.stderr
    assert not (ws.root / "p").exists()
