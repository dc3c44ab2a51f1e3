"""runner-config: print configuration values for tasks and operators.

Tasks call `$RUNNER_CONFIG_CMD -g section.key` many times. That command is
`python3 -I -S lookup.py --snapshot FILE`, which answers a plain -g from the snapshot
without importing anything and hands every other call to this module; so this module
imports nothing but `json` and `sys` at the top. Only without a snapshot
(`-c CONFIG`) is runner's config loader imported.

The snapshot is two files: FILE, world-readable, with every private value (see
runner.masking.private_keys) masked, for tasks that switched to another user; and
FILE.private (runner.lookup.private_path), root's only, with everything. A lookup reads
the private one when it can.
"""

import json
import sys

from runner.lookup import private_path

EX_OK, EX_MISSING, EX_CONFIG = 0, 1, 78
STRICT_KEY = "config_get_strict"  # the [runner] key that makes --strict the default
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


class InputError(Exception):
    """Bad command line or configuration: one line, exit 78."""


# Every line break str.splitlines() knows, escaped: a message must stay one line even
# when it quotes a -D value or key that holds one.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text):
    """`text` with its line breaks escaped (a newline becomes `\\n`)."""
    return text.translate(_LINE_BREAKS)


def keep_undecodable_bytes():
    """Let stdout write back the bytes of arguments that were not UTF-8 (Python holds them
    as surrogates) instead of failing with UnicodeEncodeError under a UTF-8 locale."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def format_value(value):
    """Render a typed value the way it is written in runner.cfg."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


_WITH_VALUE = {
    "-c": "config", "--config": "config", "-D": "overrides", "-g": "get", "--get": "get",
    "--default": "default", "--snapshot": "snapshot",
}


def parse_args(argv):
    """A small hand-written parser: argparse alone costs more than the whole lookup."""
    opts = {"config": None, "overrides": [], "get": None, "default": None,
            "list": False, "section": None, "json": False, "snapshot": None,
            "show_secrets": False, "strict": False}
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


def check_show_secrets(wanted):
    """Only root may list secret values: the config file is root's (mode 0640), and a
    task that switched to another user must not read them through runner-config."""
    import os

    if wanted and os.geteuid() != 0:
        raise InputError("--show-secrets: only root may see secret values")


def split_key(name):
    section, dot, key = name.partition(".")
    if not dot or not section or not key:
        raise InputError(f"-g {name!r}: expected section.key")
    return section, key


def answer(sections, opts, out=sys.stdout, err=sys.stderr, prog="runner-config",
           hidden=frozenset()):
    """Print what opts ask for from {section: {key: value}}; return the exit status.
    `hidden`: (section, key) pairs whose values this user may not read (masked in
    `sections`)."""
    if opts["get"]:
        section, key = split_key(opts["get"])
        values = sections.get(section)
        key = _key_in_any_case(values, key) if values is not None else key
        if values is None or key not in values:
            return _missing(sections, opts, out, err, prog)
        if (section, key) in hidden:
            print(one_line(secret_refusal(prog, opts["get"], opts.get("unreadable"))),
                  file=err)
            return EX_MISSING
        value = values[key]
        print(json.dumps(value) if opts["json"] else format_value(value), file=out)
        return EX_OK
    # Listings mask secret values (-g prints one: a task asked for it by name).
    from runner.masking import display_sections

    selected = display_sections(sections, opts.get("show_secrets", False))
    if opts["section"] is not None:
        if opts["section"] not in sections:
            print(one_line(f"{prog}: no section [{opts['section']}]"), file=err)
            return EX_MISSING
        selected = {opts["section"]: selected[opts["section"]]}
    if opts["json"]:
        data = selected[opts["section"]] if opts["section"] is not None else selected
        print(json.dumps(data, indent=2, sort_keys=True), file=out)
        return EX_OK
    for section in sorted(selected):
        for key in sorted(selected[section]):
            print(f"{section}.{key} = {format_value(selected[section][key])}", file=out)
    return EX_OK


def _key_in_any_case(values, key):
    """`key` as written in the file: the original's RawConfigParser lowercased option
    names, so `-g hg.remote` found `Remote = x`; an exact match wins, and a name that
    several spellings share is not guessed."""
    if key in values:
        return key
    matches = [name for name in values if name.lower() == key.lower()]
    return matches[0] if len(matches) == 1 else key


def _missing(sections, opts, out, err, prog):
    """A key or section that is not set: --default's value; else, as the original runner,
    nothing and exit 0 (tasks under `set -e` read optional keys), with a warning that
    lands in the task's log; exit 1 in strict mode."""
    if opts["default"] is not None:
        print(opts["default"], file=out)
        return EX_OK
    section, key = split_key(opts["get"])
    where = (f"no section [{section}]" if section not in sections
             else f"no key {key!r} in [{section}]")
    if opts.get("strict") or sections.get("runner", {}).get(STRICT_KEY) is True:
        print(one_line(f"{prog}: {opts['get']}: {where}"), file=err)
        return EX_MISSING
    print(one_line(f"{prog}: warning: {opts['get']}: {where}; printed nothing (--default "
                   f"VALUE prints a value; --strict or [runner] {STRICT_KEY} = true "
                   "make this an error)"), file=err)
    return EX_OK


def secret_refusal(prog, name, unreadable=None):
    """Why a user other than root does not get a secret value, and what to do instead.
    `unreadable`: why the root-only snapshot could not be read."""
    import os

    if os.geteuid() == 0:  # a copy of the public file alone, or a damaged directory
        return (f"{prog}: {name}: the value is secret and is not in the public snapshot; "
                f"{unreadable}")
    return (f"{prog}: {name}: the value is secret (the key matches [runner] secret_keys, "
            "or the value holds a password or quotes a secret) and only root may read it, "
            f"not uid {os.geteuid()}; to give it to "
            "this task, read it before dropping privileges, pass it in the environment "
            "(an [env] key is exported to every task), or take the key out of secret_keys "
            "if it is not secret")


def snapshot_texts(snapshot):
    """(public, private): the texts of the world-readable snapshot file and of the
    root-only one (see snapshot_text)."""
    from runner.masking import public_snapshot

    public = public_snapshot(snapshot)
    hidden = {tuple(pair) for pair in public["private"]}
    return snapshot_text(public, exclude=hidden), snapshot_text(snapshot)


def snapshot_text(snapshot, exclude=frozenset()):
    """The snapshot file lookup.py reads: the JSON of `snapshot` on the first line, then
    `section.key`, NUL, formatted value, NUL for every value that can go there. A NUL
    or an unencodable character leaves a value to the JSON, and so does a section name
    with a dot, which `-g` (split at the first dot) could not name."""
    fields = []
    for section, values in snapshot["sections"].items():
        for key, value in values.items():
            if (section, key) in exclude:
                continue  # a masked value: the fast path must not print "********"
            pair = f"{section}.{key}\0{format_value(value)}\0"
            if "." in section or pair.count("\0") != 2:
                continue
            try:
                pair.encode("utf-8")
            except UnicodeEncodeError:
                continue
            fields.append(pair)
    return json.dumps(snapshot) + "\n" + "".join(fields)


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


def _load_sections(opts):
    """({section: {key: value}}, the (section, key) pairs withheld from this user)."""
    if opts["snapshot"]:
        return _read_snapshot(opts["snapshot"], opts)
    # Only operators' calls (no snapshot) pay for importing configobj.
    from runner.config import load
    from runner.errors import ConfigError

    try:
        return load(opts["config"], opts["overrides"]).snapshot()["sections"], set()
    except ConfigError as exc:
        raise InputError(str(exc)) from None


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
