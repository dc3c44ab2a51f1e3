"""Every run in a cgroup of its own: stops nothing escapes, zombies that never pile up,
limits a task cannot get past, and the fallback when runner has no cgroup to manage.

runner is started the way systemd starts it with Delegate=yes: alone in a fresh cgroup
of the real kernel's cgroup v2 tree (here /sys/fs/cgroup/unified, a hybrid host). The
attacker's side is a real task: a re-forker that calls setsid() between hops, a task
double-forking short jobs, a bounded fork bomb.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import (
    LogWatcher,
    alive,
    assert_one_line_error,
    journal_rows,
    need_root,
    skip_unless,
)

pytestmark = [pytest.mark.root]


def v2_mount() -> Path | None:
    """Where the cgroup v2 tree is mounted (read here, not by the code under test)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            return Path(left.split()[4])
    return None


def v1_pids() -> bool:
    return any(" - cgroup " in line and "pids" in line.rsplit(" ", 1)[-1].split(",")
               for line in Path("/proc/self/mountinfo").read_text().splitlines())


class Spot:
    """A fresh cgroup for one runner, as systemd gives a unit with Delegate=yes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def enter(self) -> None:  # preexec_fn of the runner process
        (self.path / "cgroup.procs").write_text("0\n")

    def cells(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.is_dir())

    def clean(self) -> None:
        for cgroup in sorted(self.path.rglob("*"), key=lambda p: -len(p.parts)):
            if cgroup.is_dir():
                _kill_and_remove(cgroup)
        _kill_and_remove(self.path)


def _kill_and_remove(path: Path) -> None:
    if (path / "cgroup.kill").exists():
        (path / "cgroup.kill").write_text("1\n")
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


@pytest.fixture
def spot():
    need_root("makes cgroups")
    mount = v2_mount()
    skip_unless(mount is not None and os.access(mount, os.W_OK),
                "needs a writable cgroup v2 tree")
    assert mount is not None
    spot = Spot(mount / f"runner-test-{uuid.uuid4().hex[:8]}")
    spot.path.mkdir()
    yield spot
    spot.clean()


def run_in(spot: Spot, ws, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(ws.command(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ws.root, preexec_fn=spot.enter)


def marked(mark: str) -> list[int]:
    """Live processes whose environment holds mark."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if mark.encode() in environ and alive(int(entry)):
            found.append(int(entry))
    return found


def zombies_of(pid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                count += 1
    return count


HOPPER = """
python3 -c '
import os, time, sys
log = open(sys.argv[1], "a")
while True:
    if os.fork():
        os._exit(0)
    os.setsid()
    print(os.getpid(), file=log, flush=True)
    time.sleep(0.005)
' {hops} &
exec sleep 30
"""


def test_runner_says_it_has_no_cgroup_of_its_own_and_keeps_process_groups(ws):
    """In the root cgroup (or one shared with other processes) runner keeps today's
    mechanism and says so once at start; `runner check` says the same."""
    ws.task("10-a", "exit 0")
    result = ws.run("-n", "1")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "containment:" in line]
    assert len(lines) == 1, result.stderr
    assert "containment: process groups and a /proc scan (" in lines[0]
    check = ws.run("check")
    assert "containment: process groups and a /proc scan (" in check.stdout, check.stdout


def test_runner_in_a_cgroup_of_its_own_runs_every_task_in_a_child_cgroup(ws, spot):
    """Tasks and hooks each get a cell of their own, gone when the run is over."""
    hook = ws.root / "hook.sh"
    hook.write_text("#!/bin/sh\nsed -n 's/^0:://p' /proc/self/cgroup\n")
    hook.chmod(0o755)
    ws.task("10-where", "sed -n 's/^0:://p' /proc/self/cgroup")
    ws.config(task_hook=hook)
    result = run_in(spot, ws, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert f"containment: a cgroup per run under {spot.path}" in result.stderr
    [task] = re.findall(r"\[10-where\] (.*)", result.stderr)
    assert re.fullmatch(rf".*/{spot.path.name}/task-\d+-10-where", task), task
    hooks = re.findall(r"\[hook 10-where\] (.*)", result.stderr)
    assert len(hooks) == 2 and all(re.fullmatch(rf".*/{spot.path.name}/hook-\d+-10-where", h)
                                   for h in hooks), hooks
    assert spot.cells() == ["supervisor"]  # the finished runs' cells are gone


def test_a_hopping_re_forker_dies_at_the_timeout_and_nothing_survives(ws, spot):
    mark = f"HOP_{uuid.uuid4().hex}"
    hops = ws.root / "hops"
    ws.task("10-hop", HOPPER.format(hops=hops))
    ws.config(f"[hop]\nmax_time = 1.5\n[env]\n{mark} = 1\n", kill_grace=0.5, max_tries=1)
    result = run_in(spot, ws, "-n", "1")
    assert "10-hop: TIMEOUT" in result.stderr, result.stderr
    assert len(hops.read_text().split()) > 20  # it really hopped, many times
    assert re.search(r"10-hop: left process \d+ \(.*python3.*\) behind after TIMEOUT: killed",
                     result.stderr), result.stderr
    time.sleep(0.3)
    assert marked(mark) == []
    assert spot.cells() == ["supervisor"]


def test_stopping_runner_kills_every_process_of_the_running_task(ws, spot):
    mark = f"HOP_{uuid.uuid4().hex}"
    hops = ws.root / "hops"
    ws.task("10-hop", HOPPER.format(hops=hops))
    ws.config(f"[env]\n{mark} = 1\n", kill_grace=0.5)
    with LogWatcher(ws.start("-n", "1", preexec_fn=spot.enter)) as runner:
        runner.wait_for(r"10-hop: starting")
        while not hops.exists() or len(hops.read_text().split()) < 10:
            time.sleep(0.05)
        runner.proc.send_signal(signal.SIGTERM)
        assert runner.finish() == 143, runner.text()
        log = runner.text()
    assert "10-hop: STOPPED" in log, log
    assert marked(mark) == []


@pytest.mark.parametrize("contained", [False, True], ids=["process-groups", "cgroup"])
def test_orphans_are_reaped_as_they_die_so_zombies_never_pile_up(ws, request, contained):
    """A task double-forking short jobs for 3 s: each job is re-parented to runner (the
    subreaper) and exits. Before, runner reaped them at the task's end (hundreds piled
    up); now at most a handful are ever waiting."""
    ws.task("10-jobs", """
        end=$(( $(date +%s) + 3 ))
        while [ "$(date +%s)" -lt "$end" ]; do ( sleep 0.01 & ); done
    """)
    kwargs = {}
    if contained:
        kwargs["preexec_fn"] = request.getfixturevalue("spot").enter
    most, samples = 0, 0
    with LogWatcher(ws.start("-n", "1", **kwargs)) as runner:
        runner.wait_for(r"10-jobs: starting")
        while runner.proc.poll() is None:
            most = max(most, zombies_of(runner.proc.pid))
            samples += 1
            time.sleep(0.1)
        assert runner.finish() == 0, runner.text()
    assert samples >= 10
    assert most <= 20, most


FORK_BOMB = """
python3 -c '
import os, time
made = refused = 0
for _ in range(100):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
    except BlockingIOError:
        refused += 1
print("made", made, "refused", refused, flush=True)
time.sleep(30)
'
"""


def test_a_fork_bomb_stops_at_its_tasks_max(ws, spot):
    skip_unless(v1_pids() or "pids" in (spot.path.parent / "cgroup.controllers").read_text(),
                "needs the pids controller (cgroup v2, or a cgroup v1 pids hierarchy)")
    mark = f"BOMB_{uuid.uuid4().hex}"
    ws.task("10-bomb", FORK_BOMB)
    ws.config(f"[bomb]\ntasks_max = 20\nmax_time = 2\n[env]\n{mark} = 1\n",
              kill_grace=0.5, max_tries=1)
    result = run_in(spot, ws, "-n", "1")
    made, refused = map(int, re.search(r"made (\d+) refused (\d+)", result.stderr).groups())
    assert made < 20 and refused > 80, (made, refused)
    assert "10-bomb: TIMEOUT" in result.stderr
    assert marked(mark) == []


def test_memory_max_kills_a_task_that_goes_past_it(ws, spot):
    ws.task("10-hog", "exec python3 -c 'x = bytearray(256 * 1024 * 1024); print(len(x))'")
    ws.config("[hog]\nmemory_max = 64M\n", max_tries=1)
    result = run_in(spot, ws, "-n", "1")
    assert re.search(r"10-hog: \w+ \(signal 9\)", result.stderr), result.stderr
    assert "268435456" not in result.stderr


def test_cpu_weight_is_set_on_the_task_cgroup(ws, spot):
    ws.task("10-weighted", """
        v2=$(sed -n 's/^0:://p' /proc/self/cgroup)
        v1=$(sed -n 's/^[0-9]*:cpu:\\(.*\\)/\\1/p' /proc/self/cgroup)
        cat "/sys/fs/cgroup/unified$v2/cpu.weight" "/sys/fs/cgroup$v2/cpu.weight" \
            "/sys/fs/cgroup/cpu$v1/cpu.shares" 2>/dev/null
        exit 0
    """)
    ws.config("[weighted]\ncpu_weight = 50\n")
    result = run_in(spot, ws, "-n", "1")
    assert result.returncode == 0, result.stderr
    # weight 50 (cgroup v2), or the same as v1 shares: 50 * 1024 / 100
    assert re.search(r"\[10-weighted\] (50|512)$", result.stderr, re.M), result.stderr


def test_limits_are_refused_with_one_line_where_the_controller_is_missing(ws):
    """Without a cgroup of its own runner cannot enforce tasks_max: a run refuses the
    config (78, the line named); `runner check` warns."""
    ws.task("10-bomb", "exit 0")
    ws.config("[bomb]\ntasks_max = 20\n")
    result = ws.run("-n", "1")
    line = assert_one_line_error(result, "runner.cfg:", "[bomb] tasks_max",
                                 "pids controller")
    assert "no cgroup of its own" in line
    check = ws.run("check")
    assert check.returncode == 0
    assert "[bomb] tasks_max: needs the pids controller" in check.stderr


def test_a_worker_left_by_an_ok_task_keeps_running_and_its_cgroup_goes_when_empty(ws, spot):
    pid_file = ws.root / "worker.pid"
    ws.task("10-start-worker", f"sleep 1 & echo $! > {pid_file}")
    ws.task("20-later", f"""
        cat /proc/$(cat {pid_file})/cgroup
        sleep 2
    """)
    result = run_in(spot, ws, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\[20-later\] 0::.*/task-\d+-10-start-worker$", result.stderr, re.M), \
        result.stderr
    assert spot.cells() == ["supervisor"]


def test_the_cost_of_a_run_counts_every_process_of_its_cgroup(ws, spot):
    """A CPU burner the task does not wait for (double-forked): wait4() never sees it,
    the task's cgroup does; and, with a memory controller, the run's peak memory."""
    ws.task("10-burn", """
        ( python3 -c '
import time
memory = bytearray(96 * 1024 * 1024)
end = time.process_time() + 0.4
while time.process_time() < end: pass' & )
        sleep 1
    """)
    result = run_in(spot, ws, "-n", "1")
    assert result.returncode == 0, result.stderr
    [row] = journal_rows(ws.state / "journal.sqlite",
                         "SELECT * FROM task_runs WHERE task = '10-burn'")
    assert row["cpu_user_s"] + row["cpu_system_s"] >= 0.35, dict(row)
    memory = "memory" in (spot.path / "cgroup.controllers").read_text() or any(
        " - cgroup " in line and "memory" in line.rsplit(" ", 1)[-1].split(",")
        for line in Path("/proc/self/mountinfo").read_text().splitlines())
    skip_unless(memory, "needs a memory controller (cgroup v2, or a cgroup v1 hierarchy)")
    assert row["peak_memory_bytes"] >= 96 * 1024 * 1024, dict(row)
    blame = ws.run("blame", tasks=False)
    assert re.search(r"\b9\d\.\dM|\b1\d\d\.\dM", blame.stdout), blame.stdout


def test_a_cell_left_by_an_earlier_runner_is_kept_and_its_name_never_reused(ws, spot):
    """A worker an earlier runner's task left (runner restarted, the worker lives on):
    its cell stays, the new runner numbers its cells past it, and empty ones go."""
    (spot.path / "task-5-10-a").mkdir()
    (spot.path / "hook-2-10-a").mkdir()
    worker = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: (
        spot.path / "task-5-10-a" / "cgroup.procs").write_text("0\n"))
    try:
        ws.task("10-a", "sed -n 's/^0:://p' /proc/self/cgroup")
        result = run_in(spot, ws, "-n", "1")
        assert result.returncode == 0, result.stderr
        assert re.search(r"\[10-a\] .*/task-6-10-a$", result.stderr, re.M), result.stderr
        assert spot.cells() == ["supervisor", "task-5-10-a"]
    finally:
        worker.kill()
        worker.wait()


def test_an_unprivileged_process_of_a_task_cannot_leave_its_cgroup(ws, spot):
    """The attacker's steps as a real unprivileged user: a task's process running as
    nobody tries to move itself into runner's own cgroup and into the root of the tree;
    both are refused, and the TIMEOUT still kills it."""
    mark = f"ESCAPE_{uuid.uuid4().hex}"
    targets = f"{spot.path}/supervisor/cgroup.procs {spot.path.parent}/cgroup.procs"
    ws.task("10-escape", f"""
        runuser -u nobody -- sh -c '
            for target in {targets}; do
                if echo $$ > "$target" 2>/dev/null; then echo "escaped to $target"
                else echo "refused: $target"; fi
            done
            exec sleep 30' &
        exec sleep 30
    """)
    ws.config(f"[escape]\nmax_time = 1.5\n[env]\n{mark} = 1\n", kill_grace=0.5, max_tries=1)
    result = run_in(spot, ws, "-n", "1")
    assert "escaped" not in result.stderr, result.stderr
    assert result.stderr.count("[10-escape] refused: ") == 2, result.stderr
    assert "10-escape: TIMEOUT" in result.stderr
    time.sleep(0.3)
    assert marked(mark) == []


def test_a_size_that_is_not_one_is_refused_with_one_line(ws):
    ws.task("10-hog", "exit 0")
    ws.config("[hog]\nmemory_max = lots\n")
    assert_one_line_error(ws.run("-n", "1"), "runner.cfg:", "[hog] memory_max",
                          "'lots' is not a size")
