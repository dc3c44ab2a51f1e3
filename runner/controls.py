"""What an operator asked through `runner ctl`: shared between the control socket's
thread, which records requests, and the main loop, which acts on them."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Controls:
    """Operator requests; every access goes through the lock."""

    paused: bool = False
    halt: bool = False
    retry_now: bool = False
    skip: set[str] = field(default_factory=set)
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

    def request_skip(self, name: str) -> None:
        with self.lock:
            self.skip.add(name)

    def take_skip(self, name: str) -> bool:
        """True once per `skip NAME`: the task is skipped that one time."""
        with self.lock:
            if name in self.skip:
                self.skip.discard(name)
                return True
            return False
