"""`runner ctl ACTION [TASK]`: tell the running runner what to do, over its control socket.

Exit status: 0 when runner accepted the command (its reply on stdout), 1 when it refused
(the reply on stderr) or cannot be reached, 78 for bad arguments or configuration.
"""

from __future__ import annotations

import sys
from typing import TextIO

from ..config import load
from ..ctlsocket import ControlError, check_words, send, socket_path
from ..errors import ConfigError
from ..settings import RunOptions

REFUSED = 1


def _fail(message: str) -> int:
    print(f"runner: {' '.join(message.split())}", file=sys.stderr)  # always one line
    return REFUSED


def ctl(options: RunOptions, words: list[str], out: TextIO = sys.stdout) -> int:
    try:
        check_words(words)  # a typo is bad usage (78), found before anything is sent
    except ControlError as exc:
        raise ConfigError(f"ctl: {exc}") from None
    config = load(options.config_path, options.overrides)
    path = socket_path(config.runner.runtime_dir)
    try:
        ok, reply = send(path, words)
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
        return _fail(f"runner is not running (no control socket at {path})")
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
