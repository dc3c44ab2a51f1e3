"""task_hook: called before and after every task run with the JSON stats (SPEC §5)."""

from __future__ import annotations

import json
import re
import shlex
import socket
import sys
import time

import pytest
from conftest import output_of, started

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def recording_hook(ws, name: str = "hook.py", extra: str = "") -> tuple[str, object]:
    """A hook that appends its arguments (a JSON list) to calls.jsonl; returns (path, reader)."""
    calls = ws.root / "calls.jsonl"
    hook = ws.root / name
    hook.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as out:\n"
        "    out.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"{extra}\n"
    )
    hook.chmod(0o755)

    def read() -> list[list[str]]:
        if not calls.exists():
            return []
        return [json.loads(line) for line in calls.read_text().splitlines()]

    return str(hook), read


def stats(calls: list[list[str]]) -> list[dict]:
    return [json.loads(args[-1]) for args in calls]


def test_hook_is_called_before_and_after_every_task_run(ws):
    hook, calls = recording_hook(ws)
    ws.task("a")
    ws.task("b", '[ "$RUNNER_TRY" -lt 2 ] && exit 1\nexit 0')
    ws.config(task_hook=shlex.quote(hook), max_tries=3)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    seen = [(s["task"], s["try_num"], s["result"]) for s in stats(calls())]
    assert seen == [
        ("a", 1, "RUNNING"), ("a", 1, "OK"),
        ("b", 1, "RUNNING"), ("b", 1, "RETRY"),
        ("a", 2, "RUNNING"), ("a", 2, "OK"),
        ("b", 2, "RUNNING"), ("b", 2, "OK"),
    ]


def test_hook_gets_the_stats_as_one_json_argument_with_every_field(ws):
    hook, calls = recording_hook(ws)
    ws.task("20-puppet.sh", "sleep 0.2\nexit 1")
    ws.config(task_hook=shlex.quote(hook), max_tries=4)
    proc = ws.run("-n", "1", "-D", "puppet.max_tries=1")
    assert proc.returncode == 1, proc.stderr
    recorded = calls()
    assert [len(args) for args in recorded] == [1, 1]
    before, after = stats(recorded)
    for record in (before, after):
        assert record["task"] == "20-puppet.sh"
        assert record["try_num"] == 1
        assert record["max_retries"] == 1  # the task's own max_tries
        assert record["iteration"] == 1
        assert record["hostname"] == socket.gethostname()
        assert ISO_Z.match(record["started_at"]), record["started_at"]
    assert before["result"] == "RUNNING"
    assert after["result"] == "RETRY"
    assert after["exit_code"] == 1
    assert isinstance(after["duration_s"], float) and 0.15 <= after["duration_s"] < 5
    assert after["started_at"] == before["started_at"]
    assert list(after)[:4] == ["task", "try_num", "max_retries", "result"]


def test_hook_max_retries_is_the_global_max_tries(ws):
    hook, calls = recording_hook(ws)
    ws.task("a")
    ws.config(task_hook=shlex.quote(hook), max_tries=7)
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    records = stats(calls())
    assert {r["max_retries"] for r in records} == {7}
    assert [r["iteration"] for r in records] == [1, 1, 2, 2]


def test_task_name_with_quotes_spaces_and_dollar_arrives_intact(ws):
    """The original built a shell command line and broke on such names."""
    hook, calls = recording_hook(ws)
    name = """5-it's "odd" $x.sh"""
    ws.task(name, "echo ran")
    ws.config(task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert [s["task"] for s in stats(calls())] == [name, name]


def test_hook_arguments_are_split_shell_style(ws):
    hook, calls = recording_hook(ws)
    ws.task("a")
    ws.config(task_hook=f"{hook} --flag 'two words' \"$HOME\"")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    recorded = calls()
    assert len(recorded) == 2
    for args in recorded:
        assert args[:-1] == ["--flag", "two words", "$HOME"]  # no shell expands anything
        assert json.loads(args[-1])["task"] == "a"


def test_hook_path_with_a_space_can_be_quoted(ws):
    hook, calls = recording_hook(ws, "my hook.py")
    ws.task("a")
    # A value that starts with a quote is configobj quoting: triple quotes keep the rest.
    triple = '"' * 3
    ws.config(task_hook=f"{triple}'{hook}' --flag{triple}")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert [args[:-1] for args in calls()] == [["--flag"], ["--flag"]]


def test_hook_sees_env_variables(ws):
    hook, _calls = recording_hook(
        ws, extra="open(sys.argv[0] + '.env', 'a').write(os.environ['FLEET'] + '\\n')"
    )
    ws.task("a")
    ws.config("[env]\nFLEET = try builders\n", task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert (ws.root / "hook.py.env").read_text().splitlines() == ["try builders"] * 2


def test_hook_output_is_logged(ws):
    hook, _calls = recording_hook(ws, extra="print('hook says hi', flush=True)")
    ws.task("a")
    ws.config(task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "hook a") == ["hook says hi"] * 2


def test_failing_hook_is_logged_and_changes_nothing(ws):
    # Exit 2 and 3 would mean HALT and EXIT if a hook's status leaked into the result.
    hook, calls = recording_hook(ws, extra="sys.exit(2 if 'RUNNING' in sys.argv[-1] else 3)")
    ws.task("halt.sh", "echo halt ran")
    ws.task("a")
    ws.task("b")
    ws.config(task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["a", "b"]
    assert len(calls()) == 4
    assert re.search(r"WARNING task_hook for a RUNNING: exited with status 2", proc.stderr)
    assert re.search(r"WARNING task_hook for b OK: exited with status 3", proc.stderr)


def test_failing_hook_does_not_change_a_failing_tasks_status(ws):
    hook, _calls = recording_hook(ws, extra="sys.exit(0)")
    broken = ws.root / "broken.sh"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    ws.task("a", "exit 2")
    for task_hook in (shlex.quote(hook), str(broken)):
        ws.config(task_hook=task_hook)
        proc = ws.run("-n", "1")
        assert proc.returncode == 2, proc.stderr


def test_missing_hook_executable_is_logged_and_changes_nothing(ws):
    ws.task("a", "echo ran")
    ws.config(task_hook=ws.root / "no-such-hook")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert output_of(proc.stderr, "a") == ["ran"]
    assert re.search(r"WARNING task_hook for a RUNNING: cannot start .*no-such-hook", proc.stderr)
    assert re.search(r"WARNING task_hook for a OK: cannot start", proc.stderr)


@pytest.mark.slow
def test_hanging_hook_is_killed_after_hook_timeout(ws):
    hook, calls = recording_hook(ws, extra="import time; time.sleep(60)")
    ws.task("a", "echo ran")
    ws.config(task_hook=shlex.quote(hook), hook_timeout=1)
    begin = time.monotonic()
    proc = ws.run("-n", "1")
    elapsed = time.monotonic() - begin
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "a") == ["ran"]
    assert "a: OK" in proc.stderr
    assert len(calls()) == 2
    assert len(re.findall(r"task_hook for a \w+: killed after hook_timeout", proc.stderr)) == 2
    assert elapsed < 10, elapsed


def test_hook_is_called_for_the_halt_task_too(ws):
    hook, calls = recording_hook(ws)
    ws.task("halt.sh")
    ws.task("a", "exit 2")
    ws.config(task_hook=shlex.quote(hook))
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    records = stats(calls())
    assert [(r["task"], r["result"]) for r in records] == [
        ("a", "RUNNING"), ("a", "HALT"), ("halt.sh", "RUNNING"), ("halt.sh", "OK"),
    ]
