"""The `runner` command line, parsed by argparse: every command and option (runner.cli
answers the light commands before this module is imported; each command lives in
runner.commands)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from . import __version__, configquery, logs
from .console import fail, one_line
from .errors import ConfigError
from .settings import RunOptions
from .states import ExitStatus

log = logging.getLogger("runner")
DEFAULT_PIDFILE = "/run/runner.pid"
HELP_COLUMNS = 80  # the width runner/helptext.py is written for (argparse's default)

COMMANDS = {
    "run": "run the chain (the default when no command is given)",
    "check": "validate the configuration and tasks, print the plan, run nothing",
    "list": "list the tasks in run order with their effective settings",
    "plan": "print the execution plan: waves of a parallel run, tasks skipped by frequency",
    "graph": "print the dependency graph as Graphviz DOT (--format svg needs dot)",
    "status": "what runs now, and the last result of every task",
    "history": "task runs recorded in the journal, newest last",
    "log": "the captured output of a task's last run",
    "blame": "tasks by time spent, CPU time and peak memory (the newest run by default)",
    "plot": "an SVG timeline of a run: every task run, try, backoff and reboot",
    "ctl": "control the running runner: retry-now, skip TASK, pause, resume, halt",
    "reset": "forget that once/per-boot/per-instance tasks succeeded (all, or TASK)",
    "fleet": "ask the fleet journal: failing, stuck, silent hosts; failing tasks; ready",
}
JOURNAL_COMMANDS = ("status", "history", "log", "blame")
# Commands that print what the configuration says: secret values in it are masked.
LISTINGS = ("check", "list", "plan", "graph")
# Options that take a value, so the first positional word can be found before parsing.
_VALUE_OPTIONS = {
    "-c", "--config", "-D", "--define", "-n", "--times", "-g", "--get", "--pidfile", "--log-file",
    "--task", "--since", "--host", "--run", "--try", "--iteration", "--limit",
    "--format", "-o", "--output", "--for",
}


class Parser(argparse.ArgumentParser):
    """Usage errors are bad input too: one line and EX_CONFIG (2 would read as HALT)."""

    def error(self, message: str) -> NoReturn:
        print(one_line(f"{self.prog}: {message} (see {self.prog} --help)"),
              file=sys.stderr)
        sys.exit(ExitStatus.CONFIG)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def split_command(argv: list[str]) -> tuple[str, list[str]]:
    """Find the command word; without one, the original form `runner [opts] TASKDIR` is `run`."""
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            break
        if arg.startswith("-") and arg != "-":
            index += 2 if arg in _VALUE_OPTIONS else 1
            continue
        if arg in COMMANDS:
            return arg, argv[:index] + argv[index + 1:]
        break
    return "run", argv


def build_parser(command: str) -> Parser:
    parser = Parser(
        prog="runner",
        description="Run a directory of tasks in order, retrying with backoff, "
        "and run a halt task when a task says the machine is beyond repair.",
        epilog="commands: " + "; ".join(f"{name}: {text}" for name, text in COMMANDS.items()),
    )
    parser.add_argument("-c", "--config", help="config file (default /etc/runner/runner.cfg)")
    parser.add_argument(
        "-D", "--define", dest="overrides", action="append", default=[],
        metavar="SECTION.KEY=VALUE", help="override a config value (repeatable)",
    )
    parser.add_argument("-n", "--times", type=_non_negative,
                        help="iterations of the chain (0 = forever; default [runner] times)")
    parser.add_argument("-H", "--halt-after", action="store_true",
                        help="run the halt task after the last iteration")
    parser.add_argument("-v", "--verbose", dest="level", action="store_const",
                        const=logging.DEBUG, default=logging.INFO, help="log debug messages")
    parser.add_argument("-q", "--quiet", dest="level", action="store_const",
                        const=logging.WARNING, help="log warnings and errors only")
    parser.add_argument("--syslog", action="store_true", help="also log to syslog")
    parser.add_argument("-g", "--get", metavar="SECTION.KEY",
                        help="print one config value and exit (as runner-config -g)")
    parser.add_argument("--strict", action="store_true",
                        help="with -g: exit 1 when the key is not set "
                        "(default: print nothing, warn and exit 0)")
    parser.add_argument("--daemon", action="store_true",
                        help="detach from the terminal (hosts without systemd)")
    parser.add_argument("--pidfile", default=DEFAULT_PIDFILE,
                        help=f"with --daemon: locked pidfile (default {DEFAULT_PIDFILE})")
    parser.add_argument("--log-file", help="with --daemon: log here instead of syslog")
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    if command in ("list", "plan", "fleet", *JOURNAL_COMMANDS):
        parser.add_argument("--json", action="store_true", help=f"with {command}: print JSON")
    if command in LISTINGS:
        parser.add_argument("--show-secrets", action="store_true",
                            help=f"with {command}: show secret values instead of ******** "
                            "(root only)")
    if command == "run":
        parser.add_argument("--dry-run", action="store_true",
                            help="run only the checks and print what would run")
        parser.add_argument("--no-progress", action="store_true",
                            help="no live progress line on a terminal (stderr)")
    if command == "graph":
        parser.add_argument("--format", choices=("dot", "svg"), default="dot",
                            help="with graph: DOT text (default) or SVG drawn by Graphviz's dot")
    if command in JOURNAL_COMMANDS:
        _journal_arguments(parser, command)
    elif command == "plot":
        _plot_arguments(parser)
    elif command == "ctl":
        _ctl_arguments(parser)
    elif command == "fleet":
        _fleet_arguments(parser)
    elif command == "reset":
        parser.add_argument("task", nargs="?",
                            help="only this task (file name or short name; default all)")
    else:
        parser.add_argument("taskdir", nargs="?",
                            help="task directory (default [runner] task_dir)")
    return parser


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _journal_arguments(parser: Parser, command: str) -> None:
    if command == "status":
        return
    parser.add_argument("--local", action="store_true",
                        help="read the local journal even when journal_url is set")
    if command == "log":
        parser.add_argument("task", help="task file name or short name")
        parser.add_argument("--try", dest="try_num", type=_positive,
                            help="the run of this try (default the newest)")
        parser.add_argument("--iteration", type=_positive, help="the run in this iteration")
    else:
        parser.add_argument("--task", help="only this task (file name or short name)")
        parser.add_argument("--since", help="only runs started since: 2h, 1d, today, "
                            "yesterday, 2026-11-23, 2026-11-23T10:00")
    parser.add_argument("--host", help="only this host (the fleet journal has many)")
    parser.add_argument("--run", dest="run_id", help="only this run id")
    if command == "history":
        parser.add_argument("--limit", type=_positive,
                            help="show the newest N task runs (default 50; with --json "
                            "all of them)")


def _fleet_arguments(parser: Parser) -> None:
    from .commands.fleet import DEFAULT_QUIET, QUESTIONS

    parser.add_argument("question", choices=list(QUESTIONS), metavar="QUESTION",
                        help="; ".join(f"{name}: {text}" for name, text in QUESTIONS.items()))
    parser.add_argument("--since", help="the period asked about: 2h, 1d, today, yesterday, "
                        "2026-11-23, 2026-11-23T10:00")
    parser.add_argument("--for", dest="quiet_for", default=DEFAULT_QUIET,
                        help=f"with stuck: silent this long (default {DEFAULT_QUIET})")
    parser.add_argument("--limit", type=_positive,
                        help="show N rows (default 50; with --json all of them)")


def _plot_arguments(parser: Parser) -> None:
    parser.add_argument("--local", action="store_true",
                        help="read the local journal even when journal_url is set")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--run", dest="run_id",
                       help="this run (an id or its start; default the newest run, with "
                       "the runs it resumed after reboots)")
    which.add_argument("--since", help="every run started since: 2h, 1d, today, "
                       "yesterday, 2026-11-23, 2026-11-23T10:00")
    parser.add_argument("--host", help="only this host's runs (in the fleet journal the "
                        "default is this host)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="write the SVG here (default standard output)")


def _ctl_arguments(parser: Parser) -> None:
    from .ctlwords import ACTIONS

    parser.add_argument("action", choices=list(ACTIONS), metavar="ACTION",
                        help="one of: " + ", ".join(ACTIONS))
    parser.add_argument("task", nargs="?", help="with skip: the task to skip")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, rest = split_command(argv)
    args = build_parser(command).parse_args(rest)
    # Absolute now: daemon mode changes to / and SIGHUP reloads read the paths again.
    taskdir = getattr(args, "taskdir", None)
    options = RunOptions(
        config_path=os.path.abspath(args.config) if args.config else None,
        overrides=tuple(args.overrides),
        task_dir=os.path.abspath(taskdir) if taskdir else None,
        times=args.times,
        halt_after=args.halt_after,
    )
    logs.setup(args.level, args.syslog)
    try:
        if args.get is not None:  # `-g ''` is a bad key, not "no -g": never run the chain
            return _get(args)
        if command in LISTINGS:
            return _listing(command, options, args)
        if command in JOURNAL_COMMANDS:
            from .commands.report import report
            return report(command, options, _report_options(args))
        if command == "plot":
            from .commands.plot import PlotOptions, plot
            return plot(options, PlotOptions(args.run_id, args.since, args.host, args.output,
                                             args.local))
        if command == "fleet":
            from .commands.fleet import FleetOptions, fleet
            return fleet(options, FleetOptions(args.question, args.since, args.quiet_for,
                                               args.limit, args.json))
        if command == "reset":
            from .commands.reset import reset
            return reset(options, args.task)
        if command == "ctl":
            from .commands.ctl import ctl
            return ctl(options, [args.action, *([args.task] if args.task is not None else [])])
        if getattr(args, "dry_run", False):
            from .commands.dryrun import dry_run
            return dry_run(options)
        from .commands.run import DaemonOptions, run
        daemon = DaemonOptions(args.pidfile, args.log_file, args.level) if args.daemon else None
        return run(options, daemon, progress=not args.no_progress)
    except ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:  # only outside the supervisor, which handles SIGINT itself
        return ExitStatus.SIGINT
    except BrokenPipeError:  # `runner history | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in runner, not bad input: say so in one line
        log.debug("internal error", exc_info=True)
        log.critical("internal error: %s: %s (run with -v for the traceback)",
                     type(exc).__name__, exc)
        return ExitStatus.INTERNAL


def _listing(command: str, options: RunOptions, args: argparse.Namespace) -> int:
    show = args.show_secrets
    try:
        configquery.check_show_secrets(show)
    except configquery.InputError as exc:
        return fail(str(exc))
    if command == "check":
        from .commands.check import check
        return check(options, show_secrets=show)
    if command == "list":
        from .commands.check import list_tasks
        return list_tasks(options, as_json=args.json, show_secrets=show)
    if command == "plan":
        from .commands.plan import plan
        return plan(options, as_json=args.json, show_secrets=show)
    from .commands.plan import graph
    return graph(options, args.format, show_secrets=show)


def _report_options(args: argparse.Namespace):
    from .commands.report import ReportOptions

    names = ("as_json", "local", "task", "since", "host", "run_id", "try_num", "iteration",
             "limit")
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["as_json"] = args.json
    return ReportOptions(**values)


def _get(args: argparse.Namespace) -> int:
    from .config import load

    opts = {"get": args.get, "default": None, "json": False, "section": None,
            "strict": args.strict}
    try:
        configquery.split_key(args.get)
    except configquery.InputError as exc:
        return fail(str(exc))
    sections = load(args.config, args.overrides).snapshot()["sections"]
    return configquery.answer(sections, opts, prog="runner")


def help_text(columns: int) -> str:
    """What `runner --help` prints on a terminal `columns` wide."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        return build_parser("run").format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def help_module() -> str:
    """The text of runner/helptext.py, which runner.cli prints without argparse:
    `python3 -m runner.arguments > runner/helptext.py` (tests/test_imports.py checks)."""
    lines = help_text(HELP_COLUMNS).splitlines(keepends=True)
    return (
        '"""`runner --help` on a terminal COLUMNS wide, for runner.cli (argparse costs more\n'
        "than the interpreter's start). Generated by python3 -m runner.arguments >\n"
        'runner/helptext.py; tests/test_imports.py checks it is what argparse prints."""\n\n'
        f"COLUMNS = {HELP_COLUMNS}\n"
        "HELP = (\n" + "".join(f"    {line!r}\n" for line in lines) + ")\n"
    )


if __name__ == "__main__":
    sys.stdout.write(help_module())
