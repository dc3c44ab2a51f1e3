"""runner-config (SPEC §6) and RUNNER_CONFIG_CMD inside tasks (SPEC §3), through the real
commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import RUNNER_CONFIG, assert_one_line_error, output_of, started

HG = """
    [hg]
    remote = https://hg.example/repo
    branch = default
    Mixed_Case = kept
    [env]
    NO_PROXY = localhost,127.0.0.1
"""


def runner_config(*args: str, cwd: str = "/") -> subprocess.CompletedProcess:
    return subprocess.run([RUNNER_CONFIG, *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def listed(stdout: str) -> dict[str, str]:
    """`section.key = value` lines as a dict."""
    pairs = (line.split(" = ", 1) for line in stdout.splitlines())
    return {key: value for key, value in pairs}


# -- -g -----------------------------------------------------------------------------------

def test_get_prints_one_value_and_exits_0(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "hg.remote")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "https://hg.example/repo\n", "")


def test_get_keeps_key_case_and_commas(ws):
    ws.config(HG)
    assert runner_config("-c", str(ws.cfg), "-g", "hg.Mixed_Case").stdout == "kept\n"
    # As the original (RawConfigParser lowercased option names): any case finds it.
    assert runner_config("-c", str(ws.cfg), "-g", "hg.mixed_case", "--strict").stdout == "kept\n"
    assert runner_config("-c", str(ws.cfg), "-g", "env.NO_PROXY").stdout == (
        "localhost,127.0.0.1\n"
    )


MISSING_HINT = ("; printed nothing (--default VALUE prints a value; --strict or [runner] "
                "config_get_strict = true make this an error)")


def test_get_missing_key_prints_nothing_warns_and_exits_0(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "hg.nokey")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == (
        f"runner-config: warning: hg.nokey: no key 'nokey' in [hg]{MISSING_HINT}\n")


def test_get_missing_section_prints_nothing_warns_and_exits_0(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "nosection.key")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == (
        f"runner-config: warning: nosection.key: no section [nosection]{MISSING_HINT}\n")


@pytest.mark.parametrize("how", ["--strict", "-Drunner.config_get_strict=true", "cfg"])
@pytest.mark.parametrize(("key", "where"), [("hg.nokey", "no key 'nokey' in [hg]"),
                                            ("nosection.key", "no section [nosection]")])
def test_strict_mode_makes_a_missing_key_exit_1(ws, how, key, where):
    ws.config(HG, **({"config_get_strict": "true"} if how == "cfg" else {}))
    proc = runner_config("-c", str(ws.cfg), *([how] if how != "cfg" else []), "-g", key)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == f"runner-config: {key}: {where}\n"


def test_default_is_printed_for_a_missing_key(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "hg.nokey", "--default", "fallback")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "fallback\n", "")
    proc = runner_config("-c", str(ws.cfg), "-g", "nosection.key", "--default=")
    assert (proc.returncode, proc.stdout) == (0, "\n")


def test_default_does_not_replace_a_value_that_is_set(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "hg.branch", "--default", "fallback")
    assert (proc.returncode, proc.stdout) == (0, "default\n")


@pytest.mark.parametrize(("key", "value"), [
    ("runner.max_tries", "5"),
    ("runner.max_time", "600"),
    ("runner.backoff", "1.14"),
    ("runner.halt_task", "halt.sh"),
    ("runner.retry_from", "start"),
    ("runner.notify_ready", "start"),
    ("runner.strict_permissions", "false"),
])
def test_runner_defaults_are_visible(ws, key, value):
    ws.config()  # sets only sleep_time, retry_jitter, kill_grace and state_dir
    proc = runner_config("-c", str(ws.cfg), "-g", key)
    assert (proc.returncode, proc.stdout) == (0, f"{value}\n"), proc.stderr


def test_runner_values_are_printed_typed(ws):
    ws.config(max_time="90.0", strict_permissions="yes", max_tries='"3"')
    assert runner_config("-c", str(ws.cfg), "-g", "runner.max_time").stdout == "90\n"
    assert runner_config("-c", str(ws.cfg), "-g", "runner.strict_permissions").stdout == "true\n"
    assert runner_config("-c", str(ws.cfg), "-g", "runner.max_tries").stdout == "3\n"


def test_unset_runner_key_without_default_counts_as_missing(ws):
    ws.config()
    proc = runner_config("-c", str(ws.cfg), "-g", "runner.task_hook")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert "runner.task_hook: no key 'task_hook' in [runner]" in proc.stderr
    proc = runner_config("-c", str(ws.cfg), "-g", "runner.task_hook", "--default", "none")
    assert (proc.returncode, proc.stdout) == (0, "none\n")


def test_get_json_prints_a_json_value(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-g", "runner.max_tries", "--json")
    assert json.loads(proc.stdout) == 5
    proc = runner_config("-c", str(ws.cfg), "--json", "-g", "runner.secret_keys")
    assert json.loads(proc.stdout) == ["*PASSWORD*", "*TOKEN*", "*SECRET*", "*KEY*"]
    proc = runner_config("-c", str(ws.cfg), "--json", "-g", "hg.branch")
    assert json.loads(proc.stdout) == "default"


# -- -l and --json ---------------------------------------------------------------------------

def test_list_prints_every_section_key_value_sorted(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-l")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == sorted(lines)
    values = listed(proc.stdout)
    assert values["hg.remote"] == "https://hg.example/repo"
    assert values["hg.Mixed_Case"] == "kept"
    assert values["env.NO_PROXY"] == "localhost,127.0.0.1"
    assert values["runner.max_tries"] == "5"
    assert values["runner.sleep_time"] == "0"
    assert values["runner.state_dir"] == str(ws.state)


def test_list_section_prints_only_that_section(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-l", "hg")
    assert proc.returncode == 0, proc.stderr
    assert listed(proc.stdout) == {
        "hg.Mixed_Case": "kept", "hg.branch": "default", "hg.remote": "https://hg.example/repo",
    }


def test_list_of_a_missing_section_exits_1(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-l", "nosection")
    assert (proc.returncode, proc.stdout) == (1, "")
    assert "no section [nosection]" in proc.stderr


def test_list_json_prints_all_sections(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "-l", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["hg"] == {"remote": "https://hg.example/repo", "branch": "default",
                          "Mixed_Case": "kept"}
    assert data["env"] == {"NO_PROXY": "localhost,127.0.0.1"}
    assert data["runner"]["max_tries"] == 5
    assert data["runner"]["sleep_time"] == 0
    assert "task_hook" not in data["runner"]  # unset keys are not listed


def test_list_json_of_one_section(ws):
    ws.config(HG)
    proc = runner_config("-c", str(ws.cfg), "--json", "-l", "env")
    assert json.loads(proc.stdout) == {"NO_PROXY": "localhost,127.0.0.1"}


# -- fragments and -D ------------------------------------------------------------------------

def test_fragments_are_applied(ws):
    conf = ws.root / "conf.d"
    conf.mkdir()
    (conf / "10.cfg").write_text("[hg]\nbranch = stable\n[runner]\nmax_tries = 8\n")
    ws.config(HG, include_dir="conf.d")
    assert runner_config("-c", str(ws.cfg), "-g", "hg.branch").stdout == "stable\n"
    assert runner_config("-c", str(ws.cfg), "-g", "runner.max_tries").stdout == "8\n"


def test_define_applies(ws):
    ws.config(HG, max_tries=3)
    proc = runner_config("-c", str(ws.cfg), "-D", "hg.branch=feature", "-g", "hg.branch")
    assert (proc.returncode, proc.stdout) == (0, "feature\n")
    proc = runner_config("-c", str(ws.cfg), "-Drunner.max_tries=7", "-g", "runner.max_tries")
    assert (proc.returncode, proc.stdout) == (0, "7\n")
    # (not `new.key`: *KEY* is a default secret_keys pattern, and listings mask those)
    proc = runner_config("-c", str(ws.cfg), "-D", "new.item=v", "-l", "new")
    assert (proc.returncode, proc.stdout) == (0, "new.item = v\n")


def test_define_is_validated(ws):
    ws.config(HG)
    assert_one_line_error(
        runner_config("-c", str(ws.cfg), "-D", "runner.max_tries=lots", "-g", "hg.branch"),
        "runner-config:", "[runner] max_tries: 'lots' is not an integer",
    )
    assert_one_line_error(
        runner_config("-c", str(ws.cfg), "-D", "nodot=1", "-g", "hg.branch"),
        "expected section.key=value",
    )


# -- bad input ----------------------------------------------------------------------------------

def test_get_without_a_dot_exits_78(ws):
    ws.config(HG)
    assert_one_line_error(runner_config("-c", str(ws.cfg), "-g", "nodot"),
                          "runner-config:", "'nodot'", "expected section.key")


@pytest.mark.parametrize("args", [[], ["-g", "hg.remote", "-l"], ["--bogus"], ["-g"]])
def test_usage_errors_exit_78(ws, args):
    ws.config(HG)
    assert_one_line_error(runner_config("-c", str(ws.cfg), *args), "runner-config:")


def test_invalid_config_exits_78_with_the_same_message_as_runner(ws):
    ws.config(max_tries="five")
    proc = runner_config("-c", str(ws.cfg), "-g", "runner.max_tries")
    assert_one_line_error(proc, f"{ws.cfg}:", "[runner] max_tries: 'five' is not an integer")


def test_missing_config_file_exits_78(ws):
    missing = str(ws.root / "missing.cfg")
    assert_one_line_error(runner_config("-c", missing, "-g", "hg.remote"),
                          missing, "cannot read config")


# -- legacy runner -g ---------------------------------------------------------------------------

@pytest.mark.parametrize("strict", [[], ["--strict"]])
@pytest.mark.parametrize("key", ["hg.remote", "env.NO_PROXY", "runner.max_tries",
                                 "runner.backoff", "hg.nokey", "nosection.key"])
def test_runner_get_answers_like_runner_config(ws, key, strict):
    ws.config(HG)
    legacy = ws.run("-g", key, *strict, tasks=False)
    modern = runner_config("-c", str(ws.cfg), "-g", key, *strict)
    assert (legacy.returncode, legacy.stdout) == (modern.returncode, modern.stdout)
    assert legacy.stderr.removeprefix("runner") == modern.stderr.removeprefix("runner-config")
    missing = "nokey" in key or "nosection" in key
    assert legacy.returncode == (1 if missing and strict else 0)
    assert (legacy.stderr != "") == missing, legacy.stderr


def test_runner_get_applies_define(ws):
    ws.config(HG)
    proc = ws.run("-D", "hg.remote=other", "-g", "hg.remote", tasks=False)
    assert (proc.returncode, proc.stdout) == (0, "other\n")


# -- inside a task ---------------------------------------------------------------------------

def test_runner_config_cmd_in_a_task_returns_effective_values_with_defines(ws):
    ws.task("10-ask.sh", """
        echo "remote=$($RUNNER_CONFIG_CMD -g hg.remote)"
        echo "branch=$($RUNNER_CONFIG_CMD -g hg.branch)"
        echo "tries=$($RUNNER_CONFIG_CMD -g runner.max_tries)"
        echo "proxy=$($RUNNER_CONFIG_CMD -g env.NO_PROXY)"
        echo "own=$($RUNNER_CONFIG_CMD -g ask.timeout_hint)"
        $RUNNER_CONFIG_CMD -g hg.nokey 2>/dev/null; echo "missing=$?"
        $RUNNER_CONFIG_CMD -g hg.nokey --strict 2>/dev/null; echo "strict=$?"
        echo "fallback=$($RUNNER_CONFIG_CMD -g hg.nokey --default dflt)"
        $RUNNER_CONFIG_CMD -g nodot 2>/dev/null; echo "nodot=$?"
    """)
    ws.config(HG + "[ask]\ntimeout_hint = 7\n", max_tries=3)
    proc = ws.run("-D", "hg.branch=from-cmdline", "-D", "runner.max_tries=4", "-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-ask.sh") == [
        "remote=https://hg.example/repo",
        "branch=from-cmdline",
        "tries=4",
        "proxy=localhost,127.0.0.1",
        "own=7",
        "missing=0",
        "strict=1",
        "fallback=dflt",
        "nodot=78",
    ]


def test_runner_config_cmd_is_an_absolute_command(ws):
    ws.task("10-cmd.sh", 'echo "cmd=$RUNNER_CONFIG_CMD"')
    ws.config(HG)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    [line] = output_of(proc.stderr, "10-cmd.sh")
    words = line.removeprefix("cmd=").split()
    assert words, line
    assert os.path.isabs(words[0]), words
    assert os.access(words[0], os.X_OK), words


def test_runner_config_cmd_works_with_an_empty_path(ws):
    ws.task("10-nopath.sh", 'PATH=; export PATH; echo "got=$($RUNNER_CONFIG_CMD -g hg.branch)"')
    ws.config(HG)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-nopath.sh") == ["got=default"]


def test_runner_variables_are_set_in_tasks(ws):
    # Fails on its first run, so RUNNER_TRY reaches 2; two iterations for RUNNER_ITERATION.
    ws.task("10-vars.sh", """
        echo "task=$RUNNER_TASK try=$RUNNER_TRY iteration=$RUNNER_ITERATION state=$RUNNER_STATE_DIR"
        if [ ! -e "$RUNNER_STATE_DIR/seen" ]; then touch "$RUNNER_STATE_DIR/seen"; exit 1; fi
    """)
    ws.config()
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-vars.sh"] * 3
    assert output_of(proc.stderr, "10-vars.sh") == [
        f"task=10-vars.sh try=1 iteration=1 state={ws.state}",
        f"task=10-vars.sh try=2 iteration=1 state={ws.state}",
        f"task=10-vars.sh try=1 iteration=2 state={ws.state}",
    ]


def test_runner_config_cmd_in_the_halt_task_sees_the_config(ws):
    ws.task("10-halts.sh", "exit 2")
    ws.task("halt.sh", 'echo "halting task=$RUNNER_TASK remote=$($RUNNER_CONFIG_CMD -g hg.remote)"')
    ws.config(HG)
    proc = ws.run("-D", "hg.remote=halt-remote", "-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert output_of(proc.stderr, "halt.sh") == ["halting task=halt.sh remote=halt-remote"]



# -- the snapshot behind RUNNER_CONFIG_CMD ----------------------------------------------------

def captured_config_cmd(ws, text: str, *args: str) -> list[str]:
    """RUNNER_CONFIG_CMD as a task got it, pointing at a copy of its snapshot."""
    copy = ws.root / "copy.snapshot"
    ws.task("10-capture.sh", f"""
        cp "${{RUNNER_CONFIG_CMD##*--snapshot }}" "{copy}"
        echo "cmd=$RUNNER_CONFIG_CMD"
    """)
    ws.config(text)
    proc = ws.run(*args, "-n", "1")
    assert proc.returncode == 0, proc.stderr
    [line] = output_of(proc.stderr, "10-capture.sh")
    words = line.removeprefix("cmd=").split()
    assert words[-2] == "--snapshot", words
    return [*words[:-1], str(copy)]


ODD = HG + """
    [types]
    flag = true
    count = 7
    ratio = 2.5
    empty = ""
    spaced = "  padded  "
    utf = grüße ✓
    [with.dot]
    inner = dotted
"""


@pytest.mark.parametrize("args", [
    ["-g", "hg.remote"], ["-g", "hg.branch"], ["-g", "runner.max_tries"],
    ["-g", "runner.sleep_time"], ["-g", "types.flag"], ["-g", "types.count"],
    ["-g", "types.ratio"], ["-g", "types.empty"], ["-g", "types.spaced"], ["-g", "types.utf"],
    ["-g", "with.dot.inner"], ["-g", "hg.nokey"], ["-g", "nosection.key"], ["-g", "nodot"],
    ["-g", "hg.nokey", "--strict"], ["-g", "nosection.key", "--strict"],
    ["-g", "hg.nokey", "--default", "d"], ["-g", "types.count", "--json"],
    ["-l"], ["-l", "types"], ["-l", "--json"], ["-g"], ["--bogus"],
])
def test_config_cmd_answers_exactly_like_runner_config(ws, args):
    cmd = captured_config_cmd(ws, ODD, "-D", "hg.branch=from-D")
    fast = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)
    slow = runner_config("-c", str(ws.cfg), "-D", "hg.branch=from-D", *args)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode, slow.stdout, slow.stderr)


def test_config_cmd_answers_a_plain_get_without_importing_anything(ws):
    """The point of the snapshot: a `-g` costs the interpreter's start and no more."""
    cmd = captured_config_cmd(ws, ODD)
    env = {"PATH": os.environ["PATH"]}

    def imported(*args: str) -> set[str]:
        proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], *args],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode in (0, 1), proc.stderr
        return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}

    floor = subprocess.run([cmd[0], "-I", "-S", "-X", "importtime", "-c", "pass"],
                           capture_output=True, text=True, timeout=60, env=env)
    startup = {line.rsplit("|", 1)[1].strip() for line in floor.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert imported("-g", "hg.remote") - startup == set()
    # A missing key goes to runner-config proper: json and the runner package load.
    assert {"json", "runner", "runner.getconf"} <= imported("-g", "hg.nokey")


@pytest.mark.parametrize(("strict", "status"), [("true", 1), ("false", 0)])
def test_strict_mode_is_read_from_the_snapshot_without_configobj(ws, strict, status):
    """A missing key leaves the fast path, but config_get_strict comes from the snapshot:
    the config loader (configobj) is never imported by a task's lookup."""
    cmd = captured_config_cmd(ws, ODD, "-D", f"runner.config_get_strict={strict}")
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], "-g", "hg.nokey"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]})
    assert (proc.returncode, proc.stdout) == (status, "")
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    assert "runner.getconf" in modules
    assert not {"configobj", "validate", "runner.config"} & modules, modules
    [message] = [line for line in proc.stderr.splitlines() if "hg.nokey" in line]
    assert ("warning" in message) == (status == 0), message


def test_a_value_the_flat_part_cannot_hold_is_answered_from_the_json(tmp_path):
    from runner import lookup, taskenv

    snapshot = {"config": "x", "sections": {
        "s": {"nul": "a\0b", "plain": "p", "bad": "\udcff"}, "d.e": {"f": "g"}}}
    text = taskenv.snapshot_text(snapshot)  # what both files hold, the public one masked
    # First the pseudo-key naming the config file runner read (no dot: no -g asks it).
    assert text.split("\n", 1)[1] == "config\0x\0s.plain\0p\0"
    path = tmp_path / "config.snapshot"
    path.write_text(text, encoding="utf-8")
    cmd = [sys.executable, "-I", "-S", lookup.__file__, "--snapshot", str(path)]
    got = subprocess.run([*cmd, "-g", "s.nul", "--json"], capture_output=True, text=True)
    assert (got.returncode, got.stdout) == (0, '"a\\u0000b"\n'), got.stderr
    got = subprocess.run([*cmd, "-g", "s.plain"], capture_output=True, text=True)
    assert (got.returncode, got.stdout) == (0, "p\n"), got.stderr
