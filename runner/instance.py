"""One runner per state_dir: an flock on state_dir/runner.lock, held for runner's life.

Why flock: the kernel drops it when the last descriptor of the open file is closed, so
a SIGKILLed runner never leaves a stale lock behind; and it belongs to the open file,
not to the process, so it survives python-daemon's forks. The descriptor is O_CLOEXEC:
a task still running after runner died must not keep the next runner out.

`runner status` asks the same lock whether runner runs (a shared, non-blocking probe)
and reads the holder's pid from the file: runner.lockprobe, re-exported here.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass

from .files import make_dir
from .lockprobe import LOCK_NAME as LOCK_NAME
from .lockprobe import LockState as LockState
from .lockprobe import lock_path, read_pid
from .lockprobe import probe as probe

log = logging.getLogger("runner")

EX_TEMPFAIL = 75  # sysexits(3): another runner already runs; try again later
STATE_DIR_MODE = 0o755
# A `runner status` probe holds a shared lock for microseconds: a runner starting at
# that instant retries this long before it calls the holder another runner.
ACQUIRE_WAIT_S = 1.0
RETRY_S = 0.01


class AlreadyRunning(Exception):
    """Another runner holds the lock; str() is the one line for the operator."""


@dataclass
class InstanceLock:
    """The held lock: closing the descriptor (or runner's death) releases it."""

    path: str
    fd: int

    def write_pid(self, pid: int | None = None) -> None:
        """Name the holder in the file (again after python-daemon forked).

        Written over the old text before truncating, so a reader sees the old pid or the
        new one on the first line, never an empty file.
        """
        data = f"{pid or os.getpid()}\n".encode()
        try:
            os.pwrite(self.fd, data, 0)
            os.ftruncate(self.fd, len(data))
        except OSError as exc:  # a full state_dir: the lock still holds, the pid is unknown
            log.warning("%s: cannot write runner's pid in it (%s); runner status will not "
                        "name it", self.path, exc.strerror)
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # frees blocks, so it works on a full disk too

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def acquire(state_dir: str) -> InstanceLock | None:
    """Take the lock, creating state_dir (mode 0755) if missing.

    Raises AlreadyRunning when another runner holds it. None when state_dir or the lock
    file cannot be made (read-only, full, not permitted): as with the journal, an
    unwritable state_dir is one warning, never a reason not to run the tasks.
    """
    path = lock_path(state_dir)
    try:
        make_dir(state_dir, STATE_DIR_MODE)
    except OSError as exc:
        _warn_without_lock(f"state_dir {state_dir}: cannot create it ({exc.strerror})")
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        _warn_without_lock(f"{path}: cannot create the lock file ({exc.strerror})")
        return None
    with contextlib.suppress(OSError):  # not ours to chmod: then leave the mode alone
        os.fchmod(fd, 0o644)  # whatever the umask: `runner status` of any user may probe it
    try:
        _lock_exclusive(fd, state_dir, path)
    except OSError as exc:
        os.close(fd)
        _warn_without_lock(f"{path}: cannot lock it ({exc.strerror})")
        return None
    except BaseException:
        os.close(fd)
        raise
    lock = InstanceLock(path, fd)
    lock.write_pid()
    return lock


def _warn_without_lock(problem: str) -> None:
    log.warning("%s; running without the single-instance lock (a second runner on this "
                "state_dir would not be refused)", problem)


def _lock_exclusive(fd: int, state_dir: str, path: str) -> None:
    deadline = time.monotonic() + ACQUIRE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AlreadyRunning(_refusal(fd, state_dir, path)) from None
        time.sleep(RETRY_S)


def _refusal(fd: int, state_dir: str, path: str) -> str:
    pid = read_pid(fd)
    who = f"with pid {pid}" if pid else "(pid not yet written)"
    return f"{state_dir}: runner is already running {who} (it holds {path})"
