"""`runner ctl ACTION [TASK]`: tell the running runner what to do, over its control socket.

Exit status: 0 when runner accepted the command (its reply on stdout), 1 when it refused
(the reply on stderr) or cannot be reached, 78 for bad arguments or configuration.

Started by runner.cli without the full parser: imports `os`, `sys` and runner.ctlwords;
the socket machinery only when there is a socket to talk to.
"""

from __future__ import annotations

import os
import sys

from ..ctlwords import ControlError, check_words, socket_path

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (its cost)
if TYPE_CHECKING:
    from typing import TextIO

    from ..settings import RunOptions

REFUSED = 1


def _fail(message: str) -> int:
    print(f"runner: {' '.join(message.split())}", file=sys.stderr)  # always one line
    return REFUSED


def checked(words: list[str]) -> list[str]:
    """`words` when they are a command; a typo is bad usage (78), found before the
    configuration is read and anything is sent."""
    from ..errors import ConfigError

    try:
        return check_words(words)
    except ControlError as exc:
        raise ConfigError(f"ctl: {exc}") from None


def ctl(options: RunOptions, words: list[str], out: TextIO = sys.stdout) -> int:
    from ..config import load

    checked(words)
    config = load(options.config_path, options.overrides)
    return send_command(config.runner.runtime_dir, words, out)


def send_command(runtime_dir: str, words: list[str], out: TextIO = sys.stdout) -> int:
    """Send checked `words` to the runner of `runtime_dir`; the exit status."""
    path = socket_path(runtime_dir)
    try:
        os.stat(path)  # no socket, no runner: said without importing the client
    except (FileNotFoundError, NotADirectoryError):
        return _not_running(path)
    except OSError:
        pass  # connect() says what is wrong
    from ..ctlsocket import send

    try:
        ok, reply = send(path, words)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return _not_running(path)
    except PermissionError:
        return _fail(f"permission denied: {path} (runner ctl is for root)")
    except TimeoutError:
        return _fail(f"runner did not answer on {path} in time")
    except ControlError as exc:
        return _fail(f"{exc} ({path})")
    except OSError as exc:
        return _fail(f"cannot reach runner at {path}: {exc.strerror or exc}")
    if not ok:
        return _fail(reply)
    print(reply, file=out)
    return 0


def _not_running(path: str) -> int:
    return _fail(f"runner is not running (no control socket at {path})")
