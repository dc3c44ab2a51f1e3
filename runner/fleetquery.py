"""The fleet questions of `runner fleet`, asked of the PostgreSQL fleet journal.

Each answer reads a bounded set, whatever the journal's size: the hosts come from a skip
scan of runner_runs (host, started_at) (one index probe per host, not a read of every
run), each host's newest run is one probe more, and what else a question needs is looked
up per host or per run through an index (runner.fleetschema lists them), or read from the
partitions of the period asked about only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from .fleetschema import FAILED_SQL
from .history import Reader

# A run that ended with one of these did not fail: it finished, a task said exit, or it
# was stopped (a shutdown); RUNNING has not ended.
NOT_FAILED_RUNS = ("DONE", "EXIT", "SIGTERM", "SIGINT", "RUNNING")
# Each host's newest run (the CTE every host question starts from).
NEWEST_RUNS = """
WITH RECURSIVE hosts(host) AS (
    SELECT min(host) FROM runner_runs
    UNION ALL
    SELECT (SELECT min(host) FROM runner_runs WHERE host > hosts.host)
    FROM hosts WHERE hosts.host IS NOT NULL
), newest AS (
    SELECT r.* FROM hosts, LATERAL (
        SELECT run_id, host, started_at, ended_at, result, exit_status FROM runner_runs
        WHERE runner_runs.host = hosts.host ORDER BY started_at DESC LIMIT 1) AS r
    WHERE hosts.host IS NOT NULL
)
"""
# "ORDER BY host DESC, started_at DESC" where host is fixed: it changes nothing but makes
# PostgreSQL use (host, started_at) rather than filter a day of the (started_at) index
# (runner.history.Reader.newest_first). A run's task runs start after it does; a day's
# margin for a host clock set back during the run. The bound lets PostgreSQL read only
# the partitions since then.
RUN_MARGIN = "interval '1 day'"


class FleetQueries:
    """The questions, each a list of plain records (JSON-ready), on a PostgreSQL Reader."""

    def __init__(self, reader: Reader) -> None:
        if not reader.postgres:
            raise ValueError("the fleet questions need the PostgreSQL fleet journal")
        self.reader = reader

    def failing(self) -> list[dict[str, Any]]:
        """Hosts whose newest run ended failed or halted, with the task it failed at (the
        failed task of its last try that ended)."""
        not_failed = ", ".join(f"'{r}'" for r in NOT_FAILED_RUNS)
        return self.reader.rows(
            NEWEST_RUNS + "SELECT n.host, n.result, t.failed_task AS task, n.exit_status, "
            "n.ended_at, n.started_at, n.run_id, t.iteration, t.try_num FROM newest n "
            "LEFT JOIN LATERAL (SELECT failed_task, iteration, try_num FROM runner_tries "
            " WHERE run_id = n.run_id AND ended_at IS NOT NULL"
            " ORDER BY iteration DESC, try_num DESC LIMIT 1) AS t ON true "
            f"WHERE n.result NOT IN ({not_failed}) ORDER BY n.host")

    def stuck(self, quiet_s: float, now: datetime | None = None) -> list[dict[str, Any]]:
        """Hosts whose newest run still runs and whose newest task run has said nothing
        for `quiet_s` seconds: still running since then, or ended then with nothing
        after it. (The journal does not hold max_time; the threshold is the caller's.)"""
        cutoff = (now or _now()) - timedelta(seconds=quiet_s)
        # A host with a task run started since the cutoff is not stuck: that question
        # reads today's partitions only (the cutoff is known when PostgreSQL plans it);
        # only the hosts left get their newest task run looked up.
        return self.reader.rows(
            NEWEST_RUNS + ", candidates AS MATERIALIZED (SELECT * FROM newest n"
            " WHERE n.result = 'RUNNING' AND n.ended_at IS NULL AND NOT EXISTS ("
            "  SELECT 1 FROM runner_task_runs a WHERE a.host = n.host AND a.started_at >= ?)"
            "), quiet AS (SELECT c.host, c.run_id, c.started_at AS run_started_at,"
            " t.task, t.result, t.started_at, t.ended_at,"
            " coalesce(t.ended_at, t.started_at, c.started_at) AS last_event_at"
            " FROM candidates c LEFT JOIN LATERAL (SELECT task, result, started_at, ended_at"
            "  FROM runner_task_runs WHERE host = c.host"
            f"  AND started_at >= c.started_at - {RUN_MARGIN}"
            "  ORDER BY host DESC, started_at DESC LIMIT 1) AS t ON true) "
            "SELECT * FROM quiet WHERE last_event_at < ? ORDER BY last_event_at, host",
            (cutoff, cutoff))

    def silent(self, since: datetime) -> list[dict[str, Any]]:
        """Hosts with no run and no task run started since `since`, with when they were
        last heard of (looked up for those hosts only)."""
        return self.reader.rows(
            NEWEST_RUNS + ", candidates AS MATERIALIZED (SELECT * FROM newest n"
            " WHERE n.started_at < ? AND NOT EXISTS (SELECT 1 FROM runner_task_runs a"
            "  WHERE a.host = n.host AND a.started_at >= ?)) "
            "SELECT c.host, coalesce(t.started_at, c.started_at) AS last_seen_at, "
            "c.started_at AS last_run_at, c.result, c.run_id FROM candidates c "
            "LEFT JOIN LATERAL (SELECT started_at FROM runner_task_runs "
            f" WHERE host = c.host AND started_at >= c.started_at - {RUN_MARGIN} "
            " ORDER BY host DESC, started_at DESC LIMIT 1) AS t ON true "
            "ORDER BY last_seen_at, c.host",
            (since, since))

    def tasks(self, since: datetime) -> list[dict[str, Any]]:
        """Tasks by the number of hosts they failed on since `since` (the partial index
        of failures: a day's successes are not read)."""
        return self.reader.rows(
            "SELECT task, count(DISTINCT host) AS hosts, count(*) AS failures, "
            "max(started_at) AS last_failed_at FROM runner_task_runs "
            f"WHERE started_at >= ? AND {FAILED_SQL} GROUP BY task "
            "ORDER BY hosts DESC, failures DESC, task", (since,))

    def host_count(self) -> int:
        rows = self.reader.rows(NEWEST_RUNS + "SELECT count(*) AS hosts FROM newest")
        return int(rows[0]["hosts"])

    def ready(self, since: datetime) -> list[dict[str, Any]]:
        """Per UTC day of runs started since `since`: time from a run's start to the end
        of its first try that passed (the chain's first pass: READY), percentiles."""
        rows = self.reader.rows(
            "SELECT (r.started_at AT TIME ZONE 'UTC')::date AS day, count(*) AS runs, "
            "count(p.first_ok) AS ready, "
            "percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP "
            " (ORDER BY extract(epoch FROM p.first_ok - r.started_at)) AS pct, "
            "max(extract(epoch FROM p.first_ok - r.started_at)) AS max_s "
            "FROM runner_runs r LEFT JOIN LATERAL (SELECT min(ended_at) AS first_ok "
            " FROM runner_tries t WHERE t.run_id = r.run_id AND t.result = 'OK') AS p "
            "ON true WHERE r.started_at >= ? GROUP BY 1 ORDER BY 1", (since,))
        answer = []
        for row in rows:
            pct = row.pop("pct") or [None, None, None]
            answer.append({
                "day": str(row["day"]), "runs": row["runs"], "ready": row["ready"],
                "p50_s": _round(pct[0]), "p90_s": _round(pct[1]), "p99_s": _round(pct[2]),
                "max_s": _round(row["max_s"]),
            })
        return answer


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)


def _now() -> datetime:
    from datetime import UTC

    return datetime.now(UTC)
