"""What one run of a task, check, hook or halt task cost: CPU time and peak memory.

With a cgroup of its own (runner.cgroup) the figures are the cgroup's: every process
the run started, however it forked, up to the moment the run ended (a worker it left
running keeps adding to its cgroup, not to this record). Without one they come from
wait4() of the process runner started: its CPU time plus that of the descendants it
waited for itself; no peak memory (ru_maxrss is one process's, not the run's).
"""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    cpu_user_s: float
    cpu_system_s: float
    peak_memory_bytes: int | None = None  # only where a memory controller counts it

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_system_s


def combined(first: Cost | None, second: Cost | None) -> Cost | None:
    """Two runs counted as one (a task and its recheck): CPU times add up, the peak is
    the higher of the peaks known; None when neither is known."""
    if first is None or second is None:
        return first or second
    peaks = [p for p in (first.peak_memory_bytes, second.peak_memory_bytes) if p is not None]
    return Cost(cpu_user_s=first.cpu_user_s + second.cpu_user_s,
                cpu_system_s=first.cpu_system_s + second.cpu_system_s,
                peak_memory_bytes=max(peaks) if peaks else None)


def from_rusage(usage: resource.struct_rusage) -> Cost:
    return Cost(cpu_user_s=usage.ru_utime, cpu_system_s=usage.ru_stime)
