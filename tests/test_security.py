"""Nobody but root steers what root runs (strict_permissions).

In every test the attacker's steps run as a real unprivileged user (nobody, through
runuser); runner runs as root with strict_permissions on. Each test asserts that the
attacker's code never ran (its marker file is absent), that runner refused with one line
naming the path and the fix, and that nothing was skipped or halted.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Workspace, assert_one_line_error, need_root, skip_unless, wait_for_file

NOBODY = 65534


@pytest.fixture
def open_ws() -> Iterator[Workspace]:
    """A workspace nobody can reach: /tmp/runner-sec-XXXX (root, 0755). pytest's own
    tmp_path lives below a 0700 directory the attacker could not even enter."""
    need_root("strict_permissions applies only when runner runs as root")
    skip_unless(shutil.which("runuser") is not None, "needs runuser (util-linux)")
    root = Path(tempfile.mkdtemp(prefix="runner-sec-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield Workspace(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def strict(ws: Workspace, text: str = "", **runner: object) -> None:
    ws.config(text, strict_permissions="true", **runner)
    os.chmod(ws.cfg, 0o644)


def as_nobody(script: str) -> None:
    """The attacker's step: a shell script run as user nobody."""
    proc = subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def nobody_dir(path: Path) -> Path:
    """A directory the attacker owns (made by root, given away, as happens in real life)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    return path


def payload(marker: Path) -> str:
    """The attacker's program: records who ran it."""
    return f"#!/bin/sh\nid -u > {marker}\nexit 0\n"


def plant(path: Path, marker: Path) -> None:
    """As nobody: write the payload at `path` and make it executable."""
    as_nobody(f"cat > '{path}' <<'EOF'\n{payload(marker)}EOF\nchmod 755 '{path}'")


def assert_never_ran(marker: Path) -> None:
    assert not marker.exists(), f"the attacker's code ran as uid {marker.read_text().strip()}"


def root_script(path: Path) -> Path:
    """A harmless script of root's, in a directory of root's (for now)."""
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def slow_first_task(ws: Workspace) -> None:
    """10-slow.sh: runs until swap_while_the_first_task_runs lets it end."""
    ws.task("10-slow.sh", f"touch {ws.root}/started\n"
                          f"while [ ! -e {ws.root}/go ]; do sleep 0.05; done")


def swap_while_the_first_task_runs(ws: Workspace, script: Path, marker: Path
                                   ) -> tuple[int, str]:
    """Start runner (its config written, slow_first_task among its tasks); while 10-slow.sh
    runs, a careless operator gives `script`'s directory away, and the attacker swaps
    `script` for the payload. runner's exit status and stderr."""
    proc = ws.start("-n", "1")
    try:
        wait_for_file(ws.root / "started")
        os.chown(script.parent, NOBODY, NOBODY)
        as_nobody(f"mv {script} {script.parent}/old.sh")
        plant(script, marker)
        (ws.root / "go").touch()
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err


def refusal_lines(stderr: str) -> list[str]:
    """The error lines that say what was refused (the task's record repeats it at INFO)."""
    return [line for line in stderr.splitlines()
            if "(strict_permissions)" in line and " ERROR " in line]


# -- 1. strictness is decided by root's own input only -----------------------------------

def test_a_fragment_in_an_attacker_writable_include_dir_cannot_turn_strictness_off(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    ws.task("10-ok.sh")
    include = nobody_dir(ws.root / "conf.d")
    plant(include / "hook.sh", marker)
    as_nobody(f"printf '[runner]\\nstrict_permissions = false\\ntask_hook = {include}/hook.sh\\n'"
              f" > {include}/50-evil.cfg")
    strict(ws, include_dir=str(include))
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, f"{include}/50-evil.cfg:2", "strict_permissions",
                          "main config file or with -D")
    assert_never_ran(marker)


def test_a_trusted_fragment_that_sets_strictness_is_refused_too(ws):
    include = ws.root / "conf.d"
    include.mkdir()
    (include / "10-on.cfg").write_text("[runner]\n\nstrict_permissions = true\n")
    ws.task("10-ok.sh")
    ws.config(include_dir=str(include))
    assert_one_line_error(ws.run("check"), f"{include}/10-on.cfg:3", "strict_permissions")
    # -D is root's own input and may decide it.
    (include / "10-on.cfg").write_text("[extra]\nkey = 1\n")
    assert ws.run("-D", "runner.strict_permissions=false", "-n", "1").returncode == 0


# -- 2. the whole chain, from / down, and again right before each exec --------------------

def test_a_task_directory_below_a_directory_the_attacker_owns_is_refused(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    theirs = nobody_dir(ws.root / "theirs")
    tasks = theirs / "tasks.d"
    tasks.mkdir()
    (tasks / "10-firewall.sh").write_text("#!/bin/sh\nexit 0\n")
    (tasks / "10-firewall.sh").chmod(0o755)
    strict(ws)
    # The attacker swaps the root-owned task directory for one of their own.
    as_nobody(f"mv {tasks} {theirs}/old && mkdir {tasks}")
    plant(tasks / "10-firewall.sh", marker)
    proc = subprocess.run([*ws.command("-n", "1", tasks=False), str(tasks)],
                          capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, str(tasks), f"directory {theirs} is owned by user nobody",
                          f"chown root {theirs}")
    assert_never_ran(marker)


def test_a_symlinked_task_whose_target_the_attacker_can_replace_is_refused(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    lib = nobody_dir(ws.root / "lib")
    target = lib / "firewall.sh"
    plant(target, marker)
    os.chown(target, 0, 0)  # the file itself is root's: only its directory is the hole
    (ws.tasks / "10-firewall.sh").symlink_to(target)
    strict(ws)
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, str(ws.tasks / "10-firewall.sh"), f"directory {lib}",
                          "owned by user nobody", f"chown root {lib}")
    assert_never_ran(marker)


def test_a_symlink_the_attacker_owns_in_a_sticky_directory_is_refused(open_ws):
    """Today it points at a harmless file; tomorrow its owner points it elsewhere."""
    ws = open_ws
    sticky = ws.root / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: allowed, but what is in it must be root's
    real = ws.root / "real.sh"
    real.write_text("#!/bin/sh\nexit 0\n")
    real.chmod(0o755)
    as_nobody(f"ln -s {real} {sticky}/task.sh")
    (ws.tasks / "10-via-tmp.sh").symlink_to(sticky / "task.sh")
    strict(ws)
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, f"symlink {sticky}/task.sh is owned by user nobody")
    # A root-owned entry in the same sticky directory is trusted.
    os.unlink(sticky / "task.sh")
    (sticky / "task.sh").symlink_to(real)
    assert ws.run("-n", "1").returncode == 0


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_task_swapped_after_planning_is_refused_right_before_its_exec(open_ws, parallel):
    """The chain is trusted when planned; while the first task runs, a careless operator
    gives a directory away, and the attacker swaps the next task's script. runner checks
    again right before the exec: it refuses, runs nothing of the attacker's, does not
    halt and ends with 78."""
    ws = open_ws
    marker, halted = ws.root / "pwned", ws.root / "halted"
    script = root_script(ws.root / "lib" / "firewall.sh")
    lib = script.parent
    slow_first_task(ws)
    (ws.tasks / "20-firewall.sh").symlink_to(script)
    ws.task("halt.sh", f"touch {halted}")
    strict(ws, "[firewall]\ndepends_on = 10-slow.sh\n", max_parallel=parallel)
    status, err = swap_while_the_first_task_runs(ws, script, marker)
    assert status == 78, err
    assert len(refusal_lines(err)) == 1, err
    [line] = refusal_lines(err)
    assert f"directory {lib} is owned by user nobody" in line and f"chown root {lib}" in line
    assert_never_ran(marker)
    assert not halted.exists(), "a refusal must not halt the machine"


# -- 3. what is checked is what is executed -----------------------------------------------

def test_a_relative_check_command_is_checked_where_it_runs(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    # runner's own cwd (ws.root) holds a harmless root-owned check; task_cwd is the
    # attacker's, and that is where ./is-done runs.
    (ws.root / "is-done").write_text("#!/bin/sh\nexit 1\n")
    (ws.root / "is-done").chmod(0o755)
    work = nobody_dir(ws.root / "work")
    plant(work / "is-done", marker)  # exits 0: would skip the firewall task
    ws.task("10-firewall.sh")
    strict(ws, "[firewall]\ncheck = ./is-done\n", task_cwd=str(work))
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, f"{work}/is-done", "check command of 10-firewall.sh",
                          "owned by user nobody")
    assert_never_ran(marker)


def test_an_interpreter_is_checked_as_found_on_the_tasks_path(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    bin_dir = nobody_dir(ws.root / "bin")
    plant(bin_dir / "sh", marker)
    ws.task("10-plain.sh", mode=0o644)
    strict(ws, f"[env]\nPATH = {bin_dir}:/usr/bin:/bin\n", interpreter="sh")
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, f"{bin_dir}/sh", "interpreter of 10-plain.sh",
                          "owned by user nobody")
    assert_never_ran(marker)


def test_the_instance_id_command_is_checked(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    theirs = nobody_dir(ws.root / "theirs")
    plant(theirs / "instance-id", marker)
    ws.task("10-once.sh")
    strict(ws, "[once]\nfrequency = per-instance\n",
           instance_id_command=str(theirs / "instance-id"))
    assert_one_line_error(ws.run("-n", "1"), f"{theirs}/instance-id",
                          "instance_id_command", "owned by user nobody")
    assert_never_ran(marker)


# -- 4. state that decides what root does ------------------------------------------------

def test_a_forged_resume_point_in_a_state_dir_the_attacker_owns_skips_nothing(open_ws):
    ws = open_ws
    firewall_ran = ws.root / "firewall-ran"
    state = nobody_dir(ws.root / "state")
    ws.task("10-firewall.sh", f"touch {firewall_ran}")
    ws.task("20-worker.sh")
    ws.task("reboot.sh")
    strict(ws, state_dir=str(state), reboot_task="reboot.sh")
    forged = json.dumps({"iteration": 1, "try_num": 1, "after": "10-firewall.sh",
                         "done": ["10-firewall.sh"]})
    as_nobody(f"printf '%s' '{forged}' > {state}/resume.json")
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, str(state), "state_dir", "owned by user nobody",
                          f"chown root {state}")
    assert "10-firewall.sh" not in proc.stderr.replace(str(state), "")
    # Once root owns state_dir, the forged file itself is still refused.
    os.chown(state, 0, 0)
    proc = ws.run("-n", "1")
    assert_one_line_error(proc, f"{state}/resume.json", "state file", "owned by user nobody")
    os.unlink(state / "resume.json")
    assert ws.run("-n", "1").returncode == 0
    assert firewall_ran.exists()


def test_a_forged_boot_try_count_cannot_force_the_halt_task(open_ws):
    ws = open_ws
    halted = ws.root / "halted"
    state = ws.root / "state"
    state.mkdir()
    state.chmod(0o777)  # made by hand with a careless mode
    ws.task("10-ok.sh")
    ws.task("halt.sh", f"touch {halted}")
    strict(ws, state_dir=str(state), max_boot_tries="3")
    as_nobody(f"echo '{{\"count\": 99}}' > {state}/boot-tries.json")
    assert_one_line_error(ws.run("-n", "1"), str(state), "state_dir", "and others",
                          f"chmod go-w {state}")
    state.chmod(0o755)
    assert_one_line_error(ws.run("-n", "1"), f"{state}/boot-tries.json", "owned by user nobody",
                          f"chown root {state}/boot-tries.json")
    assert not halted.exists()


def test_a_forged_start_log_cannot_put_rows_in_the_journal(open_ws):
    ws = open_ws
    ran = ws.root / "ran"
    state = ws.root / "state"
    state.mkdir()
    state.chmod(0o777)  # made by hand with a careless mode
    ws.task("10-ok.sh", f"touch {ran}")
    strict(ws, state_dir=str(state))
    assert ws.run("-n", "1", "-D", "runner.strict_permissions=false").returncode == 0
    [run_id] = [r[0] for r in sqlite3.connect(state / "journal.sqlite").execute(
        "SELECT run_id FROM runs")]
    ran.unlink()
    # As nobody: a start of a task that never ran, past the journal's last row of a run.
    forged = json.dumps([run_id, 99, "h", None, 1, 1, 1, "20-never-ran", "task", "RUNNING",
                         "2026-11-26T00:00:00Z"])
    as_nobody(f"rm -f {state}/journal.sqlite-starts; "  # root's: replaced, not written
              f"printf '\\n%s' '{forged}' > {state}/journal.sqlite-starts")
    assert_one_line_error(ws.run("-n", "1"), str(state), "state_dir", "and others",
                          f"chmod go-w {state}")
    state.chmod(0o755)
    starts = f"{state}/journal.sqlite-starts"
    assert_one_line_error(ws.run("-n", "1"), starts, "owned by user nobody",
                          f"chown root {starts}")
    assert not ran.exists()  # refused before any task
    tasks = [r[0] for r in sqlite3.connect(state / "journal.sqlite").execute(
        "SELECT task FROM task_runs")]
    assert tasks == ["10-ok.sh"]  # the forged start never became a row


def test_a_forged_stamp_cannot_skip_a_once_task(open_ws):
    ws = open_ws
    ran = ws.root / "ran"
    ws.task("10-firewall.sh", f"touch {ran}")
    strict(ws, "[firewall]\nfrequency = once\n")
    stamps = ws.state / "stamps"
    stamps.mkdir(parents=True)
    stamp = stamps / "10-firewall.sh.json"
    stamp.write_text("{}")
    os.chown(stamp, NOBODY, NOBODY)
    assert_one_line_error(ws.run("-n", "1"), str(stamp), "owned by user nobody")
    assert not ran.exists()
    assert_one_line_error(ws.run("check"), str(stamp), "owned by user nobody")


def test_state_and_runtime_dirs_get_fixed_modes_under_umask_000(ws):
    ws.task("10-once.sh")
    state = ws.root / "deep" / "state"
    runtime = ws.root / "deep" / "run"
    ws.config("[once]\nfrequency = once\n", state_dir=str(state), runtime_dir=str(runtime))
    proc = subprocess.run(ws.command("-n", "1"), capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: os.umask(0))
    assert proc.returncode == 0, proc.stderr
    for directory in (ws.root / "deep", state, state / "stamps", runtime):
        assert (directory.stat().st_mode & 0o7777) == 0o755, directory
    assert (state / "journal.sqlite").stat().st_mode & 0o077 == 0
    assert (state / "stamps" / "10-once.sh.json").stat().st_mode & 0o022 == 0


def test_a_trusted_setup_in_a_sticky_tmp_directory_runs(open_ws):
    ws = open_ws
    ws.task("10-ok.sh", "echo fine")
    strict(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert refusal_lines(proc.stderr) == [] and "[10-ok.sh] fine" in proc.stderr


def test_a_hook_swapped_while_a_task_runs_is_refused_before_its_next_call(open_ws):
    ws = open_ws
    marker = ws.root / "pwned"
    hook = root_script(ws.root / "hooks" / "notify.sh")
    slow_first_task(ws)
    ws.task("20-next.sh")
    strict(ws, task_hook=str(hook))
    status, err = swap_while_the_first_task_runs(ws, hook, marker)
    assert status == 78, err
    assert len(refusal_lines(err)) == 1 and "task_hook" in refusal_lines(err)[0], err
    assert_never_ran(marker)
    assert "20-next.sh: starting" not in err
