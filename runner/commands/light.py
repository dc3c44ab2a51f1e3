"""`runner status`, `runner history` and `runner plot` (local journal) and `runner ctl`,
as runner.cli starts them without the full parser: the three settings they need, from
runner.confcache while it is true (else the configuration is loaded, and remembered
there), and the same exit statuses and one-line errors as through runner.arguments.main.

Imports `os` and `sys` only at import time; what a command needs it imports itself.
"""

import os
import sys

EX_SOFTWARE = 70  # runner.states.ExitStatus.INTERNAL
EX_SIGINT = 130  # runner.states.ExitStatus.SIGINT
_NAMES = ("state_dir", "runtime_dir", "journal_url")


class Locations:
    """Where a runner keeps its state: the [runner] settings the light commands read
    (runner.settings.RunnerSettings has the same attributes)."""

    __slots__ = _NAMES

    def __init__(self, state_dir: str, runtime_dir: str, journal_url: str | None) -> None:
        self.state_dir = state_dir
        self.runtime_dir = runtime_dir
        self.journal_url = journal_url


def cached_locations(config_path):
    """The Locations of the config at `config_path` (None: the default file) from
    runner.confcache, or None when it has no answer that is still true."""
    from ..confcache import cached_values

    found = cached_values(config_path)
    if found is None:
        return None
    values, omitted = found
    names = [f"runner.{name}" for name in _NAMES]
    if any(name in omitted for name in names):
        return None  # a value -g cannot print from the cache: load the file
    state_dir, runtime_dir, journal_url = (values.get(name) for name in names)
    if state_dir is None or runtime_dir is None:
        return None
    return Locations(state_dir, runtime_dir, journal_url)


def locations(config_path):
    """Locations from the cache, or by loading (and caching) the configuration: a
    ConfigError as from any command."""
    found = cached_locations(config_path)
    if found is not None:
        return found
    from ..confcache import store
    from ..config import load

    config = load(config_path)
    store(config, explicit=config_path is not None)
    return config.runner


def light_command(command, config, options, words):
    """Run a light command; its exit status, or None when runner.arguments must (the fleet
    journal: its connection and logging are the full command's)."""
    config_path = os.path.abspath(config) if config else None
    if command == "check":
        return _check(config_path, words)
    return _guarded(lambda: _command(command, config_path, options, words))


def _command(command, config_path, options, words):
    if command == "ctl":
        from .ctl import checked, send_command

        words = checked(words)  # before the configuration, as runner.arguments does
        return send_command(locations(config_path).runtime_dir, words)
    where = locations(config_path)
    if command in ("history", "plot") and where.journal_url and not options.get("local"):
        return None
    if command == "plot":
        from .plot import PlotOptions, plot_at

        return plot_at(where, PlotOptions(**options))
    from .report import ReportOptions, report_at

    return report_at(command, where, ReportOptions(**options))


def _guarded(run):
    """run()'s exit status, with the one-line errors and statuses of runner.arguments."""
    from ..console import fail
    from ..errors import ConfigError

    try:
        return run()
    except ConfigError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return EX_SIGINT
    except BrokenPipeError:  # `runner history | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in runner, not bad input: as runner.arguments says it
        import logging

        from ..logs import setup

        log = setup(logging.INFO)
        log.debug("internal error", exc_info=True)
        log.critical("internal error: %s: %s (run with -v for the traceback)",
                     type(exc).__name__, exc)
        return EX_SOFTWARE


def _check(config_path, words):
    """`runner check [TASKDIR]` as runner.arguments runs it, without argparse: from
    runner.checkcache while everything it observed is as it was, else checked for the
    record (runner.checkrecord)."""
    from ..checkcache import answer

    task_dir = os.path.abspath(words[0]) if words else None
    status = _guarded(lambda: answer(config_path, task_dir))  # `| head`: no traceback
    if status is not None:
        return status
    from ..checkrecord import checked

    return checked(config_path, task_dir,
                   lambda recorder: _guarded(lambda: _check_now(config_path, task_dir,
                                                                recorder)))


def _check_now(config_path, task_dir, recorder):
    import logging

    from ..checkrecord import watch_logging
    from ..logs import setup
    from ..settings import RunOptions
    from .check import check

    setup(logging.INFO)
    watch_logging(recorder)
    options = RunOptions(config_path=config_path, overrides=(), task_dir=task_dir,
                         times=None, halt_after=False)
    return check(options, out=sys.stdout)  # the recorder's, not the default's
