"""state_dir and runtime_dir: made with fixed modes, and trusted only when nobody but root
can change them.

What runner finds in state_dir decides what root does: resume.json which tasks of a
rebooted chain are already done, boot-tries.json when to run the halt task, the stamps
which tasks to skip, the journal what `runner status` and the metrics say. With
strict_permissions on (and runner running as root), the directories and every state file
in them are checked like the config files before runner reads any of them; each state file
is checked again when it is opened (runner.bootstate, runner.stamps).
"""

from __future__ import annotations

import contextlib
import os

from . import instance, permissions
from .config import Config
from .files import make_dir

DIR_MODE = instance.STATE_DIR_MODE  # `runner status` and `ctl` work for non-root operators
STATE_FILES = ("runner.lock", "resume.json", "boot-tries.json", "journal.sqlite",
               "journal.sqlite-wal", "journal.sqlite-shm", "journal.sqlite-starts", "stamps")


def prepare(config: Config) -> None:
    """Create state_dir and runtime_dir with fixed modes; with strict_permissions, raise
    UntrustedPath for the first of them or of the state files that another user owns or
    can write. Runs before runner takes its lock or opens anything in them. A directory
    that cannot be made is reported where it is used (the lock, the journal, the control
    socket), each with its own consequence."""
    for directory in (config.runner.state_dir, config.runner.runtime_dir):
        with contextlib.suppress(OSError):
            make_dir(directory, DIR_MODE)
    check(config)


def check(config: Config) -> None:
    """With strict_permissions, raise UntrustedPath for the first of state_dir, runtime_dir
    and the state files that another user owns or can write (`run` and `runner check`)."""
    runner = config.runner
    if permissions.applies(runner.strict_permissions):
        permissions.check(trusted_paths(runner.state_dir, runner.runtime_dir))


def trusted_paths(state_dir: str, runtime_dir: str) -> list[tuple[str, str]]:
    """state_dir, runtime_dir and every state file there is, in the order they are checked."""
    paths = [(state_dir, "state_dir"), (runtime_dir, "runtime_dir")]
    for name in STATE_FILES:
        paths.append((os.path.join(state_dir, name), "state file"))
    stamps = os.path.join(state_dir, "stamps")
    try:
        names = sorted(os.listdir(stamps))
    except OSError:
        names = []
    paths.extend((os.path.join(stamps, name), "stamp") for name in names)
    return paths


def open_file_problem(fd: int, path: str, strict: bool) -> str | None:
    """Why an opened state file may not be trusted (strict_permissions), with the fix; its
    directories were checked when runner started (prepare)."""
    return permissions.check_open_file(fd, path, "state file") if strict else None
