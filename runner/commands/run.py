"""`runner run` (and plain `runner`): supervise the chain until done, halted or stopped."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import cgroup, fdlimit, instance, logs, preflight, statedir
from ..config import Config, load
from ..console import fail
from ..events import Listener
from ..identity import RunIdentity
from ..masking import Masker
from ..notify import Heartbeat, Notifier
from ..settings import RunOptions, task_dir_of
from ..signals import SignalState
from ..states import ExitStatus
from ..supervisor import Supervisor
from ..tasks import discover

if TYPE_CHECKING:
    from ..progress import ProgressLine

log = logging.getLogger("runner")


@dataclass(frozen=True)
class DaemonOptions:
    """`--daemon`: detach with a pidfile, log to a file or syslog."""

    pidfile: str
    log_file: str | None
    level: int


def run(options: RunOptions, daemon_options: DaemonOptions | None = None, *,
        progress: bool = False) -> int:
    """Run the chain; `progress`: a live progress line when stderr is a terminal (never
    with --daemon)."""
    config = load(options.config_path, options.overrides)
    if daemon_options is not None:  # report a bad plan before detaching
        preflight.check(config, discover(config, task_dir_of(options, config)))
    statedir.prepare(config)  # before anything opens a file in state_dir or runtime_dir
    # One runner per state_dir, for runner's whole life; taken before detaching, so a
    # refusal reaches the terminal.
    try:
        lock = instance.acquire(config.runner.state_dir)
    except instance.AlreadyRunning as exc:
        return fail(str(exc), instance.EX_TEMPFAIL)
    try:
        if daemon_options is None:
            return supervise(options, config, lock, progress=progress)
        return _daemon(options, config, daemon_options, lock)
    finally:
        if lock is not None:
            lock.close()


def _daemon(options: RunOptions, config: Config, daemon_options: DaemonOptions,
            lock: instance.InstanceLock | None) -> int:
    from .. import daemonize

    try:
        context = daemonize.context(daemon_options.pidfile, lock)
    except daemonize.AlreadyRunning as exc:
        return fail(str(exc), daemonize.EX_TEMPFAIL)
    try:
        with context:
            if lock is not None:
                lock.write_pid()  # the daemon's pid, not the foreground one's
            logs.setup_daemon(daemon_options.level, daemon_options.log_file)
            return supervise(options, config, lock)
    except daemonize.LOCK_ERRORS:  # lost a race for the pidfile after detaching
        log.error("%s: another runner took the pidfile first", daemon_options.pidfile)
        return daemonize.EX_TEMPFAIL


def supervise(options: RunOptions, config: Config,
              lock: instance.InstanceLock | None = None, *, progress: bool = False) -> int:
    from ..reaper import OrphanReaper, enable_subreaper

    # Descendants that escape a task's process group (setsid daemons) are re-parented to
    # runner, not PID 1, so a timeout or a stop can find and kill them; they are reaped
    # as they die.
    enable_subreaper()
    orphans = OrphanReaper()
    fdlimit.preload_unwinder()
    masker = Masker.from_config(config)
    logs.mask_logs(masker.text)  # from the first line on
    heartbeat = Heartbeat()
    signals = SignalState(heartbeat=heartbeat)
    notifier = Notifier(config.runner.notify_ready, heartbeat=heartbeat)
    identity = RunIdentity.current()
    lock_file = lock.path if lock is not None else None
    listeners = (*recorders(options, config, identity, masker, lock_file), notifier)
    line = _progress_line(config) if progress else None
    if line is not None:
        listeners = (*listeners, line)
    tree, found = cgroup.take(cgroup.probe())
    signals.install()
    orphans.install()
    try:
        supervisor = Supervisor(options, config, signals, listeners=listeners,
                                identity=identity, masker=masker, tree=tree, found=found)
        if line is not None:  # "task i of N": N is the plan of the try that runs
            line.tasks = lambda: _task_names(supervisor)
        status = supervisor.run()
    finally:
        orphans.uninstall()
        signals.uninstall()
        if tree is not None:
            tree.close()
    if status is not ExitStatus.DONE:
        log.info("runner exits with status %d (%s)", status, status.name)
    return int(status)


def _progress_line(config: Config) -> ProgressLine | None:
    from ..progress import progress_line

    return progress_line(max_tries=config.runner.max_tries)


def _task_names(supervisor: Supervisor) -> list[str]:
    """The chain of the try that runs (the progress line's thread asks, 4 times a second
    at most)."""
    plan = supervisor.plan
    return [task.name for task in plan.tasks] if plan is not None else []


def recorders(options: RunOptions, config: Config, identity: RunIdentity,
              masker: Masker, lock_file: str | None = None) -> list[Listener]:
    """The listeners that remember a run: journal, fleet forwarder, live status, metrics.

    The live status names the lock file runner holds (None: running without one), so
    `runner status` knows whether to ask the lock or trust the status file's pid.

    Their locations are read once; a SIGHUP that changes them takes effect at restart.
    """
    from .. import __version__
    from ..journal import JournalListener
    from ..journalfile import journal_path
    from ..livestatus import LiveStatus

    runner = config.runner
    run_info = {
        "version": __version__, "config": config.path, "task_dir": task_dir_of(options, config),
    }
    db_path = journal_path(runner.state_dir)
    journal = JournalListener(
        db_path, identity, run_info=run_info, keep_days=runner.journal_keep_days,
        max_bytes=runner.journal_max_mb * 1024 * 1024, forwarding=bool(runner.journal_url),
    )
    listeners: list[Listener] = [journal]
    forwarder = None
    if runner.journal_url:
        from ..forwarder import Forwarder

        forwarder = Forwarder(runner.journal_url, db_path, masker,
                              fleet_keep_days=runner.fleet_keep_days)
        journal.on_write = forwarder.wake
        listeners.append(forwarder)

    def health() -> dict:
        return {
            "journal": journal.health.snapshot(),
            "forward": forwarder.health.snapshot() if forwarder else None,
        }

    live = LiveStatus(runner.runtime_dir, identity, run_info={**run_info, "lock": lock_file},
                      health=health, mask=masker.text)
    listeners.append(live)
    if forwarder is not None:
        forwarder.on_change = live.refresh
    if runner.metrics_file:
        from ..metrics import MetricsListener

        listeners.append(MetricsListener(runner.metrics_file, identity,
                                         seed=_metrics_seed(runner.state_dir, identity),
                                         mask=masker.text))
    return listeners


def _metrics_seed(state_dir: str, identity: RunIdentity) -> dict[str, dict]:
    """Each task's last result from earlier runs, so a restart keeps last-success times."""
    from ..history import Filters, JournalUnavailable, open_local

    try:
        reader = open_local(state_dir)
    except JournalUnavailable:
        return {}
    try:
        filters = Filters(host=identity.host)
        successes = reader.last_success(filters)
        return {
            record["task"]: {**record, "last_success": successes.get(record["task"])}
            for record in reader.latest_per_task(filters)
        }
    except JournalUnavailable as exc:
        log.warning("metrics: cannot read earlier results from the journal: %s", exc)
        return {}
    finally:
        reader.close()
