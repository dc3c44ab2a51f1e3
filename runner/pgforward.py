"""The forwarding process: what talks to PostgreSQL for `journal_url`, so runner does not.

runner's forwarder thread (runner.pgjournal.Forwarder) starts `python -P -m
runner.pgforward` when the local journal has rows to send. Only this process imports
psycopg and libpq (with OpenSSL, Kerberos, LDAP: some 14 MB of resident memory that
runner itself never carries), and it holds the one database connection. It lives as long
as the work does: the thread closes its stdin once nothing was written for a moment
(pgjournal.LINGER_S), and the process closes the connection and exits. So the
connections a fleet holds follow how much it writes, not how many hosts are up.

The conversation, one JSON object a line:

  stdin, first line   {"url": ..., "db": local journal path, "migrate": bool,
                       "connect_timeout": seconds}  (the URL never goes on a command line)
  stdin, then         an empty line per "forward now"; EOF: close and exit
  stdout              one report per pass: {"ok": true, "sent": N, "pending": M}, or
                      {"ok": false, "error": "...", "pending": M, "permanent": bool}
                      after which the process exits (the thread backs off)

Every statement runs in a transaction of its own (autocommit, explicit transactions)
and psycopg prepares nothing (prepare_threshold=None), so the connection may be a
PgBouncer in transaction pooling mode: no state is kept in the session between
transactions (the migration's lock is pg_advisory_xact_lock).
"""

from __future__ import annotations

import json
import select
import sqlite3
import sys
from typing import Any, TextIO

from . import journalfile
from .pgjournal import SchemaTooNew, forward_batch, import_psycopg, pending_count, pg_connect


def report(out: TextIO, **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def forward_all(local: sqlite3.Connection, remote: Any) -> int:
    """Every unsynced row, a batch (one transaction) at a time; the number sent."""
    sent = 0
    while count := forward_batch(local, remote):
        sent += count
    return sent


def next_request(source: TextIO) -> bool:
    """Wait for the next "forward now" line; False on EOF (the thread let go of us).
    Lines that arrived together are one request: the pass sends everything anyway."""
    line = source.readline()
    if not line:
        return False
    while select.select([source], [], [], 0)[0]:
        if not source.readline():
            return False  # EOF right after: this pass is the last
    return True


def _pending(local: sqlite3.Connection | None) -> int | None:
    try:
        return None if local is None else pending_count(local)
    except sqlite3.Error:
        return None


def serve(hello: dict[str, Any], source: TextIO, out: TextIO) -> int:
    """Forward on every request until EOF; a failure is reported and ends the process."""
    local = remote = None
    try:
        local = journalfile.connect(hello["db"])
        import_psycopg()
        remote = pg_connect(hello["url"], migrate_schema=hello.get("migrate", True),
                            timeout=hello.get("connect_timeout"))
        while True:
            sent = forward_all(local, remote)
            report(out, ok=True, sent=sent, pending=pending_count(local))
            if not next_request(source):
                return 0
    except Exception as exc:  # reported to the thread, which masks it and backs off
        permanent = isinstance(exc, (ImportError, SchemaTooNew))
        report(out, ok=False, error=reason(exc), pending=_pending(local),
               permanent=permanent)
        return 1
    finally:
        for conn in (remote, local):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # a broken connection: nothing more to lose
                    pass


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main() -> int:
    line = sys.stdin.readline()
    try:
        hello = json.loads(line)
    except ValueError:
        report(sys.stdout, ok=False, error="forwarder: no start line", permanent=True)
        return 2
    return serve(hello, sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
