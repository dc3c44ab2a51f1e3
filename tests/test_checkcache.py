"""`runner check` from its cache (runner.checkcache, runner.checkrecord): the second check
is answered without loading anything, and every kind of change gives a fresh, correct
answer, through the real `runner` command. Whether an answer came from the cache is seen
in the interpreter's own import log (PYTHONPROFILEIMPORTTIME): a check that ran imports
configobj; one answered from the cache does not."""

from __future__ import annotations

import marshal
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RUNNER, Workspace, as_nobody, in_ci, need_root, skip_unless

from runner import checkcache

HALT = "halt.sh"


@dataclass
class Answer:
    status: int
    stdout: str
    stderr: str  # without the import log
    cached: bool


class Checker:
    """Runs `runner -c CFG check TASKDIR` with a cache directory of its own."""

    def __init__(self, ws: Workspace, cache: Path) -> None:
        self.ws, self.cache = ws, cache
        self.env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
        self.env.pop("JOURNAL_STREAM", None)

    def __call__(self, *args: str, task_dir: Path | None = None,
                 env: dict[str, str] | None = None, argv: list[str] | None = None) -> Answer:
        command = argv or [RUNNER, "-c", str(self.ws.cfg), *args, "check",
                           str(task_dir or self.ws.tasks)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60,
                              cwd=self.ws.root, env={**self.env, **(env or {}),
                                                     "PYTHONPROFILEIMPORTTIME": "1"})
        lines = proc.stderr.splitlines(keepends=True)
        imports = [line for line in lines if line.startswith("import time:")]
        stderr = "".join(line for line in lines if not line.startswith("import time:"))
        cached = not any(re.search(r"\| +configobj$", line.rstrip()) for line in imports)
        return Answer(proc.returncode, proc.stdout, stderr, cached)

    def record(self, task_dir: Path | None = None) -> tuple:
        """The stored record for the workspace's config and task_dir."""
        name = checkcache.confcache.cache_file(
            str(self.cache), f"{self.ws.cfg}\0{task_dir or self.ws.tasks}", "check-")
        assert name is not None
        return marshal.loads(Path(name).read_bytes())

    def fresh_then_cached(self, *args: str, **kwargs) -> Answer:
        """A check that runs, then the same answer from the cache."""
        first = self(*args, **kwargs)
        assert not first.cached, first
        second = self(*args, **kwargs)
        assert second.cached, second
        assert (second.status, second.stdout, second.stderr) == (
            first.status, first.stdout, first.stderr)
        return first


@pytest.fixture(scope="session")
def settled() -> None:
    """runner's files older than RACY_S (an answer is not stored while one changed a
    moment ago: a test run right after an edit would see no cache)."""
    package = Path(checkcache.__file__).parent
    newest = max(p.stat().st_ctime for p in [*package.glob("*"), *package.glob("*/*")])
    time.sleep(max(0.0, newest + checkcache.RACY_S + 0.1 - time.time()))


@pytest.fixture
def check(ws: Workspace, tmp_path: Path, settled: None) -> Checker:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    ws.task("10-first")
    ws.task(HALT)
    return Checker(ws, cache)


def test_the_second_check_is_answered_from_the_cache_with_the_same_answer(check):
    answer = check.fresh_then_cached()
    assert answer.status == 0 and "1. 10-first" in answer.stdout
    assert f"halt task: {check.ws.tasks / HALT}" in answer.stdout


def test_a_same_size_edit_of_the_config_in_the_same_tick_is_seen(check):
    check.ws.config("[first]\nmax_time = 10\n")
    check.fresh_then_cached()
    cfg = check.ws.cfg
    before = cfg.stat()
    cfg.write_text(cfg.read_text().replace("max_time = 10", "max_tries = 9"))
    os.utime(cfg, ns=(before.st_atime_ns, before.st_mtime_ns))  # as if in the same tick
    assert cfg.stat().st_size == before.st_size
    answer = check()
    assert not answer.cached and answer.status == 0
    check.ws.config("[first]\nmax_time = ten\n")
    answer = check()
    assert answer.status == 78 and "max_time" in answer.stderr and not answer.cached


def test_an_include_dir_fragment_added_and_removed_is_seen(check):
    fragments = check.ws.root / "conf.d"
    fragments.mkdir()
    check.ws.config(include_dir=str(fragments))
    check.fresh_then_cached()
    (fragments / "50-halt.cfg").write_text("[runner]\nhalt_task = other.sh\n")
    answer = check.fresh_then_cached()
    assert "halt task: MISSING" in answer.stdout and "other.sh not found" in answer.stderr
    (fragments / "50-halt.cfg").unlink()
    answer = check()
    assert f"halt task: {check.ws.tasks / HALT}" in answer.stdout and not answer.cached


def test_tasks_added_removed_renamed_and_made_not_executable_are_seen(check):
    tasks = check.ws.tasks
    check.fresh_then_cached()
    check.ws.task("20-second")
    assert "2. 20-second" in check.fresh_then_cached().stdout
    (tasks / "20-second").rename(tasks / "30-third")
    assert "2. 30-third" in check.fresh_then_cached().stdout
    (tasks / "30-third").chmod(0o644)
    answer = check.fresh_then_cached()
    assert "30-third: not executable" in answer.stderr and "2." not in answer.stdout
    (tasks / "30-third").unlink()
    answer = check()
    assert "30-third" not in answer.stdout + answer.stderr and not answer.cached


def test_the_halt_task_removed_is_seen(check):
    check.fresh_then_cached()
    (check.ws.tasks / HALT).unlink()
    answer = check()
    assert "halt task: MISSING" in answer.stdout and not answer.cached


def test_a_failing_check_is_cached_and_a_fix_is_seen(check):
    check.ws.config("[first]\ndepends_on = nothere\n")
    failed = check.fresh_then_cached()
    assert failed.status == 78 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "nothere" in failed.stderr
    check.ws.config()
    answer = check()
    assert answer.status == 0 and not answer.cached


def test_a_failure_told_to_the_journal_is_not_one_told_to_a_terminal(check, tmp_path):
    """Under systemd (JOURNAL_STREAM names stderr) the one line carries a priority: the
    variable and stderr's identity are observed, so neither answer stands for the other."""
    check.ws.config("[first]\ndepends_on = nothere\n")
    plain = check.fresh_then_cached()
    assert plain.stderr.startswith("runner: ")
    log = tmp_path / "journal-stream"
    for _ in range(2):
        with open(log, "w") as stream:
            info = os.fstat(stream.fileno())
            env = {**check.env, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
            proc = subprocess.run([RUNNER, "-c", str(check.ws.cfg), "check",
                                   str(check.ws.tasks)], stdout=subprocess.DEVNULL,
                                  stderr=stream, env=env, timeout=60)
        assert proc.returncode == 78 and log.read_text().startswith("<3>runner: ")
    assert check().stderr == plain.stderr


@pytest.mark.root
def test_strict_permissions_owner_and_state_dir_mode_changes_are_seen(check):
    need_root("chown and strict_permissions need root")
    check.ws.state.mkdir(mode=0o755)
    check.ws.config(strict_permissions="true")
    assert check.fresh_then_cached().status == 0
    os.chown(check.ws.tasks / "10-first", 65534, -1)  # nobody
    answer = check.fresh_then_cached()
    assert answer.status == 78 and "10-first" in answer.stderr
    os.chown(check.ws.tasks / "10-first", 0, -1)
    assert check().status == 0
    check.ws.state.chmod(0o777)
    answer = check.fresh_then_cached()
    assert answer.status == 78 and "state_dir" in answer.stderr
    check.ws.state.chmod(0o755)
    answer = check()
    assert answer.status == 0 and not answer.cached


def test_an_override_argument_and_another_task_dir_get_their_own_answers(check):
    check.fresh_then_cached()
    answer = check("-D", "runner.halt_task=other.sh")
    assert "halt task: MISSING" in answer.stdout and not answer.cached
    other = check.ws.root / "other.d"
    other.mkdir()
    answer = check(task_dir=other)
    assert "0 task(s)" in answer.stdout and not answer.cached
    assert "1. 10-first" in check().stdout


def test_an_environment_variable_the_check_reads_is_seen(check, tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    shell = tools / "mysh"
    shell.write_text("#!/bin/sh\nexec /bin/sh \"$@\"\n")
    shell.chmod(0o755)
    check.ws.config(interpreter="mysh")
    with_tools = {"PATH": f"{tools}:{os.environ['PATH']}"}
    assert check.fresh_then_cached(env=with_tools).status == 0
    assert check(env={**with_tools, "SOME_OTHER": "x"}).cached  # not read: not in the key
    answer = check(env={"PATH": os.environ["PATH"]})
    assert answer.status == 78 and "mysh" in answer.stderr and not answer.cached


def test_whether_psycopg_imports_is_seen_when_journal_url_is_set(check, tmp_path):
    """A package put where the import looks first (here a broken psycopg on PYTHONPATH,
    which runner's check does not read: only the listing of each sys.path directory
    tells) makes the warning appear; taking it away, disappear."""
    check.ws.config(journal_url="postgresql://runner@127.0.0.1/none")
    first = tmp_path / "first"
    first.mkdir()
    env = {"PYTHONPATH": str(first)}
    answer = check.fresh_then_cached(env=env)
    installed = "psycopg 3 is not installed" not in answer.stderr
    (first / "psycopg.py").write_text("raise ImportError('broken on purpose')\n")
    answer = check(env=env)
    assert "psycopg 3 is not installed" in answer.stderr and not answer.cached
    assert check(env=env).cached
    (first / "psycopg.py").unlink()
    answer = check(env=env)
    assert ("psycopg 3 is not installed" not in answer.stderr) == installed
    assert not answer.cached


def _with_stdout_closed(check: Checker) -> subprocess.CompletedProcess:
    """`runner check` whose reader went away before it wrote (`| head` that exited)."""
    proc = subprocess.Popen([RUNNER, "-c", str(check.ws.cfg), "check", str(check.ws.tasks)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=check.env)
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


def test_a_reader_that_went_away_gets_no_traceback_and_spoils_nothing(check):
    proc = _with_stdout_closed(check)  # a check that runs
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    answer = check()  # whatever was kept is the whole answer
    assert answer.status == 0 and answer.stdout.endswith("OK (0 warning(s))\n")
    assert "1. 10-first" in answer.stdout
    assert check().cached
    proc = _with_stdout_closed(check)  # one from the cache
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_a_truncated_or_foreign_record_is_never_used(check):
    check.fresh_then_cached()
    name = next(check.cache.glob("check-*"))
    data = name.read_bytes()
    name.write_bytes(data[: len(data) // 2])
    answer = check()
    assert answer.status == 0 and not answer.cached
    assert check().cached  # written again, whole
    name.chmod(0o644)  # not private any more: ignored
    assert not check().cached


def test_an_edit_of_runners_own_code_or_configobj_is_never_answered_from_an_older_result(
        check, tmp_path):
    """runner and configobj copied to a directory of their own, then a file of each
    edited: the key holds every file of runner's package and of each module the check
    imported from outside the standard library, with their times."""
    import configobj

    lib = tmp_path / "lib"
    package = lib / "runner"
    shutil.copytree(Path(checkcache.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(configobj.__file__).parent, lib / "configobj",
                    ignore=shutil.ignore_patterns("__pycache__"))
    argv = [sys.executable, "-c", "import sys; from runner.cli import entry; "
            "sys.argv[0] = 'runner'; entry()", "-c", str(check.ws.cfg), "check",
            str(check.ws.tasks)]
    env = {"PYTHONPATH": str(lib)}
    time.sleep(checkcache.RACY_S + 0.2)  # the copies are not "changed a moment ago" now
    first = check.fresh_then_cached(argv=argv, env=env)
    assert first.stdout.endswith("OK (0 warning(s))\n")
    assert any(key == ("code", str(lib / "configobj" / "__init__.py"))
               for key, _ in check.record()[1])
    with open(lib / "configobj" / "__init__.py", "a") as library:
        library.write("# upgraded\n")
    answer = check(argv=argv, env=env)
    assert answer.stdout == first.stdout and not answer.cached
    source = package / "commands" / "check.py"
    text = source.read_text()
    source.write_text(text.replace('print(f"OK (', 'print(f"Ok ('))  # the same size
    for _ in range(2):  # the edit is too recent to store an answer after it
        answer = check(argv=argv, env=env)
        assert answer.stdout.endswith("Ok (0 warning(s))\n") and not answer.cached


@pytest.mark.root
def test_a_cache_another_user_wrote_is_never_used(open_ws: Workspace, settled: None):
    """nobody's directory, and a file nobody wrote into root's: both ignored, both with a
    record that would otherwise answer (taken from a real one, its answer changed)."""
    ws = open_ws
    ws.config(strict_permissions="true")  # as every attacker test runs root's runner
    ws.state.mkdir(mode=0o755)
    ws.task("10-first")
    trusted = ws.root / "root-cache"
    trusted.mkdir(mode=0o700)
    check = Checker(ws, trusted)
    check.fresh_then_cached()
    name = next(trusted.glob("check-*"))
    key, observations, _writes, _status = marshal.loads(name.read_bytes())
    forged = ws.root / "forged"
    forged.write_bytes(marshal.dumps((key, observations, [(0, "FORGED\n")], 0)))
    forged.chmod(0o644)
    theirs = ws.root / "nobody-cache"  # nobody's own, as $RUNNER_CACHE_DIR might name
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    proc = as_nobody("sh", "-c", f"cp {forged} {theirs}/{name.name} && "
                     f"chmod 600 {theirs}/{name.name}")
    assert proc.returncode == 0, proc.stderr
    answer = Checker(ws, theirs)()
    assert answer.status == 0 and "FORGED" not in answer.stdout and not answer.cached
    assert sorted(p.name for p in theirs.iterdir()) == [name.name]  # nor written there
    shutil.copy(forged, name)  # in root's directory, but nobody's file
    os.chown(name, 65534, 65534)
    name.chmod(0o600)
    answer = check()
    assert "FORGED" not in answer.stdout and not answer.cached


# -- the recorder itself, in this process ---------------------------------------------


def test_what_the_recorder_cannot_replay_spoils_the_recording(tmp_path):
    from runner import checkrecord

    (tmp_path / "dir").mkdir()
    plain = tmp_path / "dir" / "plain"
    plain.write_text("text\n")
    real = {place: getattr(*place) for place in checkrecord._Watch.places()}
    cases = {
        "a size": lambda: os.stat(plain).st_size,
        "a time": lambda: os.lstat(plain).st_mtime,
        "the clock": lambda: time.time(),
        "a write": lambda: open(tmp_path / "other", "w").close(),
        "os.open": lambda: os.close(os.open(plain, os.O_RDONLY)),
        "a directory scan": lambda: list(os.scandir(tmp_path)),
        "a descriptor": lambda: os.stat(0),
    }
    for what, act in cases.items():
        with checkrecord.recording() as recorder:
            act()
        assert recorder.spoiled, what
    with checkrecord.recording() as recorder:
        assert os.stat(plain).st_mode and open(plain).read() == "text\n"
        assert os.listdir(plain.parent) == ["plain"] and os.access(plain, os.R_OK)
        os.environ.get("RUNNER_NOT_SET")
    assert recorder.spoiled is None
    assert list(recorder.observations) == [
        ("stat", str(plain), True), ("read", str(plain)), ("list", str(plain.parent)),
        ("access", str(plain), os.R_OK, False), ("env", "RUNNER_NOT_SET")]
    assert checkcache.replay(list(recorder.observations.items()))
    plain.write_text("TEXT\n")
    assert not checkcache.replay(list(recorder.observations.items()))
    assert {place: getattr(*place) for place in checkrecord._Watch.places()} == real


# -- every file the check looks at is in the key ------------------------------------

# A system call naming a path: `PID openat(AT_FDCWD, "PATH", ...`, `PID stat("PATH", ...`
_PATH = re.compile(r'^\d+ +(?!read\(|getdents64\()\w+\((?:AT_FDCWD, )?"([^"]*)"')


def _strace_problem() -> str | None:
    return None if shutil.which("strace") else "needs strace"


def _python_files(path: str) -> bool:
    """Python's own files and runner's (the key holds runner's), shared libraries, the
    directories the import system looks in."""
    package = os.path.dirname(checkcache.__file__)
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr/lib/python3", package}
    searched = {*sys.path, os.path.dirname(package), os.path.dirname(RUNNER)}
    return (path in searched
            or any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)
            or path in ("/etc/ld.so.cache", "/etc/ld.so.preload")
            or re.search(r"\.so(\.[\d.]+)?$", path) is not None)


def test_every_path_the_check_opens_or_stats_is_observed(check, tmp_path):
    """strace of a check that runs: every path it opens, stats, lists or reads after it
    looked for its cache (before that: the interpreter starting) is one the record
    replays. A check that reads a new file without it failing this test is one the
    recorder sees."""
    problem = _strace_problem()
    if in_ci():
        assert problem is None, problem
    skip_unless(problem is None, problem or "")
    check.ws.config("[first]\ncheck = true\n", task_cwd="/", strict_permissions="true")
    check.ws.state.mkdir()
    trace = tmp_path / "trace"
    argv = ["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=%file,read,getdents64",
            RUNNER, "-c", str(check.ws.cfg), "check", str(check.ws.tasks)]
    answer = check(argv=argv)
    assert answer.status == 0 and not answer.cached, answer
    lines = trace.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if str(check.cache) in line)
    seen = {match.group(1) for line in lines[start:] if (match := _PATH.match(line))}
    seen = {p if p.startswith("/") else str(check.ws.root / p) for p in seen if p}
    observed = {key[1] for key, _ in check.record()[1] if len(key) > 1
                and isinstance(key[1], str)}
    observed |= {entry for key, view in check.record()[1] if key[0] == "module"
                 for entry, _ in view[1]}
    missing = sorted(p for p in seen - observed
                     if not _python_files(p) and not p.startswith(str(check.cache)))
    assert missing == [], missing
    assert {str(check.ws.cfg), str(check.ws.tasks), str(check.ws.tasks / "10-first"),
            "/proc/self/cgroup"} <= observed
