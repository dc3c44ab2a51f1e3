"""systemd integration through sdnotify (SPEC §8): READY, STATUS, WATCHDOG, EXTEND_TIMEOUT_USEC,
STOPPING. Nothing at all is sent when NOTIFY_SOCKET is unset."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import sdnotify

from .events import Listener
from .settings import NotifyReady, ReadyWhen
from .states import Kind, TaskRun, TaskState

log = logging.getLogger("runner")
# Slack on top of a task's own limits when asking systemd for more start-up time.
EXTEND_MARGIN_S = 30.0


def _ascii(text: str) -> str:
    # sdnotify encodes as latin-1 and drops the message on failure; keep it plain.
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\n", " ")


class Heartbeat:
    """The main loop's promise of when it will next wake up.

    The watchdog pinger pings only while that promise holds (with slack), so a wedged
    main loop stops the pings and systemd restarts runner, while a loop that
    legitimately waits on a long task keeps them going.
    """

    def __init__(self, slack: float = 30.0) -> None:
        self.slack = slack
        self._expect_by: float | None = None
        self._lock = threading.Lock()

    def expect_wake_by(self, moment: float | None) -> None:
        """The loop blocks until `moment` (monotonic) at the latest; None: no deadline."""
        with self._lock:
            self._expect_by = moment

    def healthy(self, now: float | None = None) -> bool:
        with self._lock:
            expect = self._expect_by
        if expect is None:
            return True
        return (now if now is not None else time.monotonic()) <= expect + self.slack


class Notifier(Listener):
    """Tells systemd what runner is doing. A no-op without NOTIFY_SOCKET."""

    def __init__(
        self,
        ready: NotifyReady | str,
        environ: dict[str, str] | os._Environ = os.environ,
        heartbeat: Heartbeat | None = None,
        send: Callable[[str], None] | None = None,
    ) -> None:
        self.enabled = bool(environ.get("NOTIFY_SOCKET"))
        self.ready = ready if isinstance(ready, NotifyReady) else NotifyReady.parse(ready)
        self.is_ready = False
        self.heartbeat = heartbeat or Heartbeat()
        self._send = send
        if self.enabled and send is None:
            self._send = sdnotify.SystemdNotifier().notify
        self.watchdog_interval = self._watchdog_interval(environ)
        self._stop = threading.Event()
        self._pinger: threading.Thread | None = None
        self.iteration = 0
        self.try_num = 0

    @staticmethod
    def _watchdog_interval(environ) -> float | None:
        usec = environ.get("WATCHDOG_USEC")
        pid = environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def send(self, *lines: str) -> None:
        if self.enabled and self._send is not None:
            self._send("\n".join(_ascii(line) for line in lines))

    # -- lifecycle ------------------------------------------------------------

    def started(self) -> None:
        """The config is read and the plan is valid."""
        if self.watchdog_interval and self.enabled:
            self._pinger = threading.Thread(target=self._ping, name="watchdog", daemon=True)
            self._pinger.start()
        if self.ready.when is ReadyWhen.START:
            self._ready("configuration loaded")

    def _ready(self, why: str) -> None:
        if not self.is_ready:
            self.is_ready = True
            log.info("ready (%s)", why)
            self.send("READY=1", f"STATUS=ready: {why}")

    def _ping(self) -> None:
        assert self.watchdog_interval is not None
        while not self._stop.wait(self.watchdog_interval):
            if self.heartbeat.healthy():
                self.send("WATCHDOG=1")
            else:
                log.error("main loop overdue: withholding watchdog pings")

    # -- listener -------------------------------------------------------------

    def chain_started(self, iteration: int, try_num: int) -> None:
        self.iteration, self.try_num = iteration, try_num

    def task_changed(self, run: TaskRun) -> None:
        what = "halt task" if run.kind is Kind.HALT else "task"
        if run.state is TaskState.RUNNING:
            lines = [f"STATUS=iteration {run.iteration}, try {run.try_num}/{run.max_tries}: "
                     f"running {what} {run.task.name}"]
            if not self.is_ready:
                limit = run.task.settings.max_time
                if limit > 0:
                    usec = int((limit + run.task.settings.kill_grace + EXTEND_MARGIN_S) * 1e6)
                    lines.append(f"EXTEND_TIMEOUT_USEC={usec}")
            self.send(*lines)
            return
        if (
            run.state is TaskState.OK
            and self.ready.when is ReadyWhen.TASK
            and self.ready.task in (run.task.name, run.task.short_name)
        ):
            self._ready(f"{run.task.name} succeeded")

    def backoff(self, seconds: float, cause: str) -> None:
        self.send(f"STATUS=iteration {self.iteration}: backoff after {cause}, "
                  f"retrying in {seconds:.0f}s (try {self.try_num + 1} next)")

    def paused(self) -> None:
        self.send(f"STATUS=iteration {self.iteration}: paused by runner ctl "
                  "(runner ctl resume goes on)")

    def resumed(self) -> None:
        self.send(f"STATUS=iteration {self.iteration}: resumed by runner ctl")

    def rebooting(self, after: str) -> None:
        self.send(f"STATUS=waiting for the reboot asked for by {after}")

    def iteration_done(self, iteration: int) -> None:
        if self.ready.when is ReadyWhen.PASS:
            self._ready("first pass of the chain done")
        self.send(f"STATUS=iteration {iteration} done")

    def finished(self, status: int) -> None:
        self._stop.set()
        self.send("STOPPING=1", f"STATUS=exiting with status {status}")
