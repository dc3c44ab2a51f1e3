"""What must outlive runner itself: where a rebooting chain resumes, and how many tries
of the chain failed across restarts and reboots (max_boot_tries).

Both are small JSON files in state_dir written durably (fsync, rename), because the very
next thing that happens may be a power cycle.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .files import make_dir, write_atomic
from .identity import iso, utc_now
from .statedir import open_file_problem
from .states import ExitStatus

log = logging.getLogger("runner")

RESUME_FILE = "resume.json"
BOOT_TRIES_FILE = "boot-tries.json"


@dataclass(frozen=True)
class Resume:
    """A chain stopped for a reboot: continue iteration `iteration` after `after`."""

    iteration: int
    try_num: int
    after: str
    done: list[str] = field(default_factory=list)  # tasks of the iteration already through
    run_id: str = ""
    boot_id: str = ""
    at: str = ""


class BootState:
    """The durable files of one state_dir; every failure to write is a warning only."""

    def __init__(self, state_dir: str, *, strict: bool = False) -> None:
        self.state_dir = state_dir
        self.strict = strict  # strict_permissions: a file another user can change is ignored
        self.warned: set[str] = set()  # one warning per file, as the journal does

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            with open(self._path(name), "rb") as file:
                untrusted = open_file_problem(file.fileno(), self._path(name), self.strict)
                if untrusted:
                    # Ignoring it is the safe side: the chain runs whole, no halt is forced.
                    log.error("%s; ignoring it", untrusted)
                    return None
                data = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable, ignored: %s", self._path(name), exc)
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> bool:
        try:
            make_dir(self.state_dir, 0o755)
            write_atomic(self._path(name), json.dumps(data).encode() + b"\n", 0o644)
        except OSError as exc:
            level = logging.DEBUG if name in self.warned else logging.WARNING
            self.warned.add(name)
            log.log(level, "%s: cannot write it: %s", self._path(name), exc.strerror or exc)
            return False
        self.warned.discard(name)
        return True

    def _remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("%s: cannot remove it: %s", self._path(name), exc.strerror or exc)

    # -- resume after a reboot ----------------------------------------------------

    def save_resume(self, resume: Resume) -> bool:
        return self._write(RESUME_FILE, asdict(resume))

    def take_resume(self) -> Resume | None:
        """The saved resume point, removed so that it is used once."""
        data = self._read(RESUME_FILE)
        if data is None:
            return None
        self._remove(RESUME_FILE)
        try:
            return Resume(
                iteration=int(data["iteration"]), try_num=int(data["try_num"]),
                after=str(data["after"]), done=[str(d) for d in data.get("done", [])],
                run_id=str(data.get("run_id", "")), boot_id=str(data.get("boot_id", "")),
                at=str(data.get("at", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("%s: not a resume point, ignored: %s", self._path(RESUME_FILE), exc)
            return None

    def clear_resume(self) -> None:
        self._remove(RESUME_FILE)

    # -- failed tries across boots ------------------------------------------------

    def boot_tries(self) -> int:
        data = self._read(BOOT_TRIES_FILE) or {}
        count = data.get("count", 0)
        return count if isinstance(count, int) and count >= 0 else 0

    def count_try(self) -> int:
        """One more try of the chain begins; counted before it runs, so that a crash or a
        reboot in the middle of it counts as a failed try. The new count."""
        count = self.boot_tries() + 1
        self._write(BOOT_TRIES_FILE, {"count": count, "updated_at": iso(utc_now())})
        return count

    def uncount_try(self) -> None:
        count = self.boot_tries() - 1
        if count <= 0:
            self.reset_tries()
        else:
            self._write(BOOT_TRIES_FILE, {"count": count, "updated_at": iso(utc_now())})

    def reset_tries(self) -> None:
        self._remove(BOOT_TRIES_FILE)

    def begin_try(self, limit: int) -> int | None:
        """max_boot_tries = `limit`: None when this try may run (it is counted now, so a
        crash or reboot in the middle of it counts as failed); else how many tries
        failed before it (the caller halts)."""
        if not limit:
            return None
        failed = self.boot_tries()
        if failed >= limit:
            return failed
        self.count_try()
        return None

    def settle_try(self, status: ExitStatus | None, limit: int) -> None:
        """The try ended: passed (None) or halted starts afresh; a try ended by a stop, on
        a task's request or by a refusal did not fail, so it is taken back."""
        if not limit:
            return
        if status is None or status is ExitStatus.HALTED:
            self.reset_tries()
        elif status in (ExitStatus.SIGTERM, ExitStatus.SIGINT, ExitStatus.EXIT,
                        ExitStatus.CONFIG):
            self.uncount_try()
