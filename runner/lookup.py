"""The program behind RUNNER_CONFIG_CMD (`python3 -I -S lookup.py --snapshot FILE ...`)
and, installed as `runner-config` (`python3 -S`, see setup.py), that command itself.

Tasks call `$RUNNER_CONFIG_CMD -g section.key` and `runner-config -g section.key` many
times, so the common call must cost no more than starting the interpreter. This file is
therefore small (Python compiles a script it is given on every start; a module's
bytecode is cached) and imports nothing: the snapshot's first line is the effective
config as JSON, the rest is `section.key`, NUL, value, NUL, ... with every value already
formatted as runner-config prints it. A plain `-g section.key` that is in that flat part
is answered from it: with `--snapshot FILE`, or (runner-config in a task) from the
snapshot that $RUNNER_CONFIG_SNAPSHOT names, when the call names no other config file.
Everything else goes to runner.confcache (an operator's `-g`, from a cache of the
validated file) and then runner.getconf (--json, --default, -l, a missing or secret key,
a bad argument).

FILE is world-readable and holds no secret value; FILE.private, root's only, holds them
all. Root reads the latter; any other user (a task that switched to the build user) fails
to open it, at the cost of one open(), and reads FILE.
"""

import sys

PRIVATE_SUFFIX = ".private"
SNAPSHOT_ENV = "RUNNER_CONFIG_SNAPSHOT"
CONFIG_FIELD = "config"  # the snapshot's pseudo-key naming the config file runner read


def private_path(path):
    """The root-only snapshot beside the public one at `path`."""
    return path + PRIVATE_SUFFIX


def _fields(path):
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        return handle.read().split("\0")


def _answer(snapshot, key, config=None):
    """Print `key` from the snapshot: True when done. `config`: the config file the call
    named, which must be the one runner read."""
    if "." not in key:
        return False  # not section.key (and never the CONFIG_FIELD): getconf says so
    try:
        try:
            fields = iter(_fields(private_path(snapshot)))
        except OSError:
            fields = iter(_fields(snapshot))
    except (OSError, ValueError):
        return False  # getconf says what is wrong, in one line
    values = dict(zip(fields, fields, strict=False))
    if config is not None and not _same_file(config, values.get(CONFIG_FIELD)):
        return False
    value = values.get(key)
    if value is None:
        return False
    sys.stdout.write(value + "\n")
    return True


def _same_file(named, read):
    if not read:
        return False
    import posix  # built in, loaded at start: free, unlike os

    try:
        a, b = posix.stat(named), posix.stat(read)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _fast(argv):
    if len(argv) == 5 and argv[1] == "--snapshot" and argv[3] == "-g":
        return _answer(argv[2], argv[4])
    import posix

    snapshot = posix.environ.get(SNAPSHOT_ENV.encode())
    args = argv[1:]
    if not snapshot or len(args) not in (2, 4):
        return False
    config = None
    if len(args) == 4 and args[0] in ("-c", "--config"):
        config, args = args[1], args[2:]
    if args[0] not in ("-g", "--get"):
        return False
    return _answer(snapshot.decode(sys.getfilesystemencoding(), "surrogateescape"),
                   args[1], config)


if __name__ == "__main__" and not _fast(sys.argv):
    import os.path

    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.exists(os.path.join(here, "__init__.py")):
        # runner/lookup.py itself; -I leaves its directory off sys.path: add the parent.
        sys.path.insert(0, os.path.dirname(here))
    if "--snapshot" not in sys.argv:
        # Started with -S: the config loader's libraries are in site-packages.
        import site

        site.main()
    # This script is runner.lookup: getconf's import of it need not read it again.
    sys.modules["runner.lookup"] = sys.modules[__name__]
    from runner.confcache import cached_answer

    if SNAPSHOT_ENV in os.environ or not cached_answer(sys.argv[1:]):
        from runner.getconf import entry

        entry()
