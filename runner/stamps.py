"""Stamps: the durable memory that a once, per-boot or per-instance task succeeded.

A stamp is a small JSON file, state_dir/stamps/<task file name>.json. It is keyed by a
fingerprint of the task file and its effective configuration, so editing the script or
its section makes the task run again (cloud-init stamps by name only, which hides edits).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import permissions, reaper
from .files import make_dir, write_atomic
from .identity import boot_id, iso, utc_now
from .names import short_name
from .settings import Frequency
from .statedir import open_file_problem
from .tasks import INSTANCE_ID_TRUST, Task

if TYPE_CHECKING:
    from . import reaper
from .config import Config

log = logging.getLogger("runner.stamps")

STAMP_DIR = "stamps"
SUFFIX = ".json"
CLOUD_INSTANCE_ID = "/var/lib/cloud/data/instance-id"
MACHINE_ID = "/etc/machine-id"
INSTANCE_ID_TIMEOUT = 10.0
# Bumped when what goes into a fingerprint changes, so old stamps stop matching.
_FINGERPRINT_VERSION = b"runner-stamp-1\0"


class InstanceIdUnknown(Exception):
    """Why this machine's instance id could not be found (the message says it in one line)."""


def instance_id(config: Config) -> str:
    """This machine's instance id: [runner] instance_id_command, else cloud-init's, else
    /etc/machine-id. Raises InstanceIdUnknown with the reason."""
    command = config.runner.instance_id_command
    if command:
        return _instance_id_from_command(
            command, permissions.applies(config.runner.strict_permissions))
    for path in (CLOUD_INSTANCE_ID, MACHINE_ID):
        value = _read_id_file(path)
        if value:
            return value
    raise InstanceIdUnknown(
        f"no [runner] instance_id_command, and neither {CLOUD_INSTANCE_ID} nor "
        f"{MACHINE_ID} holds an id"
    )


def _read_id_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return file.read().strip() or None
    except OSError:
        return None


def _instance_id_from_command(command: list[str], strict: bool = False) -> str:
    """Run the command (own process group, so a timeout also stops what it started); with
    strict_permissions, only after checking the program it runs, found as exec finds it."""
    name = f"[runner] instance_id_command {command[0]!r}"
    executable, untrusted = permissions.verify(
        command, INSTANCE_ID_TRUST, cwd=os.getcwd(), search_path=os.environ.get("PATH"),
    ) if strict else (None, None)
    if untrusted:
        log.error("%s", untrusted)  # per-instance tasks then run: the safe side
        raise InstanceIdUnknown(f"{name}: refused (strict_permissions)")
    try:
        # Through the reaper, so that its orphan reaping never takes this child's status.
        proc = reaper.popen(
            command, executable=executable, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
    except OSError as exc:
        raise InstanceIdUnknown(f"{name}: cannot run it: {exc.strerror}") from None
    try:
        out, err = proc.communicate(timeout=INSTANCE_ID_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise InstanceIdUnknown(
            f"{name}: did not finish within {INSTANCE_ID_TIMEOUT:g} s"
        ) from None
    finally:
        reaper.release(proc)
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        detail = f": {lines[-1]}" if lines else ""
        raise InstanceIdUnknown(f"{name}: exited with status {proc.returncode}{detail}")
    value = out.decode("utf-8", "replace").strip()
    if not value:
        raise InstanceIdUnknown(f"{name}: printed nothing")
    return value


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    # Only wait for the process itself: a grandchild may hold the pipes open.
    proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def for_config(config: Config) -> Stamps:
    """The stamps of state_dir, scoped by this boot and this machine's instance id (the
    one wiring used by the run, the dry run and `runner plan`)."""
    return Stamps(config.runner.state_dir, config, boot_id=boot_id(),
                  instance_id=functools.partial(instance_id, config))


class Stamps:
    """Decides whether a task may be skipped, and records that a task succeeded."""

    def __init__(self, state_dir: str, config: Config, *, boot_id: str,
                 instance_id: Callable[[], str | None]) -> None:
        self.dir = os.path.join(state_dir, STAMP_DIR)
        self.config = config
        self.strict = permissions.applies(config.runner.strict_permissions)
        self.boot_id = boot_id
        self._instance_id_source = instance_id
        self._instance_id: str | None = None
        self._instance_id_known = False
        # Warnings are said once: skip_reason runs for every task of every iteration.
        self._warned: set[str] = set()

    # -- the question the supervisor asks -------------------------------------------

    def fingerprint(self, task: Task) -> str:
        """What a stamp is valid for: the task file's bytes and its effective config.

        The scope (boot id, instance id) is not part of it; it is compared separately so
        the skip reason can say which scope matched. Raises OSError if the file is unreadable.
        """
        with open(task.path, "rb") as file:
            data = file.read()
        config = {
            "settings": dataclasses.asdict(task.settings),
            "section": self.config.sections.get(task.short_name, {}),
            "interpreter": task.settings.interpreter,
        }
        digest = hashlib.sha256(_FINGERPRINT_VERSION)
        # Length first, so no file content can pose as the config that follows it.
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
        digest.update(json.dumps(config, sort_keys=True, default=str).encode())
        return digest.hexdigest()

    def skip_reason(self, task: Task) -> str | None:
        """Why the task need not run now, or None when it must run."""
        frequency = task.settings.frequency
        if frequency is Frequency.ALWAYS:
            return None
        stamp = self._read(task.name)
        if stamp is None:
            return None
        try:
            current = self.fingerprint(task)
        except OSError:
            return None  # running it reports the problem better than a stamp could
        if stamp.get("fingerprint") != current or stamp.get("frequency") != frequency:
            return None
        at = stamp.get("at") or "an unknown time"
        if frequency is Frequency.ONCE:
            return f"once: succeeded at {at}"
        if frequency is Frequency.PER_BOOT:
            if not self._boot_known() or stamp.get("boot_id") != self.boot_id:
                return None
            return f"per-boot: succeeded in this boot at {at}"
        if frequency is Frequency.PER_INSTANCE:
            current_instance = self.current_instance_id()
            if current_instance is None or stamp.get("instance_id") != current_instance:
                return None
            return f"per-instance: succeeded on instance {current_instance} at {at}"
        return None  # a frequency this version does not know: running is the safe side

    def record(self, task: Task) -> None:
        """Remember that the task succeeded; a failure is a warning, never an exception,
        because a lost stamp only means the task runs once more."""
        frequency = task.settings.frequency
        if frequency is Frequency.ALWAYS:
            return
        try:
            path = self._path(task.name)
            stamp = {
                "task": task.name,
                "frequency": frequency.value,
                "fingerprint": self.fingerprint(task),
                "boot_id": self.boot_id or None,
                # Only per-instance tasks need it; others do not run the command for it.
                "instance_id": self.current_instance_id() if frequency is Frequency.PER_INSTANCE
                else None,
                "at": iso(utc_now()),
            }
            make_dir(self.dir, 0o755)
            data = (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode()
            write_atomic(path, data, 0o644, durable=True)
            _fsync_dir(self.dir)
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._warn("record", "cannot record that %s succeeded in %s: %s (it will run "
                       "again)", task.name, self.dir, why)

    # -- the scopes -------------------------------------------------------------------

    def current_instance_id(self) -> str | None:
        """The instance id, asked for at most once (it may run a command)."""
        if not self._instance_id_known:
            self._instance_id_known = True
            try:
                self._instance_id = self._instance_id_source()
                reason = "no instance id"
            except InstanceIdUnknown as exc:
                reason = str(exc)
            if self._instance_id is None:
                self._warn("instance", "instance id unknown (%s): per-instance tasks run "
                           "every time", reason)
        return self._instance_id

    def _boot_known(self) -> bool:
        # Without a boot id every boot would look like the same one: never skip.
        if not self.boot_id:
            self._warn("boot", "boot id unknown: per-boot tasks run every time")
        return bool(self.boot_id)

    # -- stamp files ------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, stamp_file_name(name))

    def _read(self, name: str) -> dict[str, Any] | None:
        """The stamp of a task, or None (missing, or corrupt: then warn once)."""
        try:
            path = self._path(name)
            with open(path, "rb") as file:
                untrusted = open_file_problem(file.fileno(), path, self.strict)
                if untrusted:  # running the task again is the safe side
                    self._warn(f"read {name}", "%s; ignoring the stamp of %s", untrusted, name)
                    return None
                stamp = json.loads(file.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError too
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._warn(f"read {name}", "ignoring the stamp of %s: %s", name, why)
            return None
        if not isinstance(stamp, dict) or not isinstance(stamp.get("fingerprint"), str):
            self._warn(f"read {name}", "ignoring the stamp of %s: not a stamp", name)
            return None
        return stamp

    def _warn(self, key: str, message: str, *args: object) -> None:
        if key in self._warned:
            log.debug(message, *args)
            return
        self._warned.add(key)
        log.warning(message, *args)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable: a stamp lost in a power cut reruns a task."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stamp_file_name(task_name: str) -> str:
    """`20-puppet.sh` -> `20-puppet.sh.json`; a name that is not one file is refused."""
    if not task_name or "/" in task_name or "\0" in task_name or task_name in (".", ".."):
        raise ValueError(f"{task_name!r} cannot name a stamp file")
    return task_name + SUFFIX


def stamps(state_dir: str) -> dict[str, str | None]:
    """Every stamp in state_dir: task file name -> frequency (None when unreadable)."""
    directory = os.path.join(state_dir, STAMP_DIR)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found: dict[str, str | None] = {}
    # Dot files are write_atomic's temporaries, never stamps.
    for file_name in sorted(n for n in names if n.endswith(SUFFIX) and not n.startswith(".")):
        try:
            with open(os.path.join(directory, file_name), "rb") as file:
                frequency = json.loads(file.read()).get("frequency")
        except (OSError, ValueError, AttributeError):
            frequency = None
        found[file_name[: -len(SUFFIX)]] = frequency if isinstance(frequency, str) else None
    return found


def matches(task_name: str, wanted: str) -> bool:
    """A task is named by its file name or its short name, as everywhere in runner."""
    return wanted in (task_name, short_name(task_name))


def reset(state_dir: str, task: str | None) -> list[str]:
    """Forget stamps (all, or those of one task); the task names whose stamps went.

    An OSError other than a vanished file is raised: the caller must say it failed.
    """
    directory = os.path.join(state_dir, STAMP_DIR)
    removed = []
    for name in stamps(state_dir):
        if task is not None and not matches(name, task):
            continue
        try:
            os.unlink(os.path.join(directory, name + SUFFIX))
        except FileNotFoundError:
            continue  # another reset got there first
        removed.append(name)
    return removed
