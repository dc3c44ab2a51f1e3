"""Log format: timestamps on a terminal or file, sd-daemon priority prefixes under journald."""

from __future__ import annotations

import os
import re
import subprocess


def _run_with_stderr_file(ws, journal: bool) -> list[str]:
    log_path = ws.root / "stderr.log"
    with open(log_path, "wb") as handle:
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal:
            st = os.fstat(handle.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run(ws.command("-n", "1"), stderr=handle, env=env, timeout=60, check=False)
    return log_path.read_text().splitlines()


def test_under_journald_every_line_has_a_priority_prefix_and_no_timestamp(ws):
    ws.task("10-ok.sh", "echo fine")
    ws.task("20-fails.sh", "exit 3")
    lines = _run_with_stderr_file(ws, journal=True)
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert "<6>[10-ok.sh] fine" in lines
    assert any(line.startswith("<4>20-fails.sh: EXIT") for line in lines), lines
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d ", line) for line in lines)


def test_journal_stream_of_another_file_is_ignored(ws):
    ws.task("10-ok.sh", "echo fine")
    log_path = ws.root / "stderr.log"
    other = os.stat(ws.cfg)
    env = {**os.environ, "JOURNAL_STREAM": f"{other.st_dev}:{other.st_ino}"}
    with open(log_path, "wb") as handle:
        subprocess.run(ws.command("-n", "1"), stderr=handle, env=env, timeout=60, check=True)
    lines = log_path.read_text().splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line)
                         for line in lines), lines


def test_config_error_under_journald_has_error_priority(ws):
    ws.config(max_tries="five")
    lines = _run_with_stderr_file(ws, journal=True)
    assert len(lines) == 1 and lines[0].startswith("<3>runner: "), lines


def test_the_text_format_of_log_lines_is_the_logging_modules_own_to_the_millisecond():
    """logs.TextFormatter works the time of the second out once per second: the lines it
    writes are the standard Formatter's, at any moment of a second and across seconds."""
    import logging as stdlib_logging

    from runner.logs import TEXT_FORMAT, TextFormatter

    ours, theirs = TextFormatter(), stdlib_logging.Formatter(TEXT_FORMAT)
    for created in (1_700_000_000.0, 1_700_000_000.0005, 1_700_000_000.9995,
                    1_700_000_001.25, 1_700_000_000.5, 1_800_000_000.999):
        record = stdlib_logging.LogRecord("runner", stdlib_logging.INFO, __file__, 1,
                                          "%s: OK", ("10-a.sh",), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.format(record) == theirs.format(record)
