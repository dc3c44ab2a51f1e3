"""strict_permissions: like sshd's StrictModes, refuse what another user could change.

runner runs as root: a config file, task or hook that a group, other users or a non-root
owner can write is a way to run code as root on every machine of a fleet. So is any
directory above it (rename it, put another file in its place) and any symlink on the way
(point it elsewhere). With strict_permissions on and runner running as root, every path
runner reads or executes is checked along its whole chain: each directory from `/` down,
each symlink and its target, must be owned by root and writable by nobody else.

One exception keeps /tmp-like directories usable: a directory owned by root with the
sticky bit set (mode 1777) may be writable by others, because then nobody but root can
rename or remove the root-owned entries below it, and every entry below is itself
required to be owned by root. (An entry another user made there first is owned by that
user and refused.)
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from .errors import ConfigError

MAX_SYMLINKS = 40  # as the kernel's limit (ELOOP)


class UntrustedPath(ConfigError):
    """A path another user could change; str() names it and the fix (exit 78)."""


def applies(strict: bool) -> bool:
    return strict and os.geteuid() == 0


@dataclass(frozen=True)
class Trust:
    """What must be trusted before a program is executed: the program as it will be found
    (its `what` names it in the refusal), and other paths it reads (the task file given to
    an interpreter)."""

    what: str
    paths: tuple[tuple[str, str], ...] = ()


def problem(path: str, what: str) -> str | None:
    """Why `path` may not be trusted, with the fix; None when its whole chain is fine (or
    it does not exist: a missing path is reported where it is used)."""
    if not path:
        return None
    # Not normalized: `link/..` is where the kernel goes, not where normpath says.
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    try:
        return _walk(absolute, what, os.path.normpath(absolute), 0)
    except OSError:
        return None


def check(paths: list[tuple[str, str]]) -> None:
    """Raise UntrustedPath for the first untrusted (path, what)."""
    for path, what in paths:
        reason = problem(path, what)
        if reason:
            raise UntrustedPath(reason)


def check_open_file(fd: int, path: str, what: str) -> str | None:
    """The same rule for a file already opened (no swap between check and read); its
    directories are checked by the caller."""
    return entry_problem(os.fstat(fd), path, what)


def entry_problem(info: os.stat_result, path: str, what: str) -> str | None:
    """The rule for one entry alone (owner, mode, the sticky exception), from its stat."""
    return _entry_problem(info, path, what, path)


def resolve(argv0: str, cwd: str, search_path: str | None) -> str | None:
    """The file that exec will run for argv0, started in `cwd` with PATH `search_path`:
    a name with a slash is relative to cwd; a bare name is searched on PATH, whose
    relative entries are relative to cwd too (as subprocess does after its chdir)."""
    if not argv0:
        return None
    if os.sep in argv0:
        return os.path.join(cwd, argv0)
    entries = (search_path if search_path is not None else os.defpath).split(os.pathsep)
    for entry in entries:
        candidate = os.path.join(cwd, entry or os.curdir, argv0)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def verify(argv: list[str], trust: Trust, *, cwd: str,
           search_path: str | None) -> tuple[str | None, str | None]:
    """(the program exec will run for argv, why it or a path of `trust` may not be
    trusted or None). Run the program by that path, so that what was checked is what runs."""
    executable = resolve(argv[0], cwd, search_path) if argv else None
    reason = problem(executable, trust.what) if executable else None
    for path, what in trust.paths:
        reason = reason or problem(path, what)
    return executable, reason


def _walk(path: str, what: str, shown: str, hops: int) -> str | None:
    """Check every component of the absolute `path`, following symlinks by hand."""
    parts = [p for p in path.split(os.sep) if p not in ("", ".")]
    current = os.sep
    reason = _entry_problem(os.lstat(current), current, what, shown)
    if reason:
        return reason
    for index, part in enumerate(parts):
        if part == "..":
            current = os.path.dirname(current)  # current holds no symlink: lexical is right
            continue
        candidate = os.path.join(current, part)
        info = os.lstat(candidate)
        reason = _entry_problem(info, candidate, what, shown)
        if reason:
            return reason
        if stat.S_ISLNK(info.st_mode):
            if hops >= MAX_SYMLINKS:
                return f"{shown}: {what}: too many symlinks (strict_permissions)"
            target = os.path.join(current, os.readlink(candidate))
            return _walk(os.path.join(target, *parts[index + 1:]), what, shown, hops + 1)
        current = candidate
    return None


def _entry_problem(info: os.stat_result, path: str, what: str, shown: str) -> str | None:
    """The owner and mode rule for one entry of a chain (a symlink's own mode means
    nothing: only its owner, which matters in a sticky directory)."""
    subject = _subject(info, path, what, shown)
    if info.st_uid not in (0, os.geteuid()):
        return (f"{subject} is owned by {_user(info.st_uid)}, not root "
                f"(strict_permissions): run chown root {path}")
    if stat.S_ISLNK(info.st_mode) or _sticky_own_dir(info):
        return None
    writers = []
    if info.st_mode & stat.S_IWGRP:
        writers.append("its group")
    if info.st_mode & stat.S_IWOTH:
        writers.append("others")
    if not writers:
        return None
    return (f"{subject} is writable by {' and '.join(writers)} "
            f"(strict_permissions): run chmod go-w {path}")


def _subject(info: os.stat_result, path: str, what: str, shown: str) -> str:
    """`/etc/x: task` for the path itself, `/etc/x: task: directory /etc` for the way."""
    if path == shown and not stat.S_ISLNK(info.st_mode):
        return f"{shown}: {what}"
    if stat.S_ISDIR(info.st_mode):
        kind = "directory"
    elif stat.S_ISLNK(info.st_mode):
        kind = "symlink"
    else:
        kind = "symlink target"
    return f"{shown}: {what}: {kind} {path}"


def _sticky_own_dir(info: os.stat_result) -> bool:
    """A sticky directory of root's (of runner's own user, when it is not root)."""
    return (stat.S_ISDIR(info.st_mode) and bool(info.st_mode & stat.S_ISVTX)
            and info.st_uid in (0, os.geteuid()))


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"
