"""The live status file (runtime_dir/status.json): what runner is doing right now.

`runner status` reads it for what the journal cannot say: the task running this very
moment, a backoff in progress, and whether the journal itself can be written. It lives
in runtime_dir (tmpfs under systemd) so a full or read-only state_dir cannot silence it.
Where it is and reading it back are runner.statusfile's (light, for `runner status`),
re-exported here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from .escape import escape
from .events import Listener
from .files import make_dir, write_atomic
from .identity import RunIdentity, iso, utc_now
from .masking import masked_json
from .states import TaskRun, TaskState
from .statusfile import FILE_NAME as FILE_NAME
from .statusfile import read_status as read_status
from .statusfile import status_path as status_path

log = logging.getLogger("runner.status")

# Task starts and ends are written this long after they happen (or with the next write
# that comes first): a task that runs for less is not worth showing, and in a chain of
# short tasks this saves two file replacements per task. Waits, the end of an iteration
# and runner's exit are written at once.
DEFER_S = 0.05


class LiveStatus(Listener):
    """Rewrites the status file atomically at every event (task starts and ends at most
    DEFER_S later)."""

    def __init__(
        self,
        runtime_dir: str,
        identity: RunIdentity,
        *,
        run_info: dict[str, Any],
        health: Callable[[], dict[str, Any]],
        mask: Callable[[str], str] = lambda text: text,
    ) -> None:
        self.mask = mask
        self.path = status_path(runtime_dir)
        self.runtime_dir = runtime_dir
        self.health = health
        self.failed = False
        self.active = False
        self.running: dict[str, str | None] = {}  # task -> started at
        self.lock = threading.Lock()  # the forwarder thread refreshes the file too
        self.wake = threading.Condition(self.lock)
        self.dirty_since: float | None = None  # a deferred change not yet written
        self.flusher: threading.Thread | None = None
        self.closed = False
        self.state: dict[str, Any] = {
            "run_id": identity.run_id, "host": identity.host, "boot_id": identity.boot_id,
            "pid": identity.pid, "pid_start": identity.pid_start, **run_info,
            "started_at": iso(utc_now()), "state": "starting", "iteration": None,
            "try_num": None, "max_tries": None, "task": None, "since": None,
            "waiting_until": None, "reason": None, "exit_status": None,
        }

    def started(self) -> None:
        self.active = True
        self._write()

    def chain_started(self, iteration: int, try_num: int) -> None:
        self._set(state="between tasks", iteration=iteration, try_num=try_num,
                  task=None, since=iso(utc_now()), waiting_until=None, reason=None,
                  defer=True)

    def task_changed(self, run: TaskRun) -> None:
        name = run.task.name if run.kind.value == "task" else f"{run.task.name} ({run.kind.value})"
        if run.state is TaskState.RUNNING:
            self.running[name] = run.started_at_text()
        else:
            self.running.pop(name, None)
        if self.running:  # with max_parallel > 1, several at once: the oldest first
            first = min(self.running, key=lambda n: self.running[n] or "")
            self._set(state="running", task=", ".join(sorted(self.running)),
                      since=self.running[first], max_tries=run.max_tries,
                      tasks_running=sorted(self.running), defer=True)
        else:
            self._set(state="between tasks", task=None, since=iso(utc_now()),
                      tasks_running=[], defer=True)

    def backoff(self, seconds: float, cause: str) -> None:
        now = utc_now()
        self._set(state="waiting", task=None, since=iso(now), reason=f"backoff after {cause}",
                  waiting_until=iso(now + timedelta(seconds=seconds)))

    def paused(self) -> None:
        self._set(state="paused", task=None, since=iso(utc_now()), waiting_until=None,
                  reason="paused by runner ctl")

    def resumed(self) -> None:
        self._set(state="between tasks", task=None, since=iso(utc_now()), reason=None)

    def rebooting(self, after: str) -> None:
        self._set(state="rebooting", task=None, since=iso(utc_now()), waiting_until=None,
                  reason=f"waiting for the reboot; the next start resumes after {after}")

    def iteration_done(self, iteration: int) -> None:
        self._set(state="between iterations", task=None, since=iso(utc_now()))

    def finished(self, status: int) -> None:
        if not self.active:  # the configuration was refused: there was no run
            return
        self._set(state="finished", task=None, since=iso(utc_now()), exit_status=status)
        with self.lock:
            self.closed = True
            self.wake.notify_all()

    def refresh(self) -> None:
        """Rewrite the file with fresh health (the journal's state changed, not runner's)."""
        self._write()

    def _set(self, *, defer: bool = False, **changes: Any) -> None:
        with self.lock:
            self.state.update(changes)
            if defer:
                self._defer_locked()
            else:
                self._write_locked()

    def _write(self) -> None:
        with self.lock:
            self._write_locked()

    def _defer_locked(self) -> None:
        if self.dirty_since is not None:
            return  # the flusher is already counting down
        self.dirty_since = time.monotonic()
        if self.flusher is None:
            self.flusher = threading.Thread(target=self._flush, name="status", daemon=True)
            self.flusher.start()
        self.wake.notify()

    def _flush(self) -> None:
        with self.lock:
            while not self.closed:
                if self.dirty_since is None:
                    self.wake.wait()
                    continue
                delay = self.dirty_since + DEFER_S - time.monotonic()
                if delay > 0:
                    self.wake.wait(delay)
                else:
                    self._write_locked()

    def _write_locked(self) -> None:
        self.dirty_since = None  # whatever was deferred goes with this write
        # The file is world-readable (runner status needs no root): every text in it is
        # masked, whatever it quotes (the forwarder's error, a task's name), then escaped
        # as in the log and the journal (runner.escape).
        document = masked_json({**self.state, **self.health(), "updated_at": iso(utc_now())},
                               lambda text: escape(self.mask(text)))
        # Not durable: it describes this boot only, and lives on tmpfs under systemd.
        # Compact: with an indent json falls back to its pure-Python encoder.
        data = json.dumps(document).encode() + b"\n"
        try:
            try:
                write_atomic(self.path, data, durable=False)
            except FileNotFoundError:  # runtime_dir is made on demand (it is tmpfs)
                make_dir(self.runtime_dir, 0o755)
                write_atomic(self.path, data, durable=False)
        except OSError as exc:
            if not self.failed:
                log.warning("status file %s: cannot write it (%s); runner status will not "
                            "show what runs now", self.path, exc.strerror or exc)
            self.failed = True
            return
        if self.failed:
            log.info("status file %s: written again", self.path)
        self.failed = False
