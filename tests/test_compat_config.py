"""Config files written for the original runner's RawConfigParser (SPEC §2, issue 13): read
with the values RawConfigParser reads, or refused with one line saying what to change.

The reference is Python's own configparser.RawConfigParser, set up the way Python 2.7's
(what the original ran on) read files: `;` starts an inline comment after whitespace and
keys are lowercased. Python 2.7's own rules where 3.x differs are checked by value."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import RUNNER_CONFIG, assert_one_line_error

# Written in the style of fleet configs of the original: `;` comments everywhere (one
# commenting out include_dir), `key: value`, keys in any case, continued values, inline
# `;` comments. No `#` and no quotes in values: there runner differs on purpose (README).
ORIGINAL_STYLE = """\
; runner.cfg for the build slaves
[runner]
; include_dir = /etc/runner.d
; pre/post task hooks are gone: task_hook does both
Max_Tries: 3
max_time = 900 ; fifteen minutes
Sleep_Time=0
retry_jitter : 0
halt_task: halt.sh
kill_grace = 1
state_dir: {state}
runtime_dir = {run}

[env]
; exported to every task
HG_SHARE_BASE_DIR: /builds/hg-shared
Proxy_Host = proxy.example ; the office proxy
EMPTY =

[buildbot]
; a per-task section: overrides in any case, the task's own keys too
MAX_TIME: 120
Max_Tries = 2
master: buildbot-master.example:9010
Extra_Args = --verbose --name=slave1

[hg]
; a free-form section with a value over several lines
remote = https://hg.example/build/tools
mirrors = https://hg1.example/tools
    https://hg2.example/tools
\thttps://hg3.example/tools
options: share=yes;purge
empty:
"""


def write_original_style(ws) -> str:
    text = ORIGINAL_STYLE.format(state=ws.state, run=ws.root / "run")
    ws.cfg.write_text(text)
    ws.task("10-buildbot.sh")
    ws.task("halt.sh")
    return text


def as_python27(text: str) -> configparser.RawConfigParser:
    """What Python 2.7's RawConfigParser read from `text` (for files without the corners
    where 3.x differs: blank lines inside a value, `;` in continuation lines)."""
    parser = configparser.RawConfigParser(
        inline_comment_prefixes=(";",), empty_lines_in_values=False, strict=True,
    )
    parser.read_string(text)
    return parser


def config_json(ws, *args: str) -> dict:
    proc = subprocess.run([RUNNER_CONFIG, "-c", str(ws.cfg), *args, "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def get(ws, key: str) -> str:
    proc = subprocess.run([RUNNER_CONFIG, "-c", str(ws.cfg), "-g", key],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout[:-1]


def line_of(text: str, start: str) -> int:
    matches = [n for n, line in enumerate(text.splitlines(), 1) if line.startswith(start)]
    assert len(matches) == 1, (start, matches)
    return matches[0]


# -- accepted with the values RawConfigParser reads ---------------------------------------

def test_every_value_is_the_one_rawconfigparser_reads(ws):
    text = write_original_style(ws)
    reference = as_python27(text)
    listed = config_json(ws, "-l")
    for section in ("env", "buildbot", "hg"):
        ours = {key.lower(): value for key, value in listed[section].items()}
        assert ours == dict(reference[section]), section
        for key, value in reference[section].items():  # -g prints the same, one by one
            written = next(k for k in listed[section] if k.lower() == key)
            assert get(ws, f"{section}.{written}") == value
    assert reference["hg"]["mirrors"].count("\n") == 2  # the test reads a continued value


def test_runner_keys_are_typed_from_the_values_rawconfigparser_reads(ws):
    text = write_original_style(ws)
    reference = as_python27(text)["runner"]
    runner = config_json(ws, "-l", "runner")
    assert set(reference) <= set(runner)  # every key found, in lower case
    assert runner["max_tries"] == int(reference["max_tries"]) == 3
    assert runner["max_time"] == float(reference["max_time"]) == 900
    assert runner["sleep_time"] == float(reference["sleep_time"]) == 0
    assert runner["retry_jitter"] == 0
    assert runner["halt_task"] == reference["halt_task"] == "halt.sh"
    assert runner["state_dir"] == reference["state_dir"] == str(ws.state)
    assert "include_dir" not in runner  # commented out with `;`


def test_per_task_overrides_in_any_case_take_effect(ws):
    text = write_original_style(ws)
    reference = as_python27(text)["buildbot"]
    proc = ws.run("list", "--json", tasks=True)
    assert proc.returncode == 0, proc.stderr
    rows = {row["task"]: row for row in json.loads(proc.stdout)}
    assert rows["10-buildbot.sh"]["max_time"] == float(reference["max_time"]) == 120
    assert rows["10-buildbot.sh"]["max_tries"] == int(reference["max_tries"]) == 2


def test_original_style_config_runs_the_chain_and_exports_env(ws):
    write_original_style(ws)
    ws.task("10-buildbot.sh", 'echo "proxy=[$Proxy_Host] empty=[$EMPTY]"')
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "proxy=[proxy.example] empty=[]" in proc.stderr


@pytest.mark.parametrize(("value_lines", "expected"), [
    # Python 2.7: only the first `;` can start a comment, and only after whitespace.
    (["k = a;b ;c"], "a;b ;c"),
    (["k = a;b"], "a;b"),
    (["k = a ;b ; c"], "a"),
    # 2.7 skipped blank lines inside a continued value and kept `;` in continuation lines.
    (["k = a", "", "  b ; c"], "a\nb ; c"),
    # A key with nothing after the delimiter, continued below: the value starts empty.
    (["k:", "  x", "  y"], "\nx\ny"),
    # `:` ends the key when it comes first; `=` when it does.
    (["k: a=b"], "a=b"),
    (["k = a: b"], "a: b"),
])
def test_python27_rules_where_python3_differs(ws, value_lines, expected):
    ws.config("[hg]\n" + "\n".join(value_lines) + "\n")
    assert get(ws, "hg.k") == expected


def test_rem_lines_are_comments_as_in_python27(ws):
    ws.config("[hg]\nREM the old DOS comment\nrem another\nremote = x\n")
    assert config_json(ws, "-l", "hg") == {"remote": "x"}


def test_indented_comment_lines_inside_a_continued_value_are_comments(ws):
    """Python 2.7 appended them to the value, 3.x and runner drop them (README)."""
    ws.config("[hg]\nk = a\n  ; not part of it\n  # nor this\n  b\n")
    assert get(ws, "hg.k") == "a\nb"


def test_a_file_indented_as_a_whole_keeps_its_keys(ws):
    ws.config("  [hg]\n  remote = x\n  branch = y\n")
    assert config_json(ws, "-l", "hg") == {"remote": "x", "branch": "y"}


def test_fragment_overrides_a_key_written_in_another_case(ws):
    frags = ws.root / "frags"
    frags.mkdir()
    (frags / "10-more.cfg").write_text("[runner]\nmax_tries: 7\n; a comment\n")
    ws.config(f"Max_Tries = 3\ninclude_dir: {frags}\n")
    assert get(ws, "runner.max_tries") == "7"


def test_define_names_a_runner_key_in_any_case(ws):
    ws.config("")
    proc = subprocess.run([RUNNER_CONFIG, "-c", str(ws.cfg), "-D", "runner.Max_Tries=4",
                           "-g", "runner.max_tries"], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "4\n"), proc.stderr


# -- keys the original ignored: one warning each ------------------------------------------

LEGACY = "pre_task_hook = /usr/local/bin/pre\nPost_Task_Hook: /usr/local/bin/post\n"


def test_check_warns_once_about_each_ignored_key_with_its_line(ws):
    ws.task("10-a.sh")
    ws.task("halt.sh")
    ws.config(LEGACY)
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    text = ws.cfg.read_text()
    for key, start in (("pre_task_hook", "pre_task_hook"), ("post_task_hook", "Post_Task")):
        where = f"{ws.cfg}:{line_of(text, start)}: [runner] {key}: ignored"
        assert proc.stderr.count(where) == 1, proc.stderr
    assert "OK (2 warning(s))" in proc.stdout


def test_run_logs_the_ignored_keys_once_and_runs(ws):
    ws.task("10-a.sh")
    ws.task("halt.sh")
    ws.config(LEGACY)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    warnings = re.findall(r"WARNING .*\[runner\] (\w+): ignored", proc.stderr)
    assert sorted(warnings) == ["post_task_hook", "pre_task_hook"], proc.stderr


def test_an_unknown_key_in_any_case_is_still_an_error(ws):
    ws.task("10-a.sh")
    ws.config("Max_Trys: 3\n")
    n = line_of(ws.cfg.read_text(), "Max_Trys")
    assert_one_line_error(ws.run("check"), f"{ws.cfg}:{n}: [runner] Max_Trys: unknown key",
                          "did you mean max_tries?")


# -- refused: one line naming file:line and what to change -------------------------------

@pytest.mark.parametrize(("body", "bad_line", "what"), [
    # A continuation in RawConfigParser's reading, a key in configobj's.
    ("[hg]\nremote = x\n    branch = y\n", "    branch = y", "un-indent it"),
    # Python 2.7 dropped the line; runner would have read a key named rem.
    ("[hg]\nrem = 3\n", "rem = 3", "start it with #"),
    # One key twice (RawConfigParser lowercased keys; Python 3's refuses this too).
    ("Max_Tries = 3\nmax_tries = 4\n", "max_tries = 4", "duplicate key"),
    ("[b]\nmax_time = 3\nMax_Time = 4\n", "Max_Time = 4", "remove one of them"),
    # No value at all: RawConfigParser (allow_no_value False) refused it too.
    ("[hg]\nremote\n", "remote", "cannot parse this line"),
])
def test_refused_lines_name_file_line_and_what_to_change(ws, body, bad_line, what):
    ws.task("10-a.sh")
    ws.config(body)
    n = ws.cfg.read_text().splitlines().index(bad_line) + 1
    assert_one_line_error(ws.run("check"), f"{ws.cfg}:{n}: ", what)


def test_the_refused_cases_are_in_the_readme_differences_table():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = readme.split("## Differences from the original runner", 1)[1]
    for fragment in ("`;` comment", "`key: value`", "continuation", "REM", "duplicate",
                     "pre_task_hook"):
        assert fragment in table, fragment


def test_long_and_many_continuation_lines_are_read_in_linear_time(ws):
    """The pre-pass scans each line a few times at most (a quadratic scan was a past bug)."""
    lines = ["[hg]", "k = " + "a ;" * 100_000, "j = first"]
    lines += ["  " + "x" * 50 + ";" * 50 for _ in range(50_000)]
    lines += ["REM" + " " * 200_000 + "x", "m:" + ":" * 200_000]
    ws.config("\n".join(lines) + "\n")
    started = time.monotonic()
    value = get(ws, "hg.j")
    assert time.monotonic() - started < 10
    assert value.count("\n") == 50_000
    assert get(ws, "hg.k") == "a"
