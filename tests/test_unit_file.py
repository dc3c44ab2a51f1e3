"""packaging/runner.service: valid for systemd and consistent with runner's defaults."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

from conftest import RUNNER, skip_unless

from runner.spec import load_spec

UNIT = Path(__file__).resolve().parent.parent / "packaging" / "runner.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    return parser


def seconds(value: str) -> float:
    total = 0.0
    for number, unit_name in re.findall(r"(\d+)\s*(min|s)?", value):
        total += int(number) * (60 if unit_name == "min" else 1)
    return total


def test_unit_passes_systemd_analyze_verify_without_any_warning(tmp_path):
    analyze = shutil.which("systemd-analyze")
    skip_unless(analyze is not None, "systemd-analyze is not installed (Debian package systemd)")
    # The unit as shipped, except that ExecStart points at this checkout's runner.
    text = UNIT.read_text().replace("ExecStart=/usr/bin/runner", f"ExecStart={RUNNER}")
    (tmp_path / "runner.service").write_text(text)
    proc = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / "runner.service")],
                          capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and only prints them: any output is a failure.
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_unit_is_type_notify_and_lets_runner_stop_its_tasks():
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"
    assert service["ExecStart"].startswith("/usr/bin/runner ")
    kill_grace = load_spec().sections["runner"]["kill_grace"].default
    # runner needs kill_grace to stop a task, plus time for the after-hook.
    assert seconds(service["TimeoutStopSec"]) >= kill_grace + 30
    assert set(service["RestartPreventExitStatus"].split()) == {"1", "2", "3", "78"}
    assert set(service["SuccessExitStatus"].split()) == {"130", "143"}
    assert unit()["Unit"]["After"] == "network-online.target"
