"""Who is running: the run id that ties a run's records together, the host and the boot.

Whether the process behind an old record is still alive is runner.liveness's, and how a
moment is written runner.clock's (both light, for `runner status`); re-exported here."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from .clock import iso as iso
from .clock import utc_now as utc_now
from .liveness import BOOT_ID_FILE as BOOT_ID_FILE
from .liveness import boot_id as boot_id
from .liveness import process_start as process_start
from .liveness import still_running as still_running


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
