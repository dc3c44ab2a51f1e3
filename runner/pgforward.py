"""The forwarding process: what talks to PostgreSQL for `journal_url`, so runner does not.

runner's forwarder thread (runner.forwarder.Forwarder) starts `python -P -m
runner.pgforward` when the local journal has rows to send. Only this process imports
psycopg and libpq (with OpenSSL, Kerberos, LDAP: some 14 MB of resident memory that
runner itself never carries). It lives as long as the writes keep coming: the thread
closes its stdin once nothing was written for forwarder.LINGER_S, and it exits. Its
connection lives shorter still: it goes after CONNECTION_IDLE_S without a write, and at
the first pause after CONNECTION_MAX_S (a runner writing all the time must not keep a
slot that runners refused are waiting for). So the connections a fleet holds follow how
much it writes, not how many hosts are up.

The conversation, one JSON object a line:

  stdin, first line   {"url": ..., "db": local journal path, "migrate": bool,
                       "connect_timeout": seconds}  (the URL never goes on a command line)
  stdin, then         an empty line per "forward now"; EOF: close and exit
  stdout              one report per pass: {"ok": true, "sent": N, "pending": M}, or
                      {"ok": false, "error": "...", "pending": M, "permanent": bool}
                      (the next request retries; a permanent failure ends the process)

Every statement runs in a transaction of its own (autocommit, explicit transactions)
and psycopg prepares nothing (prepare_threshold=None), so the connection may be a
PgBouncer in transaction pooling mode: no state is kept in the session between
transactions (the migration's lock is pg_advisory_xact_lock).
"""

from __future__ import annotations

import json
import os
import select
import sqlite3
import sys
import time
from typing import Any, TextIO

from . import journalfile
from .pgjournal import SchemaTooNew, forward_batch, import_psycopg, pending_count, pg_connect

# The connection is held while writes keep coming, not while the process waits for them.
CONNECTION_IDLE_S = 0.5
CONNECTION_MAX_S = 5.0  # then let go at the next pass: a turn for the runners refused
# fleetschema.prune is asked on the first pass of a process and then this often (it does
# the work at most hourly for the whole fleet, and makes the day partitions ahead; it
# folds the blame rollup's deltas every few minutes: fleetrollup.COMPACT_EVERY).
PRUNE_EVERY_S = 300.0


def report(out: TextIO, **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def forward_all(local: sqlite3.Connection, remote: Any) -> int:
    """Every unsynced row, a batch (one transaction) at a time; the number sent."""
    sent = 0
    while count := forward_batch(local, remote):
        sent += count
    return sent


class Requests:
    """runner's side of the pipe, read unbuffered (select() must see what is unread)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def first_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                break
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def wait(self, timeout: float | None) -> bool | None:
        """True: "forward now" (lines that came together are one request: a pass sends
        everything anyway); False: EOF, runner let go of us; None: `timeout` passed."""
        if self.buffer:
            self.buffer = b""
            return True
        if not select.select([self.fd], [], [], timeout)[0]:
            return None
        return bool(os.read(self.fd, 65536))


def prune(remote: Any, keep_days: int) -> str | None:
    """fleet_keep_days, and the day partitions ahead (fleetschema.prune: at most hourly
    for the whole fleet, a try-lock, skipped while a query holds the table); what went
    wrong, if anything. Its failure is no outage: the rows went, and the next process
    asks again."""
    from .fleetschema import prune as prune_fleet

    try:
        prune_fleet(remote, keep_days)
    except Exception as exc:
        return reason(exc)
    return None


def _pending(local: sqlite3.Connection | None) -> int | None:
    try:
        return None if local is None else pending_count(local)
    except sqlite3.Error:
        return None


def _close(conn: Any) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception:  # a broken connection: nothing more to lose
            pass


def serve(hello: dict[str, Any], requests: Requests, out: TextIO) -> int:
    """Forward on every request until EOF. A failure is reported, and the next request
    tries again with a new connection (runner's exit flush retries within a second; the
    thread lets go of the process while it backs off); psycopg missing or a newer schema
    end the process. The connection goes after CONNECTION_IDLE_S without a request, or at
    the first pause after CONNECTION_MAX_S: a runner that writes all the time takes its
    turn like the others, and a fleet's connections follow its writes."""
    local = remote = None
    migrate = bool(hello.get("migrate", True))
    connected = 0.0
    pruned: float | None = None  # when this process last asked fleetschema.prune
    try:
        local = journalfile.connect(hello["db"])
        import_psycopg()
        while True:
            try:
                if remote is None:
                    remote = pg_connect(hello["url"], migrate_schema=migrate,
                                        timeout=hello.get("connect_timeout"))
                    migrate, connected = False, time.monotonic()
                sent = forward_all(local, remote)
                retention = None
                if pruned is None or time.monotonic() - pruned >= PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    retention = prune(remote, int(hello.get("fleet_keep_days") or 0))
                report(out, ok=True, sent=sent, pending=pending_count(local),
                       retention_error=retention)
            except SchemaTooNew:
                raise
            except Exception as exc:  # an outage: reported, the next request retries
                _close(remote)
                remote = None
                report(out, ok=False, error=reason(exc), pending=_pending(local))
                if not requests.wait(None):
                    return 1
                continue
            request = requests.wait(CONNECTION_IDLE_S)
            if request is None or time.monotonic() - connected > CONNECTION_MAX_S:
                _close(remote)
                remote = None
            if request is None:
                request = requests.wait(None)
            if not request:
                return 0
    except Exception as exc:  # retrying cannot mend it: psycopg, the schema, the journal
        permanent = isinstance(exc, (ImportError, SchemaTooNew))
        report(out, ok=False, error=reason(exc), pending=_pending(local),
               permanent=permanent)
        return 1
    finally:
        _close(remote)
        _close(local)


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main() -> int:
    requests = Requests(sys.stdin.fileno())
    try:
        hello = json.loads(requests.first_line())
    except ValueError:
        report(sys.stdout, ok=False, error="forwarder: no start line", permanent=True)
        return 2
    return serve(hello, requests, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
