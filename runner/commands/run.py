"""`runner run` (and plain `runner`): supervise the chain until done, halted or stopped."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from .. import logs
from ..config import Config, load
from ..notify import Heartbeat, Notifier
from ..signals import SignalState
from ..states import ExitStatus
from ..supervisor import RunOptions, Supervisor, task_dir_of
from ..tasks import discover

log = logging.getLogger("runner")


@dataclass(frozen=True)
class DaemonOptions:
    """`--daemon`: detach with a pidfile, log to a file or syslog."""

    pidfile: str
    log_file: str | None
    level: int


def run(options: RunOptions, daemon_options: DaemonOptions | None = None) -> int:
    config = load(options.config_path, options.overrides)
    if daemon_options is None:
        return supervise(options, config)
    from .. import daemonize

    discover(config, task_dir_of(options, config))  # report a bad plan before detaching
    try:
        context = daemonize.context(daemon_options.pidfile)
    except daemonize.AlreadyRunning as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return daemonize.EX_TEMPFAIL
    try:
        with context:
            logs.setup_daemon(daemon_options.level, daemon_options.log_file)
            return supervise(options, config)
    except daemonize.LOCK_ERRORS:  # lost a race for the pidfile after detaching
        log.error("%s: another runner took the pidfile first", daemon_options.pidfile)
        return daemonize.EX_TEMPFAIL


def supervise(options: RunOptions, config: Config) -> int:
    heartbeat = Heartbeat()
    signals = SignalState(heartbeat=heartbeat)
    notifier = Notifier(config.runner["notify_ready"], heartbeat=heartbeat)
    signals.install()
    try:
        status = Supervisor(options, config, signals, listeners=(notifier,)).run()
    finally:
        signals.uninstall()
    if status is not ExitStatus.DONE:
        log.info("runner exits with status %d (%s)", status, status.name)
    return int(status)
