"""Stamps of once, per-boot and per-instance tasks: real task files and a real config in a
temporary workspace (runner.stamps directly), and `runner reset` end to end."""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Workspace, assert_one_line_error, output_of

from runner import stamps
from runner.config import load
from runner.stamps import InstanceIdUnknown, Stamps
from runner.tasks import Task, discover

AT = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


# -- helpers ---------------------------------------------------------------------------


class Warnings(logging.Handler):
    """The warnings of runner.stamps, whatever another test did to the `runner` logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def warnings() -> Iterator[Warnings]:
    logger = logging.getLogger("runner.stamps")
    handler, level = Warnings(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def setup(ws: Workspace, frequency: str, section: str = "", body: str = "echo hi",
          name: str = "20-puppet.sh", **runner: object) -> None:
    """One task, 20-puppet.sh, whose [puppet] section sets `frequency` (and `section`)."""
    ws.task(name, body)
    ws.config(f"[puppet]\nfrequency = {frequency}\n{section}", **runner)


def no_instance_id() -> str | None:
    raise AssertionError("the instance id was asked for, but no task needs it")


def open_stamps(ws: Workspace, boot_id: str = "boot-1",
                instance_id: Callable[[], str | None] = no_instance_id,
                task: str = "20-puppet.sh") -> tuple[Stamps, Task]:
    """What a new runner process sees: the config and tasks as they are now on disk."""
    config = load(str(ws.cfg))
    plan = discover(config, str(ws.tasks))
    [found] = [t for t in plan.tasks if t.name == task]
    return Stamps(config.runner.state_dir, config, boot_id=boot_id,
                  instance_id=instance_id), found


def stamp_file(ws: Workspace, name: str = "20-puppet.sh") -> Path:
    return ws.state / "stamps" / f"{name}.json"


def record(ws: Workspace, **kwargs) -> None:
    stamped, task = open_stamps(ws, **kwargs)
    stamped.record(task)


def skip_reason(ws: Workspace, **kwargs) -> str | None:
    stamped, task = open_stamps(ws, **kwargs)
    return stamped.skip_reason(task)


def instance_from_file(ws: Workspace, value: str) -> Path:
    """instance_id_command prints the file's content and counts its calls in `calls`."""
    iid = ws.root / "iid"
    iid.write_text(value + "\n")
    command = f"sh -c 'echo x >> {ws.root}/calls; cat {iid}'"
    setup(ws, "per-instance", instance_id_command=f'"{command}"')
    return iid


def from_config(ws: Workspace) -> Callable[[], str | None]:
    return functools.partial(stamps.instance_id, load(str(ws.cfg)))


# -- once ------------------------------------------------------------------------------


def test_a_once_task_is_not_skipped_before_it_succeeded(ws):
    setup(ws, "once")
    assert skip_reason(ws) is None
    assert not (ws.state / "stamps").exists()


def test_a_once_task_is_skipped_after_record_even_by_another_runner(ws):
    setup(ws, "once")
    stamped, task = open_stamps(ws)
    stamped.record(task)
    assert re.fullmatch(f"once: succeeded at {AT}", stamped.skip_reason(task) or "")
    # A new process, another boot: once means once.
    assert re.fullmatch(f"once: succeeded at {AT}", skip_reason(ws, boot_id="boot-2") or "")


def test_the_stamp_file_records_task_frequency_fingerprint_boot_and_time(ws):
    setup(ws, "once")
    stamped, task = open_stamps(ws)
    stamped.record(task)
    stamp = json.loads(stamp_file(ws).read_text())
    assert stamp["task"] == "20-puppet.sh"
    assert stamp["frequency"] == "once"
    assert stamp["fingerprint"] == stamped.fingerprint(task)
    assert re.fullmatch("[0-9a-f]{64}", stamp["fingerprint"])
    assert stamp["boot_id"] == "boot-1"
    assert stamp["instance_id"] is None  # not asked for: no_instance_id would have failed
    assert re.fullmatch(AT, stamp["at"])
    assert list((ws.state / "stamps").iterdir()) == [stamp_file(ws)]  # no temporary left


def test_editing_the_task_file_makes_a_once_task_run_again(ws):
    setup(ws, "once")
    record(ws)
    ws.task("20-puppet.sh", "echo hi again")
    assert skip_reason(ws) is None


def test_editing_the_tasks_section_makes_a_once_task_run_again(ws):
    setup(ws, "once", "version = 1\n")
    record(ws)
    assert skip_reason(ws) is not None
    setup(ws, "once", "version = 2\n")  # a key only the task reads (runner-config)
    assert skip_reason(ws) is None


def test_changing_an_effective_setting_from_runner_makes_a_once_task_run_again(ws):
    setup(ws, "once")
    record(ws)
    setup(ws, "once", max_time=5)
    assert skip_reason(ws) is None


def test_the_fingerprint_is_the_same_in_every_scope(ws):
    setup(ws, "once")
    first, task = open_stamps(ws, boot_id="boot-1")
    second, _ = open_stamps(ws, boot_id="boot-2")
    assert first.fingerprint(task) == second.fingerprint(task)


def test_a_task_file_that_cannot_be_read_is_not_stamped(ws):
    setup(ws, "once")
    stamped, task = open_stamps(ws)
    stamped.record(task)
    Path(task.path).unlink()
    assert stamped.skip_reason(task) is None


# -- per-boot and per-instance ---------------------------------------------------------


def test_a_per_boot_task_is_skipped_in_the_same_boot_and_runs_in_another(ws):
    setup(ws, "per-boot")
    record(ws, boot_id="boot-1")
    reason = skip_reason(ws, boot_id="boot-1") or ""
    assert re.fullmatch(f"per-boot: succeeded in this boot at {AT}", reason)
    assert skip_reason(ws, boot_id="boot-2") is None


def test_a_per_boot_task_runs_every_time_when_the_boot_id_is_unknown(ws, warnings):
    setup(ws, "per-boot")
    stamped, task = open_stamps(ws, boot_id="")
    stamped.record(task)
    assert stamped.skip_reason(task) is None
    assert stamped.skip_reason(task) is None
    assert len(warnings.messages) == 1 and "boot id unknown" in warnings.messages[0]


def test_a_per_instance_task_runs_again_when_the_instance_id_command_says_so(ws):
    iid = instance_from_file(ws, "i-123")
    record(ws, instance_id=from_config(ws))
    assert json.loads(stamp_file(ws).read_text())["instance_id"] == "i-123"
    reason = skip_reason(ws, instance_id=from_config(ws), boot_id="boot-2") or ""
    assert re.fullmatch(f"per-instance: succeeded on instance i-123 at {AT}", reason)
    iid.write_text("i-456\n")  # the image booted as a new instance
    assert skip_reason(ws, instance_id=from_config(ws)) is None


def test_the_instance_id_is_asked_for_lazily_and_at_most_once(ws):
    instance_from_file(ws, "i-123")
    calls = ws.root / "calls"
    stamped, task = open_stamps(ws, instance_id=from_config(ws))
    assert not calls.exists()
    stamped.record(task)
    for _ in range(3):
        assert stamped.skip_reason(task) is not None
    assert calls.read_text() == "x\n"


def test_an_unknown_instance_id_runs_the_task_with_one_warning_saying_why(ws, warnings):
    setup(ws, "per-instance", instance_id_command='"sh -c \'echo no metadata >&2; exit 3\'"')
    stamped, task = open_stamps(ws, instance_id=from_config(ws))
    stamped.record(task)
    assert stamped.skip_reason(task) is None
    assert stamped.skip_reason(task) is None
    [message] = warnings.messages
    assert "instance id unknown" in message
    assert "exited with status 3: no metadata" in message


def test_an_instance_id_command_that_prints_nothing_or_cannot_start_is_unknown(ws):
    setup(ws, "per-instance", instance_id_command="true")
    with pytest.raises(InstanceIdUnknown, match="printed nothing"):
        stamps.instance_id(load(str(ws.cfg)))
    setup(ws, "per-instance", instance_id_command=str(ws.root / "missing"))
    with pytest.raises(InstanceIdUnknown, match="cannot run it"):
        stamps.instance_id(load(str(ws.cfg)))


def test_an_instance_id_command_that_hangs_is_stopped_after_the_timeout(ws, monkeypatch):
    monkeypatch.setattr(stamps, "INSTANCE_ID_TIMEOUT", 0.3)
    setup(ws, "per-instance", instance_id_command='"sh -c \'sleep 30 & wait\'"')
    with pytest.raises(InstanceIdUnknown, match=r"did not finish within 0\.3 s"):
        stamps.instance_id(load(str(ws.cfg)))


def test_without_a_command_the_instance_id_comes_from_a_file(ws, monkeypatch):
    cloud, machine = ws.root / "cloud-iid", ws.root / "machine-id"
    monkeypatch.setattr(stamps, "CLOUD_INSTANCE_ID", str(cloud))
    monkeypatch.setattr(stamps, "MACHINE_ID", str(machine))
    config = load(str(ws.cfg))
    with pytest.raises(InstanceIdUnknown, match="no \\[runner\\] instance_id_command"):
        stamps.instance_id(config)
    machine.write_text("0123abcd\n")
    assert stamps.instance_id(config) == "0123abcd"
    cloud.write_text("i-cloud\n")
    assert stamps.instance_id(config) == "i-cloud"


# -- always, broken stamps, unwritable state ---------------------------------------------


def test_an_always_task_is_never_skipped_and_never_stamped(ws):
    setup(ws, "once")
    record(ws)
    setup(ws, "always")  # the old stamp of the once task is still there
    assert skip_reason(ws) is None
    stamp_file(ws).unlink()
    record(ws)
    assert not stamp_file(ws).exists()


def test_a_task_without_a_section_is_always(ws):
    ws.task("10-plain.sh")
    stamped, task = open_stamps(ws, task="10-plain.sh")
    assert task.settings.frequency == "always"
    stamped.record(task)
    assert stamped.skip_reason(task) is None
    assert not (ws.state / "stamps").exists()


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe", b"[1, 2]", b'{"task": 1}'])
def test_a_corrupt_stamp_is_not_a_stamp_and_warns_once(ws, warnings, content):
    setup(ws, "once")
    record(ws)
    stamp_file(ws).write_bytes(content)
    stamped, task = open_stamps(ws)
    assert stamped.skip_reason(task) is None
    assert stamped.skip_reason(task) is None
    [message] = warnings.messages
    assert "ignoring the stamp of 20-puppet.sh" in message
    stamped.record(task)  # an OK run replaces it
    assert stamped.skip_reason(task) is not None


def test_an_unwritable_state_dir_warns_once_and_raises_nothing(ws, warnings):
    blocker = ws.root / "not-a-dir"
    blocker.write_text("")
    setup(ws, "once", state_dir=blocker)
    stamped, task = open_stamps(ws)
    stamped.record(task)
    stamped.record(task)
    [message] = warnings.messages
    assert "cannot record that 20-puppet.sh succeeded" in message
    assert stamped.skip_reason(task) is None


def test_a_name_with_a_slash_never_names_a_stamp_file():
    with pytest.raises(ValueError):
        stamps.stamp_file_name("../escape")
    for bad in ("", ".", ".."):
        with pytest.raises(ValueError):
            stamps.stamp_file_name(bad)
    assert stamps.stamp_file_name("20-puppet.sh") == "20-puppet.sh.json"


# -- reset -----------------------------------------------------------------------------


def two_stamps(ws: Workspace) -> None:
    """10-mount.sh (once) and 20-puppet.sh (per-boot), both stamped."""
    ws.task("10-mount.sh")
    ws.task("20-puppet.sh")
    ws.config("[mount]\nfrequency = once\n[puppet]\nfrequency = per-boot\n",
              task_dir=ws.tasks)
    for name in ("10-mount.sh", "20-puppet.sh"):
        record(ws, task=name)


def test_reset_of_one_task_by_short_name(ws):
    two_stamps(ws)
    assert stamps.reset(str(ws.state), "puppet") == ["20-puppet.sh"]
    assert stamps.stamps(str(ws.state)) == {"10-mount.sh": "once"}
    assert stamps.reset(str(ws.state), "puppet") == []


def test_reset_of_all_tasks_and_of_nothing(ws):
    two_stamps(ws)
    assert stamps.reset(str(ws.state), "nosuch") == []
    assert stamps.reset(str(ws.state), None) == ["10-mount.sh", "20-puppet.sh"]
    assert stamps.stamps(str(ws.state)) == {}
    assert stamps.reset(str(ws.root / "never-created"), None) == []


def test_runner_reset_forgets_every_stamp(ws):
    two_stamps(ws)
    proc = ws.run("reset", tasks=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "forgot 10-mount.sh (once)\nforgot 20-puppet.sh (per-boot)\n"
    assert list((ws.state / "stamps").iterdir()) == []
    again = ws.run("reset", tasks=False)
    assert (again.returncode, again.stdout) == (0, "no stamps to forget\n")


@pytest.mark.parametrize("name", ["puppet", "20-puppet.sh"])
def test_runner_reset_task_forgets_only_that_task(ws, name):
    two_stamps(ws)
    proc = ws.run("reset", name, tasks=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "forgot 20-puppet.sh (per-boot)\n"
    assert stamps.stamps(str(ws.state)) == {"10-mount.sh": "once"}


def test_runner_reset_of_a_task_without_a_stamp_has_nothing_to_forget(ws):
    two_stamps(ws)
    ws.task("30-worker.sh")
    proc = ws.run("reset", "worker", tasks=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "no stamps to forget\n", "")


def test_runner_reset_of_an_unknown_task_exits_1_with_one_line(ws):
    two_stamps(ws)
    proc = ws.run("reset", "nosuch", tasks=False)
    assert_one_line_error(proc, "'nosuch'", str(ws.tasks), status=1)
    assert proc.stdout == ""
    assert len(stamps.stamps(str(ws.state))) == 2


# -- end to end through the supervisor ---------------------------------------------------



def history(ws: Workspace, task: str) -> list[str]:
    proc = ws.run("history", "--task", task, "--json", tasks=False)
    assert proc.returncode == 0, proc.stderr
    return [record["result"] for record in json.loads(proc.stdout)]



def test_a_once_task_runs_in_the_first_run_and_is_skipped_in_the_second(ws):
    setup(ws, "once", body="echo puppet ran")
    first = ws.run("-n", "1")
    assert first.returncode == 0, first.stderr
    assert output_of(first.stderr, "20-puppet.sh") == ["puppet ran"]
    second = ws.run("-n", "1")
    assert second.returncode == 0, second.stderr
    assert output_of(second.stderr, "20-puppet.sh") == []
    assert history(ws, "puppet") == ["OK", "SKIPPED"]



def test_editing_a_once_task_makes_the_next_run_run_it(ws):
    setup(ws, "once", body="echo first version")
    assert ws.run("-n", "1").returncode == 0
    assert output_of(ws.run("-n", "1").stderr, "20-puppet.sh") == []
    ws.task("20-puppet.sh", "echo second version")
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    assert output_of(proc.stderr, "20-puppet.sh") == ["second version"]



def test_a_per_boot_task_runs_again_after_runner_reset(ws):
    setup(ws, "per-boot", body="echo puppet ran")
    assert ws.run("-n", "1").returncode == 0
    skipped = ws.run("-n", "1")
    assert output_of(skipped.stderr, "20-puppet.sh") == []
    reset = ws.run("reset", "puppet", tasks=False)
    assert (reset.returncode, reset.stdout) == (0, "forgot 20-puppet.sh (per-boot)\n")
    again = ws.run("-n", "1")
    assert again.returncode == 0, again.stderr
    assert output_of(again.stderr, "20-puppet.sh") == ["puppet ran"]
