"""runner.service under a real systemd: PID 1 of a systemd-nspawn container.

A cached debootstrapped Debian tree (scripts/systemd-tree.sh) is copied, runner is
installed into it on Debian's own python3-configobj/daemon/sdnotify, and a oneshot
probe unit inside drives and observes runner.service, writes what it saw to /out and
powers the container off. The host reads /out afterwards.
"""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import boot_guest, copy_tree

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

PROBE = r"""#!/bin/sh
# Drives runner.service from inside the container; every observation goes to /out.
out=/out/result.txt
say() { echo "$*" >> "$out"; }
prop() { systemctl show runner -p "$1" --value; }
wait_until() {  # wait_until SECONDS COMMAND...
    limit=$(( $1 * 10 )); shift
    while [ "$limit" -gt 0 ]; do "$@" && return 0; sleep 0.1; limit=$((limit - 1)); done
    return 1
}
status_has() { prop StatusText | grep -q "$1"; }
is_active() { [ "$(prop ActiveState)" = active ]; }

wait_until 60 status_has "running task 20-gate.sh" || say "never-saw-gate"
say "gate-state=$(prop ActiveState)"
say "gate-status=$(prop StatusText)"
touch /run/release-gate
wait_until 60 is_active || say "never-active"
say "after-gate-state=$(prop ActiveState)"
wait_until 60 status_has "running task 30-worker.sh" || say "never-saw-worker"
wait_until 30 test -s /run/worker-child.pid || say "no-child-pid"
say "worker-status=$(prop StatusText)"
child=$(cat /run/worker-child.pid)
daemon=$(cat /run/worker-daemon.pid)
systemctl stop runner
say "stopped-state=$(prop ActiveState)"
say "stopped-result=$(prop Result)"
sleep 0.5
kill -0 "$child" 2>/dev/null && say "child-alive" || say "child-gone"
kill -0 "$daemon" 2>/dev/null && say "daemon-alive" || say "daemon-gone"
journalctl -u runner --no-pager -o cat > /out/journal.txt
say "done"
systemctl poweroff
"""

TASKS = {
    "10-first.sh": "echo first task says hello",
    "20-gate.sh": "while [ ! -e /run/release-gate ]; do sleep 0.1; done\necho gate open",
    # The worker: a child in its own group and a daemon that left the session (setsid),
    # then a long wait; systemctl stop must take all of it down.
    "30-worker.sh": textwrap.dedent("""\
        sleep 1000 &
        echo $! > /run/worker-child.pid.tmp
        setsid sh -c 'echo $$ > /run/worker-daemon.pid; exec sleep 1000' &
        while [ ! -s /run/worker-daemon.pid ]; do sleep 0.05; done
        mv /run/worker-child.pid.tmp /run/worker-child.pid
        echo worker running
        exec sleep 1000
    """),
    "halt.sh": "echo halt requested",
}

CONFIG = """\
[runner]
notify_ready = task:gate
sleep_time = 0
retry_jitter = 0
kill_grace = 2
"""


def _install(guest: Path, probe_text: str = PROBE, tasks_text: dict[str, str] = TASKS,
             config: str = CONFIG) -> None:
    site = guest / "usr/lib/python3/dist-packages/runner"
    shutil.copytree(ROOT / "runner", site, ignore=shutil.ignore_patterns("__pycache__"))
    entry = guest / "usr/bin/runner"
    entry.write_text("#!/usr/bin/python3\nfrom runner.cli import entry\nentry()\n")
    entry.chmod(0o755)
    units = guest / "etc/systemd/system"
    shutil.copy(ROOT / "packaging/runner.service", units / "runner.service")
    wants = units / "multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "runner.service").symlink_to("/etc/systemd/system/runner.service")
    (units / "probe.service").write_text(
        "[Unit]\nDescription=runner test probe\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/probe\nStandardOutput=journal\n"
    )
    (wants / "probe.service").symlink_to("/etc/systemd/system/probe.service")
    probe = guest / "usr/local/sbin/probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(probe_text)
    probe.chmod(0o755)
    tasks = guest / "etc/runner/tasks.d"
    tasks.mkdir(parents=True)
    for name, body in tasks_text.items():
        (tasks / name).write_text(f"#!/bin/sh\n{body}\n")
        (tasks / name).chmod(0o755)
    (guest / "etc/runner/runner.cfg").write_text(config)


def _boot(systemd_tree: Path, tmp_path: Path, *install: Any) -> tuple[str, str, str]:
    """Boot a copy of the tree with runner and a probe installed; (what the probe wrote,
    runner's journal, both with nspawn's output for an assertion message). The probe must
    have finished ("done")."""
    guest, out = tmp_path / "guest", tmp_path / "out"
    out.mkdir()
    copy_tree(systemd_tree, guest)
    _install(guest, *install)
    boot = boot_guest(guest, out)
    result = (out / "result.txt").read_text() if (out / "result.txt").exists() else ""
    journal = (out / "journal.txt").read_text() if (out / "journal.txt").exists() else ""
    context = f"probe:\n{result}\njournal:\n{journal}\nnspawn:\n{boot.stdout[-3000:]}"
    assert "done" in result, context
    return result, journal, context


def test_runner_service_under_a_real_systemd(systemd_tree, tmp_path):
    result, journal, context = _boot(systemd_tree, tmp_path)
    seen = dict(line.split("=", 1) for line in result.splitlines() if "=" in line)
    # Not active while the notify_ready task has not passed; STATUS names it.
    assert seen["gate-state"] == "activating", context
    assert "try 1/5: running task 20-gate.sh" in seen["gate-status"], context
    assert seen["after-gate-state"] == "active", context
    assert "running task 30-worker.sh" in seen["worker-status"], context
    # systemctl stop takes the running task's whole tree down, setsid daemon included.
    assert seen["stopped-state"] in ("inactive", "deactivating"), context
    assert seen["stopped-result"] == "success", context
    assert "child-gone" in result and "daemon-gone" in result, context
    # The journal has the tasks' output and runner's own lines.
    assert "[10-first.sh] first task says hello" in journal, context
    assert "30-worker.sh: STOPPED" in journal, context


CELL_PROBE = r"""#!/bin/sh
# runner with Delegate=yes: a cgroup per run. Observations go to /out.
out=/out/result.txt
say() { echo "$*" >> "$out"; }
prop() { systemctl show runner -p "$1" --value; }
wait_until() {
    limit=$(( $1 * 10 )); shift
    while [ "$limit" -gt 0 ]; do "$@" && return 0; sleep 0.1; limit=$((limit - 1)); done
    return 1
}
status_has() { prop StatusText | grep -q "$1"; }
wait_until 90 status_has "running task 30-idle.sh" || say "never-saw-idle"
say "delegate=$(prop Delegate)"
unit=/sys/fs/cgroup/unified/system.slice/runner.service
[ -d "$unit" ] || unit=/sys/fs/cgroup/system.slice/runner.service
say "cells=$(cd "$unit" && ls -d */ | tr -d / | tr '\n' ' ')"
say "main-in=$(sed -n 's/^0:://p' /proc/$(prop MainPID)/cgroup)"
say "hoppers=$(grep -l "hopper[-]mark" /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/runner/journal.sqlite")
for task, result, user, system in db.execute(
        "SELECT task, result, cpu_user_s, cpu_system_s FROM task_runs ORDER BY rowid"):
    print(f"run={task}:{result}:{(user or 0) + (system or 0):.2f}")
' >> "$out" 2>&1
systemctl stop runner
journalctl -u runner --no-pager -o cat > /out/journal.txt
say "done"
systemctl poweroff
"""

CELL_TASKS = {
    # Try 1: a re-forker that hops to a new session every few ms, until TIMEOUT.
    "10-hop.sh": textwrap.dedent("""\
        [ "$RUNNER_TRY" -ge 2 ] && exit 0
        python3 -c '
        import os, time
        while True:
            if os.fork():
                os._exit(0)
            os.setsid()
            time.sleep(0.005)
        ' hopper-mark &
        exec sleep 1000
    """),
    # A CPU burner the task does not wait for: only the task's cgroup counts it.
    "20-burn.sh": textwrap.dedent("""\
        ( python3 -c '
        import time
        end = time.process_time() + 0.5
        n = 0
        while time.process_time() < end:
            for i in range(10000):
                n += i
        ' & )
        sleep 2
    """),
    "30-idle.sh": "exec sleep 1000",
    "halt.sh": "echo halt requested",
}

CELL_CONFIG = """\
[runner]
sleep_time = 0
retry_jitter = 0
kill_grace = 1
[hop]
max_time = 2
"""


def test_runner_service_with_delegate_runs_each_task_in_its_own_cgroup(systemd_tree, tmp_path):
    """The packaged unit (Delegate=yes) under a real systemd: runner moves itself into
    runner.service/supervisor, each run gets a cgroup of its own, the re-forker's TIMEOUT
    leaves nothing behind, and the journal has the CPU the task's cgroup counted."""
    result, journal, context = _boot(systemd_tree, tmp_path, CELL_PROBE, CELL_TASKS,
                                     CELL_CONFIG)
    seen = dict(line.split("=", 1) for line in result.splitlines() if "=" in line)
    assert seen["delegate"] == "yes", context
    assert "containment: a cgroup per run under /sys/fs/cgroup" in journal, context
    assert seen["main-in"].endswith("/system.slice/runner.service/supervisor"), context
    cells = seen["cells"].split()
    assert "supervisor" in cells and any(c.endswith("-30-idle.sh") for c in cells), context
    assert not any("10-hop" in c or "20-burn" in c for c in cells), context  # emptied, gone
    assert seen["hoppers"] == "0", context
    assert "10-hop.sh: TIMEOUT" in journal and "left process" in journal, context
    burn = [float(cpu) for task, _result, cpu in re.findall(r"run=(\S+):(\S+):([\d.]+)", result)
            if task == "20-burn.sh"]
    assert burn and burn[0] >= 0.4, context
