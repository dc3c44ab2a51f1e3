"""Watching a `runner check` for runner.checkcache: the os-level functions it calls are
wrapped while it runs, each call written down as an observation (the kinds are
runner.checkcache.Observe's), and what it prints is kept as it goes out.

The wrappers return exactly what the real functions return (a file opened for reading is
read whole, and the check reads those very bytes), so the check runs as it would without
them (a stat result is one whose unobserved fields, size and times, spoil the recording
when read). What cannot be replayed (a file opened for writing, os.open, os.scandir, a
path given as a file descriptor, the time, a log line) spoils the recording: the answer
is printed but not stored. Only `runner check` on the light command line is recorded,
in a process that does nothing else.
"""

from __future__ import annotations

import builtins
import io
import logging
import os
import pwd
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import checkcache
from .checkcache import error_view, fstat_view, module_view, read_view, stat_fields, stat_view

_active: list[Recorder] = []


class Recorder:
    """What one check observed (in order, the first of each) and what it wrote."""

    def __init__(self) -> None:
        self.observations: dict[tuple, Any] = {}
        self.writes: list[list] = []  # [stream number, text], consecutive writes joined
        self.spoiled: str | None = None
        self.paused = False

    def note(self, key: tuple, seen: Any) -> None:
        if self.paused and key[0] not in ("env", "environ"):
            return  # an import's files: its "module" observation stands for them
        first = self.observations.setdefault(key, seen)
        if first != seen:
            self.spoil(f"{key[0]} {key[1:]!r} changed while the check ran")

    def path(self, path: Any) -> Any:
        """`path` as observed; a relative one depends on the working directory too."""
        path = os.fspath(path)
        if not (path.startswith("/") if isinstance(path, str) else path.startswith(b"/")):
            self.note(("cwd",), checkcache.Observe.cwd())
        return path

    def spoil(self, why: str) -> None:
        if not self.paused:  # an import's own doings are its "module" observation's
            self.spoiled = self.spoiled or why

    def wrote(self, stream: int, text: str) -> None:
        if self.writes and self.writes[-1][0] == stream:
            self.writes[-1][1] += text
        else:
            self.writes.append([stream, text])


def importable(name: str) -> bool:
    """Whether module `name` imports (runner check asks it of psycopg), observed as
    runner.checkcache's "module" while a check is recorded (what the import itself
    opens is that observation's, not one of its own)."""
    recorder = _active[-1] if _active else None
    if recorder is None:
        return _imports(name)
    recorder.paused = True
    try:
        view = module_view(name)
        found = _imports(name)
    finally:
        recorder.paused = False
    recorder.note(("module", name), view)
    return found


def _imports(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


class _StatSeen:
    """A stat result as the check sees it while recorded: reading a field the observation
    does not hold (size, times, ...) spoils the recording, since a change of it would
    not be seen."""

    __slots__ = ("_fields", "_info", "_recorder")

    def __init__(self, info: os.stat_result, fields: tuple[str, ...],
                 recorder: Recorder) -> None:
        self._info, self._fields, self._recorder = info, fields, recorder

    def __getattr__(self, name: str) -> Any:
        if name not in self._fields:
            self._recorder.spoil(f"the check read {name} of a stat result")
        return getattr(self._info, name)

    def __getitem__(self, index: int) -> Any:
        self._recorder.spoil("the check indexed a stat result")
        return self._info[index]


class _Tee:
    """A text stream that passes every write on and remembers it."""

    def __init__(self, recorder: Recorder, number: int, stream: Any) -> None:
        self._recorder, self._number, self._stream = recorder, number, stream

    def write(self, text: str) -> int:
        try:
            written = self._stream.write(text)
        except BaseException:
            self._recorder.spoil("a write failed")
            raise
        self._recorder.wrote(self._number, text)
        return written

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BaseException:
            self._recorder.spoil("a flush failed")
            raise

    def __getattr__(self, name: str) -> Any:  # fileno, encoding, isatty...
        return getattr(self._stream, name)


class _Watch:
    """The wrappers: each calls the real function and notes what the call showed."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.real = {place: getattr(*place) for place in self.places()}

    # What cannot be replayed: called, it spoils the recording (a time is not observed).
    REFUSED: tuple[tuple[Any, str], ...] = (
        (os, "open"), (os, "scandir"), (time, "time"), (time, "time_ns"), (time, "localtime"),
        (time, "gmtime"))

    @classmethod
    def places(cls) -> list[tuple[Any, str]]:
        """(owner, attribute) of every function replaced while a check is recorded."""
        environ = type(os.environ)
        return [(os, "stat"), (os, "lstat"), (os, "access"), (os, "listdir"),
                (builtins, "open"), (io, "open"), (os, "getxattr"), (os, "readlink"),
                (os, "getcwd"), (os, "fstat"), (resource, "getrlimit"), (pwd, "getpwuid"),
                (environ, "__getitem__"), (environ, "__iter__"), *cls.REFUSED]

    def replacements(self) -> dict[tuple[Any, str], Any]:
        """(owner, attribute) -> its wrapper; the environment's as functions, which the
        class binds to os.environ as methods."""
        special: dict[tuple[Any, str], Any] = {place: self.refuse(*place)
                                               for place in self.REFUSED}
        special[(type(os.environ), "__getitem__")] = lambda env, name: self.getitem(env, name)
        special[(type(os.environ), "__iter__")] = lambda env: self.iterate(env)
        return {place: special.get(place) or getattr(self, place[1])
                for place in self.places()}

    def _call(self, owner: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.real[(owner, name)](*args, **kwargs)

    def _observed(self, key: tuple, call: Callable[[], Any],
                  view: Callable[[Any], Any]) -> Any:
        """call(), noting view(its result) or its errno under `key`."""
        try:
            result = call()
        except OSError as exc:
            self.recorder.note(key, error_view(exc))
            raise
        self.recorder.note(key, view(result))
        return result

    def refuse(self, owner: Any, name: str) -> Callable:
        """What cannot be replayed: the call is made, the recording spoiled."""
        def refused(*args: Any, **kwargs: Any) -> Any:
            self.recorder.spoil(f"{owner.__name__}.{name}")
            return self._call(owner, name, *args, **kwargs)
        return refused

    def stat(self, path: Any, *, dir_fd: Any = None, follow_symlinks: bool = True) -> Any:
        if dir_fd is not None or isinstance(path, int):
            self.recorder.spoil("stat of a descriptor")
            return self._call(os, "stat", path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        path = self.recorder.path(path)
        info = self._observed(
            ("stat", path, follow_symlinks),
            lambda: self._call(os, "stat", path, follow_symlinks=follow_symlinks),
            lambda info: stat_view(path, info))
        return _StatSeen(info, stat_fields(path), self.recorder)

    def lstat(self, path: Any, *, dir_fd: Any = None) -> Any:
        return self.stat(path, dir_fd=dir_fd, follow_symlinks=False)

    def access(self, path: Any, mode: int, *, dir_fd: Any = None,
               effective_ids: bool = False, follow_symlinks: bool = True) -> bool:
        if dir_fd is not None or not follow_symlinks or isinstance(path, int):
            self.recorder.spoil("access() of a descriptor or a link")
        else:
            path = self.recorder.path(path)
        answer = self._call(os, "access", path, mode, dir_fd=dir_fd,
                            effective_ids=effective_ids, follow_symlinks=follow_symlinks)
        self.recorder.note(("access", path, mode, effective_ids), answer)
        return answer

    def listdir(self, path: Any = ".") -> list:
        if isinstance(path, int):
            self.recorder.spoil("listdir of a descriptor")
            return self._call(os, "listdir", path)
        path = self.recorder.path(path)
        return self._observed(("list", path), lambda: self._call(os, "listdir", path), sorted)

    def open(self, file: Any, mode: str = "r", buffering: int = -1,
             encoding: str | None = None, errors: str | None = None,
             newline: str | None = None, closefd: bool = True, opener: Any = None) -> Any:
        if isinstance(file, int) or opener is not None or set(mode) - set("rbt"):
            self.recorder.spoil(f"open({file!r}, {mode!r})")
            return self._call(builtins, "open", file, mode, buffering, encoding, errors,
                              newline, closefd, opener)
        path = self.recorder.path(file)

        def read() -> bytes:
            with self._call(builtins, "open", path, "rb") as handle:
                return handle.read()

        data = self._observed(("read", path), read, lambda data: read_view(path, data))
        stream = io.BytesIO(data)  # the check reads the very bytes observed
        return stream if "b" in mode else io.TextIOWrapper(stream, encoding, errors, newline)

    def getxattr(self, path: Any, attribute: Any, *, follow_symlinks: bool = True) -> bytes:
        if isinstance(path, int) or not follow_symlinks:
            self.recorder.spoil("getxattr of a descriptor or a link")
            return self._call(os, "getxattr", path, attribute, follow_symlinks=follow_symlinks)
        path = self.recorder.path(path)
        return self._observed(("xattr", path, attribute),
                              lambda: self._call(os, "getxattr", path, attribute), bytes)

    def readlink(self, path: Any, *, dir_fd: Any = None) -> Any:
        if dir_fd is not None:
            self.recorder.spoil("readlink with dir_fd")
            return self._call(os, "readlink", path, dir_fd=dir_fd)
        path = self.recorder.path(path)
        return self._observed(("readlink", path), lambda: self._call(os, "readlink", path),
                              str)

    def getcwd(self) -> str:
        return self._observed(("cwd",), lambda: self._call(os, "getcwd"), str)

    def fstat(self, fd: int) -> Any:
        return self._observed(("fstat", fd), lambda: self._call(os, "fstat", fd), fstat_view)

    def getrlimit(self, which: int) -> tuple[int, int]:
        limits = self._call(resource, "getrlimit", which)
        self.recorder.note(("rlimit", which), limits)
        return limits

    def getpwuid(self, uid: int) -> Any:
        try:
            entry = self._call(pwd, "getpwuid", uid)
        except KeyError:
            self.recorder.note(("user", uid), None)
            raise
        self.recorder.note(("user", uid), entry.pw_name)
        return entry

    def getitem(self, environ: Any, name: str) -> str:
        getitem = self.real[(type(os.environ), "__getitem__")]
        if environ is not os.environ:
            return getitem(environ, name)
        try:
            value = getitem(environ, name)
        except KeyError:
            self.recorder.note(("env", name), None)
            raise
        self.recorder.note(("env", name), value)
        return value

    def iterate(self, environ: Any) -> Iterator[str]:
        getitem, iterate = (self.real[(type(os.environ), name)]
                            for name in ("__getitem__", "__iter__"))
        if environ is os.environ:
            self.recorder.note(("environ",), tuple(sorted(
                (name, getitem(environ, name)) for name in iterate(environ))))
        return iterate(environ)


class _SpoilOnLog(logging.Filter):
    """A log line carries its time: a check that logs is not stored."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def filter(self, record: logging.LogRecord) -> bool:
        self.recorder.spoil(f"logged {record.getMessage()!r}")
        return True


def watch_logging(recorder: Recorder) -> None:
    """Spoil the recording when anything is logged (after runner.logs.setup)."""
    for handler in logging.getLogger("runner").handlers:
        handler.addFilter(_SpoilOnLog(recorder))


@contextmanager
def recording() -> Iterator[Recorder]:
    """Watch the check run inside: stdout and stderr teed, the os functions wrapped."""
    recorder = Recorder()
    watch = _Watch(recorder)
    replaced, saved = watch.replacements(), watch.real
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(recorder, 0, sys.stdout), _Tee(recorder, 1, sys.stderr)
    _active.append(recorder)
    try:
        for (owner, name), function in replaced.items():
            setattr(owner, name, function)
        yield recorder
    finally:
        for (owner, name), function in saved.items():
            setattr(owner, name, function)
        _active.pop()
        sys.stdout, sys.stderr = streams


def checked(config_path: str | None, task_dir: str | None,
            run: Callable[[Recorder], int]) -> int:
    """run(recorder)'s exit status, recorded; stored by runner.checkcache when the
    recording is whole and still true (0 or 78: a check's answer, not an accident)."""
    started_ns = time.time_ns()
    with recording() as recorder:
        status = run(recorder)
    if recorder.spoiled is None and status in (0, 78):
        observations = [*recorder.observations.items(), *_imported_code()]
        if checkcache.replay(observations):  # nothing changed while the check ran
            writes = [tuple(write) for write in recorder.writes]
            checkcache.store(config_path, task_dir, observations, writes, status,
                             started_ns)
    return status


def _imported_code() -> list[tuple[tuple, Any]]:
    """("code", file) observations of every module loaded from outside the standard
    library and runner's package (runner.checkcache keys on runner's own files)."""
    stdlib = os.path.dirname(os.__file__)
    runner = os.path.dirname(checkcache.__file__)
    found = (getattr(module, "__file__", None) for module in list(sys.modules.values()))
    files = sorted({path for path in found if isinstance(path, str)})
    return [(("code", path), checkcache.Observe.code(path)) for path in files
            if not path.startswith((runner + os.sep, stdlib + os.sep))
            or any(part in path for part in ("/site-packages/", "/dist-packages/"))]
