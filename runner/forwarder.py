"""When the local journal goes to PostgreSQL (journal_url): a thread in runner that starts
the forwarding process (runner.pgforward), tells it when there is work, lets it go when
there is none, and backs off when the database cannot be reached.

- A connection per burst of work, not per host: a write wakes the thread, which gathers
  the writes of the next GATHER_S into one pass. The process starts for a burst and ends
  LINGER_S after its last write; its connection goes sooner (runner.pgforward:
  CONNECTION_IDLE_S after a pass, at most CONNECTION_MAX_S while writes keep coming). A
  host running a task for an hour holds no connection for that hour.
- Any failure (refused, "too many clients" (53300), a timeout, an error mid-batch) is an
  outage: nothing is lost (the rows stay unsynced in the local journal) and the next
  attempt waits backoff_delay(): doubling from BACKOFF_FIRST_S up to MAX_BACKOFF_S, the
  upper half of it at random, so a fleet that lost its database together does not come
  back together. While backing off, journal writes do not wake the thread.
- At exit (finished) runner keeps trying for up to FLUSH_AT_EXIT_S, with short retries,
  then leaves what is left for the next start.
- runner itself never imports psycopg (libpq, OpenSSL ...: 14 MB resident): only the
  forwarding process does.
"""

from __future__ import annotations

import json
import logging
import random
import select
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import journalfile, reaper
from .events import Listener
from .identity import iso, utc_now
from .masking import Masker, mask_url
from .pgjournal import CONNECT_TIMEOUT_S, ForwardHealth, pending_count

log = logging.getLogger("runner.journal")

IDLE_S = 60.0  # look for rows to forward at least this often: earlier runs, recoveries
LINGER_S = 3.0  # the forwarding process outlives the last write by this
GATHER_S = 1.0  # a write waits this long for the writes after it: one pass, one connection
BACKOFF_FIRST_S = 1.0
MAX_BACKOFF_S = 60.0
FLUSH_AT_EXIT_S = 10.0  # README: "at exit runner keeps trying for up to 10 s"
EXIT_RETRY_S = 0.25  # the first retry at exit; doubling up to EXIT_RETRY_MAX_S
EXIT_RETRY_MAX_S = 1.0
PASS_TIMEOUT_S = 300.0  # a pass that says nothing for this long is stuck: end it
COMMAND = [sys.executable, "-P", "-m", "runner.pgforward"]  # -P: not the cwd's modules


def backoff_delay(failures: int, first: float = BACKOFF_FIRST_S, cap: float = MAX_BACKOFF_S,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after `failures` failed attempts in a row: first·2^(failures-1),
    capped, of which the upper half at random (jitter)."""
    ceiling = min(cap, first * 2 ** max(failures - 1, 0))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


@dataclass
class Pass:
    """What one forwarding pass came to (a report of runner.pgforward)."""

    ok: bool
    sent: int = 0
    pending: int | None = None
    error: str | None = None
    permanent: bool = False  # psycopg missing, a newer schema: retrying cannot help
    gone: bool = False  # the process ended without a word (killed, crashed)

    @classmethod
    def parse(cls, line: str) -> Pass:
        try:
            fields = json.loads(line)
            return cls(ok=bool(fields["ok"]), sent=int(fields.get("sent") or 0),
                       pending=fields.get("pending"), error=fields.get("error"),
                       permanent=bool(fields.get("permanent")))
        except (ValueError, KeyError, TypeError):
            return cls(ok=False, error=f"forwarding process said {line.strip()[:200]!r}")


class ForwardProcess:
    """One forwarding process (runner.pgforward) and its connection, seen from runner."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    @classmethod
    def start(cls, hello: dict[str, Any]) -> ForwardProcess:
        """Start one; it connects and forwards everything pending at once. The URL (it
        may hold a password) goes through the pipe, never on a command line."""
        proc = reaper.popen(COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, close_fds=True,
                            process_group=0)  # a Ctrl-C at a terminal is runner's to handle
        child = cls(proc)
        try:
            child.send(json.dumps(hello))
        except OSError:
            pass  # it ended already: answer() says how
        return child

    def send(self, line: str = "") -> None:
        """A line on its stdin: the first is the start line, an empty one "forward now"."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float) -> Pass:
        """Its report of the pass under way, waiting up to `timeout` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], max(timeout, 0))
        if not ready:
            return Pass(ok=False, error=f"no answer from PostgreSQL in {timeout:.0f} s",
                        gone=True)
        line = self.proc.stdout.readline()
        if not line:
            status = self.proc.wait()
            return Pass(ok=False, error=f"forwarding process ended (status {status})",
                        gone=True)
        return Pass.parse(line)

    def close(self, grace: float = 5.0) -> None:
        """EOF on its stdin: it closes the connection and exits (killed if it does not)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        reaper.release(self.proc)


class Forwarder(Listener):
    """Forwards the local journal to PostgreSQL: a thread of its own, a process per burst."""

    def __init__(self, url: str, db_path: str, masker: Masker | None = None,
                 fleet_keep_days: int = 0) -> None:
        self.on_change: Callable[[], None] | None = None  # health changed (from the thread)
        self.url = url
        # What psycopg says can quote the URL: every error is masked before status.json
        # or a log line gets it.
        self.masker = masker or Masker.for_url(url)
        self.db_path = db_path
        self.fleet_keep_days = fleet_keep_days  # the process prunes (fleetschema.prune)
        self.health = ForwardHealth(mask_url(url))
        self.wakeup = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="journal-forwarder", daemon=True)
        self.child: ForwardProcess | None = None
        self.migrated = False  # once per runner's life: later processes skip it
        self.permanent = False  # a failure retrying cannot mend: stop trying this run
        self.exit_deadline = 0.0

    def wake(self) -> None:
        """A journal write: forward it now, unless forwarding is backing off from a
        failure (every write would reconnect at once, and the forwarder's reads of the
        local journal at every attempt kept SQLite from checkpointing its WAL, past
        journal_max_mb). runner's exit still makes the last attempts (finished)."""
        if self.health.ok:
            self.wakeup.set()

    def started(self) -> None:
        self.thread.start()

    def finished(self, status: int) -> None:
        if not self.thread.is_alive():
            return
        self.exit_deadline = time.monotonic() + FLUSH_AT_EXIT_S
        self.stopping.set()  # the thread makes its last attempts, then ends
        self.wakeup.set()
        self.thread.join(FLUSH_AT_EXIT_S + 1.0)
        child = self.child
        if self.thread.is_alive() and child is not None:
            child.proc.kill()  # stuck past the deadline: its rows wait for the next start
        snapshot = self.health.snapshot()
        if self.thread.is_alive() or snapshot["pending"]:
            log.warning(
                "journal_url %s: %s record(s) not forwarded yet; they stay in the local "
                "journal and are sent after the next start",
                snapshot["url"], snapshot["pending"] or "some",
            )

    # -- the thread -------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        delay = 0.0  # at once: what earlier runs left
        while True:
            woke = self.wakeup.wait(LINGER_S if self.child is not None else delay)
            self.wakeup.clear()
            if self.stopping.is_set():
                break
            if not woke and self.child is not None:
                self._let_go()  # idle: the process and its connection end
                delay = IDLE_S
                continue
            if self.permanent or (not woke and not self._pending_here()):
                delay = IDLE_S
                continue
            if woke and self.stopping.wait(GATHER_S):
                break
            self.wakeup.clear()
            result = self._pass(CONNECT_TIMEOUT_S, PASS_TIMEOUT_S)
            failures = 0 if result.ok else failures + 1
            delay = IDLE_S if result.ok else backoff_delay(failures)
        self._flush_at_exit()

    def _flush_at_exit(self) -> None:
        """Keep trying until everything is sent or FLUSH_AT_EXIT_S is up, retrying soon
        after a failure: an exit is the moment the fleet journal most wants the rows."""
        failures = 0
        while not self.permanent:
            left = self.exit_deadline - time.monotonic()
            if left <= 0:
                break
            result = self._pass(min(CONNECT_TIMEOUT_S, max(left, 2.0)), left, keep=True)
            if result.ok and not result.pending:
                break
            if not result.ok:
                failures += 1
                pause = backoff_delay(failures, EXIT_RETRY_S, EXIT_RETRY_MAX_S)
                time.sleep(max(min(pause, self.exit_deadline - time.monotonic()), 0))
        self._let_go()

    def _pending_here(self) -> bool:
        """Whether the local journal has rows to send (read here: no process started
        for nothing)."""
        try:
            local = journalfile.connect(self.db_path, readonly=True)
        except (journalfile.JournalError, sqlite3.Error, OSError):
            return False
        try:
            return pending_count(local) > 0
        except sqlite3.Error:
            return False
        finally:
            local.close()

    def _pass(self, connect_timeout: float, wait: float, keep: bool = False) -> Pass:
        """Forward everything pending through the running process, or a new one;
        `keep`: the process stays after a failure (a retry soon needs no new one)."""
        result = self._attempt(connect_timeout, wait, keep)
        if result.gone and self.child is None and not self.stopping.is_set():
            result = self._attempt(connect_timeout, wait, keep)  # it died: a new one
        self._record(result)
        return result

    def _attempt(self, connect_timeout: float, wait: float, keep: bool) -> Pass:
        fresh = self.child is None
        try:
            if self.child is None:
                self.child = ForwardProcess.start({
                    "url": self.url, "db": self.db_path, "migrate": not self.migrated,
                    "connect_timeout": connect_timeout,
                    "fleet_keep_days": self.fleet_keep_days})
            else:
                self.child.send()
            result = self.child.answer(wait)
        except OSError as exc:
            result = Pass(ok=False, error=f"forwarding process: {exc}", gone=True)
        if not result.ok and (result.gone or result.permanent or not keep):
            self._let_go()  # backing off, it need not wait with psycopg loaded
        result.gone = result.gone and not fresh  # a new one failing is an outage
        return result

    def _let_go(self) -> None:
        child, self.child = self.child, None
        if child is not None:  # at exit, a pass cut short is sent again next time
            child.close(0.5 if self.stopping.is_set() else 5.0)

    def _record(self, result: Pass) -> None:
        if not result.ok:
            self.permanent = self.permanent or result.permanent
            self._failed(self.masker.text(result.error or "failed"), result.pending)
            return
        self.migrated = True
        with self.health.lock:
            was_failing = not self.health.ok
            self.health.ok, self.health.error, self.health.since = True, None, None
            if result.pending is not None:
                self.health.pending = result.pending
            self.health.forwarded += result.sent
            if result.sent:
                self.health.last_forward_at = iso(utc_now())
        if was_failing:
            log.warning("journal_url %s: reachable again; forwarded %d buffered record(s)",
                        self.health.url, result.sent)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception as exc:  # the status file is a convenience, forwarding is not
                log.debug("status refresh failed: %s", exc)

    def _failed(self, reason: str, pending: int | None) -> None:
        with self.health.lock:
            if pending is not None:
                self.health.pending = pending
            first = self.health.ok
            self.health.ok, self.health.error = False, reason
            if first:
                self.health.since = iso(utc_now())
        if first:
            log.warning(
                "journal_url %s: cannot forward (%s); records are kept in the local journal "
                "and sent when it is reachable", self.health.url, reason,
            )
            self._changed()
