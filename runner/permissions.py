"""strict_permissions: like sshd's StrictModes, refuse what another user could change.

runner runs as root: a config file, task or hook that a group, other users or a
non-root owner can write is a way to run code as root on every machine of a fleet. When
runner runs as root with strict_permissions on, such a path is a configuration error
naming the path and the fix.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat

from .errors import ConfigError


def applies(strict: bool) -> bool:
    return strict and os.geteuid() == 0


def problem(path: str, what: str) -> str | None:
    """Why `path` may not be trusted, with the fix; None when it is fine (or absent)."""
    try:
        info = os.stat(path)
    except OSError:
        return None  # missing paths are reported where they are used
    writers = []
    if info.st_mode & stat.S_IWGRP:
        writers.append("its group")
    if info.st_mode & stat.S_IWOTH:
        writers.append("others")
    if writers:
        return (f"{path}: {what} is writable by {' and '.join(writers)} "
                f"(strict_permissions): run chmod go-w {path}")
    if info.st_uid not in (0, os.geteuid()):
        return (f"{path}: {what} is owned by {_user(info.st_uid)}, not root "
                f"(strict_permissions): run chown root {path}")
    return None


def check(paths: list[tuple[str, str]]) -> None:
    """Raise ConfigError for the first untrusted (path, what)."""
    for path, what in paths:
        reason = problem(path, what)
        if reason:
            raise ConfigError(reason)


def command_path(argv: list[str] | None) -> str | None:
    """The executable a command line runs, as found on PATH (None if not found)."""
    if not argv:
        return None
    if os.sep in argv[0]:
        return argv[0]
    return shutil.which(argv[0])


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
