"""A generated fleet journal in runner's own schema, made with SQL (generate_series), for
bench/fleet_queries.py and the tests of the fleet questions.

The fleet: `hosts` hosts over the last `days` days before `now`. Each host has one runner
run a day (d = 0 is the newest, started about 24 h before `now`), looping `iterations`
times (one try each, an iteration every 24 h / iterations) over `tasks` tasks of about
1-9 s each, 10 s apart. 2% of the tries fail (RETRY) at a task picked by a hash; the
chain's try ends there. Besides, by host number:

  failing  hosts 1..F: their newest run fails at 20-puppet.sh in every iteration and
           ended GAVE_UP (exit 1): `fleet failing` names them, and the README recipe
           (history --task puppet --since today --json) finds exactly them
  silent   the next S hosts: no run in the last day (their newest is from d = 1)
  stuck    the next K hosts: their newest run is running, its last try is at
           20-puppet.sh's successor, 30-network.sh, RUNNING since half a day

At 5,000 hosts x 30 days x 24 iterations x 14 tasks that is ~50 M task runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

NAMES = ("base", "puppet", "network", "disks", "users", "ssh", "ntp", "monitoring", "logs",
         "packages", "firewall", "certs", "dns", "cleanup", "backup", "kernel", "sysctl",
         "mounts", "audit", "ready")
PUPPET = 2  # 20-puppet.sh
STUCK_AT = 3  # 30-network.sh


def task_name(number: int) -> str:
    name = NAMES[number - 1] if number <= len(NAMES) else f"task{number}"
    return f"{number * 10:02d}-{name}.sh"


def host_name(number: int) -> str:
    return f"host-{number:05d}"


@dataclass
class Fleet:
    hosts: int = 200
    days: int = 3
    iterations: int = 24
    tasks: int = 14
    failing: int = 60
    silent: int = 5
    stuck: int = 4

    def task_runs(self) -> int:
        """About how many task runs (failures end a try early)."""
        return self.hosts * self.days * self.iterations * self.tasks

    def failing_hosts(self) -> list[str]:
        return [host_name(n) for n in range(1, self.failing + 1)]

    def silent_hosts(self) -> list[str]:
        first = self.failing + 1
        return [host_name(n) for n in range(first, first + self.silent)]

    def stuck_hosts(self) -> list[str]:
        first = self.failing + self.silent + 1
        return [host_name(n) for n in range(first, first + self.stuck)]


def _tries_sql(fleet: Fleet) -> str:
    """The runs and tries of day `d` (%(d)s) into temporary tables gen_runs, gen_tries."""
    f = fleet.failing
    s = f + fleet.silent
    k = s + fleet.stuck
    i_count, t_count = fleet.iterations, fleet.tasks
    slot = 86400 // i_count
    return f"""
    DROP TABLE IF EXISTS gen_runs;
    CREATE TEMPORARY TABLE gen_runs AS
    SELECT h, 'host-' || lpad(h::text, 5, '0') AS host,
           'run-' || lpad(h::text, 5, '0') || '-' || %(d)s AS run_id,
           %(now)s::timestamptz - (%(d)s + 1) * interval '1 day' + (h %% 600) * interval '1 s'
               AS started_at,
           %(d)s = 0 AND h <= {f} AS failing,
           %(d)s = 0 AND h > {s} AND h <= {k} AS stuck
    FROM generate_series(1, {fleet.hosts}) AS h
    WHERE NOT (%(d)s = 0 AND h > {f} AND h <= {s});
    DROP TABLE IF EXISTS gen_tries;
    CREATE TEMPORARY TABLE gen_tries AS
    SELECT r.*, i, r.started_at + (i - 1) * interval '{slot} s' AS try_at,
           CASE WHEN r.failing THEN {PUPPET}
                WHEN r.stuck AND i = {i_count // 2} THEN {STUCK_AT}
                WHEN abs(hashtext(r.run_id || ':' || i)) %% 1000 < 20
                THEN 1 + abs(hashtext(r.run_id || '/' || i)) %% {t_count} END AS last_t,
           r.stuck AND i = {i_count // 2} AS running
    FROM gen_runs r, generate_series(1, {i_count}) AS i
    WHERE NOT (r.stuck AND i > {i_count // 2});
    INSERT INTO runner_runs (run_id, host, boot_id, pid, pid_start, version, config,
        task_dir, started_at, ended_at, result, exit_status)
    SELECT run_id, host, md5(run_id), 1000 + h, 100, 'bench', '/etc/runner/runner.cfg',
        '/etc/runner/tasks.d', started_at,
        CASE WHEN failing THEN started_at + interval '{slot * (i_count - 1) + 60} s'
             WHEN %(d)s > 0 THEN started_at + interval '86280 s' END,
        CASE WHEN failing THEN 'GAVE_UP' WHEN %(d)s > 0 THEN 'DONE' ELSE 'RUNNING' END,
        CASE WHEN failing THEN 1 WHEN %(d)s > 0 THEN 0 END
    FROM gen_runs;
    INSERT INTO runner_tries (run_id, iteration, try_num, host, boot_id, started_at,
        ended_at, result, failed_task)
    SELECT run_id, i, 1, host, md5(run_id), try_at,
        CASE WHEN NOT running THEN try_at + coalesce(last_t, {t_count}) * interval '10 s' END,
        CASE WHEN running THEN 'RUNNING' WHEN last_t IS NULL THEN 'OK' ELSE 'RETRY' END,
        CASE WHEN NOT running AND last_t IS NOT NULL
             THEN (%(names)s::text[])[last_t] END
    FROM gen_tries;
    """


def _task_runs_sql(fleet: Fleet) -> str:
    return f"""
    INSERT INTO runner_task_runs (run_id, seq, host, boot_id, iteration, try_num, max_tries,
        task, kind, result, exit_code, signal, error, started_at, ended_at, duration_s,
        output, cpu_user_s, cpu_system_s, peak_memory_bytes)
    SELECT run_id, (i - 1) * {fleet.tasks} + t, host, md5(run_id), i, 1, 5,
        (%(names)s::text[])[t], 'task',
        CASE WHEN t = last_t AND running THEN 'RUNNING' WHEN t = last_t THEN 'RETRY'
             ELSE 'OK' END,
        CASE WHEN t = last_t AND running THEN NULL WHEN t = last_t THEN 1 ELSE 0 END,
        NULL, NULL, at, CASE WHEN NOT (t = last_t AND running) THEN at + dur END,
        CASE WHEN NOT (t = last_t AND running) THEN extract(epoch FROM dur) END,
        convert_to((%(names)s::text[])[t] || ' done on ' || host || E'\\n', 'UTF8'),
        extract(epoch FROM dur) * 0.3, extract(epoch FROM dur) * 0.1,
        10000000 + abs(hashtext(run_id || t)) %% 1000 * 10000
    FROM (SELECT g.*, t, g.try_at + (t - 1) * interval '10 s' AS at,
                 (1 + abs(hashtext(g.run_id || i || t)) %% 800 / 100.0) * interval '1 s' AS dur
          FROM gen_tries g, generate_series(1, coalesce(g.last_t, {fleet.tasks})) AS t) x
    """


def generate(conn: Any, fleet: Fleet, now: datetime, progress: Any = None) -> int:
    """Fill the (empty, migrated) fleet journal on `conn` (autocommit); the number of
    task runs. One transaction per day, oldest first, as hosts would have sent them."""
    names = [task_name(n) for n in range(1, max(fleet.tasks, 1) + 1)]
    params = {"now": now, "names": names}
    total = 0
    for d in reversed(range(fleet.days)):
        with conn.transaction():
            for statement in _tries_sql(fleet).split(";"):
                if statement.strip():
                    conn.execute(statement, {**params, "d": d})
            total += conn.execute(_task_runs_sql(fleet), params).rowcount
        if progress:
            progress(fleet.days - d, fleet.days, total)
    return total
