"""runner.cfg end to end (SPEC §2, §3, §6): bad input is one line and exit 78; valid input
(fragments, -D, per-task sections, [env], relative paths) takes effect in the real command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    RUNNER,
    RUNNER_CONFIG,
    assert_one_line_error,
    output_of,
    skip_unless,
    started,
)

DEFAULT_CONFIG = Path("/etc/runner/runner.cfg")


def line_of(path: Path, text: str) -> int:
    """The 1-based number of the line of `path` that reads `text` (stripped)."""
    lines = path.read_text().splitlines()
    matches = [n for n, line in enumerate(lines, start=1) if line.strip() == text]
    assert len(matches) == 1, (text, lines)
    return matches[0]


def run_from(cwd: Path | str, argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def get(cfg: Path, key: str, *extra: str, cwd: Path | str = "/") -> str:
    """The effective value of `key` as runner-config prints it (must succeed)."""
    proc = run_from(cwd, [RUNNER_CONFIG, "-c", str(cfg), *extra, "-g", key])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.rstrip("\n")


# -- invalid values in the file: one line naming file:line, section, key ------------------

def test_wrong_type_names_file_line_section_and_key(ws):
    ws.task("10-a.sh")
    ws.config(max_tries="five")
    proc = ws.run("-n", "1")
    n = line_of(ws.cfg, "max_tries = five")
    assert_one_line_error(proc, f"{ws.cfg}:{n}: [runner] max_tries: 'five' is not an integer")


@pytest.mark.parametrize(("key", "value", "problem"), [
    ("max_time", "soon", "'soon' is not a number of seconds"),
    ("sleep_time", "abc", "'abc' is not a number of seconds"),
    ("backoff", "fast", "'fast' is not a number"),
    ("strict_permissions", "maybe", "'maybe' is not a boolean"),
])
def test_wrong_type_of_other_runner_keys_is_one_line_error(ws, key, value, problem):
    ws.task("10-a.sh")
    ws.config(**{key: value})
    n = line_of(ws.cfg, f"{key} = {value}")
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:{n}: [runner] {key}: {problem}")


@pytest.mark.parametrize(("key", "value", "minimum"), [
    ("max_tries", "0", "1"),
    ("max_time", "-1", "0"),
    ("sleep_time", "-0.5", "0"),
    ("backoff", "0.5", "1"),
    ("max_parallel", "0", "1"),
])
def test_value_below_minimum_is_one_line_error(ws, key, value, minimum):
    ws.task("10-a.sh")
    ws.config(**{key: value})
    n = line_of(ws.cfg, f"{key} = {value}")
    assert_one_line_error(
        ws.run("-n", "1"), f"{ws.cfg}:{n}: [runner] {key}: '{value}' is less than {minimum}"
    )


def test_unknown_runner_key_is_an_error_with_did_you_mean(ws):
    ws.task("10-a.sh")
    ws.config(max_trys="3")
    n = line_of(ws.cfg, "max_trys = 3")
    assert_one_line_error(
        ws.run("-n", "1"),
        f"{ws.cfg}:{n}: [runner] max_trys: unknown key", "did you mean max_tries?",
    )


def test_bad_retry_from_names_the_allowed_options(ws):
    ws.config(retry_from="middle")
    n = line_of(ws.cfg, "retry_from = middle")
    assert_one_line_error(
        ws.run("-n", "1"),
        f"{ws.cfg}:{n}: [runner] retry_from: 'middle' is not one of start, failed",
    )


@pytest.mark.parametrize("value", ["later", "task:"])
def test_bad_notify_ready_is_one_line_error(ws, value):
    ws.config(notify_ready=value)
    n = line_of(ws.cfg, f"notify_ready = {value}")
    assert_one_line_error(
        ws.run("-n", "1"),
        f"{ws.cfg}:{n}: [runner] notify_ready: '{value}' is not one of start, pass, task:NAME",
    )


@pytest.mark.parametrize("value", ["task:10-a.sh", "pass", "start"])
def test_valid_notify_ready_values_are_accepted(ws, value):
    ws.task("10-a.sh")
    ws.config(notify_ready=value)
    assert ws.run("check").returncode == 0


def test_unbalanced_quote_inside_task_hook_names_the_key(ws):
    ws.config(task_hook="/bin/echo 'unbalanced")
    n = line_of(ws.cfg, "task_hook = /bin/echo 'unbalanced")
    assert_one_line_error(
        ws.run("-n", "1"), f"{ws.cfg}:{n}: [runner] task_hook:", "cannot split", "No closing"
    )


def test_unterminated_quoted_task_hook_names_the_line(ws):
    ws.config(task_hook='"/bin/echo hello')
    n = line_of(ws.cfg, 'task_hook = "/bin/echo hello')
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:{n}:", "task_hook")


def test_empty_task_hook_is_an_error(ws):
    ws.config(task_hook='""')
    assert_one_line_error(ws.run("-n", "1"), "[runner] task_hook: empty command line")


# -- files that cannot be read or parsed ----------------------------------------------------

def test_missing_config_file_named_with_c_is_an_error(ws):
    missing = ws.root / "nope.cfg"
    proc = run_from(ws.root, [RUNNER, "-c", str(missing), "-n", "1", str(ws.tasks)])
    assert_one_line_error(proc, str(missing), "cannot read config", "No such file")


def test_config_path_that_is_a_directory_is_an_error(ws):
    proc = run_from(ws.root, [RUNNER, "-c", str(ws.tasks), "-n", "1", str(ws.tasks)])
    assert_one_line_error(proc, str(ws.tasks), "cannot read config")


def test_unreadable_config_file_is_an_error(ws):
    ws.cfg.chmod(0)
    argv = ws.command("-n", "1")
    if os.geteuid() == 0:
        # Root reads any file whatever its mode: drop the two capabilities that allow it.
        setpriv = shutil.which("setpriv")
        skip_unless(setpriv is not None, "setpriv (util-linux) is needed to test as root")
        argv = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert_one_line_error(proc, str(ws.cfg), "cannot read config", "Permission denied")


def test_invalid_utf8_names_the_line(ws):
    ws.cfg.write_bytes(b"[runner]\nsleep_time = 0\n# caf\xe9\nmax_tries = 2\n")
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:3: not valid UTF-8", "0xe9")


def test_duplicate_key_names_the_second_line(ws):
    ws.config("[hg]\nremote = a\nremote = b\n")
    n = line_of(ws.cfg, "remote = b")
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:{n}: duplicate key", "remote = b")


def test_duplicate_section_is_an_error(ws):
    ws.config("[hg]\nremote = a\n[hg]\nbranch = b\n")
    lines = ws.cfg.read_text().splitlines()
    n = len(lines) - 1  # the second [hg]
    assert lines[n - 1] == "[hg]"
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:{n}: duplicate key or section", "[hg]")


def test_key_outside_any_section_is_an_error(ws):
    ws.cfg.write_text("stray = 1\n[runner]\nsleep_time = 0\n")
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:1: stray: key outside of any [section]")


def test_nested_section_is_an_error(ws):
    ws.config("[hg]\nremote = a\n[[deeper]]\nx = 1\n")
    n = line_of(ws.cfg, "[[deeper]]")
    assert_one_line_error(
        ws.run("-n", "1"), f"{ws.cfg}:{n}: [hg] [[deeper]]: nested sections are not supported"
    )


def test_unclosed_section_header_is_an_error(ws):
    ws.config("[hg\nremote = a\n")
    n = line_of(ws.cfg, "[hg")
    assert_one_line_error(ws.run("-n", "1"), f"{ws.cfg}:{n}: cannot parse this line", "[hg")


# -- per-task sections, dependencies, the task directory ------------------------------------

def test_bad_per_task_override_names_the_task_section(ws):
    ws.task("20-puppet-agent.sh", "echo should not run")
    ws.config("[puppet-agent]\nmax_time = soon\n")
    n = line_of(ws.cfg, "max_time = soon")
    proc = ws.run("-n", "1")
    assert_one_line_error(
        proc, f"{ws.cfg}:{n}: [puppet-agent] max_time: 'soon' is not a number of seconds"
    )
    assert "should not run" not in proc.stderr


def test_per_task_override_below_minimum_is_an_error(ws):
    ws.task("3-buildbot.py", "exit 0")
    ws.config("[buildbot]\nmax_tries = 0\n")
    n = line_of(ws.cfg, "max_tries = 0")
    assert_one_line_error(
        ws.run("check"), f"{ws.cfg}:{n}: [buildbot] max_tries: '0' is less than 1"
    )


def test_override_keys_in_a_section_naming_no_task_are_free_form_with_a_warning(ws):
    ws.task("10-a.sh")
    ws.config("[hg]\nmax_time = soon\n")
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    assert "[hg] sets max_time but no task is named 'hg'" in proc.stderr


def test_dependency_cycle_is_reported_before_any_task_runs(ws):
    ws.task("10-a.sh", "echo ran a")
    ws.task("20-b.sh", "echo ran b")
    ws.config("[a]\ndepends_on = b\n[b]\ndepends_on = 10-a.sh\n")
    proc = ws.run("-n", "1")
    line = line_of(ws.cfg, "depends_on = b")
    assert_one_line_error(proc, f"runner.cfg:{line}: [a] depends_on: dependency cycle",
                          "10-a.sh -> 20-b.sh -> 10-a.sh")
    assert_one_line_error(ws.run("check"), "dependency cycle")


def test_define_of_include_dir_reads_that_directory(ws):
    fragments = ws.root / "elsewhere"
    fragments.mkdir()
    (fragments / "50-hg.cfg").write_text("[hg]\nremote = from-fragment\n")
    ws.config("[hg]\nremote = from-main\n")
    proc = ws.run("-D", f"runner.include_dir={fragments}", "-g", "hg.remote", tasks=False)
    assert (proc.returncode, proc.stdout) == (0, "from-fragment\n"), proc.stderr


def test_dependency_on_a_missing_task_names_the_section(ws):
    ws.task("10-a.sh", "echo ran a")
    ws.config("[a]\ndepends_on = nothere\n")
    n = line_of(ws.cfg, "depends_on = nothere")
    assert_one_line_error(
        ws.run("-n", "1"),
        f"{ws.cfg}:{n}: [a] depends_on: no task 'nothere' in the task directory",
    )


def test_dependency_on_a_skipped_file_says_why_it_was_skipped(ws):
    ws.task("10-a.sh")
    ws.task("05-plain", mode=0o644)
    ws.config("[a]\ndepends_on = 05-plain\n")
    assert_one_line_error(ws.run("check"), "no task '05-plain'", "(not executable")


def test_missing_task_dir_is_an_error(ws):
    missing = ws.root / "no-such-dir"
    assert_one_line_error(
        ws.run("-n", "1", str(missing), tasks=False), str(missing), "No such file"
    )


def test_missing_task_dir_from_config_is_an_error(ws):
    ws.config(task_dir=str(ws.root / "gone"))
    assert_one_line_error(ws.run("-n", "1", tasks=False), str(ws.root / "gone"))


def test_task_dir_that_is_a_file_is_an_error(ws):
    assert_one_line_error(
        ws.run("-n", "1", str(ws.cfg), tasks=False), str(ws.cfg), "not a directory"
    )


# -- the command line -------------------------------------------------------------------------

def test_define_with_bad_value_is_validated_like_the_file(ws):
    assert_one_line_error(
        ws.run("-D", "runner.max_tries=zero", "-n", "1"),
        "-D runner.max_tries=zero: [runner] max_tries: 'zero' is not an integer",
    )


def test_define_of_unknown_runner_key_is_an_error(ws):
    assert_one_line_error(ws.run("-D", "runner.max_trise=2", "check"),
                          "[runner] max_trise: unknown key", "did you mean max_tries?")


def test_define_bad_per_task_override_is_an_error(ws):
    ws.task("10-flaky.sh")
    assert_one_line_error(
        ws.run("-D", "flaky.max_time=later", "check"),
        "-D flaky.max_time=later: [flaky] max_time: 'later' is not a number of seconds",
    )


@pytest.mark.parametrize("define", ["runner.max_tries", "max_tries=2", ".max_tries=2",
                                    "runner.=2"])
def test_malformed_define_is_an_error(ws, define):
    assert_one_line_error(ws.run("-D", define, "-n", "1"), f"-D {define}",
                          "expected section.key=value")


def test_get_without_a_dot_is_an_error(ws):
    assert_one_line_error(ws.run("-g", "nodot", tasks=False), "'nodot'", "expected section.key")


@pytest.mark.parametrize(("args", "fragment"), [
    (["-n", "-1"], "-1 is negative"),
    (["-n", "often"], "'often' is not an integer"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-D"], "-D"),
    (["check", "--json"], "unrecognized arguments: --json"),
])
def test_usage_errors_are_one_line_and_exit_78(ws, args, fragment):
    ws.task("10-a.sh", "echo ran")
    assert_one_line_error(ws.run(*args), fragment)


# -- include_dir -----------------------------------------------------------------------------

def _fragment(directory: Path, name: str, text: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(text)


def test_fragments_are_read_in_name_order_after_the_main_file(ws):
    conf = ws.root / "conf.d"
    _fragment(conf, "10-first.cfg", "[hg]\nremote = first\nonly_first = yes\n")
    _fragment(conf, "20-second.cfg", "[hg]\nremote = second\n")
    _fragment(conf, "9-late-in-byte-order.cfg", "[hg]\nbranch = nine\n")
    ws.config("[hg]\nremote = main\nbranch = main\nonly_main = kept\n", include_dir=str(conf))
    assert get(ws.cfg, "hg.remote") == "second"
    assert get(ws.cfg, "hg.branch") == "nine"  # "9-…" sorts after "20-…"
    assert get(ws.cfg, "hg.only_first") == "yes"
    assert get(ws.cfg, "hg.only_main") == "kept"


def test_fragments_can_set_runner_keys_and_they_take_effect(ws):
    conf = ws.root / "conf.d"
    _fragment(conf, "50-tries.cfg", "[runner]\nmax_tries = 2\n")
    ws.task("10-fails.sh", "exit 1")
    ws.config(include_dir=str(conf), max_tries=5)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-fails.sh", "10-fails.sh"]


def test_relative_include_dir_is_resolved_against_the_config_file(ws):
    _fragment(ws.root / "conf.d", "10.cfg", "[hg]\nremote = from-fragment\n")
    ws.config("[hg]\nremote = main\n", include_dir="conf.d")
    assert get(ws.cfg, "hg.remote", cwd="/") == "from-fragment"
    assert get(ws.cfg, "runner.include_dir", cwd="/") == str(ws.root / "conf.d")


@pytest.mark.parametrize("name", [
    ".hidden.cfg", "20-x.cfg~", "20-x.cfg.dpkg-old", "20-x.cfg.dpkg-new", "20-x.cfg.dpkg-dist",
    "20-x.cfg.rpmnew", "20-x.cfg.rpmsave", "20-x.cfg.swp",
])
def test_leftovers_and_dotfiles_in_include_dir_are_ignored(ws, name):
    conf = ws.root / "conf.d"
    _fragment(conf, "10-real.cfg", "[hg]\nremote = real\n")
    _fragment(conf, name, "[hg]\nremote = LEFTOVER\n[runner]\nmax_tries = broken\n")
    ws.config(include_dir=str(conf))
    assert get(ws.cfg, "hg.remote") == "real"


def test_directories_in_include_dir_are_ignored(ws):
    conf = ws.root / "conf.d"
    _fragment(conf, "10-real.cfg", "[hg]\nremote = real\n")
    (conf / "20-subdir").mkdir()
    ws.config(include_dir=str(conf))
    assert get(ws.cfg, "hg.remote") == "real"


def test_error_in_a_fragment_names_the_fragment_and_its_line(ws):
    conf = ws.root / "conf.d"
    _fragment(conf, "30-bad.cfg", "# tuning\n[runner]\nmax_time = forever\n")
    ws.config(include_dir=str(conf))
    assert_one_line_error(
        ws.run("check"),
        f"{conf / '30-bad.cfg'}:3: [runner] max_time: 'forever' is not a number of seconds",
    )


def test_missing_include_dir_is_an_error(ws):
    ws.config(include_dir=str(ws.root / "absent.d"))
    n = line_of(ws.cfg, f"include_dir = {ws.root / 'absent.d'}")
    assert_one_line_error(ws.run("check"), f"{ws.cfg}:{n}: [runner] include_dir:",
                          "No such file")


# -- -D overrides --------------------------------------------------------------------------

def test_define_wins_over_file_and_fragments(ws):
    conf = ws.root / "conf.d"
    _fragment(conf, "10.cfg", "[hg]\nremote = fragment\n[runner]\nmax_tries = 3\n")
    ws.config("[hg]\nremote = main\n", include_dir=str(conf), max_tries=2)
    assert get(ws.cfg, "hg.remote", "-D", "hg.remote=cmdline") == "cmdline"
    assert get(ws.cfg, "runner.max_tries", "-D", "runner.max_tries=9") == "9"
    proc = ws.run("-g", "hg.remote", "-D", "hg.remote=cmdline", tasks=False)
    assert (proc.returncode, proc.stdout) == (0, "cmdline\n")


def test_define_changes_behaviour_of_the_run(ws):
    ws.task("10-fails.sh", "exit 1")
    ws.config(max_tries=5)
    proc = ws.run("-D", "runner.max_tries=2", "-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert len(started(proc.stderr)) == 2


# -- per-task overrides are enforced --------------------------------------------------------

def test_per_task_max_time_times_out_that_task_only(ws):
    ws.task("10-other.sh", "sleep 0.3\necho other done")
    ws.task("20-limited.sh", "echo limited starts\nexec sleep 5")
    ws.config("[limited]\nmax_time = 0.1\n", max_tries=1, max_time=600)
    proc = ws.run("-n", "1", timeout=20)
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-other.sh", "20-limited.sh"]
    assert output_of(proc.stderr, "10-other.sh") == ["other done"]
    assert re.search(r"10-other\.sh: OK after", proc.stderr)
    assert re.search(r"WARNING 20-limited\.sh: TIMEOUT\b", proc.stderr)


def test_per_task_max_tries_is_enforced(ws):
    ws.task("10-flaky.sh", "exit 1")
    ws.config("[flaky]\nmax_tries = 2\n", max_tries=5)
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert started(proc.stderr) == ["10-flaky.sh", "10-flaky.sh"]
    assert "try 2/2" in proc.stderr


def test_define_overrides_a_per_task_section(ws):
    ws.task("10-flaky.sh", "exit 1")
    ws.config("[flaky]\nmax_tries = 2\n", max_tries=5)
    proc = ws.run("-D", "flaky.max_tries=3", "-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert len(started(proc.stderr)) == 3


def test_per_task_interpreter_runs_a_non_executable_task(ws):
    ws.task("10-plain.txt", "echo via interpreter", mode=0o644, shebang="")
    ws.task("20-other.txt", "echo must be skipped", mode=0o644, shebang="")
    ws.config("[plain]\ninterpreter = /bin/sh\n")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-plain.txt"]
    assert output_of(proc.stderr, "10-plain.txt") == ["via interpreter"]


# -- [env], quoting, comments ---------------------------------------------------------------

def test_env_keys_are_exported_with_case_and_commas_kept(ws):
    ws.task("10-env.sh", """
        echo "NO_PROXY=[$NO_PROXY]"
        echo "Mixed_Case=[$Mixed_Case]"
        echo "spaced=[$SPACED]"
        echo "lower=[$lower]"
    """)
    ws.config("""
        [env]
        NO_PROXY = localhost,127.0.0.1
        Mixed_Case = "quoted value"  # a comment
        SPACED = a, b ,c
        lower = x
    """)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-env.sh") == [
        "NO_PROXY=[localhost,127.0.0.1]",
        "Mixed_Case=[quoted value]",
        "spaced=[a, b ,c]",
        "lower=[x]",
    ]


def test_env_values_are_never_logged(ws):
    ws.task("10-quiet.sh", 'test "$API_TOKEN" = s3cr3t-value')
    ws.config("[env]\nAPI_TOKEN = s3cr3t-value\n")
    proc = ws.run("-v", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "s3cr3t-value" not in proc.stderr + proc.stdout


def test_quoted_values_are_unquoted_and_inline_comments_stripped(ws):
    ws.config("""
        [hg]
        double = "a # not a comment"
        single = 'single quoted'
        commented = plain value   # trailing comment
        list = "a, b" # comment
    """)
    assert get(ws.cfg, "hg.double") == "a # not a comment"
    assert get(ws.cfg, "hg.single") == "single quoted"
    assert get(ws.cfg, "hg.commented") == "plain value"
    assert get(ws.cfg, "hg.list") == "a, b"


def test_quoted_runner_value_is_typed_after_unquoting(ws):
    ws.task("10-fails.sh", "exit 1")
    ws.config(max_tries='"2"')
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert len(started(proc.stderr)) == 2


# -- relative paths and the default config --------------------------------------------------

def test_relative_task_dir_and_state_dir_are_resolved_against_the_config_dir(ws):
    ws.task("10-where.sh", 'echo "state=$RUNNER_STATE_DIR"')
    ws.config(task_dir="tasks.d", state_dir="state")
    proc = run_from("/", [RUNNER, "-c", str(ws.cfg), "-n", "1"])
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-where.sh"]
    assert output_of(proc.stderr, "10-where.sh") == [f"state={ws.root / 'state'}"]
    assert get(ws.cfg, "runner.task_dir") == str(ws.tasks)


@pytest.mark.skipif(DEFAULT_CONFIG.exists(), reason=f"{DEFAULT_CONFIG} exists on this machine")
def test_without_c_and_without_default_file_defaults_apply(ws):
    ws.task("10-a.sh")
    proc = run_from(ws.root, [RUNNER, "check", str(ws.tasks)])
    assert proc.returncode == 0, proc.stderr
    assert "(none, defaults apply)" in proc.stdout
    proc = run_from(ws.root, [RUNNER, "list", "--json", str(ws.tasks)])
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert (row["max_tries"], row["max_time"], row["sleep_time"]) == (5, 600, 1)
    proc = run_from(ws.root, [RUNNER, "-g", "runner.retry_jitter"])
    assert (proc.returncode, proc.stdout) == (0, "30\n")


# -- runner check and runner list ------------------------------------------------------------

def test_check_prints_the_plan_and_skipped_files_with_reasons(ws):
    ws.task("20-b.sh", "echo should not run")
    ws.task("10-a.sh", "echo should not run")
    ws.task("halt.sh")
    ws.task(".hidden")
    ws.task("10-a.sh~")
    ws.task("30-c.sh.dpkg-old")
    ws.task("30-c.sh.rpmsave")
    ws.task("40-plain", mode=0o644)
    (ws.tasks / "50-dir").mkdir()
    ws.config("[a]\ndepends_on = b\n")
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "should not run" not in out + proc.stderr
    assert re.search(r"1\. 20-b\.sh\n\s+2\. 10-a\.sh  after b\n", out), out
    assert f"halt task: {ws.tasks / 'halt.sh'}" in out
    skipped = dict(re.findall(r"^  (\S+): (.*)$", out.split("skipped:\n", 1)[1], re.M))
    assert skipped == {
        ".hidden": "hidden file",
        "10-a.sh~": "editor backup file",
        "30-c.sh.dpkg-old": "package manager leftover (.dpkg-old)",
        "30-c.sh.rpmsave": "package manager leftover (.rpmsave)",
        "40-plain": "not executable (chmod +x it, or set an interpreter)",
        "50-dir": "directory",
    }
    assert "halt.sh" not in skipped
    assert "warning: 40-plain: not executable" in proc.stderr
    assert "halt task halt.sh not found" not in proc.stderr


def test_check_warns_about_a_missing_halt_task_and_still_exits_0(ws):
    ws.task("10-a.sh")
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    assert "halt task: MISSING" in proc.stdout
    assert "warning: halt task halt.sh not found" in proc.stderr


def test_check_rejects_a_bad_config_with_one_line(ws):
    ws.task("10-a.sh")
    ws.config(max_tries="five")
    assert_one_line_error(ws.run("check"), "[runner] max_tries: 'five' is not an integer")


def test_list_shows_effective_per_task_settings(ws):
    ws.task("10-a.sh")
    ws.task("20-b.sh")
    ws.task("30-c.txt", mode=0o644)
    ws.config("""
        [b]
        max_time = 42
        max_tries = 2
        depends_on = 30-c.txt
        [c]
        interpreter = /bin/sh -e
    """, max_time=600, max_tries=4)
    proc = ws.run("list")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    header = rows[0]
    assert header[:4] == ["task", "max_time", "max_tries", "sleep_time"]
    by_task = {row[0]: dict(zip(header, row, strict=False)) for row in rows[1:]}
    assert [row[0] for row in rows[1:]] == ["10-a.sh", "30-c.txt", "20-b.sh"]
    assert (by_task["10-a.sh"]["max_time"], by_task["10-a.sh"]["max_tries"]) == ("600", "4")
    assert (by_task["20-b.sh"]["max_time"], by_task["20-b.sh"]["max_tries"]) == ("42", "2")
    assert "/bin/sh -e" in proc.stdout


def test_list_json_shows_effective_per_task_settings(ws):
    ws.task("10-a.sh")
    ws.task("20-b.sh")
    ws.config("[b]\nmax_time = 42\nsleep_time = 3\ndepends_on = a\n", max_time=600)
    proc = ws.run("list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {row["task"]: row for row in json.loads(proc.stdout)}
    assert list(rows) == ["10-a.sh", "20-b.sh"]
    assert rows["10-a.sh"]["max_time"] == 600
    assert rows["10-a.sh"]["sleep_time"] == 0
    assert rows["10-a.sh"]["depends_on"] is None
    assert rows["20-b.sh"]["max_time"] == 42
    assert rows["20-b.sh"]["sleep_time"] == 3
    assert rows["20-b.sh"]["depends_on"] == ["a"]
    assert rows["20-b.sh"]["short_name"] == "b"
    assert rows["20-b.sh"]["path"] == str(ws.tasks / "20-b.sh")


def test_check_warns_when_the_configured_reboot_task_is_missing(ws):
    ws.task("10-ok.sh")
    ws.config(reboot_task="reboot.sh")
    proc = ws.run("check")
    assert proc.returncode == 0
    assert "reboot_task reboot.sh not found" in proc.stderr
