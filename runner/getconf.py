"""runner-config: print configuration values for tasks and operators.

Tasks call `$RUNNER_CONFIG_CMD -g section.key` many times. That command is
`python3 -I -S lookup.py --snapshot FILE`, which answers a plain -g from the snapshot
without importing anything and hands every other call to this module; so this module
imports nothing but `json`, `sys` and runner modules that import no more at the top
(runner.configquery answers, as for `runner -g`). Only without a snapshot (`-c CONFIG`)
is runner's config loader imported.

The snapshot is two files: FILE, world-readable, with every private value (see
runner.masking.private_keys) masked, for tasks that switched to another user; and
FILE.private (runner.lookup.private_path), root's only, with everything. A lookup reads
the private one when it can.
"""

import json
import sys

from runner.configquery import STRICT_KEY, InputError, answer, check_show_secrets, split_key
from runner.console import EX_CONFIG, keep_undecodable_bytes, one_line
from runner.lookup import CONFIG_FIELD, SNAPSHOT_ENV, private_path

TYPE_CHECKING = False  # typing's own, without importing typing: it costs start-up time
if TYPE_CHECKING:
    from typing import Any

EX_OK = 0
USAGE = (
    "usage: runner-config [-c CONFIG] [-D section.key=value]... "
    "(-g section.key [--default VALUE] [--strict] | -l [SECTION] [--show-secrets]) [--json]"
)
# The options as documented by --help and by runner-config(1).
OPTIONS = (
    ("-c, --config CONFIG", "config file (default /etc/runner/runner.cfg)"),
    ("-D section.key=value", "override a value, validated like the file"),
    ("-g, --get section.key", "print one value; a key or section that is not set prints "
     "nothing and a warning on stderr, and exits 0 (as the original runner did)"),
    ("--default VALUE", "with -g: print VALUE when the key is not set (exit 0, no warning)"),
    ("--strict", f"with -g: exit 1 when the key is not set (the default when [runner] "
     f"{STRICT_KEY} = true)"),
    ("-l, --list [SECTION]", "print every `section.key = value`, or one section's"),
    ("--json", "print JSON instead of text"),
    ("--show-secrets", "with -l: show secret values instead of ******** (root only)"),
)
HELP = (
    USAGE
    + "\n\nPrint values of runner's configuration "
    + "(defaults, include_dir fragments and -D applied).\n\n"
    + "".join(f"  {flags:<23}{text}\n" for flags, text in OPTIONS)
)


_WITH_VALUE = {
    "-c": "config", "--config": "config", "-D": "overrides", "-g": "get", "--get": "get",
    "--default": "default", "--snapshot": "snapshot",
}


def parse_args(argv):
    """A small hand-written parser: argparse alone costs more than the whole lookup."""
    opts: dict[str, Any] = {
        "config": None, "overrides": [], "get": None, "default": None, "list": False,
        "section": None, "json": False, "snapshot": None, "show_secrets": False,
        "strict": False,
    }
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if arg.startswith("-D") and len(arg) > 2:
            name, eq, inline = "-D", "=", arg[2:]
        if name in _WITH_VALUE:
            if eq:
                value = inline
            elif args and not (name == "-D" and args[0].startswith("-")):
                value = args.pop(0)  # a -D value is never an option: `-D -D x` is a slip
            else:
                raise InputError(f"{name} needs a value")
            key = _WITH_VALUE[name]
            if key == "overrides":
                opts[key].append(value)
            else:
                opts[key] = value
        elif arg in ("-l", "--list"):
            opts["list"] = True
            if args and not args[0].startswith("-"):
                opts["section"] = args.pop(0)
        elif arg == "--json":
            opts["json"] = True
        elif arg == "--show-secrets":
            opts["show_secrets"] = True
        elif arg == "--strict":
            opts["strict"] = True
        elif arg in ("-h", "--help"):
            raise SystemExit(print(HELP) or EX_OK)
        else:
            raise InputError(f"unexpected argument {arg!r}")
    if bool(opts["get"]) == bool(opts["list"]):
        raise InputError("give exactly one of -g section.key or -l")
    check_show_secrets(opts["show_secrets"])
    return opts


def _read_snapshot(path, opts):
    """The private snapshot when this user may read it (root), else the public one."""
    try:
        handle = open(private_path(path), encoding="utf-8")
    except OSError as exc:  # not root, or a copy of the public file alone
        opts["unreadable"] = f"{exc.filename}: {exc.strerror}"
        handle = open(path, encoding="utf-8")
    with handle:
        data = json.loads(handle.readline())
    return data["sections"], {tuple(pair) for pair in data.get("private", ())}


def _task_snapshot(opts):
    """In a task ($RUNNER_CONFIG_SNAPSHOT set), the running runner's snapshot answers a
    call that names no other config file and no -D (runner.lookup's rule)."""
    import os

    path = os.environ.get(SNAPSHOT_ENV)
    if not path or opts["overrides"]:
        return None
    if opts["config"] is None:
        return path
    try:
        with open(path, encoding="utf-8") as handle:
            handle.readline()
            fields = iter(handle.read().split("\0"))
        read = dict(zip(fields, fields, strict=False)).get(CONFIG_FIELD)
        same = read and os.path.samefile(opts["config"], read)
    except (OSError, ValueError):
        return None
    return path if same else None


def _load_sections(opts):
    """({section: {key: value}}, the (section, key) pairs withheld from this user)."""
    snapshot = opts["snapshot"] or _task_snapshot(opts)
    if snapshot:
        opts["snapshot"] = snapshot
        return _read_snapshot(snapshot, opts)
    # Only operators' calls (no snapshot) pay for importing configobj.
    from runner import confcache
    from runner.config import load
    from runner.errors import ConfigError

    try:
        config = load(opts["config"], opts["overrides"])
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    confcache.store(config, explicit=opts["config"] is not None)
    return config.snapshot()["sections"], set()


def main(argv=None):
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        if opts["get"]:
            split_key(opts["get"])
        sections, hidden = _load_sections(opts)
    except InputError as exc:
        print(one_line(f"runner-config: {exc}"), file=sys.stderr)
        return EX_CONFIG
    except OSError as exc:
        print(one_line(f"runner-config: {exc.filename}: {exc.strerror}"), file=sys.stderr)
        return EX_CONFIG
    except (ValueError, KeyError) as exc:  # a damaged snapshot
        print(one_line(f"runner-config: {opts['snapshot']}: unreadable snapshot: {exc}"),
              file=sys.stderr)
        return EX_CONFIG
    return answer(sections, opts, hidden=hidden)


def entry():
    keep_undecodable_bytes()
    sys.exit(main())


if __name__ == "__main__":
    entry()
