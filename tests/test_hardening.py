"""Safe defaults for a root daemon: strict_permissions (like sshd's StrictModes), secret
values masked everywhere runner writes, and no shell unless the operator wrote one."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from conftest import ROOT, assert_one_line_error, need_root

NOBODY = 65534


def as_root() -> None:
    need_root("strict_permissions applies only when runner runs as root")


def strict(ws, **runner: object) -> None:
    ws.config(strict_permissions="true", **runner)
    os.chmod(ws.cfg, 0o644)


# -- strict_permissions ---------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("mode, who", [(0o775, "its group"), (0o757, "others")])
def test_a_task_writable_by_others_is_refused_with_the_fix(ws, mode, who):
    as_root()
    task = ws.task("10-open.sh", "echo must not run", mode=mode)
    strict(ws)
    proc = ws.run("-n", "1")
    line = assert_one_line_error(proc, str(task), "task", who, f"chmod go-w {task}")
    assert "must not run" not in proc.stderr, line


@pytest.mark.root
def test_a_task_owned_by_another_user_is_refused(ws):
    as_root()
    task = ws.task("10-theirs.sh", "echo must not run", mode=0o755)
    os.chown(task, NOBODY, NOBODY)
    strict(ws)
    assert_one_line_error(ws.run("-n", "1"), str(task), "owned by", "chown root")


@pytest.mark.root
def test_a_world_writable_config_file_is_refused(ws):
    as_root()
    ws.task("10-ok.sh")
    strict(ws)
    os.chmod(ws.cfg, 0o666)
    assert_one_line_error(ws.run("-n", "1"), str(ws.cfg), "config file", "chmod go-w")


@pytest.mark.root
def test_an_include_file_and_the_include_dir_are_checked(ws):
    as_root()
    ws.task("10-ok.sh")
    include = ws.root / "conf.d"
    include.mkdir()
    fragment = include / "10-extra.cfg"
    fragment.write_text("[extra]\nkey = value\n")
    strict(ws, include_dir=str(include))
    os.chmod(fragment, 0o666)
    assert_one_line_error(ws.run("-n", "1"), str(fragment), "config file")
    os.chmod(fragment, 0o644)
    os.chmod(include, 0o777)
    assert_one_line_error(ws.run("-n", "1"), str(include), "include_dir")
    os.chmod(include, 0o755)
    assert ws.run("-n", "1").returncode == 0


@pytest.mark.root
def test_the_task_directory_and_the_hook_are_checked(ws):
    as_root()
    ws.task("10-ok.sh")
    hook = ws.root / "hook.sh"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o757)
    strict(ws, task_hook=str(hook))
    assert_one_line_error(ws.run("-n", "1"), str(hook), "task_hook")
    hook.chmod(0o755)
    os.chmod(ws.tasks, 0o777)
    assert_one_line_error(ws.run("-n", "1"), str(ws.tasks), "task directory")
    os.chmod(ws.tasks, 0o755)
    assert ws.run("-n", "1").returncode == 0


@pytest.mark.root
def test_runner_check_reports_the_same_refusal(ws):
    as_root()
    task = ws.task("10-open.sh", mode=0o777)
    strict(ws)
    assert_one_line_error(ws.run("check"), str(task))


def test_without_strict_permissions_the_same_files_run(ws):
    ws.task("10-open.sh", "echo ran", mode=0o777)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0 and "ran" in proc.stderr


def test_the_packaged_config_turns_strict_permissions_on():
    sample = subprocess.run(
        [sys.executable, "-m", "runner.docs", "sample-config", "--packaged"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout
    assert "\nstrict_permissions = true\n" in sample


# -- secrets ------------------------------------------------------------------------

SECRET = "hunter2-very-secret"
TOKEN = "tok-0123456789"


def leaky_setup(ws):
    hook = ws.root / "hook.sh"
    hook.write_text(f'#!/bin/sh\necho "hook sees $DB_PASSWORD"\nprintf "%s\\n" "$1" >> '
                    f'"{ws.root}/hook.json"\n')
    hook.chmod(0o755)
    ws.task("10-leaky.sh", """
        echo "password is $DB_PASSWORD"
        echo "token is $($RUNNER_CONFIG_CMD -g api.token)"
        printf 'raw: %s\\n' "$DB_PASSWORD" >&2
    """)
    ws.config(f"[env]\nDB_PASSWORD = {SECRET}\nROLE = worker\n[api]\ntoken = {TOKEN}\n",
              task_hook=str(hook))


def test_secret_values_never_reach_the_log_the_journal_or_the_hook_json(ws):
    leaky_setup(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stderr and TOKEN not in proc.stderr
    assert "password is ********" in proc.stderr and "token is ********" in proc.stderr
    assert "hook sees ********" in proc.stderr
    with sqlite3.connect(ws.state / "journal.sqlite") as conn:
        for (output, error) in conn.execute("SELECT output, error FROM task_runs"):
            assert SECRET.encode() not in (output or b"") and TOKEN.encode() not in output
            assert error is None or SECRET not in error
        [output] = conn.execute("SELECT output FROM task_runs").fetchone()
    assert b"password is ********" in output
    hook_json = (ws.root / "hook.json").read_text()
    assert SECRET not in hook_json and TOKEN not in hook_json
    assert all(json.loads(line)["task"] == "10-leaky.sh" for line in hook_json.splitlines())
    # The task itself still gets the real value: masking is for what runner writes.
    log = ws.run("log", "leaky", tasks=False).stdout
    assert SECRET not in log


def test_values_of_keys_that_are_not_secret_are_left_alone(ws):
    leaky_setup(ws)
    ws.task("20-role.sh", 'echo "role is $ROLE"')
    proc = ws.run("-n", "1")
    assert "role is worker" in proc.stderr


def test_secret_keys_can_be_changed(ws):
    ws.task("10-says.sh", 'echo "colour is $FAVOURITE_COLOUR"')
    ws.config("[env]\nFAVOURITE_COLOUR = ultramarine\n", secret_keys="*COLOUR*")
    proc = ws.run("-n", "1")
    assert "colour is ********" in proc.stderr and "ultramarine" not in proc.stderr


def test_the_journal_url_password_is_masked_in_task_output(ws):
    ws.task("10-echo.sh", 'echo "url $($RUNNER_CONFIG_CMD -g runner.journal_url)"')
    ws.config(journal_url="postgresql://runner:pg-s3cret-pw@127.0.0.1:9/x")
    proc = ws.run("-n", "1")
    assert "pg-s3cret-pw" not in proc.stderr
    assert "postgresql://runner:********@127.0.0.1:9/x" in proc.stderr


# -- no shell --------------------------------------------------------------------------

def test_hook_and_check_command_lines_are_never_given_to_a_shell(ws):
    marker = ws.root / "shell-ran"
    ws.task("10-ok.sh")
    ws.config(f"[ok]\ncheck = true ; touch {marker}\n",
              task_hook=f"/bin/echo hook; touch {marker}")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    assert f"[hook 10-ok.sh] hook; touch {marker}" in proc.stderr
