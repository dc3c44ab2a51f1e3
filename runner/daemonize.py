"""Daemon mode for hosts without systemd (SPEC §8), built on python-daemon.

`runner --daemon --pidfile PATH` reads and checks its config and takes the state_dir
lock in the foreground (so errors and a refusal reach the terminal), then detaches:
double fork, new session, umask 022, cwd /, stdio on /dev/null, a pidfile. The lock's
descriptor is kept across the detaching (files_preserve). Logging: runner.logs.setup_daemon.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import AbstractContextManager

import daemon
import daemon.pidfile
import lockfile

from . import procinfo
from .instance import EX_TEMPFAIL, AlreadyRunning, InstanceLock

__all__ = ["EX_TEMPFAIL", "LOCK_ERRORS", "AlreadyRunning", "claim_pidfile", "context"]

log = logging.getLogger("runner")
# What entering the context raises when another runner took the pidfile meanwhile.
LOCK_ERRORS = (lockfile.AlreadyLocked, lockfile.LockTimeout)


def claim_pidfile(path: str) -> daemon.pidfile.TimeoutPIDLockFile:
    """The pidfile, refusing when the runner that wrote it lives; a stale one is removed."""
    pidfile = daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(path), acquire_timeout=0)
    pid = pidfile.read_pid()
    if pid is not None and pid != os.getpid():
        _refuse_if_its_writer_lives(path, pid)
    if pidfile.is_locked():  # a stale pid, or no pid at all (an empty or garbled file)
        pidfile.break_lock()
    return pidfile


def _refuse_if_its_writer_lives(path: str, pid: int) -> None:
    """A pidfile names a pid; only the runner that wrote it may keep us out. Any other
    process behind that pid now (pid reuse after a crash) is named in one warning."""
    try:
        written = os.stat(path)
    except OSError:
        return  # gone meanwhile: nothing to refuse
    info = procinfo.read(pid)
    if info is None:
        if _pid_alive(pid):  # /proc hides it (hidepid): cannot tell, so be careful
            raise AlreadyRunning(f"{path}: runner is already running with pid {pid}")
        log.info("%s: pid %d is gone: replacing the stale pidfile", path, pid)
        return
    reason = procinfo.not_the_writer(info, written)
    if reason is None:
        raise AlreadyRunning(f"{path}: runner is already running with pid {pid}")
    log.warning("%s: replacing a stale pidfile: it names pid %d, %s, which did not write "
                "it: %s (left alone)", path, pid, info.describe(), reason)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def context(pidfile_path: str, lock: InstanceLock | None) -> AbstractContextManager:
    """The DaemonContext; runner's own signal handlers are installed after entering it."""
    pidfile = claim_pidfile(pidfile_path)
    return daemon.DaemonContext(
        pidfile=pidfile,
        umask=0o022,
        working_directory="/",
        detach_process=True,
        # The state_dir lock must survive the close of every other descriptor.
        files_preserve=[lock.fd] if lock is not None else None,
        # Job-control signals are ignored; TERM/INT/HUP get runner's handlers later.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
