"""runner.cli answers `--help`, `status`, `history` and `ctl` without argparse (issue 17):
only for argument lists argparse reads the same way, and with the same text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner import arguments, cli, helptext
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
]
# Left to argparse: abbreviations, other options, odd values, mistakes, other commands.
NOT_LIGHT = [
    [], ["run"], ["check"], ["log", "x"], ["status", "-v"], ["-v", "status"],
    ["status", "--js"], ["--conf", "x", "status"], ["-cx.cfg", "status"],
    ["status", "extra"], ["status", "--json=1"], ["history", "--limit", "0"],
    ["history", "--limit", "x"], ["history", "--limit", "+3"], ["history", "--limit", "٣"],
    ["history", "--since", "-2h"], ["history", "--limit"], ["-c", "-x", "status"],
    ["-c", "", "status"], ["-D", "runner.times=1", "status"], ["ctl"], ["ctl", "paws"],
    ["ctl", "skip", "-c", "a.cfg", "x"], ["ctl", "--", "pause"], ["ctl", "a", "b", "c"],
    ["--help", "status"], ["status", "--help"], ["--version"], ["-g", "runner.times"],
]


def argparse_reading(argv: list[str]) -> tuple:
    command, rest = arguments.split_command(argv)
    args = arguments.build_parser(command).parse_args(rest)
    options = {name: value for name, value in vars(args).items()
               if name in ("json", "local", "task", "since", "host", "run_id", "limit")
               and command != "ctl"}
    options = {("as_json" if k == "json" else k): v for k, v in options.items()}
    words = [args.action, *([args.task] if args.task is not None else [])] \
        if command == "ctl" else []
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
                "run_id": None, "limit": 50}
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
