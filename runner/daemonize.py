"""Daemon mode for hosts without systemd (SPEC §8), built on python-daemon.

`runner --daemon --pidfile PATH` reads and checks its config in the foreground
(so errors reach the terminal), then detaches: double fork, new session, umask
022, cwd /, stdio on /dev/null, a locked pidfile. Logging: runner.logs.setup_daemon.
"""

from __future__ import annotations

import os
import signal
from contextlib import AbstractContextManager

import daemon
import daemon.pidfile
import lockfile

EX_TEMPFAIL = 75  # sysexits(3): another instance holds the pidfile
# What entering the context raises when another runner took the pidfile meanwhile.
LOCK_ERRORS = (lockfile.AlreadyLocked, lockfile.LockTimeout)


class AlreadyRunning(Exception):
    """Another runner holds the pidfile; str() is the one line for the operator."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_pidfile(path: str) -> daemon.pidfile.TimeoutPIDLockFile:
    """The pidfile lock, refusing when a live runner holds it; a stale one is broken."""
    pidfile = daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(path), acquire_timeout=0)
    pid = pidfile.read_pid()
    if pid is not None:
        if _pid_alive(pid) and pid != os.getpid():
            raise AlreadyRunning(f"{path}: runner is already running with pid {pid}")
        pidfile.break_lock()
    return pidfile


def context(pidfile_path: str) -> AbstractContextManager:
    """The DaemonContext; runner's own signal handlers are installed after entering it."""
    pidfile = claim_pidfile(pidfile_path)
    return daemon.DaemonContext(
        pidfile=pidfile,
        umask=0o022,
        working_directory="/",
        detach_process=True,
        # Job-control signals are ignored; TERM/INT/HUP get runner's handlers later.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )


