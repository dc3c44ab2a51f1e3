"""A record the journal refuses (a trigger that RAISEs for one task, installed in the real
journal file) is reported, counted and dropped; it never blocks the records after it,
and the run still ends with its real result."""

from __future__ import annotations

import json
import sqlite3

from conftest import Workspace

REFUSED = "20-refused.sh"
TRIGGER = f"""
    CREATE TRIGGER refuse_one BEFORE INSERT ON task_runs WHEN NEW.task = '{REFUSED}'
    BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END;
"""


def journal(ws: Workspace) -> sqlite3.Connection:
    return sqlite3.connect(ws.state / "journal.sqlite")


def test_a_refused_record_is_dropped_reported_and_the_rest_is_written(ws):
    ws.task("00-first.sh", "echo first")
    assert ws.run("-n", "1").returncode == 0  # creates the journal, with its schema
    with journal(ws) as conn:
        conn.executescript(TRIGGER)
    names = ["10-before.sh", REFUSED, "30-after.sh", "40-last.sh"]
    for name in names:
        ws.task(name, f"echo {name} says hi")
    (ws.tasks / "00-first.sh").unlink()

    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "failed in" not in proc.stderr
    # Reported once per refused record (one start per iteration; its end then updates
    # no row, which is no error), naming the task and SQLite's reason.
    refusals = [line for line in proc.stderr.splitlines() if "SQLite refused" in line]
    assert len(refusals) == 2, proc.stderr
    assert all(f"task_runs record of {REFUSED}: refused by the test trigger" in line
               for line in refusals)

    with journal(ws) as conn:
        rows = conn.execute("SELECT task, r.result, output FROM task_runs r JOIN runs USING "
                            "(run_id) ORDER BY runs.started_at, seq").fetchall()
        runs = conn.execute("SELECT result, exit_status FROM runs ORDER BY started_at"
                            ).fetchall()
        tries = conn.execute("SELECT iteration, result FROM tries WHERE run_id = (SELECT "
                             "run_id FROM runs ORDER BY started_at DESC LIMIT 1)").fetchall()
    written = [name for name in names if name != REFUSED]
    # Counted: every record but the refused ones, both iterations, in order.
    assert [(t, r) for t, r, _ in rows[1:]] == [(n, "OK") for n in written * 2]
    assert all(out == f"{t} says hi\n".encode() for t, _, out in rows[1:])
    assert runs == [("DONE", 0), ("DONE", 0)]  # not left RUNNING, nor INTERRUPTED
    assert sorted(tries) == [(1, "OK"), (2, "OK")]

    # Health in status.json and `runner status`, after runner exited.
    status = json.loads((ws.root / "run" / "status.json").read_text())
    health = status["journal"]
    assert (health["ok"], health["held"], health["rejected"]) == (True, 0, 2)
    assert REFUSED in health["rejected_error"]
    assert "refused by the test trigger" in health["rejected_error"]
    shown = ws.run("status", tasks=False)
    assert shown.returncode == 0, shown.stderr
    assert "journal: 2 record(s) REFUSED by SQLite and dropped; the last: task_runs " \
           f"record of {REFUSED}: refused by the test trigger" in shown.stdout, shown.stdout
    as_json = json.loads(ws.run("status", "--json", tasks=False).stdout)
    assert as_json["journal"]["rejected"] == 2
