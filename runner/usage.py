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


def from_rusage(usage: resource.struct_rusage) -> Cost:
    return Cost(cpu_user_s=usage.ru_utime, cpu_system_s=usage.ru_stime)
