"""Every run in a cgroup of its own, when runner has a cgroup v2 subtree to manage.

Which cgroup is runner's: the `0::` line of /proc/self/cgroup, under the cgroup2 mount
of /proc/self/mountinfo (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified`
on a hybrid one). runner manages it when it may: it is not the root cgroup, runner is
the only process in it, runner can write it, and, in a systemd unit (a `.service` or
`.scope`), systemd delegated it (`Delegate=yes` sets the `trusted.delegate` attribute).
Otherwise runner keeps process groups and the /proc scan (runner.reaper) and says why.

The layout runner makes in its cgroup B (what systemd calls a delegated subtree):

    B/supervisor                  runner itself (a cgroup with children holds no process)
    B/task-17-30-puppet.sh        one run: a task, its check, a hook, the halt task
    B/hook-18-30-puppet.sh ...

A run's process enters its cell between fork and exec (Python offers no clone3 with
CLONE_INTO_CGROUP), so everything it ever starts is inside. A stop or a timeout freezes
the cell, sends SIGTERM to every process in it, thaws it, and after kill_grace writes
`cgroup.kill` (SIGKILL to all, atomically: no fork outruns it); runner goes on when the
cell is empty. A run that exits leaving processes behind (a task starting a worker)
keeps its cell, as systemd keeps a service's processes; runner removes it once empty.

The per-task limits (`memory_max`, `cpu_weight`, `tasks_max`) need the controller: from
B's cgroup.controllers, or on a hybrid host from a writable cgroup v1 hierarchy of that
controller (a companion cgroup `runner-PID/CELL` there that the process enters too).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from . import usage
from .reaper import command_line, read_proc, report_leftover

log = logging.getLogger("runner")

CONTROLLERS = ("cpu", "memory", "pids")
LEAF = "supervisor"
NAME_LIMIT = 80  # characters of a task name kept in its cell's name
# The file each limit is written to: (cgroup v2, cgroup v1), and how a value is put.
LIMIT_FILES = {
    "memory": ("memory.max", "memory.limit_in_bytes"),
    "pids": ("pids.max", "pids.max"),
    "cpu": ("cpu.weight", "cpu.shares"),
}
LIMIT_KEYS = {"memory_max": "memory", "cpu_weight": "cpu", "tasks_max": "pids"}


@dataclass(frozen=True)
class CellLimits:
    """A task's limits (None: none); each needs its controller."""

    memory_max: int | None = None
    cpu_weight: int | None = None
    tasks_max: int | None = None

    def controllers(self) -> dict[str, int]:
        """controller -> value, for the limits that are set."""
        return {LIMIT_KEYS[key]: value for key, value in vars(self).items()
                if value is not None}


NO_LIMITS = CellLimits()


# -- where runner is ----------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    root: str
    point: str
    fstype: str
    options: frozenset[str]


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        mounts.append(Mount(_unescape(fields[3]), _unescape(fields[4]), rest[0],
                            frozenset(rest[2].split(",")) | frozenset(fields[5].split(","))))
    return mounts


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), path)


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """(runner's cgroup v2 path or None, v1 controller -> path)."""
    v2, v1 = None, {}
    for line in text.splitlines():
        number, _, rest = line.partition(":")
        names, _, path = rest.partition(":")
        if number == "0" and not names:
            v2 = path
        else:
            for name in names.split(","):
                v1[name] = path
    return v2, v1


def _within(mount: Mount, path: str) -> Path | None:
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None  # not visible through this mount
    return Path(mount.point, path[len(root):].lstrip("/"))


def _read(path: Path) -> str:
    with open(path) as handle:
        return handle.read()


@dataclass(frozen=True)
class Probe:
    """What runner found, changing nothing: its cgroup if it may manage it, else why not;
    the controllers it can use for limits."""

    base: Path | None
    reason: str = ""
    v2_controllers: frozenset[str] = frozenset()
    v1: dict[str, Path] = field(default_factory=dict)  # controller -> runner's v1 cgroup

    def controllers(self) -> frozenset[str]:
        return self.v2_controllers | frozenset(self.v1) if self.base else frozenset()

    def missing(self, controller: str) -> str:
        """Why runner has no `controller` for a task's limit."""
        if self.base is None:
            return f"no cgroup of its own: {self.reason}"
        return (f"not in {self.base}/cgroup.controllers, and no writable cgroup v1 "
                f"{controller} hierarchy")

    def statement(self) -> str:
        if self.base is None:
            return f"containment: process groups and a /proc scan ({self.reason})"
        parts = [f"containment: a cgroup per run under {self.base}"]
        if self.v2_controllers:
            parts.append("controllers " + " ".join(sorted(self.v2_controllers)))
        if self.v1:
            parts.append("from cgroup v1: " + " ".join(sorted(self.v1)))
        return "; ".join(parts)


class Containment(Protocol):
    """What the limits of tasks are checked against: a Tree, or a Probe."""

    def controllers(self) -> frozenset[str]: ...

    def missing(self, controller: str) -> str: ...


def take(found: Probe) -> tuple[Tree | None, Probe]:
    """Manage runner's cgroup if it may: (the tree or None, what was found, with the
    reason when taking it failed)."""
    if found.base is None:
        return None, found
    try:
        return Tree(found), found
    except OSError as exc:
        return None, Probe(None, f"cannot manage {found.base}: {exc.strerror or exc}")


def probe(proc: str = "/proc/self") -> Probe:
    try:
        v2, v1paths = parse_proc_cgroup(_read(Path(proc, "cgroup")))
        mounts = parse_mountinfo(_read(Path(proc, "mountinfo")))
    except OSError as exc:
        return Probe(None, f"cannot read {proc}: {exc.strerror}")
    if v2 is None:
        return Probe(None, "no cgroup v2 (no 0:: line in /proc/self/cgroup)")
    base = next((d for m in mounts if m.fstype == "cgroup2" and (d := _within(m, v2))), None)
    if base is None:
        return Probe(None, "no cgroup v2 mount shows runner's cgroup")
    reason = _not_ours(base)
    if reason:
        return Probe(None, reason)
    controllers = frozenset(_read(base / "cgroup.controllers").split()) & set(CONTROLLERS)
    return Probe(base, "", controllers, _v1_companions(mounts, v1paths, controllers))


def _not_ours(base: Path) -> str:
    """Why runner may not manage base ("" when it may)."""
    if not (base / "cgroup.kill").exists():
        return (f"{base} is the root cgroup" if not (base / "cgroup.freeze").exists()
                else f"{base}: the kernel has no cgroup.kill (Linux 5.14)")
    try:
        others = [p for p in _read(base / "cgroup.procs").split() if int(p) != os.getpid()]
    except OSError as exc:
        return f"{base}: {exc.strerror}"
    if others:
        return (f"{base} holds other processes too (runner needs a cgroup of its own: "
                "Delegate=yes in its systemd unit)")
    if not os.access(base, os.W_OK) or not os.access(base / "cgroup.procs", os.W_OK):
        return f"{base} is not writable by runner"
    if base.name.endswith((".service", ".scope")) and not _delegated(base):
        return f"{base} is not delegated to runner (Delegate=yes in its systemd unit)"
    return ""


def _delegated(base: Path) -> bool:
    for attribute in ("trusted.delegate", "user.delegate"):
        with contextlib.suppress(OSError):
            if os.getxattr(base, attribute) == b"1":
                return True
    return False


def _v1_companions(mounts: list[Mount], v1paths: dict[str, str],
                   v2: frozenset[str]) -> dict[str, Path]:
    """controller -> runner's cgroup in a writable v1 hierarchy, for the controllers
    cgroup v2 does not offer (a hybrid host)."""
    found = {}
    for controller in CONTROLLERS:
        if controller in v2 or controller not in v1paths:
            continue
        for mount in mounts:
            if mount.fstype != "cgroup" or controller not in mount.options:
                continue
            where = _within(mount, v1paths[controller])
            if where is not None and os.access(where, os.W_OK) and "ro" not in mount.options:
                found[controller] = where
    return found


# -- the subtree runner manages -----------------------------------------------------------


class Tree:
    """runner's cgroup, taken: runner in B/supervisor, controllers enabled for cells."""

    def __init__(self, found: Probe) -> None:
        assert found.base is not None
        self.base = found.base
        self.found = found
        self._lingering: list[Cell] = []
        self._lock = threading.Lock()  # cells are made and released by worker threads
        leaf = self.base / LEAF
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
        self.v2 = self._enable(found.v2_controllers)
        self.v1 = {}
        for controller, where in found.v1.items():
            with contextlib.suppress(OSError):
                (where / f"runner-{os.getpid()}").mkdir(exist_ok=True)
                self.v1[controller] = where / f"runner-{os.getpid()}"
        self._sweep_previous()

    def _enable(self, controllers: frozenset[str]) -> frozenset[str]:
        for controller in sorted(controllers):
            with contextlib.suppress(OSError):  # e.g. cpu with a realtime process inside
                (self.base / "cgroup.subtree_control").write_text(f"+{controller}\n")
        return frozenset(_read(self.base / "cgroup.subtree_control").split())

    _numbers: itertools.count[int]  # set by _sweep_previous: past any cell left running

    def _sweep_previous(self) -> None:
        """Cells an earlier runner left: the empty ones go; those with processes stay,
        and the numbering goes on past theirs (a cell's name is never taken twice)."""
        highest = 0
        for child in self.base.iterdir():
            if child.is_dir() and child.name != LEAF:
                try:
                    child.rmdir()
                except OSError:
                    number = re.match(r"[a-z]+-(\d+)-", child.name)
                    highest = max(highest, int(number[1]) if number else 0)
        self._numbers = itertools.count(highest + 1)

    def controllers(self) -> frozenset[str]:
        return (self.v2 | frozenset(self.v1)) & set(CONTROLLERS)

    def missing(self, controller: str) -> str:
        return self.found.missing(controller)

    def cell(self, kind: str, name: str, limits: CellLimits = NO_LIMITS) -> Cell | None:
        """A new cell for one run (None, with a warning, if it cannot be made: the run
        then goes on in runner's own cgroup, contained by its process group)."""
        self.sweep()
        number = next(self._numbers)
        cell_name = f"{kind}-{number}-{_safe(name)}"
        try:
            return Cell.make(self, cell_name, limits)
        except OSError as exc:
            log.warning("%s: cannot make its cgroup %s: %s; it runs without one",
                        name, self.base / cell_name, exc.strerror or exc)
            return None

    def linger(self, cell: Cell) -> None:
        with self._lock:
            self._lingering.append(cell)

    def sweep(self) -> None:
        """Remove the cells of finished runs that have emptied since."""
        with self._lock:
            self._lingering = [cell for cell in self._lingering if not cell.remove()]

    def close(self) -> None:
        self.sweep()
        for where in self.v1.values():
            with contextlib.suppress(OSError):
                where.rmdir()


def _safe(name: str) -> str:
    """A cgroup name from a task name: no `/`, no control bytes, bounded."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)[:NAME_LIMIT] or "_"


class Cell:
    """One run's cgroup (and its v1 companions on a hybrid host)."""

    def __init__(self, tree: Tree, path: Path, companions: list[Path]) -> None:
        self.tree = tree
        self.path = path
        self.companions = companions
        self._fds: list[int] = []
        self.leftovers: dict[int, str] = {}  # pid -> command line, outside the group
        self._killed: set[int] = set()

    @classmethod
    def make(cls, tree: Tree, name: str, limits: CellLimits) -> Cell:
        path = tree.base / name
        path.mkdir()
        cell = cls(tree, path, [])
        try:
            wanted = limits.controllers()
            for controller, where in tree.v1.items():
                if controller == "memory" or controller in wanted:  # memory: the peak
                    (where / name).mkdir(exist_ok=True)
                    cell.companions.append(where / name)
            for controller, value in wanted.items():
                cell._limit(controller, value)
            for where in [*cell.companions, path]:
                cell._fds.append(os.open(where / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError:
            cell.close_fds()
            cell.remove()
            raise
        return cell

    def _limit(self, controller: str, value: int) -> None:
        v2_file, v1_file = LIMIT_FILES[controller]
        if controller in self.tree.v2:
            (self.path / v2_file).write_text(f"{value}\n")
            return
        if controller not in self.tree.v1:  # refused at start (runner.preflight)
            raise OSError(errno.ENOTSUP, f"no {controller} controller")
        where = self.tree.v1[controller] / self.path.name
        if controller == "cpu":
            value = max(2, value * 1024 // 100)  # weight 100 is 1024 shares
        (where / v1_file).write_text(f"{value}\n")

    def enter(self) -> None:
        """Between fork and exec, in the child: move this process into the cell."""
        for fd in self._fds:
            os.write(fd, b"0")

    def close_fds(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    # -- what is inside ------------------------------------------------------------------

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in _read(self.path / "cgroup.procs").split()]
        except OSError:
            return []

    def populated(self) -> bool:
        try:
            return "populated 1" in _read(self.path / "cgroup.events")
        except OSError:
            return False

    def cost(self) -> usage.Cost:
        stat = _keyed(self.path / "cpu.stat")
        return usage.Cost(stat.get("user_usec", 0) / 1e6, stat.get("system_usec", 0) / 1e6,
                          self._peak())

    def _peak(self) -> int | None:
        places = [self.path / "memory.peak"] if "memory" in self.tree.v2 else []
        places += [c / "memory.max_usage_in_bytes" for c in self.companions
                   if c.parent == self.tree.v1.get("memory")]
        for place in places:
            with contextlib.suppress(OSError, ValueError):
                return int(_read(place))
        return None

    # -- stopping --------------------------------------------------------------------------

    def _freeze(self, frozen: bool) -> None:
        with contextlib.suppress(OSError):
            (self.path / "cgroup.freeze").write_text("1\n" if frozen else "0\n")

    def signal_all(self, signum: int, pgid: int) -> None:
        """signum to every process in the cell, frozen meanwhile so none forks past it.
        Those outside the run's process group are noted (the log's "left process")."""
        self._freeze(True)
        try:
            for pid in self.pids():
                self._note(pid, pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signum)
        finally:
            self._freeze(False)

    def _note(self, pid: int, pgid: int) -> None:
        if pid in self.leftovers:
            return
        proc = read_proc(pid)
        if proc is not None and proc.pgrp != pgid:
            self.leftovers[pid] = command_line(pid)

    def kill(self, pgid: int) -> None:
        """SIGKILL to everything in the cell at once (cgroup.kill)."""
        self._freeze(True)  # only to see (and report) who is there
        self._killed = set(self.pids())
        for pid in self._killed:
            self._note(pid, pgid)
        try:
            (self.path / "cgroup.kill").write_text("1\n")
        finally:
            self._freeze(False)

    def report(self, label: str, why: str) -> list[str]:
        """A warning per process found outside the run's group at the stop."""
        alive = set(self.pids())
        lines = []
        for pid, command in self.leftovers.items():
            if pid in alive:
                outcome = "still running after SIGKILL"
            elif pid in self._killed:
                outcome = "killed (SIGKILL after kill_grace)"
            else:
                outcome = "killed"
            lines.append(report_leftover(label, pid, command, why, outcome))
        return lines

    def remove(self) -> bool:
        """Remove the cell if empty; True when it is gone."""
        for where in [self.path, *self.companions]:
            try:
                where.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                return False
        return True

    def release(self) -> None:
        """The run is over: remove the cell, or keep it while processes it left run."""
        self.close_fds()
        if not self.remove():
            self.tree.linger(self)


def _keyed(path: Path) -> dict[str, int]:
    values = {}
    with contextlib.suppress(OSError):
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                values[key] = int(value)
    return values
