"""What a process is, read from /proc: enough to tell whether it wrote a pidfile.

A pidfile outlives its writer (a crash, a power cut with /run on disk), and its pid is
reused: the process now behind it may be anything. It can only be the runner that wrote
the file if it is a runner command, runs as the file's owner and started before the file
was written.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass

from .identity import process_start

# Clock ticks, a boot time that is only as exact as two clock reads and a wall clock
# that NTP may have stepped: a writer may seem to have started this much after writing.
START_SLACK_S = 2.0
# Python's options that take the next word as their value (`python3 -X importtime runner`).
_PYTHON_VALUE_OPTIONS = ("-W", "-X", "-Q")


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    argv: list[str]
    name: str  # /proc/PID/comm, printable
    uid: int | None  # effective uid
    started_at: float | None  # wall-clock seconds

    def describe(self) -> str:
        """`'sleep' (uid 65534 nobody)`: what the process is, without its arguments
        (another program's command line may hold secrets)."""
        return f"{self.name!r} ({_user(self.uid)})"


def read(pid: int) -> ProcessInfo | None:
    """The process `pid`, or None when there is none (or /proc does not show it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read()
        with open(f"/proc/{pid}/comm", "rb") as file:
            comm = file.read().rstrip(b"\n")
        with open(f"/proc/{pid}/status", "rb") as file:
            status = file.read()
    except OSError:
        return None
    argv = [os.fsdecode(word) for word in raw.split(b"\0") if word]
    name = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in os.fsdecode(comm))
    return ProcessInfo(pid, argv, name, _effective_uid(status), _started_at(pid))


def _effective_uid(status: bytes) -> int | None:
    for line in status.splitlines():
        if line.startswith(b"Uid:"):
            return int(line.split()[2])  # real, effective, saved, file system
    return None


def _started_at(pid: int) -> float | None:
    ticks = process_start(pid)
    if ticks is None:
        return None
    # /proc/PID/stat counts from boot, on the clock that includes suspend.
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def is_runner_command(argv: list[str]) -> bool:
    """`runner …`, `python3 [options] /usr/bin/runner …` or `python3 -m runner …`."""
    if not argv:
        return False
    if os.path.basename(argv[0]) == "runner":
        return True
    if not os.path.basename(argv[0]).startswith("python"):
        return False
    words = iter(argv[1:])
    for word in words:
        if word == "-m":
            return next(words, "") == "runner"
        if word in _PYTHON_VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return os.path.basename(word) == "runner"
    return False


def not_the_writer(info: ProcessInfo, written: os.stat_result) -> str | None:
    """Why `info` cannot be the runner that wrote a pidfile whose stat is `written`;
    None when it may well be."""
    if not is_runner_command(info.argv):
        return "it is not a runner"
    if info.uid is not None and info.uid != written.st_uid:
        return f"it runs as uid {info.uid}, the pidfile belongs to uid {written.st_uid}"
    if info.started_at is not None and info.started_at > written.st_mtime + START_SLACK_S:
        return "it started after the pidfile was written"
    return None


def _user(uid: int | None) -> str:
    if uid is None:
        return "uid unknown"
    try:
        return f"uid {uid} {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"
