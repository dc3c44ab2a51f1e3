"""A real PostgreSQL server for the tests, and a TCP proxy that can fake an outage.

`PgServer.attach(url)` uses a server that is already running (CI starts one and exports
RUNNER_TEST_PG_URL); `PgServer.throwaway()` runs initdb into a temporary directory and
starts a private server on 127.0.0.1 (trust auth, fsync off; well under a second), which
`stop()` shuts down and deletes. As root, initdb and postgres run as the `postgres` user.

`TcpProxy` sits between runner and the server: `stop()` closes the port and cuts every
open connection (the database "goes away"), `start()` listens again on the same port.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PG_USER = "postgres"  # the OS user that runs initdb/postgres when we are root
SUPERUSER = "postgres"  # the database superuser of a throwaway cluster
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_bindir() -> Path | None:
    """Where initdb, pg_ctl and postgres are: pg_config, /usr/lib/postgresql/N/bin, PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
            if out:
                candidates.append(Path(out))
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(p) for p in debian]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, admin_url: str, *, datadir: Path | None = None,
                 bindir: Path | None = None, tmpdir: Path | None = None) -> None:
        self.admin_url = admin_url
        parts = urlsplit(admin_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5432
        self.datadir = datadir  # None when attached to a server we did not start
        self.bindir = bindir
        self.tmpdir = tmpdir
        self.start_seconds = 0.0
        self._created: set[str] = set()
        self._stopped = False

    # -- getting a server ------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why `throwaway()` cannot work here (psycopg or the server binaries missing)."""
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            return f"psycopg is not importable ({exc}); pip install 'psycopg>=3.1'"
        if find_bindir() is None:
            return ("no PostgreSQL server binaries (initdb, pg_ctl, postgres) via pg_config, "
                    "/usr/lib/postgresql/*/bin or PATH (Debian: apt-get install postgresql), "
                    "and RUNNER_TEST_PG_URL is not set")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                return f"running as root, and there is no {PG_USER!r} user to run postgres as"
        return None

    @classmethod
    def attach(cls, url: str) -> PgServer:
        """A server that is already running; `url` names its admin database."""
        server = cls(url)
        try:
            with server.admin_connect() as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            raise RuntimeError(f"cannot connect to RUNNER_TEST_PG_URL={url}: {exc}") from exc
        return server

    @classmethod
    def throwaway(cls, timeout: float = 30, settings: dict[str, str] | None = None) -> PgServer:
        """initdb into a temporary directory and start a private server on 127.0.0.1;
        `settings` go to postgresql.conf over SERVER_SETTINGS (max_connections ...)."""
        problem = cls.unavailable_reason()
        if problem:
            raise RuntimeError(problem)
        bindir = find_bindir()
        assert bindir is not None
        began = time.monotonic()
        tmpdir = Path(tempfile.mkdtemp(prefix="runner-pg-"))
        server = None
        try:
            tmpdir.chmod(0o700)
            if os.geteuid() == 0:
                entry = pwd.getpwnam(PG_USER)
                os.chown(tmpdir, entry.pw_uid, entry.pw_gid)
            datadir = tmpdir / "data"
            _run_as_pg([str(bindir / "initdb"), "-D", str(datadir), "-U", SUPERUSER,
                        "-A", "trust", "--no-sync", "--no-instructions", "-E", "UTF8",
                        "--locale=C"], tmpdir, timeout)
            for attempt in range(3):  # a free port may be taken before postgres binds it
                port = free_port()
                with (datadir / "postgresql.conf").open("a") as conf:
                    conf_settings = {**SERVER_SETTINGS, **(settings or {}),
                                     "listen_addresses": "127.0.0.1", "port": str(port),
                                     "unix_socket_directories": str(tmpdir)}
                    conf.write("\n# runner tests\n")
                    conf.writelines(f"{k} = '{v}'\n" for k, v in conf_settings.items())
                try:
                    _run_as_pg([str(bindir / "pg_ctl"), "start", "-w", "-t", str(int(timeout)),
                                "-D", str(datadir), "-l", str(tmpdir / "server.log")],
                               tmpdir, timeout + 5)
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
            url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
            server = cls(url, datadir=datadir, bindir=bindir, tmpdir=tmpdir)
            atexit.register(server.stop)
            server.start_seconds = time.monotonic() - began
            return server
        except BaseException as exc:
            log = tmpdir / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            _pg_ctl_stop(bindir, tmpdir / "data", tmpdir)
            shutil.rmtree(tmpdir, ignore_errors=True)
            if tail and isinstance(exc, RuntimeError):
                raise RuntimeError(f"{exc}\nserver log:\n{tail}") from exc
            raise

    def stop(self) -> None:
        """Stop and delete a throwaway server; on an attached one drop what we created."""
        if self._stopped:
            return
        self._stopped = True
        if self.datadir is None:
            for name in list(self._created):
                with contextlib.suppress(Exception):
                    self.drop_database(name)
            return
        assert self.bindir is not None and self.tmpdir is not None
        _pg_ctl_stop(self.bindir, self.datadir, self.tmpdir)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    # -- using it ----------------------------------------------------------------------

    def url(self, dbname: str) -> str:
        """The admin URL with its database replaced by `dbname`."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + dbname))

    def admin_connect(self, dbname: str | None = None, **kwargs):
        """An autocommit psycopg connection to the admin database (or `dbname`)."""
        import psycopg

        url = self.url(dbname) if dbname else self.admin_url
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(url, autocommit=True, **kwargs)

    @staticmethod
    def unique_name(prefix: str = "runner_test") -> str:
        return f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"

    def create_database(self, name: str | None = None) -> str:
        """Create database `name` (default: a new unique name); its URL."""
        from psycopg import sql

        name = name or self.unique_name()
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._created.add(name)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name`, ending the sessions still connected to it first."""
        from psycopg import sql

        with self.admin_connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", [name])
            force = sql.SQL(" WITH (FORCE)") if conn.info.server_version >= 130000 else sql.SQL("")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}{}").format(
                sql.Identifier(name), force))
        self._created.discard(name)

    def __repr__(self) -> str:
        kind = "throwaway" if self.datadir else "attached"
        return f"<PgServer {kind} {self.admin_url}>"


def _pg_user_kwargs() -> dict:
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(PG_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _run_as_pg(argv: list[str], cwd: Path, timeout: float) -> None:
    """Run a server tool (as `postgres` when we are root); RuntimeError with its output."""
    env = {**os.environ, "LC_ALL": "C"}
    env.pop("PGDATA", None)
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout,
                          **_pg_user_kwargs())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n"
                           f"{proc.stdout}{proc.stderr}".rstrip())


def _pg_ctl_stop(bindir: Path, datadir: Path, cwd: Path) -> None:
    if (datadir / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            _run_as_pg([str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-w",
                        "-D", str(datadir)], cwd, 30)


class _Link:
    """One proxied connection: the client's socket, the upstream one, and their pumps."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.socks = (client, upstream)
        self.pumps: list[threading.Thread] = []
        self.open_directions = 2

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()


def via(url: str, port: int) -> str:
    """`url` with its host and port replaced by 127.0.0.1:`port` (e.g. a TcpProxy's)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


class TcpProxy:
    """Forwards 127.0.0.1:`port` to target_host:target_port, one thread per direction.

    `stop()` closes the listening socket and cuts every open connection, so clients see
    a dead server (new connections are refused); `start()` listens again on the same port.
    `reject()` is an outage that counts: open connections are cut, and every new one is
    accepted and closed at once, counted in `rejected` (a client's connection attempts).
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accepter: threading.Thread | None = None
        self._links: set[_Link] = set()
        self.accepted = 0  # connections forwarded since creation
        self.rejected = 0  # connections closed at once while rejecting
        self._rejecting = False

    @property
    def running(self) -> bool:
        return self._listener is not None

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._links)

    def start(self) -> TcpProxy:
        """Listen (again) on `port`, forwarding; the first start picks a free port."""
        self._rejecting = False
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accepter = threading.Thread(target=self._accept, args=(listener,),
                                          name=f"tcpproxy-{self.port}", daemon=True)
        self._accepter.start()
        return self

    def stop(self) -> None:
        """Outage: refuse new connections and cut the open ones (both sides)."""
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, set()
        if listener is None:
            return
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        if self._accepter is not None:
            self._accepter.join(5)
        listener.close()
        self._cut(links)

    def reject(self) -> None:
        """Outage, counted: cut the open connections; accept and close every new one."""
        self.start()
        with self._lock:
            self._rejecting = True
            links, self._links = self._links, set()
        self._cut(links)

    @staticmethod
    def _cut(links: set[_Link]) -> None:
        for link in links:
            for sock in link.socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pumps, FIN to both ends
        for link in links:
            for pump in link.pumps:
                pump.join(5)
            link.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stop() shut the listener down
            if self._rejecting:
                with self._lock:
                    self.rejected += 1
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the target is down: so is the proxy, for this client
                continue
            link = _Link(client, upstream)
            for sock in link.socks:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link.pumps = [threading.Thread(target=self._pump, args=(link, a, b), daemon=True)
                          for a, b in ((client, upstream), (upstream, client))]
            with self._lock:
                if self._listener is not listener:  # stop() ran meanwhile
                    link.close()
                    return
                self.accepted += 1
                self._links.add(link)
            for pump in link.pumps:
                pump.start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        # EOF (or an error) one way: pass it on; the other pump ends when that side closes.
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            link.open_directions -= 1
            last = link.open_directions == 0 and link in self._links
            if last:
                self._links.discard(link)
        if last:
            link.close()


PGBOUNCER_INI = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 1000
pidfile = {dir}/pgbouncer.pid
logfile = {dir}/pgbouncer.log
"""


class PgBouncer:
    """A pgbouncer process in transaction pooling mode in front of a PostgreSQL server:
    `pool_size` server connections per database and user, shared by every client."""

    def __init__(self, target_host: str, target_port: int, user: str,
                 pool_size: int = 2) -> None:
        self.target = (target_host, target_port)
        self.user = user
        self.pool_size = pool_size
        self.port = 0
        self.dir: Path | None = None
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("pgbouncer") or next(
            (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)),
            None)

    def start(self, timeout: float = 15) -> PgBouncer:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("no pgbouncer (Debian: apt-get install pgbouncer)")
        self.dir = Path(tempfile.mkdtemp(prefix="runner-pgbouncer-"))
        self.port = free_port()
        (self.dir / "users.txt").write_text(f'"{self.user}" ""\n')
        (self.dir / "pgbouncer.ini").write_text(PGBOUNCER_INI.format(
            host=self.target[0], port=self.target[1], listen_port=self.port,
            dir=self.dir, pool_size=self.pool_size))
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            entry = pwd.getpwnam(PG_USER)
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.proc = subprocess.Popen([binary, str(self.dir / "pgbouncer.ini")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     **_pg_user_kwargs())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        log = self.dir / "pgbouncer.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self.stop()
        raise RuntimeError(f"pgbouncer did not start:\n{tail}")

    def url(self, server_url: str) -> str:
        """`server_url` (a database on the target server) through this pgbouncer."""
        return via(server_url, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
