"""runner.cli answers `--help`, `status`, `history`, `ctl` and `check` without argparse
(issue 17):
only for argument lists argparse reads the same way, and with the same text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner import arguments, cli, helptext, statusfile
from runner.commands.light import cached_locations

RUNNER = str(Path(sys.executable).with_name("runner"))

PLAIN = [
    ["status"], ["status", "--json"], ["--json", "status"][::-1],
    ["-c", "/x/runner.cfg", "status"], ["status", "--config", "rel.cfg"],
    ["--config=/x.cfg", "-c", "/y.cfg", "status"],
    ["history"], ["history", "--limit", "20"], ["history", "--limit=7", "--json", "--local"],
    ["history", "--task", "puppet", "--since", "2h", "--host", "h1", "--run", "abc"],
    ["history", "--task=x y", "--limit", "20", "--limit", "3"],
    ["ctl", "pause"], ["ctl", "skip", "20-x.sh"], ["-c", "a.cfg", "ctl", "retry-now"],
    ["ctl", "pause", "-c", "a.cfg"], ["ctl", "pause", "extra"],
    ["check"], ["check", "tasks.d"], ["-c", "a.cfg", "check", "/srv/tasks.d"],
    ["check", "-c", "a.cfg"],
    ["plot"], ["plot", "-o", "x.svg", "--run", "abc"],
    ["plot", "--since", "2h", "--host", "h", "--local", "--output=f.svg"],
]
# Left to argparse: abbreviations, other options, odd values, mistakes, other commands.
NOT_LIGHT = [
    [], ["run"], ["check", "a", "b"], ["check", "--show-secrets"], ["check", "-v"],
    ["check", "-D", "runner.times=1"], ["log", "x"], ["status", "-v"], ["-v", "status"],
    ["status", "--js"], ["--conf", "x", "status"], ["-cx.cfg", "status"],
    ["status", "extra"], ["status", "--json=1"], ["history", "--limit", "0"],
    ["history", "--limit", "x"], ["history", "--limit", "+3"], ["history", "--limit", "٣"],
    ["history", "--since", "-2h"], ["history", "--limit"], ["-c", "-x", "status"],
    ["-c", "", "status"], ["-D", "runner.times=1", "status"], ["ctl"], ["ctl", "paws"],
    ["ctl", "skip", "-c", "a.cfg", "x"], ["ctl", "--", "pause"], ["ctl", "a", "b", "c"],
    ["--help", "status"], ["status", "--help"], ["--version"], ["-g", "runner.times"],
    ["plot", "--run", "a", "--since", "2h"], ["plot", "-ox.svg"], ["plot", "--limit", "3"],
]


def argparse_reading(argv: list[str]) -> tuple:
    command, rest = arguments.split_command(argv)
    args = arguments.build_parser(command).parse_args(rest)
    options = {name: value for name, value in vars(args).items()
               if name in ("json", "local", "task", "since", "host", "run_id", "limit",
                           "output")
               and command != "ctl"}
    options = {("as_json" if k == "json" else k): v for k, v in options.items()}
    if command == "ctl":
        words = [args.action, *([args.task] if args.task is not None else [])]
    else:
        words = [args.taskdir] if getattr(args, "taskdir", None) else []
    return command, args.config, options, words


@pytest.mark.parametrize("argv", PLAIN)
def test_light_arguments_mean_what_argparse_makes_of_them(argv):
    light = cli.light_arguments(argv)
    assert light is not None
    command, config, options, words = light
    want_command, want_config, want_options, want_words = argparse_reading(argv)
    assert (command, config, words) == (want_command, want_config, want_words)
    # argparse fills in every default; the light reading only what was given.
    defaults = {"as_json": False, "local": False, "task": None, "since": None, "host": None,
                "run_id": None, "limit": None, "output": None}
    assert {k: options.get(k, defaults[k]) for k in want_options} == want_options
    assert set(options) <= set(want_options)


@pytest.mark.parametrize("argv", NOT_LIGHT)
def test_anything_else_goes_to_argparse(argv):
    assert cli.light_arguments(argv) is None


def test_the_help_text_is_what_argparse_prints():
    assert helptext.HELP == arguments.help_text(helptext.COLUMNS)
    source = Path(helptext.__file__).read_text(encoding="utf-8")
    assert source == arguments.help_module(), \
        "regenerate: python3 -m runner.arguments > runner/helptext.py"


@pytest.mark.parametrize("columns", ["80", "120", "0", "junk"])
def test_runner_help_at_any_width_is_argparse_s(columns):
    env = {**os.environ, "COLUMNS": columns}
    proc = subprocess.run([RUNNER, "--help"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    width = int(columns) if columns.isdigit() and int(columns) > 0 else 80
    assert proc.stdout == arguments.help_text(width)


def test_status_reads_the_cache_only_while_it_is_true(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(cache))
    cfg = tmp_path / "runner.cfg"
    cfg.write_text(f"[runner]\nstate_dir = {tmp_path}/s1\nruntime_dir = {tmp_path}/r\n")
    assert cached_locations(str(cfg)) is None
    env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
    run = [RUNNER, "-c", str(cfg), "status"]
    first = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    where = cached_locations(str(cfg))
    assert (where.state_dir, where.runtime_dir, where.journal_url) == (
        f"{tmp_path}/s1", f"{tmp_path}/r", None)
    # Same size, same second: the content decides.
    cfg.write_text(f"[runner]\nstate_dir = {tmp_path}/s2\nruntime_dir = {tmp_path}/r\n")
    assert cached_locations(str(cfg)) is None
    second = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert f"{tmp_path}/s1" in first.stdout + first.stderr
    assert f"{tmp_path}/s2" in second.stdout + second.stderr
    assert first.returncode == second.returncode == 1  # nothing recorded yet


def test_a_broken_config_is_one_line_and_78_through_the_light_path(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text("[runner]\nmax_tries = five\n")
    env = {**os.environ, "RUNNER_CACHE_DIR": ""}
    for command in (["status"], ["history", "--limit", "5"], ["ctl", "pause"]):
        proc = subprocess.run([RUNNER, "-c", str(cfg), *command], capture_output=True,
                              text=True, env=env, timeout=60)
        assert proc.returncode == 78, (command, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "max_tries" in proc.stderr, proc.stderr
    # A bad ctl word is found before the configuration is read, as argparse's path does.
    proc = subprocess.run([RUNNER, "-c", str(cfg), "ctl", "pause", "now"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 78 and "pause takes no arguments" in proc.stderr, proc.stderr


# What a status file may hold: what runner writes (json.dumps of a dict), and worse.
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


def _json_says(data: bytes):
    try:
        return "value", repr(json.loads(data))
    except ValueError as exc:
        return "error", type(exc).__name__


def _loads_says(data: bytes):
    try:
        return "value", repr(statusfile.loads(data))
    except ValueError as exc:
        return "error", type(exc).__name__


@given(st.dictionaries(st.text(), _JSON, max_size=6), st.booleans())
def test_the_status_file_reads_as_json_reads_it(document, ascii_only):
    """runner.statusfile reads status.json without importing json (its `import re`); what
    it makes of what runner writes is json.loads's."""
    data = json.dumps(document, ensure_ascii=ascii_only).encode() + b"\n"
    assert _loads_says(data) == _json_says(data)


@pytest.mark.parametrize("data", [
    b'{"a": 1} x', b'{"a": 1}{', b"{", b"", b"[1]", b' {"a": 1}', b'{"a": "\x01"}',
    b'{"a": NaN, "b": -Infinity}', b'{"a": 1}\n\n \t', b'{"a": 1, "a": 2}',
    b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xff"}', '{"a": 1}'.encode("utf-16"),
    b'{"a": "\\ud800"}', b'{"a": 1e400}', b'{"a": 1}\x00'])
def test_the_status_file_reads_as_json_reads_it_whatever_it_holds(data):
    assert _loads_says(data) == _json_says(data)


def test_reading_the_status_file_imports_no_json(tmp_path):
    (tmp_path / "status.json").write_text('{"pid": 1, "tasks_running": ["a", "b"]}\n')
    code = ("import sys\nfrom runner.statusfile import read_status\n"
            f"print(read_status({str(tmp_path)!r}), 'json' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert proc.stdout == "{'pid': 1, 'tasks_running': ['a', 'b']} False\n"
