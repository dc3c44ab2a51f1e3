#!/usr/bin/env python3
"""How fast the fleet questions answer on a generated fleet journal (issue 18).

    .venv/bin/python bench/fleet_queries.py [--hosts 5000] [--days 30] [--iterations 24]
        [--tasks 14] [--datadir DIR] [--schema 1|2] [--code DIR] [--check] [--explain]
        [--json]

Generates a fleet journal in runner's own schema with SQL (bench/fleetgen.py: one run a
day per host, `iterations` tries of `tasks` tasks) into a PostgreSQL server of its own
(initdb; with --datadir the server and its data are kept and reused by the next run with
the same sizes, as generating 50 M task runs takes long), then times each fleet command
through the real `runner` CLI, warm (the best of five after one run) and cold (server
restarted and, as root, the OS page cache dropped: `sync; echo 3 > drop_caches`).

--schema 1 makes the schema of runner before partitioning (MIGRATIONS[0] only) and
--code DIR runs another runner checkout's CLI (e.g. `git archive` of an older commit),
for before/after figures; migrating that database to schema 2 is then timed with
--migrate. --check asserts the answers (the failing, silent and stuck hosts, the README
recipe), which tests/test_bench.py runs at a small size; --explain prints EXPLAIN
ANALYZE of the SQL behind each command (the runner.history Reader's queries).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import fleetgen  # noqa: E402
import pgserver  # noqa: E402

from runner import fleetrollup, fleetschema, pgjournal  # noqa: E402

PROBE_HOST = fleetgen.host_name(100)
# (name, runner arguments, whether runner before schema 2 has it)
COMMANDS = (
    # The floor: Python, runner's start, the configuration, psycopg, a connection and a
    # task name lookup that finds nothing (index probes): what every command pays.
    ("floor: log NOSUCH --host H", ["log", "nosuch", "--host", PROBE_HOST], False),
    ("history --task puppet --since today", ["history", "--task", "puppet", "--since", "today"],
     True),
    ("log puppet --host H", ["log", "puppet", "--host", PROBE_HOST], True),
    ("blame --since 1d", ["blame", "--since", "1d"], True),
    # A month: the rollup's hours (runner.fleetrollup) and each task's last run.
    ("blame --since 30d", ["blame", "--since", "30d"], True),
    ("blame --host H", ["blame", "--host", PROBE_HOST], True),
    ("fleet failing", ["fleet", "failing"], False),
    # {quiet} and {day}: the generated fleet's gap between iterations plus an hour, and a
    # day, each plus the data's age (a kept database is reused: its "now" has passed).
    ("fleet stuck", ["fleet", "stuck", "--for", "{quiet}"], False),
    ("fleet silent --since 1d", ["fleet", "silent", "--since", "{day}"], False),
    ("fleet tasks", ["fleet", "tasks"], False),
    ("fleet ready", ["fleet", "ready"], False),
)
RECIPE = ["history", "--task", "puppet", "--since", "today", "--json"]
RECIPE_JQ = 'map(select(.result != "OK")) | .[].host'
BIG_SETTINGS = {"shared_buffers": "2GB", "maintenance_work_mem": "1GB",
                "max_wal_size": "8GB", "checkpoint_timeout": "30min",
                "effective_cache_size": "12GB", "max_connections": "100"}


class Server:
    """A PostgreSQL server in `datadir` (kept when given), started and restarted here."""

    def __init__(self, datadir: Path | None, big: bool) -> None:
        self.keep = datadir is not None
        self.base = datadir or Path(tempfile.mkdtemp(prefix="runner-fleetbench-"))
        self.data = self.base / "data"
        self.bindir = pgserver.find_bindir()
        if self.bindir is None:
            raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl, postgres)")
        self.port_file = self.base / "port"
        if not (self.data / "PG_VERSION").exists():
            self._initdb(big)
        self.port = int(self.port_file.read_text())

    def _initdb(self, big: bool) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o700)
        if os.geteuid() == 0:
            shutil.chown(self.base, pgserver.PG_USER, pgserver.PG_USER)
        pgserver._run_as_pg([str(self.bindir / "initdb"), "-D", str(self.data), "-U",
                             pgserver.SUPERUSER, "-A", "trust", "--no-sync",
                             "--no-instructions", "-E", "UTF8", "--locale=C"], self.base, 120)
        port = pgserver.free_port()
        settings = {**pgserver.SERVER_SETTINGS, **(BIG_SETTINGS if big else {}),
                    "listen_addresses": "127.0.0.1", "port": str(port),
                    "unix_socket_directories": str(self.base)}
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{k} = '{v}'\n" for k, v in settings.items())
        self.port_file.write_text(str(port))

    def url(self, db: str = "fleet") -> str:
        return f"postgresql://{pgserver.SUPERUSER}@127.0.0.1:{self.port}/{db}"

    def _ctl(self, *args: str) -> None:
        pgserver._run_as_pg([str(self.bindir / "pg_ctl"), *args, "-D", str(self.data)],
                            self.base, 600)

    def start(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            self._ctl("start", "-w", "-t", "600", "-l", str(self.base / "server.log"))

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", "fast", "-w", "-t", "600")

    def cold(self) -> None:
        """Restart the server and, as root, drop the OS page cache."""
        self.stop()
        if os.geteuid() == 0:
            subprocess.run(["sync"], check=False)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        self.start()

    def close(self) -> None:
        self.stop()
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def connect(url: str, autocommit: bool = True):
    import psycopg

    return psycopg.connect(url, autocommit=autocommit, connect_timeout=10)


def create_schema(url: str, version: int) -> None:
    """runner's schema: as a runner of schema 2 makes it, or as one of schema 1 did."""
    with connect(url, autocommit=False) as conn:
        if version >= 2:
            pgjournal.migrate(conn)
        else:
            with conn.transaction():
                conn.execute("CREATE TABLE runner_schema (version integer NOT NULL)")
                for statement in str(pgjournal.MIGRATIONS[0]).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO runner_schema VALUES (1)")
                for table, column, kind in pgjournal.ADDITIONS:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        conn.commit()


def _secondary_indexes(conn) -> list[tuple[str, str]]:
    """(name, CREATE INDEX ...) of runner's indexes that no constraint owns."""
    return conn.execute(
        "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid "
        "WHERE t.relname IN ('runner_runs', 'runner_tries', 'runner_task_runs') "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid)").fetchall()


def generate(server: Server, fleet: fleetgen.Fleet, schema: int, now: datetime,
             db: str = "fleet") -> dict:
    """The database `db` holding `fleet`, generated unless the kept one already does."""
    wanted = {**fleet.__dict__, "schema": schema}
    with connect(server.url("postgres")) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                               (db,)).fetchone()
        if exists:
            with connect(server.url(db)) as conn:
                row = conn.execute("SELECT to_regclass('runner_bench')").fetchone()
                if row[0]:
                    made = conn.execute("SELECT params, made_at FROM runner_bench").fetchone()
                    if made and {k: v for k, v in made[0].items() if k != "migrated"} \
                            == wanted:
                        return {"reused": True, "made_at": made[1].isoformat(),
                                **add_rollup(conn, server.url(db), fleet, made[1])}
            admin.execute(f"DROP DATABASE {db} WITH (FORCE)")
        admin.execute(f"CREATE DATABASE {db}")
    create_schema(server.url(db), schema)
    began = time.monotonic()
    with connect(server.url(db)) as conn:
        if schema >= 2:
            first = (now - timedelta(days=fleet.days + 1)).date()
            with conn.transaction():
                fleetschema.ensure_partitions(conn, now.date(), first)
        # Bulk load without the secondary indexes, then build them as runner made them.
        indexes = _secondary_indexes(conn)
        for name, _ in indexes:
            conn.execute(f"DROP INDEX {name}")

        def progress(done: int, days: int, rows: int) -> None:
            print(f"generated day {done}/{days}: {rows} task runs, "
                  f"{time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)

        rows = fleetgen.generate(conn, fleet, now, progress)
        for _, definition in indexes:
            # A partitioned table's index reads "ON ONLY": that one would have no children.
            conn.execute(definition.replace(" ON ONLY ", " ON "))
        if schema >= 2:
            # The rollup counted every row as it came (its triggers), but counts fully
            # only from the hour it was made: the generated days are backfilled.
            with conn.transaction():
                fleetrollup.backfill(conn, now - timedelta(days=fleet.days + 1))
        # What autovacuum does on a live fleet database: statistics and the visibility
        # map (index-only scans).
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE TABLE runner_bench (params jsonb, made_at timestamptz)")
        conn.execute("INSERT INTO runner_bench VALUES (%s, %s)", (json.dumps(wanted), now))
        size = conn.execute("SELECT pg_size_pretty(pg_database_size(%s))",
                            (db,)).fetchone()[0]
    return {"reused": False, "task_runs": rows, "seconds": round(time.monotonic() - began, 1),
            "size": size}


def add_rollup(conn, url: str, fleet: fleetgen.Fleet, made_at: datetime) -> dict:
    """A kept database of schema 2 generated before the rollup: it gets it as from a
    runner (pgjournal.migrate), and the generated days are backfilled (timed)."""
    if not fleetschema.is_partitioned(conn) or fleetrollup.present(conn):
        return {}
    began = time.monotonic()
    create_schema(url, 2)
    with conn.transaction():
        fleetrollup.backfill(conn, made_at - timedelta(days=fleet.days + 1))
    conn.execute(f"VACUUM ANALYZE {fleetrollup.ROLLUP}")
    return {"rollup_added_s": round(time.monotonic() - began, 1)}


def runner_command(code: Path, config: Path, args: list[str]) -> subprocess.CompletedProcess:
    # In `code` and with -P: `python -m` puts the working directory first on sys.path,
    # which would run this checkout's runner whatever PYTHONPATH says.
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run([sys.executable, "-P", "-m", "runner", "-c", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=code)


def busy_share(seconds: float = 0.5) -> float:
    """The share of CPU time the machine spent busy over `seconds` (/proc/stat)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_quiet(limit: float | None, patience_s: float = 60) -> float:
    """Wait (up to `patience_s`) until the machine is at most `limit` busy: other
    sessions share it, and a timing taken under their load measures them. The busy share
    when it went on."""
    share = busy_share()
    deadline = time.monotonic() + patience_s
    while limit is not None and share > limit and time.monotonic() < deadline:
        time.sleep(2)
        share = busy_share()
    return share


def timed(code: Path, config: Path, args: list[str],
          quiet: float | None = None) -> tuple[float, subprocess.CompletedProcess]:
    wait_quiet(quiet)
    began = time.monotonic()
    proc = runner_command(code, config, args)
    return time.monotonic() - began, proc


def write_config(workdir: Path, url: str) -> Path:
    config = workdir / "runner.cfg"
    (workdir / "tasks").mkdir(exist_ok=True)
    config.write_text(f"[runner]\ntask_dir = {workdir / 'tasks'}\nstate_dir = "
                      f"{workdir / 'state'}\nruntime_dir = {workdir / 'run'}\n"
                      f"journal_url = {url}\n")
    return config


def aged(commands, fleet: fleetgen.Fleet, made_at: datetime) -> list:
    """`commands` with {quiet} and {day} filled in for a fleet generated at `made_at`."""
    age = int((datetime.now(UTC) - made_at).total_seconds())
    values = {"quiet": f"{age + 86400 // fleet.iterations + 3600}s", "day": f"{age + 86400}s"}
    return [(name, [a.format(**values) for a in args], old) for name, args, old in commands]


def measure(server: Server, code: Path, config: Path, commands, cold: bool,
            quiet: float | None = None) -> list[dict]:
    results = []
    for name, args, _ in commands:
        warm = []
        proc = None
        for _ in range(6):  # the first warms the caches
            seconds, proc = timed(code, config, args, quiet)
            warm.append(seconds)
        assert proc is not None
        row = {"command": name, "status": proc.returncode, "warm_s": round(min(warm[1:]), 3)}
        if proc.returncode not in (0, 1):
            row["error"] = proc.stderr.strip()[-300:]
        if cold:
            server.cold()
            row["cold_s"] = round(timed(code, config, args, quiet)[0], 3)
        results.append(row)
        print(f"{name:40} warm {row['warm_s']:7.3f} s"
              + (f"  cold {row['cold_s']:7.3f} s" if cold else ""), file=sys.stderr, flush=True)
    return results


def measure_versus(code: Path, config: Path, old_code: Path, old_config: Path,
                   commands) -> list[dict]:
    """Each command of runner before (old_code on its own database) and now, in turns
    (old, new, old, new, ...): the machine's noise falls on both alike. Best of five."""
    results = []
    for name, args, _ in commands:
        old, new = [], []
        for _ in range(6):  # the first of each warms the caches
            old.append(timed(old_code, old_config, args)[0])
            new.append(timed(code, config, args)[0])
        row = {"command": name, "before_s": round(min(old[1:]), 3),
               "after_s": round(min(new[1:]), 3)}
        results.append(row)
        print(f"{name:40} before {row['before_s']:7.3f} s  after {row['after_s']:7.3f} s",
              file=sys.stderr, flush=True)
    return results


def recipe_hosts(code: Path, config: Path) -> tuple[set[str], float]:
    """The README recipe, jq and all: the hosts it names."""
    began = time.monotonic()
    proc = runner_command(code, config, RECIPE)
    assert proc.returncode == 0, proc.stderr
    jq = subprocess.run(["jq", "-r", RECIPE_JQ], input=proc.stdout, capture_output=True,
                        text=True, check=True)
    return set(jq.stdout.split()), time.monotonic() - began


def fleet_json(code: Path, config: Path, args: list[str]) -> dict:
    proc = runner_command(code, config, [*args, "--json"])
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def check(url: str, code: Path, config: Path, fleet: fleetgen.Fleet,
          made_at: datetime) -> dict:
    """The answers are right: AssertionError otherwise."""
    from runner.history import parse_since

    hosts, recipe_s = recipe_hosts(code, config)
    with connect(url) as conn:
        truth = {row[0] for row in conn.execute(
            "SELECT DISTINCT host FROM runner_task_runs WHERE task = '20-puppet.sh' "
            "AND started_at >= %s AND result <> 'OK'", (parse_since("today"),))}
    assert hosts == truth, (len(hosts), len(truth))
    assert set(fleet.failing_hosts()) <= hosts
    failing = fleet_json(code, config, ["fleet", "failing"])
    assert not failing["truncated"] and failing["total"] == fleet.failing, failing["total"]
    assert {r["host"] for r in failing["rows"]} == set(fleet.failing_hosts())
    assert {r["task"] for r in failing["rows"]} == {"20-puppet.sh"}
    commands = {name: args for name, args, _ in aged(COMMANDS, fleet, made_at)}
    silent = fleet_json(code, config, commands["fleet silent --since 1d"])
    assert {r["host"] for r in silent["rows"]} == set(fleet.silent_hosts()), silent["rows"]
    # Healthy hosts are quiet between iterations: longer than that is stuck.
    stuck = fleet_json(code, config, commands["fleet stuck"])
    assert {r["host"] for r in stuck["rows"]} == set(fleet.stuck_hosts()), stuck["rows"]
    assert {r["task"] for r in stuck["rows"]} == {fleetgen.task_name(fleetgen.STUCK_AT)}
    tasks = fleet_json(code, config, ["fleet", "tasks", "--since", "1d"])
    top = tasks["rows"][0]
    assert top["task"] == "20-puppet.sh" and top["hosts"] >= fleet.failing, top
    blame = check_blame(url, code, config, made_at)
    ready = fleet_json(code, config, ["fleet", "ready", "--since", f"{fleet.days + 1}d"])
    assert ready["rows"] and all(r["p50_s"] is not None for r in ready["rows"]), ready
    return {"recipe_hosts": len(hosts), "recipe_s": round(recipe_s, 3),
            "failing": failing["total"], "silent": len(silent["rows"]),
            "stuck": len(stuck["rows"]), "blame_tasks": blame}


def check_blame(url: str, code: Path, config: Path, made_at: datetime) -> int:
    """`runner blame --since` (from the rollup and the raw partial hour) gives the raw
    rows' sums; the number of tasks."""
    since = made_at - timedelta(days=1, minutes=-17)
    proc = runner_command(code, config, ["blame", "--since", since.isoformat(), "--json"])
    assert proc.returncode == 0, proc.stderr
    got = {r["task"]: (r["runs"], r["failures"], r["duration_s"], r["max_s"])
           for r in json.loads(proc.stdout)}
    with connect(url) as conn:
        want = {row[0]: (row[1], row[2], round(row[3], 3), row[4]) for row in conn.execute(
            "SELECT task, count(*), sum(CASE WHEN result = 'OK' THEN 0 ELSE 1 END), "
            "sum(coalesce(duration_s, 0)), max(duration_s) FROM runner_task_runs "
            "WHERE started_at >= %s GROUP BY task", (since,))}
    assert got == want, (got, want)
    return len(got)


def explain(url: str) -> str:
    """EXPLAIN ANALYZE of the queries behind each command, through runner.history
    (TIMING OFF: timing every row cost more than the queries on this VM)."""
    from runner import fleetquery, history
    from runner.commands.report import _run_bound

    out: list[str] = []
    reader = history.open_postgres(url)
    real = reader.conn

    class Explaining:
        def execute(self, sql, params=()):
            if sql.startswith("SET "):  # fleetrollup.NO_JIT: nothing to explain
                return real.execute(sql, params)
            plan = real.execute("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql, params).fetchall()
            out.append(sql.strip() + "\n" + "\n".join(row[0] for row in plan) + "\n")
            return real.execute(sql, params)

        def transaction(self):
            return real.transaction()

        def close(self):
            real.close()

    reader.conn = Explaining()
    since = history.parse_since
    tasks = reader.resolve_task("puppet")
    reader.history(history.Filters(tasks=tasks, since=since("today")), 50)
    reader.last_run(history.Filters(tasks=tasks, host=PROBE_HOST))
    reader.blame(history.Filters(since=since("1d")))
    run = reader.runs(PROBE_HOST)[0]
    reader.blame(history.Filters(run_id=run["run_id"],
                                 since=_run_bound(reader, run["started_at"])))
    questions = fleetquery.FleetQueries(reader)
    questions.failing()
    questions.stuck(3600)
    questions.silent(since("1d"))
    questions.tasks(since("today"))
    questions.ready(since("7d"))
    reader.close()
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=24)
    parser.add_argument("--tasks", type=int, default=14)
    parser.add_argument("--failing", type=int, default=None,
                        help="hosts whose newest run failed (default hosts / 40, at least 60)")
    parser.add_argument("--datadir", type=Path, help="keep the server and data here")
    parser.add_argument("--schema", type=int, choices=(1, 2), default=2)
    parser.add_argument("--code", type=Path, default=ROOT, help="the runner checkout to run")
    parser.add_argument("--migrate", action="store_true",
                        help="after measuring, migrate to schema 2 (timed) and measure again")
    parser.add_argument("--versus", type=Path, metavar="OLD_CODE",
                        help="also generate the fleet in schema 1 (database fleet_v1) and "
                        "time OLD_CODE's runner on it and this one on schema 2, in turns")
    parser.add_argument("--skip-before", action="store_true",
                        help="with --migrate: only migrate and measure after")
    parser.add_argument("--no-cold", action="store_true")
    parser.add_argument("--quiet", type=float, metavar="SHARE",
                        help="before each timing, wait (up to a minute) until the machine is "
                        "at most this busy (0.25: a quarter of its CPU time)")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--explain", action="store_true")
    parser.add_argument("--keep-running", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    failing = args.failing if args.failing is not None else max(60, args.hosts // 40)
    fleet = fleetgen.Fleet(hosts=args.hosts, days=args.days, iterations=args.iterations,
                           tasks=args.tasks, failing=failing)
    server = Server(args.datadir, big=fleet.task_runs() > 2_000_000)
    server.start()
    report: dict = {"fleet": fleet.__dict__, "schema": args.schema, "code": str(args.code)}
    try:
        now = datetime.now(UTC)
        report["generated"] = generate(server, fleet, args.schema, now)
        made_at = datetime.fromisoformat(report["generated"].get("made_at", now.isoformat()))
        commands_aged = aged(COMMANDS, fleet, made_at)
        with tempfile.TemporaryDirectory(prefix="runner-fleetbench-") as tmp:
            config = write_config(Path(tmp), server.url())
            commands = [c for c in commands_aged if args.schema >= 2 or c[2]]
            if not args.skip_before:
                report["results"] = measure(server, args.code, config, commands,
                                            not args.no_cold, args.quiet)
            if args.migrate and args.schema == 1:
                began = time.monotonic()
                create_schema(server.url(), 2)
                report["migrate_s"] = round(time.monotonic() - began, 1)
                with connect(server.url()) as conn:
                    conn.execute("VACUUM ANALYZE")
                    conn.execute("UPDATE runner_bench SET params = params || "
                                 "'{\"schema\": 2, \"migrated\": true}'")
                report["after_migrate"] = measure(server, ROOT, config, commands_aged,
                                                  not args.no_cold, args.quiet)
            if args.versus:
                report["old_db"] = generate(server, fleet, 1, now, "fleet_v1")
                old_dir = Path(tmp) / "old"
                old_dir.mkdir()
                old_config = write_config(old_dir, server.url("fleet_v1"))
                old_commands = [c for c in commands_aged if c[2]]
                report["versus"] = measure_versus(ROOT, config, args.versus, old_config,
                                                  old_commands)
            if args.check:
                report["check"] = check(server.url(), ROOT, config, fleet, made_at)
            if args.explain:
                report["explain"] = explain(server.url())
    finally:
        if not args.keep_running:
            server.close()
    if args.json:
        json.dump(report, sys.stdout, indent=2, default=str)
        print()
    else:
        print(json.dumps({k: v for k, v in report.items() if k != "explain"}, indent=2,
                         default=str))
        if "explain" in report:
            print(report["explain"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
