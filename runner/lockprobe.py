"""Asking state_dir/runner.lock without holding it: whether a runner holds it, and the pid
the file names. runner.instance takes and holds the lock (and re-exports these); `runner
status` only asks, importing `os` and `fcntl` alone.
"""

import fcntl
import os

LOCK_NAME = "runner.lock"


class LockState:
    """What the lock says: held (and by which pid), free, or None when it cannot tell
    (no lock file: runner never ran here, or ran without the lock). A plain class:
    dataclasses would import inspect and re."""

    __slots__ = ("held", "pid")

    def __init__(self, held: bool | None, pid: int | None = None) -> None:
        self.held = held
        self.pid = pid


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_NAME)


def read_pid(fd: int) -> int | None:
    try:
        first = os.pread(fd, 64, 0).split(b"\n", 1)[0]
        return int(first) if first.strip() else None
    except (OSError, ValueError):
        return None


def probe(state_dir: str) -> LockState:
    """Whether a runner holds the lock of `state_dir`, without ever holding it long.

    A shared lock: probes do not block one another, and a runner starting meanwhile
    retries (runner.instance.ACQUIRE_WAIT_S). Needs only read access to the file.
    """
    try:
        fd = os.open(lock_path(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return LockState(None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return LockState(True, read_pid(fd))
    except OSError:
        return LockState(None)
    finally:
        os.close(fd)  # releases the shared lock, if taken
    return LockState(False)
