"""Task names and output that are not plain text (a byte that is not UTF-8, a newline, a
tab, an escape sequence, a backslash) are recorded and shown by one rule (runner.escape)
in the log, the journal, `runner history`/`log`, status.json, hook JSON and metrics."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import unicodedata

from conftest import RUNNER, Workspace, wait_for
from hypothesis import given
from hypothesis import strategies as st

from runner.escape import escape, escape_bytes

# File name -> how runner shows it, written out by hand (not computed by runner.escape).
NAMES = {
    "10-bad\udcff.sh": "10-bad\\xff.sh",  # the byte 0xff: not UTF-8
    "20-new\nline.sh": "20-new\\nline.sh",
    "30-tab\there.sh": "30-tab\\there.sh",
    "40-\x1b[31mred.sh": "40-\\x1b[31mred.sh",
    "50-back\\slash.sh": "50-back\\\\slash.sh",
    "60-ünï-任务.sh": "60-ünï-任务.sh",  # UTF-8 text stays as it is
}
# What each task prints, and how the log shows each line.
OUTPUT = b"one\n\x1b[1mbold\ntab\there \\ back\n\xffraw\n"
SHOWN_OUTPUT = ["one", "\\x1b[1mbold", "tab\\there \\\\ back", "\\xffraw"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")


def unescape(text: str) -> str:
    """The README's reverse of the rule (written here, independently of runner)."""
    def one(match: re.Match) -> str:
        code = match.group(0)
        if code in ("\\\\", "\\n", "\\t", "\\r"):
            return {"\\\\": "\\", "\\n": "\n", "\\t": "\t", "\\r": "\r"}[code]
        value = int(code[2:], 16)
        if code.startswith("\\x") and value >= 0x80:
            return chr(0xDC00 + value)  # the raw byte, as os.fsdecode holds it
        return chr(value)
    return re.sub(r"\\(?:[\\ntr]|x[0-9a-f]{2}|u[0-9a-f]{4})", one, text)


def setup_chain(ws: Workspace) -> tuple[os.PathLike, os.PathLike, os.PathLike]:
    """Every name as a task that waits for `go` (so all run at once, for status.json),
    then prints OUTPUT; a hook that records its JSON argument's bytes; metrics."""
    go, calls, metrics = ws.root / "go", ws.root / "calls", ws.root / "metrics.prom"
    output = ws.root / "output"
    output.write_bytes(OUTPUT)
    for name in NAMES:
        ws.task(name, f"""
            while [ ! -e '{go}' ]; do sleep 0.02; done
            cat '{output}'
        """)
    hook = ws.root / "hook.py"
    hook.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"with open({str(calls)!r}, 'ab') as out:\n"
        "    out.write(os.fsencode(sys.argv[-1]) + b'\\n')\n"
    )
    hook.chmod(0o755)
    ws.config(task_hook=str(hook), metrics_file=str(metrics), max_parallel=len(NAMES))
    return go, calls, metrics


def runner_bytes(ws: Workspace, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUNNER, "-c", str(ws.cfg), *args], capture_output=True,
                          timeout=60)


def test_odd_names_are_recorded_and_shown_by_one_rule_everywhere(ws):
    go, calls, metrics = setup_chain(ws)
    shown = set(NAMES.values())
    proc = subprocess.Popen(ws.command("-n", "1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ws.root)
    try:
        status_file = ws.root / "run" / "status.json"

        def all_running() -> bool:
            try:
                return len(json.loads(status_file.read_bytes())["tasks_running"]) == len(NAMES)
            except (OSError, ValueError, KeyError):
                return False

        wait_for(all_running, 30, "every task running in status.json")
        live = json.loads(status_file.read_bytes())  # strict UTF-8 JSON
        go.touch()
        stderr = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert set(live["tasks_running"]) == shown

    # The log: valid UTF-8, no terminal escape, one record per line, each name's lines
    # counted: started once, the four output lines in order, OK once.
    log = stderr.decode("utf-8")
    assert "\x1b" not in log and "Traceback" not in log and "failed in" not in log
    lines = log.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), log
    for name in shown:
        starts = [line for line in lines if line.endswith(f" INFO {name}: starting "
                                                          "(try 1/5, iteration 1)")]
        ends = [line for line in lines if re.search(rf" INFO {re.escape(name)}: OK after ", line)]
        printed = [line.split(f" INFO [{name}] ", 1)[1] for line in lines
                   if f" INFO [{name}] " in line]
        assert (len(starts), len(ends), printed) == (1, 1, SHOWN_OUTPUT), (name, log)
    assert len([line for line in lines if " INFO [" in line]) == 4 * len(NAMES)

    # The journal: every task's row, named by the same text, OK, its output as raw bytes;
    # the run ended with its real result.
    conn = sqlite3.connect(ws.state / "journal.sqlite")
    try:
        rows = conn.execute("SELECT task, result, output FROM task_runs").fetchall()
        [run] = conn.execute("SELECT result, exit_status FROM runs").fetchall()
    finally:
        conn.close()
    assert sorted(rows) == sorted((name, "OK", OUTPUT) for name in shown)
    assert run == ("DONE", 0)

    # runner history --json, and runner log by the file's own name and by the shown one.
    history = json.loads(runner_bytes(ws, "history", "--json").stdout)
    assert sorted(r["task"] for r in history) == sorted(shown)
    for name, text in NAMES.items():
        for argument in (name, text):
            found = runner_bytes(ws, "log", argument)
            assert found.returncode == 0, (argument, found.stderr)
            header, _, body = found.stdout.partition(b"\n")
            assert header.decode().startswith(f"# {text}: OK (0)"), header
            assert body == OUTPUT
        as_json = json.loads(runner_bytes(ws, "log", "--json", name).stdout)
        assert (as_json["task"], as_json["output"].splitlines()) == (text, SHOWN_OUTPUT)

    # Hook JSON (two calls per task) and metrics labels: the same text again.
    stats = [json.loads(line) for line in calls.read_bytes().splitlines()]
    assert sorted(s["task"] for s in stats) == sorted([*shown, *shown])
    labels = re.findall(r'^runner_task_last_result\{task="((?:[^"\\]|\\.)*)",result="OK"\} 1$',
                        metrics.read_text(encoding="utf-8"), re.M)
    prometheus = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
    assert {re.sub(r'\\[\\"n]', lambda m: prometheus[m.group(0)], v) for v in labels} == shown


def test_the_shown_text_reads_back_to_the_file_name():
    for name, text in NAMES.items():
        assert unescape(text) == name


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_the_rule_is_reversible_and_gives_one_printable_line(text):
    shown = escape(text)
    assert unescape(shown) == text
    shown.encode("utf-8")  # valid UTF-8: no surrogate left
    assert len(shown.splitlines()) <= 1
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in shown)


@given(st.binary())
def test_bytes_take_the_same_rule(data):
    assert os.fsencode(unescape(escape_bytes(data))) == data


def test_runner_check_and_plan_list_an_odd_name_on_one_line(ws):
    ws.task("10-two\nlines.sh")
    ws.task("20-plain.sh")
    for args in (("check",), ("plan",)):
        proc = ws.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "10-two\\nlines.sh" in proc.stdout, (args, proc.stdout)
        assert not any(line.startswith("lines.sh") for line in proc.stdout.splitlines())
