"""`runner run` (and plain `runner`): supervise the chain until done, halted or stopped."""

from __future__ import annotations

import logging

from ..config import load
from ..signals import SignalState
from ..states import ExitStatus
from ..supervisor import RunOptions, Supervisor

log = logging.getLogger("runner")


def run(options: RunOptions) -> int:
    config = load(options.config_path, options.overrides)
    signals = SignalState()
    signals.install()
    try:
        status = Supervisor(options, config, signals).run()
    finally:
        signals.uninstall()
    if status is not ExitStatus.DONE:
        log.info("runner exits with status %d (%s)", status, status.name)
    return int(status)
