"""What an operator asked through `runner ctl`: shared between the control socket's
thread, which records requests, and the main loop, which acts on them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .ctlsocket import ControlServer
from .ctlwords import ControlError, socket_path
from .files import make_dir

log = logging.getLogger("runner")


@dataclass
class Controls:
    """Operator requests; every access goes through the lock."""

    paused: bool = False
    halt: bool = False
    retry_now: bool = False
    in_backoff: bool = False  # set by the main loop while it pauses between tries
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set(self, **values: bool) -> None:
        with self.lock:
            for name, value in values.items():
                setattr(self, name, value)

    def take_retry_now(self) -> bool:
        """True once per `retry-now`: it cuts one pause short."""
        with self.lock:
            asked, self.retry_now = self.retry_now, False
            return asked

    def handle(self, words: list[str], *, find: Callable[[str], str | None],
               skip: Callable[[str], bool]) -> str:
        """Record one checked `runner ctl` request (in the socket's thread) and say what
        it does. `find` gives the task file name for a name or short name; `skip` skips
        that task (True: a run of it was in progress). ControlError when it cannot apply."""
        action = words[0]
        if action == "retry-now":
            if not self.in_backoff:
                raise ControlError("runner is not pausing between tries")
            self.set(retry_now=True)
            return "the pause ends now; the next try starts"
        if action == "skip":
            name = find(words[1])
            if name is None:
                raise ControlError(f"no task {words[1]!r} in the chain")
            if skip(name):
                return (f"{name} is being skipped (stopped if its process has started); "
                        "it counts as SKIPPED")
            return f"{name} will be skipped when its turn comes (once)"
        if action in ("pause", "resume"):
            self.set(paused=action == "pause")
            return "pausing after the current task" if action == "pause" else "resuming"
        self.set(halt=True)  # halt
        return "halting after the current task"


def serve(runtime_dir: str, controls: Controls, *, find: Callable[[str], str | None],
          skip: Callable[[str], bool], poke: Callable[[], None]) -> ControlServer | None:
    """The control socket in runtime_dir, recording what `runner ctl` asks in `controls`
    (and waking the main loop with `poke`); None, with a warning, when it cannot be."""
    try:
        make_dir(runtime_dir, 0o755)
    except OSError as exc:
        log.warning("runtime_dir %s: cannot create it (%s); runner ctl will not work",
                    runtime_dir, exc.strerror)
        return None

    def handle(words: list[str]) -> str:
        reply = controls.handle(words, find=find, skip=skip)
        poke()
        return reply

    server = ControlServer(socket_path(runtime_dir), handle)
    server.start()
    return server
