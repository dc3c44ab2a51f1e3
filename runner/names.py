"""The rules of task file names: which directory entries may be tasks, the short name
that names a task's config section, and the order run-parts sorts them in.

Only the standard library: the config loader (include_dir fragments follow the same
name rules) and the task finder both build on this module, and it on neither.
"""

from __future__ import annotations

import os
import re

# Suffixes of files that package managers and editors leave behind.
LEFTOVER_SUFFIXES = {
    ".dpkg-old": "package manager leftover",
    ".dpkg-new": "package manager leftover",
    ".dpkg-dist": "package manager leftover",
    ".rpmnew": "package manager leftover",
    ".rpmsave": "package manager leftover",
    ".swp": "editor swap file",
}
_PREFIX = re.compile(r"^[0-9]+-(?=.)")


def skip_reason(name: str) -> str | None:
    """Why a directory entry is not a task by its name alone, or None if it may be one."""
    if name.startswith("."):
        return "hidden file"
    if name.endswith("~"):
        return "editor backup file"
    for suffix, why in LEFTOVER_SUFFIXES.items():
        if name.endswith(suffix):
            return f"{why} ({suffix})"
    return None


def name_is_candidate(name: str) -> bool:
    return skip_reason(name) is None


def short_name(filename: str) -> str:
    """`20-puppet-agent.sh` -> `puppet-agent`: the name of the task's config section."""
    base = _PREFIX.sub("", filename, count=1)
    stem, dot, _ext = base.rpartition(".")
    return stem if dot and stem else base


def byte_order(name: str) -> bytes:
    """Sort key: file names in byte order, as run-parts does."""
    return os.fsencode(name)
