"""[runner] metrics_file: Prometheus textfile metrics, written atomically at every step."""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import run_in_mount_namespace
from prometheus_client.parser import text_string_to_metric_families

from runner import metrics
from runner.identity import RunIdentity
from runner.metrics import RESULT_VALUES, MetricsListener
from runner.names import short_name
from runner.settings import TaskSettings
from runner.states import Kind, TaskRun, TaskState, check_transition
from runner.tasks import Task

IDENTITY = RunIdentity("0123abcd", "host-1", "boot-1", 4242, None)
SETTINGS = TaskSettings(
    max_time=600, max_tries=5, sleep_time=0, retry_jitter=0, interpreter=None, kill_grace=1
)
EXPECTED_RESULTS = {
    "OK", "HALT", "EXIT", "RETRY", "TIMEOUT", "STOPPED", "SKIPPED", "REBOOT", "INTERRUPTED",
}


def task(name: str) -> Task:
    return Task(name, f"/etc/runner/tasks.d/{name}", short_name(name), SETTINGS)


class Driver:
    """Fires events at a listener the way the supervisor does, with real TaskRuns and the
    real state machine; unlike the Dispatcher it lets a listener's exception through."""

    def __init__(self, listener: MetricsListener) -> None:
        self.listener = listener

    def run(self, name: str, iteration: int, try_num: int, result: TaskState, *,
            duration: float = 0.25, kind: Kind = Kind.TASK) -> TaskRun:
        run = TaskRun(task(name), iteration, try_num, SETTINGS.max_tries, kind)
        run.mark_started()
        self._move(run, TaskState.RUNNING)
        run.duration_s = duration
        run.exit_code = {TaskState.OK: 0, TaskState.HALT: 2, TaskState.EXIT: 3}.get(result, 1)
        self._move(run, result)
        return run

    def _move(self, run: TaskRun, state: TaskState) -> None:
        check_transition(run.state, state)
        run.state = state
        self.listener.task_changed(run)


class Scrape:
    """One parse of the metrics file: samples by (sample name, labels)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.values = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in self.families.values() for s in family.samples
        }

    def get(self, name: str, **labels: str) -> float | None:
        return self.values.get((name, frozenset(labels.items())))

    def labels_of(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for sample, labels in self.values if sample == name]

    def last_result(self, task_name: str) -> dict[str, float]:
        return {
            labels["result"]: self.get("runner_task_last_result", **labels)
            for labels in self.labels_of("runner_task_last_result")
            if labels["task"] == task_name
        }


def scrape(path: Path) -> Scrape:
    return Scrape(path.read_text())


@pytest.fixture
def prom(tmp_path: Path) -> Path:
    return tmp_path / "runner.prom"


# -- values -----------------------------------------------------------------------


def test_result_values_are_every_result_of_the_state_machine():
    assert set(RESULT_VALUES) == EXPECTED_RESULTS
    assert set(RESULT_VALUES) == {s.value for s in TaskState if s.is_result}


def test_started_writes_the_runner_metrics_before_any_task(prom):
    before = time.time()
    listener = MetricsListener(str(prom), IDENTITY)
    listener.started()
    got = scrape(prom)
    assert got.get("runner_up") == 1
    assert before <= got.get("runner_start_time_seconds") <= time.time()
    assert got.get("runner_iteration") == 0
    assert got.get("runner_try") == 0
    assert got.get("runner_exit_status") is None  # only once runner has exited
    assert got.get("runner_info", version=metrics.__version__, run_id="0123abcd") == 1
    assert "runner_task_runs" not in got.families


def test_retry_chain_then_ok(prom):
    listener = MetricsListener(str(prom), IDENTITY)
    drive = Driver(listener)
    listener.started()
    listener.chain_started(1, 1)
    drive.run("10-mount.sh", 1, 1, TaskState.OK, duration=0.5)
    drive.run("20-puppet.sh", 1, 1, TaskState.RETRY, duration=3.0)
    listener.backoff(1.0, "20-puppet.sh")
    listener.chain_started(1, 2)
    drive.run("10-mount.sh", 1, 2, TaskState.OK, duration=0.5)
    before = time.time()
    drive.run("20-puppet.sh", 1, 2, TaskState.OK, duration=1.25)
    after = time.time()
    listener.iteration_done(1)
    listener.finished(0)

    got = scrape(prom)
    assert got.get("runner_up") == 0
    assert got.get("runner_exit_status") == 0
    assert got.get("runner_iteration") == 1
    assert got.get("runner_try") == 2
    puppet = {"task": "20-puppet.sh"}
    assert got.get("runner_task_last_try", **puppet) == 2
    assert got.get("runner_task_last_duration_seconds", **puppet) == 1.25
    assert got.get("runner_task_runs_total", **puppet, result="RETRY") == 1
    assert got.get("runner_task_runs_total", **puppet, result="OK") == 1
    assert got.get("runner_task_runs_total", task="10-mount.sh", result="OK") == 2
    for result in EXPECTED_RESULTS - {"OK", "RETRY"}:
        assert got.get("runner_task_runs_total", **puppet, result=result) == 0
    assert before <= got.get("runner_task_last_success_timestamp_seconds", **puppet) <= after
    for name in ("10-mount.sh", "20-puppet.sh"):
        states = got.last_result(name)
        assert set(states) == EXPECTED_RESULTS
        assert [r for r, v in states.items() if v == 1] == ["OK"]
        assert sum(states.values()) == 1
        assert got.get("runner_task_running", task=name) == 0


def test_last_result_follows_the_last_run_and_success_time_stays(prom):
    listener = MetricsListener(str(prom), IDENTITY)
    drive = Driver(listener)
    listener.started()
    listener.chain_started(1, 1)
    drive.run("a", 1, 1, TaskState.OK)
    success = scrape(prom).get("runner_task_last_success_timestamp_seconds", task="a")
    listener.chain_started(2, 1)
    drive.run("a", 2, 1, TaskState.TIMEOUT, duration=600.0)
    got = scrape(prom)
    states = got.last_result("a")
    assert [r for r, v in states.items() if v == 1] == ["TIMEOUT"]
    assert sum(states.values()) == 1
    assert got.get("runner_task_last_success_timestamp_seconds", task="a") == success
    assert got.get("runner_task_last_duration_seconds", task="a") == 600.0
    assert got.get("runner_iteration") == 2


def test_running_task_is_marked_while_it_runs(prom):
    listener = MetricsListener(str(prom), IDENTITY)
    listener.started()
    listener.chain_started(1, 1)
    run = TaskRun(task("20-slow.sh"), 1, 1, 5)
    run.mark_started()
    run.state = TaskState.RUNNING
    listener.task_changed(run)
    got = scrape(prom)
    assert got.get("runner_task_running", task="20-slow.sh") == 1
    assert got.last_result("20-slow.sh") == {}  # no result yet
    assert got.get("runner_task_runs_total", task="20-slow.sh", result="OK") == 0
    run.state, run.duration_s = TaskState.STOPPED, 1.0
    listener.task_changed(run)
    listener.finished(143)
    got = scrape(prom)
    assert got.get("runner_task_running", task="20-slow.sh") == 0
    assert got.get("runner_task_runs_total", task="20-slow.sh", result="STOPPED") == 1
    assert got.get("runner_exit_status") == 143
    assert got.get("runner_up") == 0


def test_halt_task_is_listed_like_any_task(prom):
    listener = MetricsListener(str(prom), IDENTITY)
    drive = Driver(listener)
    listener.started()
    listener.chain_started(1, 1)
    drive.run("10-check.sh", 1, 1, TaskState.HALT)
    drive.run("halt.sh", 1, 1, TaskState.OK, kind=Kind.HALT)
    listener.finished(2)
    got = scrape(prom)
    assert got.get("runner_task_runs_total", task="halt.sh", result="OK") == 1
    assert got.get("runner_task_runs_total", task="10-check.sh", result="HALT") == 1
    assert got.get("runner_exit_status") == 2
    assert all("kind" not in labels for labels in got.labels_of("runner_task_runs_total"))


def test_seed_last_success_shows_before_any_run(prom):
    seed = {
        "20-puppet.sh": {"result": "RETRY", "duration_s": 2.5, "try_num": 3,
                         "last_success": "2026-01-02T03:04:05.678Z"},
        "10-mount.sh": {"result": "OK", "duration_s": None, "try_num": 1,
                        "last_success": None},
    }
    listener = MetricsListener(str(prom), IDENTITY, seed=seed)
    listener.started()
    got = scrape(prom)
    expected = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC).timestamp()
    puppet = {"task": "20-puppet.sh"}
    assert got.get("runner_task_last_success_timestamp_seconds", **puppet) == expected
    assert got.get("runner_task_last_success_timestamp_seconds", task="10-mount.sh") is None
    assert got.get("runner_task_last_try", **puppet) == 3
    assert got.get("runner_task_last_duration_seconds", **puppet) == 2.5
    assert got.get("runner_task_last_duration_seconds", task="10-mount.sh") is None
    assert [r for r, v in got.last_result("20-puppet.sh").items() if v == 1] == ["RETRY"]
    # Counters are this runner's: nothing has run yet.
    assert {got.get("runner_task_runs_total", **puppet, result=r) for r in RESULT_VALUES} == {0}

    # A failed run this time keeps the seeded success time; an OK one replaces it.
    drive = Driver(listener)
    listener.chain_started(1, 1)
    drive.run("20-puppet.sh", 1, 1, TaskState.RETRY)
    assert scrape(prom).get("runner_task_last_success_timestamp_seconds", **puppet) == expected
    listener.chain_started(1, 2)
    drive.run("20-puppet.sh", 1, 2, TaskState.OK)
    assert scrape(prom).get("runner_task_last_success_timestamp_seconds", **puppet) > expected


def test_seed_records_that_do_not_parse_are_left_out(prom):
    seed = {
        "a": {"result": "BOGUS", "duration_s": "slow", "try_num": None, "last_success": "never"},
        "b": {},
    }
    listener = MetricsListener(str(prom), IDENTITY, seed=seed)
    listener.started()
    got = scrape(prom)
    for name in ("a", "b"):
        assert got.last_result(name) == {}
        assert got.get("runner_task_last_try", task=name) is None
        assert got.get("runner_task_last_success_timestamp_seconds", task=name) is None
        assert got.get("runner_task_running", task=name) == 0


def test_seed_left_running_by_a_dead_runner_counts_as_interrupted(prom):
    seed = {"a": {"result": "RUNNING", "duration_s": None, "try_num": 2, "last_success": None}}
    listener = MetricsListener(str(prom), IDENTITY, seed=seed)
    listener.started()
    got = scrape(prom)
    assert [r for r, v in got.last_result("a").items() if v == 1] == ["INTERRUPTED"]
    assert got.get("runner_task_running", task="a") == 0
    assert got.get("runner_task_last_try", task="a") == 2


def test_empty_seed_is_like_none(prom):
    for seed in (None, {}):
        listener = MetricsListener(str(prom), IDENTITY, seed=seed)
        listener.started()
        assert scrape(prom).get("runner_up") == 1


# -- the format -------------------------------------------------------------------


def test_every_family_has_help_and_type_and_the_parse_round_trips(prom):
    seed = {"z": {"result": "OK", "try_num": 1, "last_success": "2026-01-01T00:00:00.000Z"}}
    listener = MetricsListener(str(prom), IDENTITY, seed=seed)
    drive = Driver(listener)
    listener.started()
    listener.chain_started(1, 1)
    drive.run("a", 1, 1, TaskState.RETRY)
    listener.finished(1)
    text = prom.read_text()
    got = Scrape(text)
    assert set(got.families) == {
        "runner_up", "runner_info", "runner_start_time_seconds", "runner_iteration",
        "runner_try", "runner_exit_status", "runner_task_last_duration_seconds",
        "runner_task_last_result", "runner_task_last_try", "runner_task_runs",
        "runner_task_last_success_timestamp_seconds", "runner_task_running",
    }
    for family in got.families.values():
        assert family.documentation, family.name
        assert family.type in ("gauge", "counter"), family.name  # no "unknown": typed right
        assert family.samples, family.name
    assert got.families["runner_task_runs"].type == "counter"
    assert {s.name for s in got.families["runner_task_runs"].samples} == {
        "runner_task_runs_total"
    }
    # One sample per line, every sample line after its family's # HELP and # TYPE.
    sample_lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert len(sample_lines) == sum(len(f.samples) for f in got.families.values())
    assert text.endswith("\n")


def test_tasks_are_sorted_by_name_and_output_is_deterministic(tmp_path):
    texts = []
    for order in (["b", "10-a", "a"], ["a", "b", "10-a"]):
        path = tmp_path / f"{len(texts)}.prom"
        listener = MetricsListener(str(path), IDENTITY)
        listener.start_time = 1700000000.0
        drive = Driver(listener)
        listener.chain_started(1, 1)
        for name in order:
            drive.run(name, 1, 1, TaskState.RETRY, duration=1.0)
        texts.append(path.read_text())
    assert texts[0] == texts[1]
    got = Scrape(texts[0])
    assert [labels["task"] for labels in got.labels_of("runner_task_last_try")] == [
        "10-a", "a", "b"
    ]


def test_label_values_are_escaped(prom):
    odd = 'back\\slash "quoted"\nnew line'
    listener = MetricsListener(str(prom), IDENTITY)
    Driver(listener).run(odd, 1, 1, TaskState.OK)
    text = prom.read_text()
    # The label's value is the name as the log shows it (runner.escape: backslash
    # doubled, newline as \n), then Prometheus escapes its backslashes and quotes.
    shown = 'back\\\\slash "quoted"\\nnew line'
    assert 'task="back\\\\\\\\slash \\"quoted\\"\\\\nnew line"' in text
    got = Scrape(text)
    assert got.get("runner_task_runs_total", task=shown, result="OK") == 1


def test_a_file_name_that_is_not_utf8_is_written_as_in_the_log(prom):
    name = os.fsdecode(b"10-caf\xe9.sh")  # what os.listdir returns for a Latin-1 name
    listener = MetricsListener(str(prom), IDENTITY)
    Driver(listener).run(name, 1, 1, TaskState.OK)
    got = scrape(prom)
    assert got.get("runner_task_runs_total", task="10-caf\\xe9.sh", result="OK") == 1


# -- writing ----------------------------------------------------------------------


def test_file_is_world_readable_and_no_temp_file_is_left(prom):
    listener = MetricsListener(str(prom), IDENTITY)
    drive = Driver(listener)
    listener.started()
    for try_num in range(1, 20):
        listener.chain_started(1, try_num)
        drive.run("a", 1, try_num, TaskState.RETRY)
    listener.finished(1)
    assert os.listdir(prom.parent) == [prom.name]
    assert prom.stat().st_mode & 0o777 == 0o644


def test_a_reader_never_sees_a_partial_file(prom):
    """What node_exporter does: read the file whenever it likes while runner rewrites it."""
    listener = MetricsListener(str(prom), IDENTITY)
    drive = Driver(listener)
    listener.started()
    done = threading.Event()
    problems: list[str] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            try:
                got = scrape(prom)
            except Exception as exc:  # a half-written file fails to parse
                problems.append(repr(exc))
                continue
            reads += 1
            if got.get("runner_up") is None:
                problems.append("no runner_up in:\n" + got.text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # Many tasks make a file of many pages, so a torn read would show.
        for iteration in range(1, 3):
            listener.chain_started(iteration, 1)
            for number in range(40):
                drive.run(f"{number:02d}-task-with-a-long-name.sh", iteration, 1, TaskState.OK)
            listener.iteration_done(iteration)
        listener.finished(0)
    finally:
        done.set()
        thread.join(10)
    assert problems == []
    assert reads > 10
    assert len(prom.read_bytes()) > 32 * 1024
    assert os.listdir(prom.parent) == [prom.name]


def test_unwritable_directory_warns_once_and_never_raises(tmp_path, caplog):
    path = tmp_path / "missing" / "runner.prom"
    listener = MetricsListener(str(path), IDENTITY)
    drive = Driver(listener)
    with caplog.at_level(logging.INFO, logger="runner.metrics"):
        listener.started()
        for try_num in range(1, 4):
            listener.chain_started(1, try_num)
            drive.run("a", 1, try_num, TaskState.RETRY)
        listener.finished(1)
    records = [r for r in caplog.records if r.name == "runner.metrics"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert str(path) in records[0].getMessage()
    assert "No such file or directory" in records[0].getMessage()
    assert not path.parent.exists()


def test_exit_before_start_writes_the_status_and_stays_quiet_if_it_cannot(tmp_path, caplog):
    """A configuration error: runner exits 78 before started(); its one-line error must
    stay the only line, but a writable file still tells monitoring what happened."""
    prom = tmp_path / "runner.prom"
    MetricsListener(str(prom), IDENTITY).finished(78)
    got = scrape(prom)
    assert (got.get("runner_up"), got.get("runner_exit_status")) == (0, 78)
    with caplog.at_level(logging.INFO, logger="runner.metrics"):
        MetricsListener(str(tmp_path / "missing" / "runner.prom"), IDENTITY).finished(78)
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_writing_resumes_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "later" / "runner.prom"
    listener = MetricsListener(str(path), IDENTITY)
    drive = Driver(listener)
    with caplog.at_level(logging.INFO, logger="runner.metrics"):
        listener.started()
        listener.chain_started(1, 1)
        drive.run("a", 1, 1, TaskState.RETRY)
        path.parent.mkdir()  # e.g. node_exporter's package got installed meanwhile
        listener.chain_started(1, 2)
        drive.run("a", 1, 2, TaskState.OK)
        listener.iteration_done(1)
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "runner.metrics"]
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO]
    assert str(path) in records[1][1]
    got = scrape(path)
    # Nothing was lost while the file could not be written.
    assert got.get("runner_task_runs_total", task="a", result="RETRY") == 1
    assert got.get("runner_task_runs_total", task="a", result="OK") == 1


@pytest.mark.root
def test_a_full_disk_keeps_the_old_file_warns_once_and_leaves_no_temp_file(ws):
    # The metrics directory is a 64 KiB tmpfs; 20-fill.sh fills it, so every later write
    # fails with ENOSPC until 40-free.sh frees it.
    prom_dir = ws.root / "prom"
    prom_dir.mkdir()
    ws.config(metrics_file=str(prom_dir / "runner.prom"))
    ws.task("10-first.sh")
    ws.task("20-fill.sh", f"dd if=/dev/zero of='{prom_dir}/filler' bs=4k 2>/dev/null; true")
    ws.task("30-while-full.sh", f"cp '{prom_dir}/runner.prom' '{ws.root}/during.prom'")
    ws.task("40-free.sh", f"rm '{prom_dir}/filler'")
    proc = run_in_mount_namespace(
        ws, f"mount -t tmpfs -o size=64k tmpfs '{prom_dir}'", "-n", "1",
        after=f"ls -A '{prom_dir}' > '{ws.root}/listing'; "
              f"cp '{prom_dir}/runner.prom' '{ws.root}/final.prom'",
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "metrics file" in line]
    assert len(warnings) == 2, proc.stderr  # one "cannot write", one "written again"
    assert "No space left on device" in warnings[0] and "written again" in warnings[1]
    # While the disk was full the file kept its last complete content: 20-fill.sh running.
    during = Scrape((ws.root / "during.prom").read_text())
    assert during.get("runner_task_running", task="20-fill.sh") == 1
    assert during.get("runner_up") == 1
    assert (ws.root / "listing").read_text().split() == ["runner.prom"]  # no temp files
    final = Scrape((ws.root / "final.prom").read_text())
    assert final.get("runner_up") == 0
    assert final.get("runner_task_last_result", task="40-free.sh", result="OK") == 1


def test_relative_path_is_written_where_it_points(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listener = MetricsListener("runner.prom", IDENTITY)
    listener.started()
    assert os.listdir(tmp_path) == ["runner.prom"]


# -- end to end: the real `runner` command ------------------------------------------
# These need MetricsListener wired into runner/commands/run.py (when metrics_file is set);
# until then they fail, because runner writes no metrics file.


def flaky_body(marker: Path) -> str:
    """Fails on its first run, passes after (the marker survives the retry)."""
    return f'if [ ! -e "{marker}" ]; then touch "{marker}"; exit 1; fi\nexit 0'


def test_e2e_metrics_of_a_retried_chain(ws):
    prom = ws.root / "runner.prom"
    ws.task("10-first.sh")
    ws.task("20-flaky.sh", flaky_body(ws.root / "flaky.marker"))
    ws.config(metrics_file=prom, sleep_time=0, retry_jitter=0)
    before = time.time()
    proc = ws.run("-n", "1")
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    got = scrape(prom)
    assert got.get("runner_up") == 0
    assert got.get("runner_exit_status") == 0
    assert got.get("runner_iteration") == 1
    assert got.get("runner_try") == 2
    flaky = {"task": "20-flaky.sh"}
    assert got.get("runner_task_last_try", **flaky) == 2
    assert got.get("runner_task_runs_total", **flaky, result="RETRY") == 1
    assert got.get("runner_task_runs_total", **flaky, result="OK") == 1
    assert got.get("runner_task_runs_total", task="10-first.sh", result="OK") == 2
    assert before <= got.get("runner_task_last_success_timestamp_seconds", **flaky) <= after
    assert [r for r, v in got.last_result("20-flaky.sh").items() if v == 1] == ["OK"]
    assert before <= got.get("runner_start_time_seconds") <= after
    assert os.listdir(ws.root).count("runner.prom") == 1
    assert not [n for n in os.listdir(ws.root) if n.startswith(".runner.prom")]


def test_e2e_halt_is_in_the_metrics(ws):
    prom = ws.root / "runner.prom"
    ws.task("halt.sh", "echo halting")
    ws.task("10-broken.sh", "exit 2")
    ws.config(metrics_file=prom)
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    got = scrape(prom)
    assert got.get("runner_exit_status") == 2
    assert [r for r, v in got.last_result("10-broken.sh").items() if v == 1] == ["HALT"]
    assert got.get("runner_task_runs_total", task="halt.sh", result="OK") == 1


def test_e2e_unwritable_metrics_file_changes_nothing(ws):
    prom = ws.root / "missing" / "runner.prom"
    ws.task("10-first.sh", "echo ran")
    ws.config(metrics_file=prom)
    proc = ws.run("-n", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count(f"metrics file {prom}: cannot write it") == 1
    assert proc.stderr.count("[10-first.sh] ran") == 2
