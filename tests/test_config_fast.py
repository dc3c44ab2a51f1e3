"""runner-config's fast paths (issue 17): in a task, a plain `-g` answers from the running
runner's snapshot ($RUNNER_CONFIG_SNAPSHOT) importing nothing; from an operator's shell,
from a cache of the validated configuration that a changed file never fools and that
another user cannot steer. Speed itself is measured by bench/bench.py."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RUNNER_CONFIG, as_nobody, nobody_python, output_of

from runner import confcache


def rc(*args: str, env: dict[str, str] | None = None, python_flags: tuple[str, ...] = (),
       ) -> subprocess.CompletedProcess:
    """The installed runner-config; with `python_flags`, run by this interpreter so that
    -X importtime can tell what it imported."""
    argv = [sys.executable, "-S", *python_flags, RUNNER_CONFIG] if python_flags else [
        RUNNER_CONFIG]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _modules(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "package" not in line}


def imported(stderr: str) -> set[str]:
    """The modules -X importtime reports beyond what the interpreter itself imports."""
    start = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "pass"],
                           capture_output=True, text=True, timeout=60)
    return _modules(stderr) - _modules(start.stderr)


def cache_env(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "cache"
    return {confcache.DIR_ENV: str(directory)}


# -- the installed command --------------------------------------------------------------

def test_the_installed_command_is_lookup_py_run_without_site():
    text = Path(RUNNER_CONFIG).read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert '-S "$0" "$@"' in lines[1]
    assert "\n".join(lines[2:]) + "\n" == Path(confcache.__file__).with_name(
        "lookup.py").read_text(encoding="utf-8")


# -- in a task ----------------------------------------------------------------------------

def test_in_a_task_runner_config_answers_from_the_running_runners_snapshot(ws):
    other = ws.root / "other.cfg"
    other.write_text("[hg]\nremote = from-other\n")
    ws.config("[hg]\nremote = from-file\n")
    bin_dir = os.path.dirname(RUNNER_CONFIG)
    ws.task("10-ask.sh", f"""
        PATH={bin_dir}:$PATH
        echo "plain=$(runner-config -g hg.remote)"
        echo "same=$(runner-config -c {ws.cfg} -g hg.remote)"
        echo "other=$(runner-config -c {other} -g hg.remote)"
        echo "long=$(runner-config --config {ws.cfg} --get hg.remote)"
        echo "default=$(runner-config -g hg.nokey --default dflt)"
        echo "json=$(runner-config -g hg.remote --json)"
        runner-config -g nodot 2>/dev/null; echo "bad=$?"
    """)
    proc = ws.run("-n", "1", "-D", "hg.remote=from-D")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "10-ask.sh") == [
        "plain=from-D", "same=from-D", "other=from-other", "long=from-D",
        "default=dflt", 'json="from-D"', "bad=78"]


@pytest.fixture
def snapshot(ws):
    """A snapshot as runner writes it for its tasks, of ws.cfg."""
    from runner import config, lookup, taskenv

    ws.config("[hg]\nremote = https://hg.example/repo\n[api]\ntoken = s3cret\n")
    public, private = taskenv.snapshot_texts(config.load(str(ws.cfg)).snapshot())
    path = ws.root / "config.snapshot"
    path.write_text(public)
    Path(lookup.private_path(str(path))).write_text(private)
    return path


def test_a_task_call_imports_nothing(snapshot):
    proc = rc("-g", "hg.remote", env={"RUNNER_CONFIG_SNAPSHOT": str(snapshot)},
              python_flags=("-X", "importtime"))
    assert (proc.returncode, proc.stdout) == (0, "https://hg.example/repo\n"), proc.stderr
    assert imported(proc.stderr) <= {"posix"}, proc.stderr


def test_a_task_call_of_a_secret_goes_through_the_private_snapshot(snapshot):
    env = {"RUNNER_CONFIG_SNAPSHOT": str(snapshot)}
    assert rc("-g", "api.token", env=env).stdout == "s3cret\n"
    Path(f"{snapshot}.private").unlink()  # as for a user who cannot read it
    proc = rc("-g", "api.token", env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "secret" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_damaged_snapshot_is_one_line_and_78(ws):
    bad = ws.root / "bad.snapshot"
    bad.write_text("not json\nhg.remote\0x\0")
    Path(f"{bad}.private").write_text("not json\n")
    proc = rc("-g", "hg.nokey", env={"RUNNER_CONFIG_SNAPSHOT": str(bad)})
    assert proc.returncode == 78 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr


# -- the cache, from an operator's shell ------------------------------------------------------

def test_a_cached_answer_loads_no_config_parser(ws, tmp_path):
    ws.config("[hg]\nremote = one\n")
    env = cache_env(tmp_path)
    os.utime(ws.cfg, ns=(1_000_000_000, 1_000_000_000))
    assert rc("-c", str(ws.cfg), "-g", "hg.remote", env=env).stdout == "one\n"
    cache = tmp_path / "cache"
    assert cache.stat().st_mode & 0o777 == 0o700
    (entry,) = cache.iterdir()
    assert entry.stat().st_mode & 0o777 == 0o600
    proc = rc("-c", str(ws.cfg), "-g", "hg.remote", env=env, python_flags=("-X", "importtime"))
    assert proc.stdout == "one\n", proc.stderr
    loaded = imported(proc.stderr)
    assert "runner.confcache" in loaded
    assert not loaded & {"configobj", "runner.config", "runner.getconf", "json"}, loaded


def answer(ws, env):
    proc = rc("-c", str(ws.cfg), "-g", "hg.remote", env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


STAMP = (1_700_000_000_000_000_000,) * 2  # (atime, mtime) in ns


def cached_one(ws, tmp_path) -> dict[str, str]:
    """ws.cfg says hg.remote = one, its mtime STAMP, and the cache knows it."""
    env = cache_env(tmp_path)
    ws.config("[hg]\nremote = one\n")
    os.utime(ws.cfg, ns=STAMP)
    assert answer(ws, env) == "one\n"
    assert answer(ws, env) == "one\n"  # from the cache
    return env


def test_a_same_size_edit_in_the_same_second_is_seen(ws, tmp_path):
    env = cached_one(ws, tmp_path)
    ws.config("[hg]\nremote = two\n")  # same size
    os.utime(ws.cfg, ns=STAMP)  # and the same mtime_ns, as a coarse clock would leave it
    assert answer(ws, env) == "two\n"


def test_the_content_is_compared_not_only_the_times(ws, tmp_path):
    """A same-size edit within one tick of the clock leaves size, mtime and ctime as
    they were: make the cache's record match everything but the content."""
    env = cache_env(tmp_path)
    ws.config("[hg]\nremote = one\n")
    assert answer(ws, env) == "one\n"
    (path,) = (tmp_path / "cache").iterdir()
    record = marshal.loads(path.read_bytes())
    ws.config("[hg]\nremote = two\n")
    entries = [(kind, where, confcache._observe(kind, where)) for kind, where, _ in record[3]]
    kind, where, seen = entries[0]
    assert where == str(ws.cfg)
    entries[0] = (kind, where, (*seen[:-1], seen[-1].replace(b"two", b"one")))
    path.write_bytes(marshal.dumps((*record[:3], entries, record[4])))
    assert answer(ws, env) == "two\n"


def test_an_added_include_fragment_is_seen(ws, tmp_path):
    env = cache_env(tmp_path)
    conf_d = ws.root / "conf.d"
    conf_d.mkdir()
    ws.config("[hg]\nremote = one\n", include_dir=str(conf_d))
    assert answer(ws, env) == "one\n"
    assert answer(ws, env) == "one\n"
    (conf_d / "50-hg.cfg").write_text("[hg]\nremote = fragment\n")
    assert answer(ws, env) == "fragment\n"
    (conf_d / "50-hg.cfg").write_text("[hg]\nremote = fragmenT\n")  # same size
    assert answer(ws, env) == "fragmenT\n"
    (conf_d / "50-hg.cfg").unlink()
    assert answer(ws, env) == "one\n"


def test_a_swapped_file_is_seen(ws, tmp_path):
    env = cached_one(ws, tmp_path)
    new = ws.root / "new.cfg"
    new.write_text(ws.cfg.read_text().replace("one", "two"))
    os.utime(new, ns=STAMP)
    new.replace(ws.cfg)  # a new inode, same size and times
    assert answer(ws, env) == "two\n"


def test_bad_input_with_a_cache_is_still_one_line_and_78(ws, tmp_path):
    env = cache_env(tmp_path)
    ws.config("[hg]\nremote = one\n")
    assert answer(ws, env) == "one\n"
    ws.config("[runner]\nmax_tries = five\n")
    proc = rc("-c", str(ws.cfg), "-g", "hg.remote", env=env)
    assert proc.returncode == 78 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stdout == ""


def test_an_empty_cache_dir_setting_turns_the_cache_off(ws, tmp_path):
    ws.config("[hg]\nremote = one\n")
    assert answer(ws, {confcache.DIR_ENV: ""}) == "one\n"
    assert not (tmp_path / "cache").exists()


@pytest.mark.root
def test_a_cache_another_user_wrote_never_steers_roots_answer(open_ws):
    """nobody writes a forged cache (the right record of the files, their own value) in
    a directory of theirs, and plants one in a world-writable directory: root ignores
    both and answers from the file."""
    ws = open_ws
    ws.config("[hg]\nremote = real\n")
    ws.cfg.chmod(0o644)
    mine = ws.root / "mine"
    assert answer(ws, {confcache.DIR_ENV: str(mine)}) == "real\n"
    (cached,) = mine.iterdir()
    record = marshal.loads(cached.read_bytes())
    forged = marshal.dumps((*record[:4], {**record[4], "hg.remote": "evil"}))
    python = nobody_python()
    theirs = ws.root / "theirs"
    theirs.mkdir(mode=0o700)
    shutil.chown(theirs, "nobody")
    shared = ws.root / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    for directory in (theirs, shared):
        script = (f"import os; os.makedirs({str(directory)!r}, 0o700, exist_ok=True); "
                  f"open(os.path.join({str(directory)!r}, {cached.name!r}), 'wb')"
                  f".write(bytes.fromhex({forged.hex()!r}))")
        proc = as_nobody(python, "-c", script)
        assert proc.returncode == 0, proc.stderr
        planted = directory / cached.name
        assert planted.stat().st_uid != 0
        assert answer(ws, {confcache.DIR_ENV: str(directory)}) == "real\n"
        assert planted.read_bytes() == forged  # and root did not write there
    # The same forged bytes in root's own directory, but owned by nobody: ignored too.
    shutil.copy(theirs / cached.name, cached)
    os.chown(cached, (theirs / cached.name).stat().st_uid, 0)
    assert answer(ws, {confcache.DIR_ENV: str(mine)}) == "real\n"
