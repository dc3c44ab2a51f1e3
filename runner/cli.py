"""The `runner` command line: what people type often starts fast (issue 17).

`runner --help`, `runner status`, `runner history ...` and `runner ctl ...` are answered
here, before argparse, logging, the settings or configobj are imported; `runner check
[TASKDIR]` needs the configuration and the tasks, but not argparse: each costs more
than the interpreter's own start. Only argument lists whose meaning is beyond doubt take
this path (`-c FILE`, `--config FILE`, the command and its own plain options); anything
else (an abbreviation, `-v`, `-D`, a value that starts with `-`, a mistake) goes to the
full parser in runner.arguments, which answers exactly as it always did. The light
commands read state_dir, runtime_dir and journal_url from runner.confcache while it is
true, and otherwise load the configuration (and remember it there).

Module-level imports: `sys` only (tests/test_imports.py pins what each command loads).
"""

import sys


def _columns():
    """The width argparse formats --help for (shutil.get_terminal_size's rule)."""
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            stdout = sys.__stdout__
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


def _option_value(args, index, names):
    """(value, next index) when args[index] is `NAME VALUE` or `--long=VALUE` for one of
    `names` (the first is the long one), with a value argparse cannot read otherwise;
    else None."""
    arg = args[index]
    long = names[0]
    if arg.startswith(long + "="):
        value, following = arg[len(long) + 1:], index + 1
    elif arg in names and index + 1 < len(args):
        value, following = args[index + 1], index + 2
    else:
        return None
    if not value or value.startswith("-"):
        return None
    return value, following


# The options of each light command: (long name, short name or None, takes a value).
_LIGHT = {
    "status": {"--json": False},
    "history": {"--json": False, "--local": False, "--task": True, "--since": True,
                "--host": True, "--run": True, "--limit": True},
    "plot": {"--local": False, "--since": True, "--host": True, "--run": True,
             "--output": True, "-o": True},
    "ctl": {},
    "check": {},  # and one task directory
}
_DESTINATIONS = {"--json": "as_json", "--run": "run_id", "-o": "output", "--output": "output"}
_POSITIONALS = ("ctl", "check")  # the light commands that take words


def light_arguments(argv):
    """(command, config path or None, options, positionals) when `argv` is a light
    command whose meaning is plain, else None (the full parser decides)."""
    command, config = None, None
    options: dict[str, object] = {}
    positionals: list[str] = []
    index, interrupted = 0, False
    while index < len(argv):
        arg = argv[index]
        if arg in ("-c", "--config") or arg.startswith("--config="):
            found = _option_value(argv, index, ("--config", "-c"))
            if found is None:
                return None
            config, index = found
            # argparse reads `ctl skip -c F TASK` as TASK left over: an error it words
            interrupted = bool(positionals)
            continue
        if command is None:
            if arg not in _LIGHT:
                return None
            command, index = arg, index + 1
            continue
        known = _LIGHT[command]
        name = arg.partition("=")[0] if arg.startswith("--") else arg
        if name in known:
            key = _DESTINATIONS.get(name, name[2:])
            if known[name]:
                found = _option_value(argv, index, (name,))
                if found is None:
                    return None
                options[key], index = found
            elif arg == name:
                options[key], index = True, index + 1
            else:
                return None
            continue
        if arg.startswith("-") or command not in _POSITIONALS or interrupted:
            return None
        positionals.append(arg)
        index += 1
    if command is None:
        return None
    if command == "plot" and "run_id" in options and "since" in options:
        return None  # plot takes one of them: the full parser says so
    text = options.get("limit")
    if isinstance(text, str):
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            return None  # the full parser says what is wrong with it
        options["limit"] = int(text)
    if command == "ctl":
        from .ctlwords import ACTIONS

        if not positionals or positionals[0] not in ACTIONS or len(positionals) > 2:
            return None
    if command == "check" and len(positionals) > 1:
        return None
    return command, config, options, positionals


def _light(argv):
    """The exit status of a light command, or None when the full parser must answer."""
    if argv in (["--help"], ["-h"]):
        from .helptext import COLUMNS, HELP

        if _columns() == COLUMNS:  # else argparse wraps it otherwise
            sys.stdout.write(HELP)
            return 0
    parsed = light_arguments(argv)
    if parsed is None:
        return None
    command, config, options, positionals = parsed
    from .commands.light import light_command

    return light_command(command, config, options, positionals)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    status = _light(argv)
    if status is not None:
        return status
    from .arguments import main as full_main

    return full_main(argv)


def entry():
    import gc

    # Start-up makes some 100,000 objects and garbage of none that matters: the
    # collector went over them some 40 times (15-20 ms of `runner run`'s start). The
    # supervisor freezes what start-up made and turns the collector on before the first
    # task (runner.supervisor); every other command is a query, over before it matters.
    gc.disable()
    from .console import keep_undecodable_bytes

    keep_undecodable_bytes()
    leave(main())


def leave(status):
    """Exit with `status` once everything is written, skipping the interpreter's own
    teardown: freeing every module and object one by one cost `runner run` 25-40 ms at
    each exit, after its work was done. Nothing of runner's needs that teardown: it
    closes its files where it uses them, its threads are daemons, and what must run at
    exit (logging's last flush, the output readers' last lines, python-daemon's close,
    weakref finalizers) is registered with atexit, which runs here first, once. When a
    standard stream cannot be flushed (a pipe whose reader went away) the ordinary exit
    takes over and reports it as it always did."""
    import atexit
    import os

    atexit._run_exitfuncs()
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        sys.exit(status)
    os._exit(status or 0)
