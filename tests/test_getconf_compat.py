"""$RUNNER_CONFIG_CMD as the original's tasks use it (issue 13, parts 2 and 3), end to end
through the real `runner` command.

- A missing key prints nothing and exits 0, as the original did: its own example task
  does `SLAVEDIR=$($RUNNER_CONFIG_CMD -g buildbot.slave_dir)` under `set -e`. A warning
  naming the key lands in the task's log; strict mode (--strict, [runner]
  config_get_strict) makes it exit 1.
- A task that re-runs itself as another user (`sudo -E -u builder "$0"`; here setpriv to
  nobody, which keeps the environment as sudo -E does) still reads the plain keys, and is
  refused the secret ones in one line. The world-readable snapshot holds no secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    RUNNER_CONFIG,
    Workspace,
    nobody_python,
    output_of,
    skip_unless,
    started,
)

MASK = "********"
TOKEN = "tok-0123456789"
DB_PASSWORD = "hunter2-very-secret"
URL_PASSWORD = "pg-url-pass-42"
HG = """
    [clobberer]
    url = https://clobberer.example/
    [hg]
    remote = https://hg.example/repo
"""
SECRETS = f"""
    [api]
    token = {TOKEN}
    [env]
    DB_PASSWORD = {DB_PASSWORD}
"""
HALT = 'echo "halt ran"'


# -- part 2: a missing key ------------------------------------------------------------------

SET_E_TASK = """
    set -e
    SLAVEDIR=$($RUNNER_CONFIG_CMD -g buildbot.slave_dir)
    echo "slavedir=[$SLAVEDIR]"
    BRANCH=$($RUNNER_CONFIG_CMD {strict} -g hg.branch)
    echo "branch=[$BRANCH]"
    echo "remote=$($RUNNER_CONFIG_CMD -g hg.remote)"
"""


def test_a_set_e_task_reading_a_missing_key_runs_on_with_a_warning(ws):
    ws.task("10-buildbot.sh", SET_E_TASK.format(strict=""))
    ws.task("halt.sh", HALT)
    ws.config(HG, max_tries=1)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == ["10-buildbot.sh"]  # no halt
    section, slavedir, key, branch, remote = output_of(proc.stderr, "10-buildbot.sh")
    assert (slavedir, branch, remote) == (
        "slavedir=[]", "branch=[]", "remote=https://hg.example/repo")
    assert section.startswith("runner-config: warning: buildbot.slave_dir: no section "
                              "[buildbot]; printed nothing"), section
    assert key.startswith("runner-config: warning: hg.branch: no key 'branch' in [hg]"), key


@pytest.mark.parametrize("how", ["config", "define", "option"])
def test_strict_mode_fails_the_task_on_a_missing_key(ws, how):
    ws.task("10-buildbot.sh", SET_E_TASK.format(strict="--strict" if how == "option" else ""))
    ws.task("halt.sh", HALT)
    # The missing section is read first: in strict mode only under --strict's own call.
    strict = {"config_get_strict": "true"} if how == "config" else {}
    ws.config(HG, max_tries=1, **strict)
    proc = ws.run(*(["-D", "runner.config_get_strict=yes"] if how == "define" else []),
                  "-n", "1")
    assert proc.returncode != 0, proc.stderr
    assert started(proc.stderr) == ["10-buildbot.sh", "halt.sh"]
    lines = output_of(proc.stderr, "10-buildbot.sh")
    if how == "option":  # only the call with --strict fails
        warning, *rest = lines
        assert warning.startswith("runner-config: warning: buildbot.slave_dir:"), warning
        assert rest == ["slavedir=[]", "runner-config: hg.branch: no key 'branch' in [hg]"]
    else:
        assert lines == ["runner-config: buildbot.slave_dir: no section [buildbot]"]


def test_default_still_prints_its_value_without_a_warning(ws):
    ws.task("10-buildbot.sh", """
        set -e
        echo "slavedir=$($RUNNER_CONFIG_CMD -g buildbot.slave_dir --default /builds/slave)"
        echo "branch=[$($RUNNER_CONFIG_CMD --strict -g hg.branch --default '')]"
    """)
    ws.config(HG, config_get_strict="true")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-buildbot.sh") == [
        "slavedir=/builds/slave", "branch=[]"]


# -- part 3: a task that drops privileges ---------------------------------------------------

# Re-runs itself once as nobody, keeping the environment (as `sudo -E -u builder "$0"`).
# NOBODY_PYTHON: only when the interpreter of RUNNER_CONFIG_CMD is one nobody may not run
# (a venv under root's 0700 home, here); a package's /usr/bin/python3 needs no such help.
DROP = """
    if [ -z "$DROPPED" ]; then
        {before}
        chown nobody "$OUT"
        DROPPED=1 exec setpriv --reuid=65534 --regid=65534 --clear-groups "$0"
    fi
    CMD=$RUNNER_CONFIG_CMD
    if [ -n "$NOBODY_PYTHON" ]; then CMD="$NOBODY_PYTHON ${{RUNNER_CONFIG_CMD#* }}"; fi
    SNAPSHOT=${{RUNNER_CONFIG_CMD##*--snapshot }}
    echo "uid=$(id -u)"
"""


def dropping_task(ws: Workspace, body: str, before: str = ":") -> None:
    ws.task("10-drop.sh", DROP.format(before=before) + body)


def run_dropping(ws: Workspace, **extra_env: str) -> subprocess.CompletedProcess:
    """Run the chain once with HG and SECRETS; OUT (in the environment) is a directory
    for what the task writes, which the task gives to nobody before dropping."""
    skip_unless(shutil.which("setpriv") is not None, "needs setpriv (util-linux)")
    python = nobody_python()
    # Port 1 on localhost: the forwarder fails at once (no DNS, no wait).
    ws.config(HG + SECRETS, journal_url=f"postgresql://u:{URL_PASSWORD}@127.0.0.1:1/x")
    out = ws.root / "out"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "OUT": str(out), **extra_env}
    env.pop("DROPPED", None)
    if python != sys.executable:
        env["NOBODY_PYTHON"] = python
    return ws.run("-n", "1", env=env)


def written(ws: Workspace, name: str) -> str:
    return (ws.root / "out" / name).read_text()


def test_a_task_run_as_nobody_reads_plain_keys(open_ws):
    dropping_task(open_ws, """
        set -e
        echo "url=$($CMD -g clobberer.url)"
        echo "remote=$($CMD -g hg.remote --json)"
        echo "tries=$($CMD -g runner.max_tries)"
    """)
    proc = run_dropping(open_ws)
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-drop.sh") == [
        "uid=65534", "url=https://clobberer.example/", 'remote="https://hg.example/repo"',
        "tries=5"]


@pytest.mark.parametrize("key", ["api.token", "env.DB_PASSWORD", "runner.journal_url"])
@pytest.mark.parametrize("extra", [[], ["--default", "d"], ["--json"]])
def test_a_task_run_as_nobody_is_refused_a_secret_key_in_one_line(open_ws, key, extra):
    args = " ".join(extra)
    dropping_task(open_ws, f"""
        $CMD -g {key} {args} >"$OUT/got" 2>"$OUT/err"; echo "status=$?"
        $CMD -g {key} {args} || true
    """, before=f'echo "root=$($RUNNER_CONFIG_CMD -g {key})" >"$OUT/root"')
    proc = run_dropping(open_ws)
    assert proc.returncode == 0, proc.stderr
    lines = output_of(proc.stderr, "10-drop.sh")
    assert lines[:2] == ["uid=65534", "status=1"], lines
    assert written(open_ws, "got") == ""
    [refusal] = written(open_ws, "err").splitlines()
    assert refusal.startswith(f"runner-config: {key}: the value is secret"), refusal
    assert "only root may read it, not uid 65534" in refusal
    assert "before dropping privileges" in refusal and "[env]" in refusal
    assert lines[2:] == [refusal]
    # Root, before dropping, still gets the value itself.
    secret = {"api.token": TOKEN, "env.DB_PASSWORD": DB_PASSWORD,
              "runner.journal_url": URL_PASSWORD}[key]
    assert secret in written(open_ws, "root")


def test_nobody_lists_plain_values_and_masks_secret_ones(open_ws):
    dropping_task(open_ws, """
        $CMD -l >"$OUT/list"; echo "list=$?"
        $CMD -l --json >"$OUT/json"; echo "json=$?"
        $CMD -l --show-secrets >/dev/null 2>&1; echo "show=$?"
    """)
    proc = run_dropping(open_ws)
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-drop.sh") == ["uid=65534", "list=0", "json=0", "show=78"]
    listing = written(open_ws, "list")
    assert "clobberer.url = https://clobberer.example/\n" in listing
    assert f"api.token = {MASK}\n" in listing and f"env.DB_PASSWORD = {MASK}\n" in listing
    assert f"runner.journal_url = postgresql://u:{MASK}@127.0.0.1:1/x\n" in listing
    text = listing + written(open_ws, "json")
    assert not {TOKEN, DB_PASSWORD, URL_PASSWORD} & set(re.findall(r"[\w-]+", text))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=["022", "077", "000"])
def test_nobody_reading_the_public_snapshot_finds_no_secret(open_ws, umask):
    """As nobody: copy what can be read of the snapshot files, try to list and write
    their directory. Whatever runner's umask, the modes are the same."""
    dropping_task(open_ws, """
        cat "$SNAPSHOT" >"$OUT/public"; echo "public=$?"
        cat "$SNAPSHOT.private" >"$OUT/private" 2>/dev/null; echo "private=$?"
        ls "$(dirname "$SNAPSHOT")" >/dev/null 2>&1; echo "list=$?"  # 2: permission denied
        touch "$(dirname "$SNAPSHOT")/planted" 2>/dev/null; echo "write=$?"
        ln -s /etc/shadow "$(dirname "$SNAPSHOT")/config.snapshot.tmp" 2>/dev/null; echo "link=$?"
        echo "url=$($CMD -g clobberer.url)"
    """, before='D=$(dirname "${RUNNER_CONFIG_CMD##*--snapshot }"); '
                'stat -c "%a %U %n" "$D" "$D"/* >"$OUT/modes"')
    old = os.umask(umask)
    try:
        proc = run_dropping(open_ws)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-drop.sh") == [
        "uid=65534", "public=0", "private=1", "list=2", "write=1", "link=1",
        "url=https://clobberer.example/"]
    public = written(open_ws, "public")
    assert "https://clobberer.example/" in public  # it did read the snapshot
    for secret in (TOKEN, DB_PASSWORD, URL_PASSWORD):
        assert secret not in public, secret
    assert public.count(MASK) >= 3
    assert written(open_ws, "private") == ""
    modes = [line.split(" ", 2) for line in written(open_ws, "modes").splitlines()]
    assert [(mode, owner, Path(name).name) for mode, owner, name in modes][1:] == [
        ("644", "root", "config.snapshot"), ("600", "root", "config.snapshot.private")]
    assert modes[0][:2] == ["711", "root"]


def test_the_console_script_reading_the_snapshot_answers_nobody_the_same(open_ws):
    """`runner-config --snapshot FILE` (the console script, not lookup.py's fast path)."""
    dropping_task(open_ws, """
        echo "url=$($CONSOLE --snapshot "$SNAPSHOT" -g clobberer.url)"
        $CONSOLE --snapshot "$SNAPSHOT" -g api.token; echo "status=$?"
        echo "missing=[$($CONSOLE --snapshot "$SNAPSHOT" -g no.key 2>/dev/null)] $?"
    """)
    # The console script's own interpreter may be out of nobody's reach (see DROP): run
    # the script with nobody's, and the package from this checkout.
    package = Path(__file__).resolve().parent.parent
    proc = run_dropping(
        open_ws, CONSOLE=f"env PYTHONPATH={package} {nobody_python()} {RUNNER_CONFIG}")
    lines = output_of(proc.stderr, "10-drop.sh")
    assert lines[:2] == ["uid=65534", "url=https://clobberer.example/"], lines
    assert lines[2].startswith("runner-config: api.token: the value is secret"), lines
    assert lines[3:] == ["status=1", "missing=[] 0"]


def test_root_lookups_of_secret_keys_keep_working(ws):
    ws.task("10-root.sh", f"""
        [ "$($RUNNER_CONFIG_CMD -g api.token)" = "{TOKEN}" ] && echo token-ok
        [ "$($RUNNER_CONFIG_CMD -g env.DB_PASSWORD --json)" = '"{DB_PASSWORD}"' ] && echo json-ok
        $RUNNER_CONFIG_CMD -l --show-secrets | grep -qx "api.token = {TOKEN}" && echo list-ok
    """)
    ws.config(HG + SECRETS)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-root.sh") == ["token-ok", "json-ok", "list-ok"]


# -- the snapshot's directory and files against another user ---------------------------------

@pytest.mark.parametrize("variables", [["RUNTIME_DIRECTORY"], ["TMPDIR"],
                                       ["RUNTIME_DIRECTORY", "TMPDIR"]])
def test_a_directory_others_can_write_is_not_used_for_the_snapshot(ws, variables):
    open_dir = ws.root / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # no sticky bit: anyone could rename runner's directory away
    ws.task("10-where.sh", 'echo "in=${RUNNER_CONFIG_CMD##*--snapshot }"')
    ws.config(HG)
    env = {key: value for key, value in os.environ.items() if key != "RUNTIME_DIRECTORY"}
    proc = ws.run("-n", "1", env={**env, **dict.fromkeys(variables, str(open_dir))})
    assert proc.returncode == 0, proc.stderr
    [where] = output_of(proc.stderr, "10-where.sh")
    assert not where.startswith(f"in={open_dir}") and "/runner-" in where, where
    assert proc.stderr.count(f"{open_dir}: cannot write the configuration snapshot there "
                            "(writable by other users") == 1
    assert list(open_dir.iterdir()) == []


@pytest.mark.parametrize("planted", ["config.snapshot", "config.snapshot.tmp",
                                     "config.snapshot.private.tmp"])
def test_a_planted_symlink_does_not_redirect_the_snapshot(tmp_path, monkeypatch, planted):
    """Only root can write in the directory, but were a link there (a reload after an
    operator's mistake), runner replaces the link and never writes through it."""
    from runner.config import load
    from runner.taskenv import TaskEnvironment

    cfg = tmp_path / "runner.cfg"
    cfg.write_text(f"[api]\ntoken = {TOKEN}\n")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))
    env = TaskEnvironment(load(str(cfg)))
    try:
        target = tmp_path / "target"
        target.write_text("untouched")
        (env.directory / planted).unlink(missing_ok=True)
        (env.directory / planted).symlink_to(target)
        env.update(load(str(cfg)))
        assert target.read_text() == "untouched"
        assert TOKEN in (env.directory / "config.snapshot.private").read_text()
        assert TOKEN not in env.snapshot.read_text()
        assert not env.snapshot.is_symlink()
    finally:
        env.close()



def test_a_key_is_found_in_any_case_as_the_original_found_it(ws):
    """RawConfigParser lowercased option names: `-g hg.remote` found `Remote = x`."""
    ws.task("10-ask.sh", 'echo "got=$($RUNNER_CONFIG_CMD -g hg.remote)"\n'
                         'echo "upper=$($RUNNER_CONFIG_CMD -g hg.REMOTE)"')
    ws.config("[hg]\nRemote = https://hg.example/x\n")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert "got=https://hg.example/x" in proc.stderr
    assert "upper=https://hg.example/x" in proc.stderr
    assert "printed nothing" not in proc.stderr
