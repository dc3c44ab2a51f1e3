"""`runner run` (and plain `runner`): supervise the chain until done, halted or stopped."""

from __future__ import annotations

import logging

from ..config import load
from ..notify import Heartbeat, Notifier
from ..signals import SignalState
from ..states import ExitStatus
from ..supervisor import RunOptions, Supervisor

log = logging.getLogger("runner")


def run(options: RunOptions) -> int:
    config = load(options.config_path, options.overrides)
    heartbeat = Heartbeat()
    signals = SignalState(heartbeat=heartbeat)
    notifier = Notifier(config.runner["notify_ready"], heartbeat=heartbeat)
    signals.install()
    try:
        status = Supervisor(options, config, signals, listeners=(notifier,)).run()
    finally:
        signals.uninstall()
    if status is not ExitStatus.DONE:
        log.info("runner exits with status %d (%s)", status, status.name)
    return int(status)
