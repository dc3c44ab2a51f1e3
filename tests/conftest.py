"""Shared harness: a temporary config + task directory, driven through the real commands."""

from __future__ import annotations

import glob
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import PgServer

BIN = Path(sys.executable).parent
RUNNER = str(BIN / "runner")
RUNNER_CONFIG = str(BIN / "runner-config")

# runner-config's cache (runner.confcache) of every test goes to a directory of this
# session's own (0700, mkdtemp), never to the machine's /var/cache/runner.
os.environ.setdefault("RUNNER_CACHE_DIR", tempfile.mkdtemp(prefix="runner-test-cache-"))

# Test defaults: no waiting between tries, a short kill grace, state in the workspace.
BASE_RUNNER = {"sleep_time": "0", "retry_jitter": "0", "kill_grace": "1"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="fault and fuzz tests at full size (CI runs small sizes)")


@pytest.fixture(scope="session")
def slow(request: pytest.FixtureRequest) -> bool:
    """True under --slow: fault tests use their full sizes (1 GiB of output, 100 restarts,
    thousands of fuzz cases); otherwise small ones that keep CI fast."""
    return bool(request.config.getoption("--slow"))


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_unless(condition: bool, reason: str) -> None:
    """Skip outside CI when a tool is missing; in CI a missing tool is a failure."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


# -- test layers: the markers registered in pyproject.toml ---------------------------------

# A test that uses one of these fixtures, directly or through another fixture, is in these
# layers: pytest_collection_modifyitems marks it, so `-m` selects it without a decorator.
FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "open_ws": ("root",),  # here and in test_security: runner as root, nobody as attacker
    "open_dir": ("root",),  # test_ctl_socket: another uid connects
    "systemd_tree": ("systemd", "root"),
    "pg_server": ("postgres",),
    "scram_server": ("postgres",),  # test_secrets: a password-only server of its own
}

_running: list[pytest.Item] = []  # the test being set up or run, for need_root


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for marker in FIXTURE_MARKERS.get(fixture, ()):
                if item.get_closest_marker(marker) is None:
                    item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running[:] = [item]


def need_root(reason: str) -> None:
    """Skip outside CI unless root (in CI: fail); the test itself must be marked `root`,
    so that `-m "not root"` leaves out every test that needs root."""
    if _running and _running[0].get_closest_marker("root") is None:
        pytest.fail(f"{_running[0].nodeid} needs root ({reason}): mark it "
                    "@pytest.mark.root (or use a fixture in conftest.FIXTURE_MARKERS)")
    skip_unless(os.geteuid() == 0, reason)


class Workspace:
    """A temporary runner setup: `cfg` (runner.cfg), `tasks` (tasks.d), `state` and `run`
    (runtime_dir, where the live status file goes)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tasks = root / "tasks.d"
        self.state = root / "state"
        self.cfg = root / "runner.cfg"
        self.tasks.mkdir()
        self.config()

    def task(self, name: str, body: str = "exit 0", mode: int = 0o755,
             shebang: str = "#!/bin/sh") -> Path:
        """Write a task script; `body` is dedented and put after the shebang."""
        path = self.tasks / name
        text = textwrap.dedent(body).strip("\n") + "\n"
        path.write_text(f"{shebang}\n{text}" if shebang else text)
        path.chmod(mode)
        return path

    def until_live(self, task: str) -> str:
        """Shell that waits (up to 5 s) until the live status file names `task` running:
        runner writes a task's start there up to 50 ms later (runner.livestatus.DEFER_S),
        and `runner status` may start and read it sooner than that."""
        needle = f'"task": "{task}"'
        return (f"for i in $(seq 500); do grep -qF '{needle}' '{self.root}/run/status.json' "
                "2>/dev/null && break; sleep 0.01; done; ")

    def config(self, text: str = "", **runner: object) -> Path:
        """Write runner.cfg: test defaults and `runner` keys in [runner], then `text`."""
        values = {**BASE_RUNNER, "state_dir": str(self.state),
                  "runtime_dir": str(self.root / "run"), **runner}
        lines = ["[runner]"] + [f"{k} = {v}" for k, v in values.items()]
        self.cfg.write_text("\n".join(lines) + "\n" + textwrap.dedent(text))
        return self.cfg

    def command(self, *args: str, tasks: bool = True) -> list[str]:
        argv = [RUNNER, "-c", str(self.cfg), *args]
        return [*argv, str(self.tasks)] if tasks else argv

    def run(self, *args: str, tasks: bool = True, timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `runner -c CFG ARGS TASKDIR` to the end, from / as systemd starts it (its
        tasks then start by posix_spawn: runner.process._start)."""
        return subprocess.run(
            self.command(*args, tasks=tasks), capture_output=True, text=True,
            timeout=timeout, env=env, cwd="/",
        )

    def start(self, *args: str, tasks: bool = True, **kwargs) -> subprocess.Popen:
        """Start runner in the background (for signal tests)."""
        return subprocess.Popen(
            self.command(*args, tasks=tasks), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd="/", **kwargs,
        )


def alive(pid: int) -> bool:
    """True if pid is a live process (an unreaped zombie counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def started(log: str) -> list[str]:
    """Task names in the order runner started them (halt task runs included)."""
    return re.findall(r"INFO (?:(?:halt|reboot) task )?(\S+): starting \(", log)


def output_of(log: str, task: str) -> list[str]:
    """Lines a task printed, as runner logged them."""
    return re.findall(rf"\[{re.escape(task)}\] (.*)$", log, re.M)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str,
                          status: int = 78) -> str:
    """Bad input: exit 78 (or `status`), exactly one line on stderr naming what is wrong,
    no traceback."""
    assert proc.returncode == status, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _unshare_problem() -> str | None:
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return None if probe.returncode == 0 else "unshare -m is not permitted here"


def run_in_mount_namespace(ws: Workspace, before: str, *args: str,
                           after: str = "true") -> subprocess.CompletedProcess:
    """Run `runner -c CFG ARGS TASKDIR` in a private mount namespace: shell `before` sets
    up mounts (a tiny tmpfs, a read-only remount), `after` copies out what the test needs
    (the mounts vanish with the namespace). Returns runner's status and output."""
    need_root("needs root to mount file systems in a private mount namespace")
    problem = _unshare_problem()
    skip_unless(problem is None, problem or "")
    command = " ".join(f"'{a}'" for a in ws.command(*args))
    shell = f"{before} || exit 99\n{command}; status=$?\n{after}\nexit $status\n"
    return subprocess.run(["unshare", "-m", "sh", "-c", shell], capture_output=True,
                          text=True, timeout=60, cwd=ws.root)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


# -- another user on the machine (nobody, through runuser) ---------------------------

@pytest.fixture
def open_ws() -> Iterator[Workspace]:
    """A workspace nobody can read (pytest's tmp_path is under a 0700 directory)."""
    need_root("runs runner as root and the attacker as nobody")
    skip_unless(shutil.which("runuser") is not None, "needs runuser (util-linux)")
    root = Path(tempfile.mkdtemp(prefix="runner-nobody-"))
    try:
        root.chmod(0o755)
        yield Workspace(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    need_root("runs a command as nobody (runuser)")
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True,
                          text=True, timeout=60)


def nobody_python() -> str:
    """A python nobody may run (a venv's may live under root's 0700 home)."""
    for python in (sys.executable, "/usr/bin/python3"):
        if as_nobody(python, "-c", "pass").returncode == 0:
            return python
    pytest.skip("no python interpreter that nobody may run")


# -- a real systemd in a container (see ../shared/notes/real-systemd.md) ---------

ROOT = Path(__file__).resolve().parent.parent
BOOT_TIMEOUT = 180


def _container_tools_problem() -> str | None:
    for tool in ("systemd-nspawn", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages systemd-container, debootstrap)"
    return None


@pytest.fixture(scope="session")
def systemd_tree() -> Path:
    """The cached minimal Debian tree (scripts/systemd-tree.sh builds it, in CI always)."""
    need_root("booting systemd in a container needs root")
    problem = _container_tools_problem()
    skip_unless(problem is None, problem or "")
    cache = os.environ.get("RUNNER_TREE_CACHE", "/var/cache/runner-ci")
    script = ROOT / "scripts" / "systemd-tree.sh"
    if not in_ci() and not any(Path(cache).glob("bookworm-*/.complete")):
        pytest.skip(f"no cached systemd tree in {cache}: run {script} once (about 75 s)")
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def copy_tree(tree: Path, dest: Path) -> None:
    """A throwaway copy of the cached tree, so tests never change the cache."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(tree), str(dest)], check=True)


def boot_guest(guest: Path, out: Path) -> subprocess.CompletedProcess:
    """Boot the guest's systemd as PID 1; returns when the guest powers off."""
    return subprocess.run(
        ["timeout", str(BOOT_TIMEOUT), "systemd-nspawn", "-q", "-D", str(guest),
         "--register=no", "--keep-unit", "--private-network", f"--bind={out}:/out", "--boot"],
        capture_output=True, text=True, timeout=BOOT_TIMEOUT + 30,
    )


def in_guest(guest: Path, *argv: str) -> subprocess.CompletedProcess:
    """Run one command in the guest tree (no boot), e.g. apt-get or dpkg."""
    return subprocess.run(
        ["systemd-nspawn", "-q", "-D", str(guest), "--register=no", "--keep-unit",
         "--private-network", *argv],
        capture_output=True, text=True, timeout=300,
    )


# -- helpers for tests that watch a runner started in the background ----------


def journal_rows(path: Path, sql: str, params: tuple = ()) -> list[dict]:
    """Rows of a journal file, read-only (runner may be writing it)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def libfaketime() -> str | None:
    """The LD_PRELOAD library that fakes the wall clock (Debian package faketime)."""
    for name in ("libfaketimeMT.so.1", "libfaketime.so.1"):  # runner has threads
        found = sorted(glob.glob(f"/usr/lib/*/faketime/{name}"))
        if found:
            return found[0]
    return None


def wait_for(predicate, timeout: float = 10.0, what: str = "a condition") -> None:
    """Poll `predicate` every 20 ms until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    """Wait until a task has written the marker file `path`."""
    wait_for(path.exists, timeout, f"marker file {path}")


class LogWatcher:
    """Reads the stderr of `ws.start(...)` line by line as runner writes it.

    Use as a context manager: on the way out a runner still running gets SIGTERM
    (so it stops its task), then SIGKILL.
    """

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match:
        """The first match of regex `pattern` in the log, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = re.search(pattern, "".join(self.lines), re.M)
                if match:
                    return match
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError(
                        f"{pattern!r} not in runner's log "
                        f"({'runner exited' if self.closed else 'timed out'}):\n"
                        + "".join(self.lines)
                    )
                self._cond.wait(left)

    def finish(self, timeout: float = 10.0) -> int:
        """Wait for runner to exit and for the end of its log; its exit status."""
        status = self.proc.wait(timeout)
        self._thread.join(timeout)
        return status

    def __enter__(self) -> LogWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


# -- a real PostgreSQL server (tests/pgserver.py) -----------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The server at $RUNNER_TEST_PG_URL (CI starts one), else a throwaway one of our own."""
    url = os.environ.get("RUNNER_TEST_PG_URL")
    if url:
        try:
            server = PgServer.attach(url)
        except RuntimeError as exc:
            pytest.fail(str(exc))
    else:
        problem = PgServer.unavailable_reason()
        skip_unless(problem is None, problem or "")
        server = PgServer.throwaway()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database for this test (dropped afterwards); its URL."""
    name = pg_server.unique_name()
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)
