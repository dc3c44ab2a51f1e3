"""Logging to stderr, journald-aware (sd-daemon(3) priority prefixes), and to syslog."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Protocol

from .escape import escape

# sd-daemon(3) / syslog priorities of Python's levels.
PRIORITIES = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class JournalFormatter(logging.Formatter):
    """`<6>message`: journald reads the priority and adds its own timestamp."""

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def stderr_is_journal(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """True when stderr is the journal stream systemd connected (JOURNAL_STREAM=dev:ino)."""
    stream = environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not stream:
        return False  # without looking at stderr: runner.checkcache would key on its identity
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False


TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with the local time of the second worked out once per second: a
    chain of short tasks logs two lines a task, and localtime() plus strftime() for each
    was a fifth of what a line cost."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        cached, text = self._second  # one tuple: threads never see half an update
        if cached != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"


class _MessageFilter(logging.Filter):
    """Masks, then escapes every record before any handler writes it: whatever a message
    quotes (an error from psycopg, a command line, a task's name or output line), no
    secret value reaches a log, and one record is one line of valid UTF-8 (runner.escape:
    a name with a newline or an escape sequence can neither split nor colour a line)."""

    mask: Callable[[str], str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "shown", False):  # another handler's filter did it (no twice)
            return True
        record.shown = True
        text = record.getMessage()
        shown = escape(text if self.mask is None else self.mask(text))
        if shown is not text or record.args:  # escape returns its argument when it can
            record.msg, record.args = shown, None
        return True


_MESSAGES = _MessageFilter()


def mask_logs(mask: Callable[[str], str]) -> None:
    """Mask every later log line with `mask` (runner.masking.Masker.text)."""
    _MESSAGES.mask = mask


def _add(logger: logging.Logger, handler: logging.Handler) -> None:
    handler.addFilter(_MESSAGES)
    logger.addHandler(handler)


def _runner_logger(level: int) -> logging.Logger:
    """The `runner` logger at `level`, with no handlers yet."""
    logger = logging.getLogger("runner")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    return logger


def _lean_records(syslog: bool) -> None:
    # No format of runner's uses a record's thread or multiprocessing name, nor where in
    # the code it was logged, and only syslog's its process id (a getpid() per record);
    # not looking them up makes each of the two lines a task logs cheaper (None:
    # logging's own documented way to skip walking the stack).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = syslog
    logging._srcfile = None


class ConsoleHandler(logging.StreamHandler):
    """stderr. A line drawn over the terminal (runner.progress) is cleared first, under
    this handler's lock, which the drawing holds too: a record never lands inside it."""

    overlay: Overlay | None = None

    def emit(self, record: logging.LogRecord) -> None:
        overlay = self.overlay
        if overlay is not None:
            overlay.before_log()
        super().emit(record)


class Overlay(Protocol):
    """A line drawn on the console between log records (runner.progress.ProgressLine)."""

    def before_log(self) -> None:
        """Clear it; called with the handler's lock held, before the record is written."""


_console: list[ConsoleHandler] = []  # the handler setup() made, for runner.progress


def console_handler() -> ConsoleHandler | None:
    """The stderr handler of the `runner` logger, when setup() made one."""
    return _console[0] if _console else None


def setup(level: int, use_syslog: bool = False) -> logging.Logger:
    """Configure the `runner` logger (called once, by the command line)."""
    _lean_records(use_syslog)
    logger = _runner_logger(level)
    handler = ConsoleHandler(sys.stderr)
    _console[:] = [handler]
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(TextFormatter())
    _add(logger, handler)
    if use_syslog:
        _add_syslog(logger)
    return logger


def setup_daemon(level: int, log_file: str | None) -> logging.Logger:
    """Daemon mode (stderr is /dev/null): log to the file, reopened after logrotate,
    or to syslog when no file is given."""
    _lean_records(not log_file)
    logger = _runner_logger(level)
    _console.clear()  # stderr is /dev/null now
    if log_file:
        import logging.handlers  # here: it imports pickle, a cost to every command

        handler = logging.handlers.WatchedFileHandler(log_file)
        handler.setFormatter(TextFormatter())
        _add(logger, handler)
    else:
        _add_syslog(logger)
    return logger


def _add_syslog(logger: logging.Logger) -> None:
    import logging.handlers

    address = "/dev/log"
    try:
        handler = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError as exc:
        logger.warning("--syslog: cannot connect to %s (%s); logging to stderr only",
                       address, exc.strerror or exc)
        return
    # Since Python 3.11 the handler swallows a failed connect and then prints a
    # traceback for every record; a closed socket means the connect failed.
    sock = getattr(handler, "socket", None)  # set by __init__, but not in typeshed's stub
    if sock is None or sock.fileno() < 0:
        handler.close()
        logger.warning("--syslog: cannot connect to %s; logging to stderr only", address)
        return
    handler.setFormatter(logging.Formatter("runner[%(process)d]: %(message)s"))
    _add(logger, handler)
