"""A cache of validated configurations, for `runner-config [-c FILE] -g section.key` typed
outside a task (issue 17): parsing and validating runner.cfg costs several times the
interpreter's start, the cache a few stat() and read() calls.

One file per config path, holding what a plain `-g` prints (runner.console.flat_values)
and what every file it came from looked like when it was read: for runner.cfg, each
include_dir fragment and the configspec, identity (st_dev, st_ino), mode, owner, size,
mtime_ns, ctime_ns and the whole content; for include_dir, its stat and its names (an
added, removed or renamed fragment); for every directory above them, identity, mode and
owner (what strict_permissions checks). The answer is used only when all of it is still
so. The content is compared, not just the times: file times come from a coarse clock
(a kernel tick; a whole second on some file systems), so a same-size edit in the same
tick leaves size, mtime and ctime as they were. The files are small; reading them costs
microseconds. The content recorded is what the load read (Config.contents), so a file
changed while it was being loaded is not cached with the values of its older text.

Trust: the cache holds root's secret values and steers root's answers, so it lives in a
directory only its user may enter (mode 0700, owned by them, every directory above it
owned by root or them and not writable by others unless sticky) and each file is 0600,
owned by that user, a regular file opened without following links. Anything else is
ignored (and never written to). Root's directory is /var/cache/runner; another user's
$XDG_CACHE_HOME/runner (~/.cache/runner); $RUNNER_CACHE_DIR overrides both, and an empty
value turns the cache off. Files are written under a temporary name (O_EXCL, O_NOFOLLOW,
mode 0600) and renamed into place.

This module imports `os` only (marshal is built in): it runs before anything else of
runner-config's that does not answer from a snapshot.
"""

import marshal
import os
import sys

FORMAT = 2  # 2: the names of the values left out, for runner status (runner.cli)
DIR_ENV = "RUNNER_CACHE_DIR"
ROOT_DIR = "/var/cache/runner"
DEFAULT_CONFIG = "/etc/runner/runner.cfg"  # runner.config's (not imported here: its cost)
_PRIVATE = 0o077


def cache_dir():
    """Where this user's cache lives, or None for no cache."""
    value = os.environ.get(DIR_ENV)
    if value is not None:
        return value or None
    if os.geteuid() == 0:
        return ROOT_DIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "runner")


def cache_file(directory, what, prefix="config-"):
    """The cache file for `what` (a config path; runner.checkcache: its arguments), or
    None when its name would be too long."""
    name = prefix + what.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    return os.path.join(directory, name) if len(name.encode(errors="surrogateescape")) < 250 \
        else None


def _trusted_dir(path):
    """`path` is a directory only this user can use, under directories no other user
    can change (the strict_permissions rule)."""
    euid = os.geteuid()
    path = os.path.realpath(path)
    try:
        info = os.lstat(path)
        if not _is_dir(info) or info.st_uid != euid or info.st_mode & _PRIVATE:
            return False
        while path != "/":
            path = os.path.dirname(path)
            info = os.lstat(path)
            if info.st_uid not in (0, euid) or (info.st_mode & 0o022
                                                and not info.st_mode & 0o1000):
                return False
    except OSError:
        return False
    return True


def _is_dir(info):
    return info.st_mode & 0o170000 == 0o040000


def _ancestors(path):
    path = os.path.dirname(path)
    while True:
        yield path
        if path == "/":
            return
        path = os.path.dirname(path)


def _observe(kind, path):
    """What `path` looks like now, as recorded in the cache; None when it is missing."""
    try:
        info = os.lstat(path) if kind == "above" else os.stat(path)
        ids = (info.st_dev, info.st_ino, info.st_mode, info.st_uid, info.st_gid)
        if kind == "above":
            return ids
        seen = (*ids, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if kind == "dir":
            return (*seen, tuple(sorted(os.listdir(path))))
        with open(path, "rb") as handle:
            return (*seen, handle.read())
    except FileNotFoundError:
        return None


def _parse_argv(argv):
    """(config path, key) of `[-c FILE] -g section.key`, else None."""
    config = key = None
    args = list(argv)
    while args:
        option = args.pop(0)
        if not args or option not in ("-c", "--config", "-g", "--get"):
            return None
        if option in ("-c", "--config"):
            if config is not None:
                return None
            config = args.pop(0)
        elif key is not None:
            return None
        else:
            key = args.pop(0)
    return (config, key) if key and "." in key else None


def _read(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if (info.st_mode & 0o170000 != 0o100000 or info.st_uid != os.geteuid()
                or info.st_mode & _PRIVATE):
            return None
        return handle.read()


def lookup(config_path, key):
    """The cached answer to `-g key` for the config at `config_path` (None: the default
    file), or None when there is none that is still true."""
    found = cached_values(config_path)
    return found and found[0].get(key)


def cached_values(config_path):
    """({"section.key": value as -g prints it}, the names of values left out of it (a NUL,
    not UTF-8: runner.console.flat_values)) of the config at `config_path` (None: the
    default file) while every file it came from is as it was; else None."""
    from runner import __version__

    directory = cache_dir()
    path = os.path.abspath(config_path or DEFAULT_CONFIG)
    name = directory and cache_file(directory, path)
    record = read_record(directory, name) if name else None
    if (not isinstance(record, tuple) or len(record) != 6
            or record[:3] != (FORMAT, __version__, (config_path is None, path))):
        return None
    entries, values, omitted = record[3:]
    try:
        if any(_observe(kind, where) != seen for kind, where, seen in entries):
            return None
    except (OSError, TypeError, ValueError):
        return None
    return (values, omitted) if isinstance(values, dict) and isinstance(omitted, list) \
        else None


def read_record(directory, name):
    """What the cache file `name` in `directory` holds, if both may be trusted; else None."""
    if not _trusted_dir(directory):
        return None
    try:
        data = _read(name)
        return marshal.loads(data) if data else None
    except (OSError, ValueError, EOFError, TypeError):
        return None


def write_record(directory, name, data):
    """Put `data` in the cache file `name` of `directory` (made 0700 if missing) under a
    temporary name, renamed into place, if the directory may be trusted. OSError when
    it cannot."""
    from .files import make_dir

    make_dir(directory, 0o700)
    if not _trusted_dir(directory):
        return
    temporary = f"{name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                 | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, name)
    except BaseException:
        os.unlink(temporary)
        raise


def cached_answer(argv):
    """Print the answer to runner-config's `argv` from the cache: True when done."""
    parsed = _parse_argv(argv)
    value = parsed and lookup(*parsed)
    if value is None:
        return False
    sys.stdout.write(value + "\n")
    return True


def _entries(config, explicit, spec_path):
    """What the cache records about the files `config` came from, or None when they no
    longer hold what the load read."""
    from .names import name_is_candidate

    path = os.path.abspath(config.path or DEFAULT_CONFIG)
    files = [os.path.abspath(f) for f in config.files]
    if not files:
        if explicit or os.path.lexists(path):
            return None
        entries = [("file", path, None)]
    else:
        entries = []
    for file, content in zip(files, config.contents, strict=True):
        seen = _observe("file", file)
        if seen is None or seen[-1] != content:
            return None  # changed since the load read it
        entries.append(("file", file, seen))
    include = config.runner.include_dir
    if include:
        seen = _observe("dir", include)
        if seen is None:
            return None
        fragments = {os.path.join(include, name) for name in seen[-1]
                     if name_is_candidate(name)}
        if {f for f in fragments if os.path.isfile(f)} != set(config.files[1:]):
            return None
        entries.append(("dir", include, seen))
    entries.append(("file", spec_path, _observe("file", spec_path)))
    above = dict.fromkeys(d for kind, where, _ in entries for d in _ancestors(
        os.path.realpath(where)))
    above.update(dict.fromkeys(d for kind, where, _ in entries for d in _ancestors(where)))
    entries += [("above", d, _observe("above", d)) for d in above]
    return entries


def store(config, explicit):
    """Remember what `-g` prints for `config` (just loaded, no -D), if this user has a
    cache; never fails (a cache is only a shortcut)."""
    from . import __version__
    from .console import flat_values

    directory = cache_dir()
    path = os.path.abspath(config.path or DEFAULT_CONFIG)
    name = directory and cache_file(directory, path)
    if not name or config.overrides:
        return
    try:
        spec = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configspec.ini")
        entries = _entries(config, explicit, spec)
        if entries is None:
            return
        sections = config.snapshot()["sections"]
        values = flat_values(sections)
        omitted = sorted(f"{section}.{key}" for section, keys in sections.items()
                         for key in keys if f"{section}.{key}" not in values)
        record = (FORMAT, __version__, (not explicit, path), entries, values, omitted)
        write_record(directory, name, marshal.dumps(record))
    except (OSError, ValueError):
        return
