"""`runner check [TASKDIR]` answered from its last result while nothing it looked at
changed (issue 17): loading and validating the configuration, discovering the tasks and
probing the machine cost ten times the interpreter's start; replaying what the check
observed costs a few dozen system calls.

What a check's answer depends on is found by watching it, not by a list kept by hand:
while a check runs for the record, the os-level functions it calls are wrapped, and each
call is written down as an observation, (kind, arguments) -> what it showed:

    stat     os.stat/os.lstat (so os.path.isfile, exists, realpath, pathlib...): the file
             type, mode, owner, group and identity (device, inode; not under /proc, where
             they name this process), or the errno. The check gets a stat result that
             spoils the recording when it reads another field (size, times...)
    access   os.access: its answer (uid, groups, ACLs, read-only and noexec mounts)
    list     os.listdir: the sorted names, or the errno
    read     open() for reading: the whole content (the check is handed exactly these
             bytes), or the errno; of a cgroup.procs file, only whether a process other
             than this one is in it (what runner.cgroup asks of it)
    xattr, readlink, cwd, env (one variable), environ (all of it), rlimit, fstat, user
             (a uid's name), module (whether a module can be imported: the listings of
             every sys.path directory and /etc/ld.so.cache's identity and times)
    code     added when the check ends: each file of a module it imported from outside
             the standard library and runner (configobj, validate, psycopg...), with
             identity, size and times (an upgrade of configobj may validate otherwise)

The answer (every write to stdout and stderr, in order, and the exit status) is stored
with the observations, and a later `runner check` with the same arguments prints it only
when every observation, made again in the same order, shows the same: a file edited in
the same clock tick at the same size differs in content, a task made non-executable in
its access() answer, a task added in the listing. Beyond the observations the key holds
the arguments (absolute), the uid, gid and groups, the interpreter (and its -X/-O flags),
the stream encodings and runner's own code: the version and every file of the package
with its identity, size, mtime and ctime (a result is not stored when one of them, or a
"code" observation, changed later than RACY_S before the check started: it may have
been loaded before the change, and a coarse clock could hide an edit made in the same
tick, as git's racily clean index rule says).

A check is not stored when it did something the recorder cannot replay (opened a file
for writing, os.open, os.scandir, a file descriptor as a path, asked the time), logged
anything (a log line carries its time), failed inside runner (exit 70), was interrupted, or when an
observation made again at the end differs from the first (something changed while it
ran). A failing check (exit 78, one line on stderr) is stored like a passing one: it is
as much a function of what was observed.

The cache file lives beside runner.confcache's, under the same trust rules (its helpers:
a directory only its user may enter, a 0600 regular file of theirs opened without
following links, written under an O_EXCL temporary name and renamed into place).

Imports `os`, `sys` and `marshal` at import time (runner.confcache's); what recording
needs it imports then.
"""

import marshal
import os
import sys

from . import confcache

FORMAT = 1
RACY_S = 3.0  # code changed this shortly before a check: do not store (see above)
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_LD_CACHE = "/etc/ld.so.cache"


# -- what one observation shows (both when recording and when replaying) ------------


def error_view(exc):
    return ("!", exc.errno)


def stat_fields(path):
    """The fields of a stat result of `path` its observation holds (under /proc the
    identity names this process, so it is left out)."""
    kind = ("st_mode", "st_uid", "st_gid")
    return kind if os.fsdecode(path).startswith("/proc/") else (*kind, "st_dev", "st_ino")


def stat_view(path, info):
    return tuple(getattr(info, field) for field in stat_fields(path))


def times_view(info):
    return (info.st_dev, info.st_ino, info.st_mode, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)


def read_view(path, data):
    if os.path.basename(os.fsdecode(path)) == "cgroup.procs":
        return ("others", any(p != str(os.getpid()).encode() for p in data.split()))
    return data


def _safe(function, view, *args, **kwargs):
    """view(result) of function(*args), or the errno it failed with."""
    try:
        result = function(*args, **kwargs)
    except OSError as exc:
        return error_view(exc)
    return view(result)


def fstat_view(info):
    return (info.st_mode, info.st_dev, info.st_ino)


def module_view(name):
    """What decides whether `name` imports: every sys.path directory's names (a package
    installed or removed) and the dynamic linker's cache (a library it loads)."""
    listings = tuple((entry, _safe(os.listdir, sorted, entry or "."))
                     for entry in sys.path)
    return (name, listings, _safe(os.stat, times_view, _LD_CACHE))


def _read_file(path):
    with open(path, "rb") as handle:
        return handle.read()


class Observe:
    """Each kind of observation, made now: Observe.KIND(*arguments) -> what it shows
    (the recorder notes the same of the call the check made)."""

    @staticmethod
    def stat(path, follow):
        return _safe(os.stat, lambda info: stat_view(path, info), path,
                     follow_symlinks=follow)

    @staticmethod
    def access(path, mode, effective):
        return os.access(path, mode, effective_ids=effective)

    @staticmethod
    def list(path):
        return _safe(os.listdir, sorted, path)

    @staticmethod
    def read(path):
        return _safe(_read_file, lambda data: read_view(path, data), path)

    @staticmethod
    def xattr(path, name):
        return _safe(os.getxattr, bytes, path, name)

    @staticmethod
    def readlink(path):
        return _safe(os.readlink, str, path)

    @staticmethod
    def cwd():
        return _safe(os.getcwd, str)

    @staticmethod
    def env(name):
        return os.environ.get(name)

    @staticmethod
    def environ():
        return tuple(sorted(os.environ.items()))

    @staticmethod
    def rlimit(which):
        import resource

        return resource.getrlimit(which)

    @staticmethod
    def fstat(fd):
        return _safe(os.fstat, fstat_view, fd)

    @staticmethod
    def user(uid):
        import pwd

        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return None

    module = staticmethod(module_view)

    @staticmethod
    def code(path):
        return _safe(os.stat, times_view, path)


def observe(key):
    """What the observation `key` ((kind, *arguments)) shows now."""
    return getattr(Observe, key[0])(*key[1:])


def replay(observations):
    """True when every observation still shows what it showed."""
    try:
        return all(observe(key) == seen for key, seen in observations)
    except (AttributeError, TypeError, ValueError, OSError):
        return False


# -- the key: arguments, identity, interpreter, runner's own code --------------------


def _code():
    """runner's files (its package and commands/) with identity, size and times."""
    found = []
    for directory in (_PACKAGE, os.path.join(_PACKAGE, "commands")):
        names = sorted(n for n in os.listdir(directory) if n != "__pycache__")
        found.append((directory, names))
        for name in names:
            found.append(times_view(os.stat(os.path.join(directory, name))))
    return tuple(found)


def _key(config_path, task_dir):
    from . import __version__

    streams = tuple((getattr(s, "encoding", None), getattr(s, "errors", None))
                    for s in (sys.stdout, sys.stderr))
    return (FORMAT, __version__, config_path, task_dir, os.geteuid(), os.getegid(),
            os.getuid(), os.getgid(), tuple(sorted(os.getgroups())), sys.executable,
            sys.version, tuple(sys.flags), sys.getfilesystemencoding(), streams, _code())


def _cache_name(config_path, task_dir):
    directory = confcache.cache_dir()
    if not directory:
        return None, None
    what = f"{config_path or ''}\0{task_dir or ''}"
    return directory, confcache.cache_file(directory, what, "check-")


def cached(config_path, task_dir):
    """The stored answer of `runner check` for these arguments, as ([(stream, text)],
    exit status), while everything it observed is as it was; else None."""
    directory, name = _cache_name(config_path, task_dir)
    if not name:
        return None
    record = confcache.read_record(directory, name)
    try:
        if (not isinstance(record, tuple) or len(record) != 4
                or record[0] != _key(config_path, task_dir) or not replay(record[1])):
            return None
    except OSError:
        return None
    return record[2], record[3]


def answer(config_path, task_dir):
    """Print the stored answer: its exit status, or None when there is none."""
    found = cached(config_path, task_dir)
    if found is None:
        return None
    writes, status = found
    streams = (sys.stdout, sys.stderr)
    for stream, text in writes:  # consecutive writes to one stream are one text
        streams[stream].write(text)
        streams[stream].flush()  # the order of stdout's and stderr's lines on a terminal
    return status


def store(config_path, task_dir, observations, writes, status, started_ns):
    """Remember the answer of a check that started at `started_ns` (time.time_ns());
    never fails: a cache is only a shortcut."""
    directory, name = _cache_name(config_path, task_dir)
    if not name:
        return
    try:
        key = _key(config_path, task_dir)
        code = [*key[-1], *(seen for (kind, *_), seen in observations if kind == "code")]
        if any(isinstance(seen, tuple) and len(seen) == 6
               and seen[5] > started_ns - RACY_S * 1e9 for seen in code):
            return  # code changed since just before the check: it may not be what ran
        record = (key, observations, writes, status)
        confcache.write_record(directory, name, marshal.dumps(record))
    except (OSError, ValueError):
        return
