"""The typed settings are the configspec's keys, one for one, and its options are enums."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from runner import settings
from runner.config import load
from runner.settings import (
    Frequency,
    NotifyReady,
    OnFailure,
    ReadyWhen,
    RetryFrom,
    RunnerSettings,
    TaskSettings,
)
from runner.spec import load_spec

OPTION_ENUMS = {"frequency": Frequency, "retry_from": RetryFrom, "on_failure": OnFailure}


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_runner_settings_has_exactly_the_configspec_runner_keys():
    assert sorted(field_names(RunnerSettings)) == sorted(load_spec().sections["runner"])


def test_task_settings_has_exactly_the_configspec_task_keys():
    assert sorted(field_names(TaskSettings)) == sorted(load_spec().sections["task"])


@pytest.mark.parametrize("section", ["runner", "task"])
def test_every_option_key_is_an_enum_with_the_options_words(section):
    keys = load_spec().sections[section]
    options = {name: key for name, key in keys.items() if key.func == "option"}
    assert options, "the configspec has option keys"
    hints = typing.get_type_hints(RunnerSettings if section == "runner" else TaskSettings)
    for name, key in options.items():
        enum_type = OPTION_ENUMS[name]
        assert hints[name] is enum_type, name
        assert [member.value for member in enum_type] == list(key.args), name


def test_defaults_come_typed_from_the_configspec(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text("[runner]\n")
    runner = load(str(cfg)).runner
    assert runner.retry_from is RetryFrom.START
    assert runner.on_failure is OnFailure.WAIT
    assert runner.notify_ready == NotifyReady(ReadyWhen.START)
    assert runner.max_parallel == 1 and isinstance(runner.max_parallel, int)
    assert load(str(cfg)).task_settings("x").frequency is Frequency.ALWAYS


def test_written_options_become_enums(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text("[runner]\nretry_from = failed\non_failure = stop\n"
                   "notify_ready = task: 20-worker\n[10-a]\nfrequency = per-boot\n")
    config = load(str(cfg))
    assert config.runner.retry_from is RetryFrom.FAILED
    assert config.runner.on_failure is OnFailure.STOP
    assert config.runner.notify_ready == NotifyReady(ReadyWhen.TASK, "20-worker")
    assert config.task_settings("10-a").frequency is Frequency.PER_BOOT


def test_settings_are_frozen(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text("[runner]\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        load(str(cfg)).runner.max_tries = 3  # type: ignore[misc]


def test_values_show_enums_as_the_words_written_in_the_file(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text("[runner]\nnotify_ready = task:20-worker\nretry_from = failed\n")
    values = load(str(cfg)).runner.values()
    assert values["notify_ready"] == "task:20-worker"
    assert values["retry_from"] == "failed" and type(values["retry_from"]) is str
    assert set(values) == set(field_names(RunnerSettings))


def test_notify_ready_text_round_trips():
    for text in ("start", "pass", "task:10-disk"):
        assert str(NotifyReady.parse(text)) == text
    assert settings.NotifyReady.parse("task: x").task == "x"
