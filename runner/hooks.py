"""task_hook: called before and after every task run with the JSON stats (SPEC §5)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from .cgroup import Tree
from .escape import escape
from .events import Listener
from .masking import Masker
from .permissions import Trust
from .process import Limits, run_process
from .signals import SignalState
from .states import TaskRun, TaskState

log = logging.getLogger("runner.hooks")


def hook_stats(run: TaskRun, hostname: str, run_id: str = "") -> dict[str, Any]:
    """The JSON object a hook receives; the first four fields are the original's, run_id
    ties it to the journal's records of the same run; what the run cost comes after it
    (null before the run, and where it is not known)."""
    after = run.state.is_result
    cost = run.cost if after else None
    return {
        "task": run.task.name,
        "try_num": run.try_num,
        "max_retries": run.max_tries,
        "result": run.state.value,
        "iteration": run.iteration,
        "exit_code": run.exit_code if after else None,
        "signal": run.signal if after else None,
        "duration_s": round(run.duration_s, 3) if after and run.duration_s is not None else None,
        "started_at": run.started_at_text(),
        "hostname": hostname,
        "kind": run.kind.value,
        "run_id": run_id,
        "cpu_user_s": round(cost.cpu_user_s, 3) if cost else None,
        "cpu_system_s": round(cost.cpu_system_s, 3) if cost else None,
        "peak_memory_bytes": cost.peak_memory_bytes if cost else None,
    }


class HookListener(Listener):
    """Runs the hook command with the stats as one extra argument; no shell involved."""

    waits = True

    def __init__(
        self,
        argv: list[str],
        *,
        timeout: float,
        kill_grace: float,
        cwd: str,
        env_for: Any,
        signals: SignalState,
        masker: Masker,
        run_id: str = "",
        trust: Trust | None = None,
        on_refused: Callable[[str], None] | None = None,
        tree: Tree | None = None,
    ) -> None:
        self.tree = tree
        self.run_id = run_id
        self.masker = masker
        self.trust = trust
        self.on_refused = on_refused
        self.argv = argv
        self.limits = Limits(max_time=timeout, kill_grace=kill_grace, stop_after=2)
        self.cwd = cwd
        self.env_for = env_for
        self.signals = signals
        self.hostname = socket.gethostname()

    def task_changed(self, run: TaskRun) -> None:
        if run.state is TaskState.PENDING:
            return
        # Masked, then escaped as in the log and the journal (runner.escape): a name
        # with bytes that are not UTF-8 would make no valid JSON otherwise.
        stats = {key: escape(self.masker.text(value)) if isinstance(value, str) else value
                 for key, value in hook_stats(run, self.hostname, self.run_id).items()}
        payload = json.dumps(stats, sort_keys=False)
        result = run_process(
            [*self.argv, payload],
            env=self.env_for(run),
            cwd=self.cwd,
            limits=self.limits,
            signals=self.signals,
            on_line=lambda line: log.info("[hook %s] %s", run.task.name, line),
            masker=self.masker,
            label=f"task_hook for {run.task.name}",
            trust=self.trust,
            cell=self.tree.cell("hook", run.task.name) if self.tree is not None else None,
        )
        what = f"task_hook for {run.task.name} {run.state.value}"
        if result.refused and self.on_refused is not None:
            self.on_refused(result.error or what)
        elif result.error:
            log.warning("%s: %s", what, result.error)
        elif result.timed_out:
            log.warning("%s: killed after hook_timeout (%gs)", what, self.limits.max_time)
        elif result.signal:
            log.warning("%s: killed by signal %d", what, result.signal)
        elif result.exit_code:
            log.warning("%s: exited with status %d", what, result.exit_code)
