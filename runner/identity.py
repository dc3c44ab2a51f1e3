"""Who is running: the run id that ties a run's records together, the host and the boot,
and whether the process behind an old record is still alive."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import overload

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class RunIdentity:
    """One runner process: recorded on every journal row so a fleet's rows stay apart."""

    run_id: str
    host: str
    boot_id: str
    pid: int
    pid_start: int | None

    @classmethod
    def current(cls) -> RunIdentity:
        pid = os.getpid()
        return cls(uuid.uuid4().hex, socket.gethostname(), boot_id(), pid, process_start(pid))


def boot_id() -> str:
    try:
        with open(BOOT_ID_FILE) as file:
            return file.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it don't.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


def still_running(pid: int | None, pid_start: int | None, boot: str | None) -> bool:
    """Whether the runner that wrote a record is alive: same boot, same pid, same start time."""
    if not pid or boot != boot_id():
        return False
    start = process_start(pid)
    if start is None:
        return False
    return pid_start is None or start == pid_start


def utc_now() -> datetime:
    return datetime.now(UTC)


@overload
def iso(moment: datetime) -> str: ...
@overload
def iso(moment: None) -> None: ...
@overload
def iso(moment: datetime | None) -> str | None: ...


def iso(moment: datetime | None) -> str | None:
    """`2026-11-23T10:00:00.123Z`: how times are written everywhere runner writes them."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"
