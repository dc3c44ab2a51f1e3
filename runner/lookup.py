"""The program behind RUNNER_CONFIG_CMD: `python3 -I -S lookup.py --snapshot FILE ...`.

Tasks call `$RUNNER_CONFIG_CMD -g section.key` many times, so the common call must cost
no more than starting the interpreter. This file is therefore tiny (Python compiles a
script it is given on every start; a module's bytecode is cached) and imports nothing:
the snapshot's first line is the effective config as JSON, the rest is `section.key`,
NUL, value, NUL, ... with every value already formatted as runner-config prints it.
A plain `-g section.key` that is in that flat part is answered from it; everything
else (--json, --default, -l, a missing or secret key, a bad argument) goes to
runner.getconf.

FILE is world-readable and holds no secret value; FILE.private, root's only, holds them
all. Root reads the latter; any other user (a task that switched to the build user) fails
to open it, at the cost of one open(), and reads FILE.
"""

import sys

PRIVATE_SUFFIX = ".private"


def private_path(path):
    """The root-only snapshot beside the public one at `path`."""
    return path + PRIVATE_SUFFIX


def _fields(path):
    with open(path, encoding="utf-8") as handle:
        handle.readline()
        return handle.read().split("\0")


def _fast(argv):
    if len(argv) != 5 or argv[1] != "--snapshot" or argv[3] != "-g":
        return False
    try:
        try:
            fields = iter(_fields(private_path(argv[2])))
        except OSError:
            fields = iter(_fields(argv[2]))
    except (OSError, ValueError):
        return False  # getconf says what is wrong, in one line
    value = dict(zip(fields, fields, strict=False)).get(argv[4])
    if value is None:
        return False
    sys.stdout.write(value + "\n")
    return True


if __name__ == "__main__" and not _fast(sys.argv):
    import os.path

    # -I leaves the script's directory off sys.path: add the package's parent.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # This script is runner.lookup: getconf's import of it need not read it again.
    sys.modules["runner.lookup"] = sys.modules[__name__]
    from runner.getconf import entry

    entry()
