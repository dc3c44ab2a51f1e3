"""The environment every task and hook gets (SPEC §3): runner's own environment, [env],
and the RUNNER_* variables, including a RUNNER_CONFIG_CMD that answers from a snapshot
of the effective configuration.

The snapshot must be readable by a task that switched to another user (`sudo -u builder`)
and must not give that user a secret. So: a directory that only runner can write (mode
0711: others may enter it, not list it or put anything in it), a world-readable snapshot
with the private values masked (runner.masking.public_snapshot) and a root-only one
beside it (runner.lookup.private_path), each created under a temporary name with
O_EXCL | O_NOFOLLOW relative to the directory's descriptor and renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from . import lookup, permissions
from .config import Config
from .console import flat_values
from .masking import public_snapshot
from .states import TaskRun

log = logging.getLogger("runner")
DIRECTORY_MODE = 0o711  # tasks run as another user must reach the public file
PUBLIC_MODE, PRIVATE_MODE = 0o644, 0o600
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def snapshot_texts(snapshot: Mapping[str, Any]) -> tuple[str, str]:
    """(public, private): the texts of the world-readable snapshot file and of the
    root-only one (see snapshot_text)."""
    public = public_snapshot(snapshot)
    hidden = {tuple(pair) for pair in public["private"]}
    return snapshot_text(public, exclude=hidden), snapshot_text(snapshot)


def snapshot_text(snapshot: Mapping[str, Any],
                  exclude: Collection[tuple[str, str]] = frozenset()) -> str:
    """The snapshot file lookup.py reads: the JSON of `snapshot` on the first line, then
    `section.key`, NUL, formatted value, NUL for every value that can go there
    (runner.console.flat_values), after `config`, NUL, the path of the config file
    runner loaded (empty for none), NUL: a name without a dot, which no `-g` asks for;
    `runner-config -c FILE -g` in a task answers from the snapshot when FILE is that
    file."""
    path = snapshot.get("config") or ""
    fields = [f"{lookup.CONFIG_FIELD}\0{path if is_text(path) else ''}\0"]
    fields += [f"{name}\0{value}\0"
               for name, value in flat_values(snapshot["sections"], exclude).items()]
    return json.dumps(snapshot) + "\n" + "".join(fields)


def is_text(text: str) -> bool:
    """No NUL, and UTF-8 can encode it (a path of bytes that are not UTF-8 cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in text


def _safe_parent(parent: str) -> bool:
    """A parent another user could rename our directory in (writable by them, no sticky
    bit) would let them swap in a snapshot of their own, and root's tasks would read
    their values: strict_permissions' rule for one entry decides."""
    return permissions.entry_problem(os.stat(parent), parent, "snapshot directory") is None


def _open_directory(path: Path) -> int:
    """mkdtemp's directory (0700) opened and made 0711; refuse anything that is not the
    directory we made (the descriptor is what later writes go through)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(f"{path}: not owned by uid {os.geteuid()}")
    os.fchmod(fd, DIRECTORY_MODE)
    return fd


def _write_atomically(dir_fd: int, name: str, text: str, mode: int) -> None:
    """`name` in the directory replaced by a file holding `text`, mode `mode` from its
    creation on (O_CREAT's mode, then fchmod only to undo the umask: never wider)."""
    temporary = name + ".tmp"
    try:
        os.unlink(temporary, dir_fd=dir_fd)  # left by a crash mid-write
    except FileNotFoundError:
        pass
    try:
        fd = os.open(temporary, _CREATE, mode, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except OSError:
            pass
        raise


class TaskEnvironment:
    """Owns the config snapshot that RUNNER_CONFIG_CMD reads; rewrite it on every reload."""

    def __init__(self, config: Config, run_id: str = "") -> None:
        self.run_id = run_id
        self.dir_fd = -1
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        # The runtime directory first (tmpfs, private to the service); when it is full,
        # unwritable or unsafe, the system's temporary directory rather than no snapshot
        # at all, and /tmp (sticky) when $TMPDIR is unsafe too.
        candidates = list(dict.fromkeys(
            p for p in (runtime, tempfile.gettempdir(), "/tmp") if p))
        for index, parent in enumerate(candidates):
            try:
                self._make(parent, config)
                break
            except OSError as exc:
                if index == len(candidates) - 1:
                    raise
                log.warning("%s: cannot write the configuration snapshot there (%s); "
                            "using %s", parent, exc.strerror or exc, candidates[index + 1])
                self._discard()

    def _make(self, parent: str, config: Config) -> None:
        if not _safe_parent(parent):
            raise OSError("writable by other users without the sticky bit, or owned by "
                          "another user")
        self.directory = Path(tempfile.mkdtemp(prefix="runner-", dir=parent))
        self.dir_fd = _open_directory(self.directory)
        self.snapshot = self.directory / "config.snapshot"
        self.config_cmd = self._config_command()
        self.update(config)

    def _config_command(self) -> str:
        # -I -S: no site-packages, no user paths, so the lookup costs little more than
        # the interpreter's own start; lookup.py needs only the standard library.
        parts = [sys.executable, "-I", "-S", os.path.abspath(lookup.__file__),
                 "--snapshot", str(self.snapshot)]
        if any(c.isspace() for part in parts for c in part):
            log.warning("RUNNER_CONFIG_CMD contains a path with spaces; "
                        "tasks must not split it: %s", parts)
        return " ".join(parts)

    def update(self, config: Config) -> None:
        """Write the snapshot files, then switch to `config`; on OSError the config stays
        (the private file may already be new: it is only read by root, who may see it)."""
        public, private = snapshot_texts(config.snapshot())
        name = self.snapshot.name
        # Each file is replaced whole; a lookup reads one of them (root the private one),
        # so it never mixes two configurations.
        _write_atomically(self.dir_fd, lookup.private_path(name), private, PRIVATE_MODE)
        _write_atomically(self.dir_fd, name, public, PUBLIC_MODE)
        self.config = config
        # Built once per config: copying os.environ decodes every variable again.
        self.base = {**os.environ, **config.env}

    def for_run(self, run: TaskRun) -> dict[str, str]:
        env = dict(self.base)
        env.update({
            "RUNNER_CONFIG_CMD": self.config_cmd,
            # What a plain `runner-config -g` in the task answers from (runner.lookup).
            lookup.SNAPSHOT_ENV: str(self.snapshot),
            "RUNNER_TASK": run.task.name,
            "RUNNER_TRY": str(run.try_num),
            "RUNNER_ITERATION": str(run.iteration),
            "RUNNER_STATE_DIR": self.config.runner.state_dir,
            "RUNNER_RUN_ID": self.run_id,
        })
        return env

    def _discard(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
        shutil.rmtree(getattr(self, "directory", ""), ignore_errors=True)

    def close(self) -> None:
        self._discard()
