"""A task asked for a reboot (exit 4 with reboot_task set): record durably where the
chain resumes, run the reboot task, and wait for the shutdown to stop runner."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .bootstate import BootState, Resume
from .events import describe_end
from .identity import RunIdentity, iso, utc_now
from .signals import SignalState
from .states import ExitStatus, Kind, TaskRun, TaskState
from .tasklife import TaskLife
from .tasks import Plan

log = logging.getLogger("runner")


@dataclass(frozen=True)
class RebootRequest:
    """Which run asked, where the chain stood, and which tasks were through."""

    asking: TaskRun
    iteration: int
    try_num: int
    done: frozenset[str]


def reboot(request: RebootRequest, *, plan: Plan, life: TaskLife, boot: BootState,
           identity: RunIdentity, signals: SignalState) -> bool:
    """True when runner is being stopped for the reboot (the resume point is kept);
    False when no reboot happens (the asking run is then retried like a failure).

    A reboot that was asked for is no failed try (max_boot_tries): the try is taken back
    as soon as the resume point is durable, before the reboot task runs, so neither the
    reboot nor a power cut during it counts; it counts again if no reboot happens."""
    limit = life.config.runner.max_boot_tries
    asking, task = request.asking, plan.reboot
    if task is None:
        log.error("%s asked for a reboot but reboot_task %s is not in %s: retrying",
                  asking.task.name, life.config.runner.reboot_task, plan.task_dir)
        return False
    resume = Resume(
        iteration=request.iteration, try_num=request.try_num, after=asking.task.name,
        done=sorted(request.done), run_id=identity.run_id, boot_id=identity.boot_id,
        at=iso(utc_now()),
    )
    if not boot.save_resume(resume):
        log.error("cannot record where to resume: not rebooting, retrying instead")
        return False
    boot.settle_try(ExitStatus.EXIT, limit)
    log.warning("%s asked for a reboot: running reboot task %s", asking.task.name, task.name)
    run = life.run_special(task, request.iteration, request.try_num, Kind.REBOOT, signals)
    if signals.stop_signal is not None:  # the shutdown came first: keep the point
        return True
    if run.state is not TaskState.OK:
        log.error("reboot task %s failed: %s; retrying instead", task.name, describe_end(run))
        boot.clear_resume()
        if limit:
            boot.count_try()  # counted again: without the reboot, the try failed
        return False
    log.warning("waiting for the reboot; the next start resumes after %s", asking.task.name)
    life.dispatcher.rebooting(asking.task.name)
    signals.wait_until(lambda: False)
    return True
