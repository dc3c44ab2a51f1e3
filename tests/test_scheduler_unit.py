"""The scheduler and one task's life, imported directly: no runner process, no task
process. The process layer is a function standing in for run_process, so these pin the
decisions (which task starts when, what a result becomes) in milliseconds."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from runner.config import load
from runner.controls import Controls
from runner.events import Dispatcher, Listener
from runner.graph import waves
from runner.masking import Masker
from runner.names import short_name
from runner.process import ProcessResult
from runner.scheduler import Scheduler, ready
from runner.settings import Frequency
from runner.signals import SignalState
from runner.states import TaskRun, TaskState
from runner.taskenv import TaskEnvironment
from runner.tasklife import OPERATOR_SKIP, Refusal, TaskLife, decide
from runner.tasks import Task, needs_of, order


class Recorder(Listener):
    def __init__(self) -> None:
        self.changes: list[tuple[str, TaskState]] = []
        self.events: list[str] = []

    def task_changed(self, run: TaskRun) -> None:
        self.changes.append((run.task.name, run.state))

    def paused(self) -> None:
        self.events.append("paused")

    def resumed(self) -> None:
        self.events.append("resumed")

    def results(self) -> dict[str, TaskState]:
        return {name: state for name, state in self.changes if state is not TaskState.RUNNING}

    def started(self) -> list[str]:
        return [name for name, state in self.changes if state is TaskState.RUNNING]


class FakeProcesses:
    """Stands in for run_process: the task's argv[0] is its name; `behaviour` maps a name
    (or `NAME check`) to an exit code, or to a callable taking the signals view."""

    def __init__(self, behaviour: dict[str, int | Callable] | None = None) -> None:
        self.behaviour = behaviour or {}
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.calls: list[str] = []

    def __call__(self, argv, *, signals, label=None, **_kwargs) -> ProcessResult:
        key = label or argv[0]
        with self.lock:
            self.calls.append(key)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            action = self.behaviour.get(key, 0)
            if callable(action):
                return action(signals)
            time.sleep(0.01)
            return ProcessResult(exit_code=action, duration_s=0.01)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def signals():
    state = SignalState()
    state.install()
    yield state
    state.uninstall()


def make(tmp_path, text: str = "", **runner: object) -> tuple:
    cfg = tmp_path / "runner.cfg"
    lines = "".join(f"{k} = {v}\n" for k, v in runner.items())
    cfg.write_text(f"[runner]\nstate_dir = {tmp_path}/state\n{lines}{text}")
    config = load(str(cfg))
    return config, TaskEnvironment(config)


def task(config, name: str) -> Task:
    settings = config.task_settings(short_name(name))
    return Task(name, name, short_name(name), settings)


def harness(tmp_path, signals, names, behaviour=None, text="", **runner):
    config, env = make(tmp_path, text, **runner)
    recorder = Recorder()
    processes = FakeProcesses(behaviour)
    controls = Controls()
    refusal = Refusal()
    life = TaskLife(config, env=env, masker=Masker(()), dispatcher=Dispatcher([recorder]),
                    refusal=refusal, run=processes)
    scheduler = Scheduler(life, signals, controls, refusal)
    tasks = [task(config, n) for n in names]
    plan_order = order(tasks, config, [])
    return scheduler, plan_order, needs_of(tasks), recorder, processes, controls


def test_sequential_is_plan_order_one_at_a_time(tmp_path, signals):
    text = "[a]\ndepends_on = c\n"
    scheduler, tasks, needs, recorder, processes, _ = harness(
        tmp_path, signals, ["10-a", "20-b", "30-c"], text=text)
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert recorder.started() == [t.name for t in tasks] == ["20-b", "30-c", "10-a"]
    assert processes.most_at_once == 1
    assert result.done == {"10-a", "20-b", "30-c"} and result.ended == []


def test_never_more_than_max_parallel_at_once(tmp_path, signals):
    names = [f"{n:02d}-t" for n in range(8)]
    scheduler, tasks, needs, recorder, processes, _ = harness(
        tmp_path, signals, names, max_parallel=3)
    scheduler.run_try(tasks, needs, set(), 1, 1)
    assert processes.most_at_once == 3
    assert sorted(recorder.started()) == names


def test_a_failure_stops_new_starts_and_on_failure_stop_stops_the_running(tmp_path, signals):
    def long_task(view) -> ProcessResult:
        while not view.cancelled:
            time.sleep(0.005)
        return ProcessResult(stopped=True)

    behaviour = {"10-long": long_task, "20-fail": 1}
    scheduler, tasks, needs, recorder, _processes, _ = harness(
        tmp_path, signals, ["10-long", "20-fail", "30-later"], behaviour,
        max_parallel=2, on_failure="stop")
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert recorder.results() == {"20-fail": TaskState.RETRY, "10-long": TaskState.STOPPED}
    assert "30-later" not in recorder.started()
    assert [r.task.name for r in result.ended] == ["20-fail", "10-long"]


def test_a_passing_check_skips_the_task_and_its_dependents_still_run(tmp_path, signals):
    text = "[mount]\ncheck = 10-mount-done\n[use]\ndepends_on = mount\n"
    scheduler, tasks, needs, recorder, processes, _ = harness(
        tmp_path, signals, ["10-mount", "20-use"], {"10-mount check": 0}, text=text)
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert recorder.results() == {"10-mount": TaskState.SKIPPED, "20-use": TaskState.OK}
    assert processes.calls == ["10-mount check", "20-use"]
    assert result.done == {"10-mount", "20-use"}


def test_a_check_still_failing_after_the_run_is_a_retry(tmp_path, signals):
    text = "[mount]\ncheck = 10-mount-done\n"
    scheduler, tasks, needs, _recorder, processes, _ = harness(
        tmp_path, signals, ["10-mount"], {"10-mount check": 1, "10-mount recheck": 3},
        text=text)
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert processes.calls == ["10-mount check", "10-mount", "10-mount recheck"]
    (run,) = result.ended
    assert run.state is TaskState.RETRY
    assert run.error == "check still fails after the run (exit 3)"


def test_an_operator_skip_is_taken_once(tmp_path, signals):
    scheduler, tasks, needs, recorder, processes, _controls = harness(
        tmp_path, signals, ["10-a", "20-b"])
    assert not scheduler.life.request_skip("10-a")  # not running: its next turn
    scheduler.run_try(tasks, needs, set(), 1, 1)
    scheduler.run_try(tasks, needs, set(), 1, 2)
    assert next(c for c in recorder.changes if c[0] == "10-a") == ("10-a", TaskState.SKIPPED)
    assert processes.calls == ["20-b", "10-a", "20-b"]


def test_tasks_done_in_an_earlier_try_are_not_run_again(tmp_path, signals):
    scheduler, tasks, needs, _recorder, processes, _ = harness(
        tmp_path, signals, ["10-a", "20-b", "30-c"])
    result = scheduler.run_try(tasks, needs, {"10-a", "20-b"}, 1, 2)
    assert processes.calls == ["30-c"]
    assert result.done == {"10-a", "20-b", "30-c"}


def test_a_pause_holds_the_next_start_until_resume(tmp_path, signals):
    scheduler, tasks, needs, recorder, processes, controls = harness(
        tmp_path, signals, ["10-a", "20-b"])
    controls.set(paused=True)
    resumer = threading.Timer(0.2, lambda: (controls.set(paused=False), signals.poke()))
    resumer.start()
    began = time.monotonic()
    scheduler.run_try(tasks, needs, set(), 1, 1)
    assert time.monotonic() - began >= 0.2
    assert recorder.events == ["paused", "resumed"]
    assert processes.calls == ["10-a", "20-b"]


def test_runner_plan_waves_follow_the_scheduler_rule(tmp_path, signals):
    """For random graphs: with max_parallel 1 the waves are plan order and the order the
    scheduler starts tasks in; with more, every wave starts only ready tasks."""
    rng = random.Random(14)
    for trial in range(20):
        numbers, letters = rng.sample(range(40), 8), rng.sample("abcdefghijklmnop", 8)
        names = [f"{n:02d}-{letter}" for n, letter in zip(numbers, letters, strict=True)]
        deps = []
        topological = rng.sample(names, len(names))  # any DAG: deps only on earlier ones
        for n, name in enumerate(topological):
            earlier = [short_name(other) for other in topological[:n]]
            if earlier and rng.random() < 0.6:
                picked = rng.sample(earlier, min(len(earlier), rng.randint(1, 2)))
                deps.append(f"[{short_name(name)}]\ndepends_on = {', '.join(picked)}\n")
        workdir = tmp_path / str(trial)
        workdir.mkdir()
        scheduler, tasks, needs, recorder, _p, _c = harness(
            workdir, signals, sorted(names), text="".join(deps))
        scheduler.run_try(tasks, needs, set(), 1, 1)
        assert [w[0].name for w in waves(tasks, 1, needs)] == recorder.started() == [
            t.name for t in tasks]
        done: set[str] = set()
        for wave in waves(tasks, 3, needs):
            assert wave == ready([t for t in tasks if t.name not in done], needs, done)[:3]
            done.update(t.name for t in wave)


def test_the_one_skip_decision_orders_operator_stamp_then_check(tmp_path):
    config, _env = make(tmp_path, "[a]\ncheck = true\n")
    a = task(config, "10-a")
    passed = ProcessResult(exit_code=0)
    failed = ProcessResult(exit_code=1)

    class Stamped:
        def skip_reason(self, _task: Task) -> str:
            return "once: done at noon"

    assert decide(a, stamps=None, operator_skip=lambda _n: True).reason == OPERATOR_SKIP
    assert decide(a, stamps=None, check=lambda _t: passed).skip
    assert decide(a, stamps=None, check=lambda _t: failed).reason == "check fails (exit 1)"
    assert decide(a, stamps=None).reason == "check not run"  # runner plan runs no check
    assert not decide(a, stamps=Stamped()).skip  # frequency always: stamps not asked
    once = Task(a.name, a.path, a.short_name,
                type(a.settings)(**{**a.settings.__dict__, "frequency": Frequency.ONCE}))
    assert decide(once, stamps=Stamped()).reason == "once: done at noon"


def test_a_skip_asked_while_the_start_hook_runs_keeps_the_process_from_starting(
        tmp_path, signals):
    scheduler, tasks, needs, recorder, processes, _ = harness(tmp_path, signals, ["10-a"])

    class SkipDuringTheHook(Listener):
        waits = True  # it stands for the hook

        def task_changed(self, run: TaskRun) -> None:
            if run.state is TaskState.RUNNING:  # where the start hook runs
                assert scheduler.life.request_skip(run.task.name)

    scheduler.life.dispatcher.listeners.append(SkipDuringTheHook())
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert processes.calls == []  # never started
    assert recorder.results() == {"10-a": TaskState.SKIPPED}
    assert result.done == {"10-a"}


def test_a_skip_of_a_running_task_stops_it_and_counts_as_skipped(tmp_path, signals):
    started = threading.Event()

    def long_task(view) -> ProcessResult:
        started.set()
        while not view.cancelled:
            time.sleep(0.005)
        return ProcessResult(stopped=True)

    scheduler, tasks, needs, recorder, _p, _c = harness(
        tmp_path, signals, ["10-a", "20-b"], {"10-a": long_task})
    threading.Thread(target=lambda: started.wait(5) and scheduler.life.request_skip("10-a"),
                     daemon=True).start()
    result = scheduler.run_try(tasks, needs, set(), 1, 1)
    assert recorder.results() == {"10-a": TaskState.SKIPPED, "20-b": TaskState.OK}
    assert result.done == {"10-a", "20-b"}
