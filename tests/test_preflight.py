"""What a run needs before it starts (runner/preflight.py): `runner check` and `runner run`
refuse a task_cwd or interpreter every task would fail with, in one line and exit 78;
commands only some runs need are warnings. And config lines split only on \\n."""

from __future__ import annotations

from conftest import assert_one_line_error


def test_check_refuses_a_task_cwd_that_does_not_exist(ws):
    ws.task("10-a.sh")
    ws.config(task_cwd=str(ws.root / "gone"))
    line = assert_one_line_error(ws.run("check"), "[runner] task_cwd", "does not exist")
    assert f"{ws.cfg}:" in line  # names the file and line


def test_run_refuses_a_task_cwd_that_is_a_file_before_any_task_runs(ws):
    ws.task("10-a.sh", 'touch "$RUNNER_STATE_DIR/ran"')
    (ws.root / "file").write_text("")
    ws.config(task_cwd=str(ws.root / "file"))
    proc = ws.run("-n", "1")
    assert proc.returncode == 78, proc.stderr
    assert "[runner] task_cwd" in proc.stderr and "is not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (ws.state / "ran").exists()


def test_check_refuses_an_interpreter_that_cannot_be_executed(ws):
    ws.task("10-a.sh")
    ws.config(interpreter="/nonexistent/python9")
    assert_one_line_error(ws.run("check"), "[runner] interpreter: /nonexistent/python9",
                          "not an executable command")


def test_a_task_section_interpreter_is_checked_too(ws):
    ws.task("10-a.sh")
    ws.config("[a]\ninterpreter = no-such-interpreter-here\n")
    assert_one_line_error(ws.run("check"), "[a] interpreter: no-such-interpreter-here")


def test_check_warns_of_a_check_command_and_a_hook_that_cannot_run(ws):
    ws.task("10-a.sh")
    ws.config("[a]\ncheck = /nonexistent/is-done\n", task_hook="/nonexistent/hook")
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    assert "warning: [a] check: /nonexistent/is-done is not an executable command" in proc.stderr
    assert "warning: [runner] task_hook: /nonexistent/hook is not an executable" in proc.stderr


def test_check_warns_of_a_halt_task_that_is_not_executable(ws):
    ws.task("10-a.sh")
    halt = ws.tasks / "halt.sh"
    halt.write_text("#!/bin/sh\necho halting\n")
    halt.chmod(0o644)
    ws.config()
    proc = ws.run("check")
    assert proc.returncode == 0, proc.stderr
    assert f"warning: [runner] halt_task: {halt} is not executable" in proc.stderr


def test_a_form_feed_or_u0085_in_a_value_neither_splits_it_nor_shifts_line_numbers(ws):
    ws.task("10-a.sh")
    ws.cfg.write_text(
        f"[runner]\nstate_dir = {ws.state}\n[hg]\nmirrors = a\fb\nnote = x\u0085y\n"
        "[more]\nmax_tries = many\n[runner]\nsleep_time = bad\n", encoding="utf-8")
    line = assert_one_line_error(ws.run("check"), "duplicate")
    assert f"{ws.cfg}:8:" in line  # the second [runner] is line 8 of the file
    ws.cfg.write_text(f"[runner]\nstate_dir = {ws.state}\nmax_tries = a\u2028b\n",
                      encoding="utf-8")
    assert_one_line_error(ws.run("check"), f"{ws.cfg}:3:", "max_tries")


def test_values_keep_a_form_feed_and_u0085_as_the_original_did(ws):
    ws.cfg.write_text(f"[runner]\nstate_dir = {ws.state}\n[hg]\nmirrors = a\fb\n"
                      "note = x\u0085y\n", encoding="utf-8")
    get = ws.run("-g", "hg.mirrors", tasks=False)
    assert get.returncode == 0 and get.stdout == "a\fb\n", get
    note = ws.run("-g", "hg.note", tasks=False)
    assert note.returncode == 0 and note.stdout == "x\u0085y\n", note


def test_the_halt_task_still_runs_when_task_cwd_went_away_under_runner(ws):
    work = ws.root / "work"
    work.mkdir()
    ws.task("10-breaks.sh", f"rmdir '{work}'; exit 2")
    ws.task("halt.sh", 'pwd > "$RUNNER_STATE_DIR/halted-in"')
    ws.config(task_cwd=str(work))
    proc = ws.run("-n", "1")
    assert proc.returncode == 2, proc.stderr
    assert (ws.state / "halted-in").read_text() == "/\n"
    assert f"task_cwd {work} does not exist: running halt task halt.sh in /" in proc.stderr
