#!/usr/bin/env python3
"""Fleet load: N real runner processes forwarding to one small PostgreSQL, with an outage.

    .venv/bin/python bench/fleet_load.py [--runners 50] [--max-connections 20]
        [--task-s 1.0] [--warmup 10] [--outage 10] [--after 10] [--json]

Starts a throwaway PostgreSQL (tests/pgserver.py: initdb, 127.0.0.1) with a small
max_connections, a TCP proxy in front of it, and --runners runner processes, each with
a state_dir of its own, journal_url pointing at the proxy as the non-superuser `runner`
(superuser_reserved_connections keep room for this script's own session), and a chain of
--tasks tasks sleeping --task-s looping forever (-n 0). After --warmup seconds the proxy
cuts every connection and refuses new ones for --outage seconds (the database "goes
away"), then comes back. Then --after seconds more, and every runner gets SIGTERM at once
(the exit flush of all of them together). Hosts that still have unsynced rows after that
are started once more (`-n 1`), as a host would be at its next boot.

Reports:
  peak_connections   most sessions of role runner at once (pg_stat_activity every 50 ms)
  mean_connections   their mean over the run
  refused            connection attempts PostgreSQL refused: "too many clients" (53300)
  drain_s            from the database's return until every row written before it is in
                     PostgreSQL
  lost               task runs in a host's local journal that PostgreSQL does not have
                     (or has with another result) at the end: must be 0
  unforwarded_at_exit  records (runs, tries, task runs) still unsynced after every
                     runner's exit flush
  restarted          hosts that needed the next start for their last rows (restarted
                     until none has any: restart_rounds)
  rss_mb             runners' peak resident memory (VmHWM): max and median

Exits 1 when a row is lost or the connections exceeded the limit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import psycopg  # noqa: E402
from pgserver import PgServer, TcpProxy, via  # noqa: E402

RUNNER = str(Path(sys.executable).parent / "runner")
RESERVED = 3  # superuser_reserved_connections: this script's own session gets in


@dataclass(eq=False)
class Host:
    root: Path
    proc: subprocess.Popen | None = None
    rss_kb: int = 0

    @property
    def cfg(self) -> Path:
        return self.root / "runner.cfg"

    @property
    def journal(self) -> Path:
        return self.root / "state" / "journal.sqlite"

    def start(self, times: str) -> None:
        log = (self.root / "runner.log").open("ab")
        self.proc = subprocess.Popen(
            [RUNNER, "-c", str(self.cfg), "-n", times, str(self.root / "tasks.d")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.root)
        log.close()

    def sample_rss(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.rss_kb = max(self.rss_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass

    def task_runs(self) -> list[tuple]:
        """(run_id, seq, result) of every task run in its journal; none before it has one."""
        try:
            conn = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=30)
        except sqlite3.OperationalError:
            return []
        try:
            return conn.execute("SELECT run_id, seq, result FROM task_runs").fetchall()
        except sqlite3.OperationalError:  # created, not migrated yet
            return []
        finally:
            conn.close()

    def unsynced(self) -> int:
        conn = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=30)
        try:
            return sum(conn.execute(f"SELECT count(*) FROM {t} WHERE synced_rev < rev")
                       .fetchone()[0] for t in ("runs", "tries", "task_runs"))
        finally:
            conn.close()


@dataclass
class Monitor:
    """Client sessions but its own, every 50 ms, over this script's own (reserved) one."""

    url: str
    samples: list[int] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.05):
                # Sessions still authenticating have no user yet: all client backends.
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type "
                                   "= 'client backend' AND pid <> pg_backend_pid()").fetchone()
                self.samples.append(row[0] if row else 0)


def make_hosts(base: Path, count: int, tasks: int, task_s: float, url: str) -> list[Host]:
    hosts = []
    for number in range(count):
        host = Host(base / f"host{number:03d}")
        (host.root / "tasks.d").mkdir(parents=True)
        for task in range(tasks):
            path = host.root / "tasks.d" / f"{task + 1}0-work.sh"
            path.write_text(f"#!/bin/sh\nsleep {task_s}\necho host {number} task {task}\n")
            path.chmod(0o755)
        host.cfg.write_text(
            "[runner]\nsleep_time = 0\nretry_jitter = 0\nkill_grace = 1\n"
            f"state_dir = {host.root / 'state'}\nruntime_dir = {host.root / 'run'}\n"
            f"journal_url = {url}\n")
        hosts.append(host)
    return hosts


def prepare_database(server: PgServer) -> str:
    """A database owned by the login role runner (not a superuser); its URL for runner."""
    with server.admin_connect() as conn:
        conn.execute("CREATE ROLE runner LOGIN")
        conn.execute("CREATE DATABASE fleet OWNER runner")
    parts = urlsplit(server.url("fleet"))
    return urlunsplit(parts._replace(netloc=f"runner@{parts.hostname}:{parts.port}"))


def arrived(admin_url: str, marks: dict[str, int]) -> int:
    """Task runs in PostgreSQL of each run up to its mark (run_id -> highest seq)."""
    if not marks:
        return 0
    values = ", ".join(["(%s, %s)"] * len(marks))
    params = [v for pair in marks.items() for v in pair]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        try:
            row = conn.execute(
                f"SELECT count(*) FROM runner_task_runs t JOIN (VALUES {values}) "
                "AS m(run_id, seq) ON t.run_id = m.run_id AND t.seq <= m.seq",
                params).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return row[0] if row else 0


def marks_now(hosts: list[Host]) -> tuple[dict[str, int], int]:
    """Per run, the highest task run seq written so far; and how many rows that is."""
    marks: dict[str, int] = {}
    rows = 0
    for host in hosts:
        for run_id, seq, _result in host.task_runs():
            marks[run_id] = max(marks.get(run_id, 0), seq)
            rows += 1
    return marks, rows


def lost_rows(hosts: list[Host], admin_url: str) -> tuple[int, int]:
    """(task runs missing or stale in PostgreSQL, task runs in all local journals)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        remote = {(r[0], r[1]): r[2] for r in conn.execute(
            "SELECT run_id, seq, result FROM runner_task_runs")}
    lost = total = 0
    for host in hosts:
        for run_id, seq, result in host.task_runs():
            total += 1
            lost += remote.get((run_id, seq)) != result
    return lost, total


def sample_all(hosts: list[Host], done: threading.Event) -> None:
    while not done.wait(0.5):
        for host in hosts:
            host.sample_rss()


def stop_all(hosts: list[Host], timeout: float) -> None:
    for host in hosts:
        if host.proc is not None and host.proc.poll() is None:
            host.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for host in hosts:
        if host.proc is not None:
            try:
                host.proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait()


def restart_until_sent(hosts: list[Host], rounds: int = 5) -> tuple[int, int]:
    """Start the hosts with unsynced rows once more (-n 1), as their next boot would, until
    none has any (at most `rounds` times); (hosts restarted, rounds it took)."""
    restarted: set[Path] = set()
    for done in range(rounds):
        leftover = [host for host in hosts if host.unsynced()]
        if not leftover:
            return len(restarted), done
        for host in leftover:
            host.start("1")
            restarted.add(host.root)
        for host in leftover:
            if host.proc is not None:
                host.proc.wait(300)
    return len(restarted), rounds


def wait_drained(admin_url: str, marks: dict[str, int], rows: int, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if arrived(admin_url, marks) >= rows:
            return time.monotonic() - began
        time.sleep(0.2)
    return float("nan")


def run(args: argparse.Namespace) -> dict:
    server = PgServer.throwaway(settings={
        "max_connections": str(args.max_connections),
        "superuser_reserved_connections": str(RESERVED)})
    base = Path(tempfile.mkdtemp(prefix="runner-fleet-"))
    hosts: list[Host] = []
    try:
        runner_url = prepare_database(server)
        if args.keep:
            print(f"server {server.admin_url}, hosts in {base}", file=sys.stderr, flush=True)
        admin_url = server.url("fleet")
        with TcpProxy(server.host, server.port) as proxy:
            hosts = make_hosts(base, args.runners, args.tasks, args.task_s,
                               via(runner_url, proxy.port))
            monitor = Monitor(admin_url)
            threading.Thread(target=monitor.run, daemon=True).start()
            sampling = threading.Event()
            threading.Thread(target=sample_all, args=(hosts, sampling), daemon=True).start()
            began = time.monotonic()
            for host in hosts:
                host.start("0")
            # On a busy machine a herd of interpreters takes a while to start: the clock
            # of the run starts when every host has recorded a task run.
            while not all(host.task_runs() for host in hosts):
                if time.monotonic() - began > 300:
                    raise RuntimeError("runners did not start within 300 s")
                time.sleep(0.5)
            started_s = time.monotonic() - began
            time.sleep(args.warmup)
            proxy.stop()
            time.sleep(args.outage)
            proxy.start()
            back = time.monotonic()
            marks, rows = marks_now(hosts)
            drain_s = wait_drained(admin_url, marks, rows, args.after + 120)
            time.sleep(max(args.after - (time.monotonic() - back), 0))
            for host in hosts:
                host.sample_rss()
            sampling.set()
            stop_all(hosts, 60)
            wall_s = time.monotonic() - began
            unsynced = {host: host.unsynced() for host in hosts}
            restarted, rounds = restart_until_sent(hosts)
            monitor.done.set()
        lost, total = lost_rows(hosts, admin_url)
        log = (server.tmpdir / "server.log").read_text(errors="replace") if server.tmpdir else ""
        # 53300 either way: over max_connections, or into the superusers' reserved slots
        refused = (log.count("too many clients")
                   + log.count("remaining connection slots are reserved"))
        rss = [host.rss_kb / 1024 for host in hosts if host.rss_kb]
        limit = args.max_connections - RESERVED
        return {
            "runners": args.runners, "max_connections": args.max_connections,
            "limit": limit, "tasks": args.tasks, "task_s": args.task_s,
            "outage_s": args.outage, "started_s": round(started_s, 1),
            "wall_s": round(wall_s, 1),
            "peak_connections": max(monitor.samples, default=0),
            "mean_connections": round(statistics.fmean(monitor.samples), 1)
            if monitor.samples else 0,
            "refused": refused, "drain_s": round(drain_s, 1), "rows_at_return": rows,
            "task_runs": total, "lost": lost,
            "unforwarded_at_exit": sum(unsynced.values()), "restarted": restarted,
            "restart_rounds": rounds,
            "rss_mb": {"max": round(max(rss, default=0), 1),
                       "median": round(statistics.median(rss), 1) if rss else 0},
        }
    except BaseException:
        log = server.tmpdir / "server.log" if server.tmpdir else None
        if log is not None and log.exists():
            print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
        for host in hosts[:2]:
            path = host.root / "runner.log"
            if path.exists():
                print(path.read_text(errors="replace")[-2000:], file=sys.stderr)
        raise
    finally:
        stop_all(hosts, 30)
        server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", type=int, default=50)
    parser.add_argument("--max-connections", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--task-s", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the hosts' directories")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:18} {value}")
    ok = result["lost"] == 0 and result["peak_connections"] <= result["limit"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
