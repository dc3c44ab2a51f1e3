"""`runner plan` and `runner graph`: waves, the critical path, DOT that Graphviz accepts."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from itertools import pairwise

import pytest
from conftest import RUNNER, assert_one_line_error, skip_unless

from runner import stamps
from runner.config import load
from runner.graph import critical_path, dependencies, to_dot, waves
from runner.names import short_name
from runner.settings import Frequency, TaskSettings
from runner.tasks import Plan, Task, discover

NEEDS_DOT = "runner graph --format svg needs Graphviz's dot (apt-get install graphviz)"


def task(name: str, *depends_on: str, frequency: str = "always",
         check: list[str] | None = None) -> Task:
    settings = TaskSettings(max_time=0, max_tries=1, sleep_time=0, retry_jitter=0,
                            interpreter=None, kill_grace=1, depends_on=list(depends_on),
                            check=check, frequency=Frequency(frequency))
    return Task(name, f"/tasks/{name}", short_name(name), settings)


def names(schedule: list[list[Task]]) -> list[list[str]]:
    return [[t.name for t in wave] for wave in schedule]


def diamond() -> list[Task]:
    """a -> (b, c) -> d, in plan order."""
    return [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]


def need_dot() -> str:
    dot = shutil.which("dot")
    skip_unless(dot is not None, "needs Graphviz's dot (apt-get install graphviz)")
    return dot


# -- waves --------------------------------------------------------------------------


def test_diamond_in_parallel_is_three_waves():
    assert names(waves(diamond(), 2)) == [["a"], ["b", "c"], ["d"]]
    assert names(waves(diamond(), 8)) == [["a"], ["b", "c"], ["d"]]


def test_diamond_one_at_a_time_is_the_plan_order():
    assert names(waves(diamond(), 1)) == [["a"], ["b"], ["c"], ["d"]]


def test_a_wave_holds_at_most_max_parallel_tasks():
    tasks = [task("a"), task("b"), task("c")]
    assert names(waves(tasks, 2)) == [["a", "b"], ["c"]]
    assert names(waves(tasks, 3)) == [["a", "b", "c"]]


def test_byte_order_decides_inside_a_wave():
    tasks = [task("a"), task("B"), task("2-y"), task("10-x"), task("é")]
    assert names(waves(tasks, 5)) == [["10-x", "2-y", "B", "a", "é"]]
    assert names(waves(tasks, 2)) == [["10-x", "2-y"], ["B", "a"], ["é"]]


def test_a_full_wave_leaves_ready_tasks_for_the_next_one_beside_new_ones():
    # c is ready from the start but does not fit; d becomes ready after a: both run next.
    tasks = [task("a"), task("b"), task("c"), task("d", "a")]
    assert names(waves(tasks, 2)) == [["a", "b"], ["c", "d"]]


def test_depends_on_by_short_name_or_file_name():
    tasks = [task("10-mount.sh"), task("20-fetch.sh", "mount"), task("30-run.sh", "20-fetch.sh")]
    assert dependencies(tasks) == {"10-mount.sh": set(), "20-fetch.sh": {"10-mount.sh"},
                                   "30-run.sh": {"20-fetch.sh"}}
    assert names(waves(tasks, 4)) == [["10-mount.sh"], ["20-fetch.sh"], ["30-run.sh"]]


def test_waves_refuse_a_cycle_and_a_bad_max_parallel():
    with pytest.raises(ValueError, match="cycle"):
        waves([task("a", "b"), task("b", "a")], 2)
    with pytest.raises(ValueError):
        waves(diamond(), 0)


# -- critical path -------------------------------------------------------------------


def test_critical_path_of_the_diamond():
    durations = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 1.5}
    assert critical_path(diamond(), durations) == (7.5, ["a", "b", "d"])
    assert critical_path(diamond(), {**durations, "c": 10.0}) == (12.5, ["a", "c", "d"])


def test_critical_path_details():
    assert critical_path([], {}) == (0.0, [])
    # Independent tasks: the longest one alone; a tie goes to the first in byte order.
    assert critical_path([task("x"), task("y")], {"x": 2, "y": 3}) == (3.0, ["y"])
    assert critical_path([task("x"), task("y")], {"x": 3, "y": 3}) == (3.0, ["x"])
    # Durations by short name; a task without one counts 0.
    tasks = [task("10-a.sh"), task("20-b.sh", "a")]
    assert critical_path(tasks, {"a": 1, "20-b.sh": 2}) == (3.0, ["10-a.sh", "20-b.sh"])
    assert critical_path(tasks, {"b": 4}) == (4.0, ["10-a.sh", "20-b.sh"])


# -- DOT -----------------------------------------------------------------------------

_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(->)|([{}\[\];,=])|([A-Za-z0-9_.#]+))', re.S)


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict]]]:
    """A tiny DOT reader for what to_dot writes: node id -> attributes, and edges.

    Ids and values are unquoted as DOT does (only \\" is an escape in an id)."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        assert match, f"cannot read DOT at {text[pos:pos + 40]!r}"
        quoted, arrow, punct, word = match.groups()
        # A quoted id is never a keyword: "node" is a node, node [...] sets defaults.
        tokens.append(("quoted", quoted[1:-1].replace('\\"', '"')) if quoted
                      else ("id", word) if word else ("p", arrow or punct))
        pos = match.end()
    assert tokens[:3] == [("id", "digraph"), ("id", "runner"), ("p", "{")], tokens[:3]
    assert tokens[-1] == ("p", "}")
    nodes: dict[str, dict[str, str]] = {}
    edges: list[tuple[str, str, dict]] = []
    statements: list[list[tuple[str, str]]] = [[]]
    for token in tokens[3:-1]:
        if token == ("p", ";"):
            statements.append([])
        else:
            statements[-1].append(token)
    for statement in filter(None, statements):
        attrs: dict[str, str] = {}
        if ("p", "[") in statement:
            start = statement.index(("p", "["))
            body, statement = statement[start + 1:-1], statement[:start]
            for i in range(0, len(body), 4):
                key, eq, value = body[i:i + 3]
                assert eq == ("p", "="), body
                attrs[key[1]] = value[1]
        if len(statement) == 1 and statement[0] in (("id", "node"), ("id", "edge")):
            continue
        if len(statement) == 3 and statement[1] == ("p", "->"):
            edges.append((statement[0][1], statement[2][1], attrs))
            continue
        if len(statement) == 3 and statement[1] == ("p", "="):  # rankdir=LR
            continue
        assert len(statement) == 1 and statement[0][0] in ("id", "quoted"), statement
        assert statement[0][1] not in nodes, f"node {statement[0][1]!r} declared twice"
        nodes[statement[0][1]] = attrs
    for tail, head, _attrs in edges:
        assert tail in nodes and head in nodes, (tail, head)
    return nodes, edges


def unescape_id(text: str) -> str:
    """An id as written (after DOT's own unquoting) -> the task name it shows."""
    return text.replace("\\\\", "\\")


def plain_edges(edges) -> set[tuple[str, str]]:
    return {(unescape_id(t), unescape_id(h)) for t, h, a in edges if a.get("style") != "dashed"}


def dashed_edges(edges) -> set[tuple[str, str]]:
    return {(unescape_id(t), unescape_id(h)) for t, h, a in edges if a.get("style") == "dashed"}


def diamond_plan(tasks: list[Task] | None = None) -> Plan:
    return Plan("/tasks", tasks or diamond(), task("halt.sh"), "halt.sh")


def test_dot_of_the_diamond_in_parallel():
    nodes, edges = parse_dot(to_dot(diamond_plan(), {}, max_parallel=2))
    assert set(nodes) == {"a", "b", "c", "d", "halt.sh"}
    assert plain_edges(edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    assert dashed_edges(edges) == set()
    assert nodes["halt.sh"]["shape"] == "octagon"
    assert not any("halt.sh" in (t, h) for t, h, _ in edges)
    assert nodes["a"].get("shape") is None  # the default box


def test_dot_one_at_a_time_draws_the_implicit_order_dashed():
    _nodes, edges = parse_dot(to_dot(diamond_plan(), {}, max_parallel=1))
    assert plain_edges(edges) == {("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")}
    # a -> b and c -> d are explicit; only b runs before c because of the order.
    assert dashed_edges(edges) == {("b", "c")}
    assert len(edges) == 5


def test_dot_marks_frequency_check_and_skipped_tasks():
    tasks = [task("a", frequency="once"), task("b", "a", check=["test", "-e", "/x"]),
             task("c", frequency="per-boot")]
    plan = diamond_plan(tasks)
    nodes, _edges = parse_dot(to_dot(plan, {"a": "once: succeeded at 2026-01-01T00:00:00Z"}))
    assert nodes["a"]["label"] == "a\\n[once]\\nskip: once: succeeded at 2026-01-01T00:00:00Z"
    assert nodes["a"]["fillcolor"] == "grey85"
    assert nodes["b"]["label"] == "b\\n[check]"
    assert nodes["c"]["label"] == "c\\n[per-boot]"
    assert "fillcolor" not in nodes["b"] and "fillcolor" not in nodes["c"]


def test_dot_without_a_halt_task_or_tasks():
    nodes, edges = parse_dot(to_dot(Plan("/tasks", [], None, "halt.sh"), {}))
    assert nodes == {} and edges == []


WEIRD = ['say "hi"', "two words", "back\\slash", "trailing\\", "ünïcødé-任务.sh",
         "new\nline", "new\\x0aline", "bad-\udcff-byte", "edge", "node"]


def weird_plan() -> Plan:
    tasks = [task(WEIRD[0])] + [task(name, WEIRD[i]) for i, name in enumerate(WEIRD[1:])]
    return Plan("/tasks", tasks, task('halt "now"'), 'halt "now"')


def expected_weird_names() -> list[str]:
    # runner.escape's rule, as in the log: a newline is \n, a byte that is not UTF-8 \xNN
    # and a backslash \\, so a name that spells another one's escape stays apart.
    shown = [n.replace("\\", "\\\\").replace("\n", "\\n").replace("\udcff", "\\xff")
             for n in WEIRD]
    assert len(set(shown)) == len(shown)
    return [*shown, 'halt "now"']


def test_dot_quotes_and_escapes_names():
    text = to_dot(weird_plan(), {}, max_parallel=2)
    text.encode("utf-8")  # no lone surrogates left
    nodes, edges = parse_dot(text)
    shown = expected_weird_names()
    assert sorted(map(unescape_id, nodes)) == sorted(shown)
    assert plain_edges(edges) == set(pairwise(shown[:-1]))


def test_graphviz_reads_the_names_back():
    dot = need_dot()
    proc = subprocess.run([dot, "-Tjson"], input=to_dot(weird_plan(), {}, 2).encode(),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    drawn = json.loads(proc.stdout)
    names_by_id = {o["_gvid"]: unescape_id(o["name"]) for o in drawn["objects"]}
    shown = expected_weird_names()
    assert sorted(names_by_id.values()) == sorted(shown)
    edges = {(names_by_id[e["tail"]], names_by_id[e["head"]]) for e in drawn["edges"]}
    assert edges == set(pairwise(shown[:-1]))


# -- the commands --------------------------------------------------------------------


def diamond_dir(ws, max_parallel: int = 2, **runner: object) -> None:
    for name in ("10-a.sh", "20-b.sh", "30-c.sh", "40-d.sh", "halt.sh"):
        ws.task(name)
    ws.config("[b]\ndepends_on = a\nfrequency = once\n[c]\ndepends_on = 10-a.sh\n"
              "check = test -e /nonexistent\n[d]\ndepends_on = b, c\n",
              max_parallel=max_parallel, **runner)


def test_plan_shows_the_waves(ws):
    diamond_dir(ws)
    proc = ws.run("plan")
    assert proc.returncode == 0, proc.stderr
    assert "max_parallel: 2" in proc.stdout
    waves_shown = re.findall(r"^wave (\d+): (.*)$", proc.stdout, re.M)
    assert waves_shown == [("1", "10-a.sh"), ("2", "20-b.sh [once], 30-c.sh [check]"),
                           ("3", "40-d.sh")]
    assert re.search(r"^halt task: +halt\.sh \(", proc.stdout, re.M)
    assert "reboot" not in proc.stdout


def test_plan_one_at_a_time_numbers_the_tasks(ws):
    diamond_dir(ws, max_parallel=1, reboot_task="reboot.sh")
    ws.task("reboot.sh")
    proc = ws.run("plan")
    assert proc.returncode == 0, proc.stderr
    assert "max_parallel: 1" in proc.stdout
    assert re.findall(r"^ +(\d+)\. (\S+)", proc.stdout, re.M) == [
        ("1", "10-a.sh"), ("2", "20-b.sh"), ("3", "30-c.sh"), ("4", "40-d.sh")]
    assert "wave" not in proc.stdout
    assert re.search(r"^reboot task: +reboot\.sh \(", proc.stdout, re.M)


def test_plan_json(ws):
    diamond_dir(ws)
    proc = ws.run("plan", "--json")
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert document["max_parallel"] == 2
    assert document["halt"] == "halt.sh"
    assert document["reboot"] is None
    assert [[t["task"] for t in wave] for wave in document["waves"]] == [
        ["10-a.sh"], ["20-b.sh", "30-c.sh"], ["40-d.sh"]]
    b, c = document["waves"][1]
    assert b == {"task": "20-b.sh", "depends_on": ["10-a.sh"], "skip": None,
                 "frequency": "once", "check": None}
    assert c["check"] == "test -e /nonexistent" and c["frequency"] == "always"
    assert document["waves"][2][0]["depends_on"] == ["20-b.sh", "30-c.sh"]


def record_success(ws, name: str) -> None:
    """Stamp a task as the run does after it succeeded."""
    config = load(str(ws.cfg))
    plan = discover(config, str(ws.tasks))
    (the_task,) = [t for t in plan.tasks if t.name == name]
    recorder = stamps.Stamps(config.runner.state_dir, config, boot_id="boot",
                             instance_id=lambda: None)
    recorder.record(the_task)
    assert recorder.skip_reason(the_task), "the stamp was not written"


def test_plan_and_graph_show_tasks_skipped_by_frequency(ws):
    diamond_dir(ws)
    record_success(ws, "20-b.sh")
    proc = ws.run("plan", "--json")
    assert proc.returncode == 0, proc.stderr
    skips = {t["task"]: t["skip"] for wave in json.loads(proc.stdout)["waves"] for t in wave}
    assert skips["20-b.sh"].startswith("once: succeeded at ")
    assert [name for name, skip in skips.items() if skip] == ["20-b.sh"]
    proc = ws.run("plan")
    assert "20-b.sh [once, skip]" in proc.stdout
    assert re.search(r"^ +skip 20-b\.sh: once: succeeded at ", proc.stdout, re.M)
    proc = ws.run("plan", "-D", "runner.max_parallel=1")
    assert re.search(r"^ +2\. 20-b\.sh \[once, skip\] +skip: once: succeeded", proc.stdout,
                     re.M)
    nodes, _edges = parse_dot(ws.run("graph").stdout)
    assert nodes["20-b.sh"]["fillcolor"] == "grey85"
    assert "fillcolor" not in nodes["30-c.sh"]


def test_graph_prints_dot_that_graphviz_draws(ws):
    diamond_dir(ws)
    proc = ws.run("graph")
    assert proc.returncode == 0, proc.stderr
    nodes, edges = parse_dot(proc.stdout)
    assert set(nodes) == {"10-a.sh", "20-b.sh", "30-c.sh", "40-d.sh", "halt.sh"}
    assert plain_edges(edges) == {("10-a.sh", "20-b.sh"), ("10-a.sh", "30-c.sh"),
                                  ("20-b.sh", "40-d.sh"), ("30-c.sh", "40-d.sh")}
    assert '"10-a.sh" -> "20-b.sh";' in proc.stdout
    dot = need_dot()
    svg = subprocess.run([dot, "-Tsvg"], input=proc.stdout, capture_output=True, text=True,
                         timeout=60)
    assert svg.returncode == 0 and svg.stderr == "", svg.stderr
    assert "<svg" in svg.stdout


def test_graph_of_a_sequential_chain_has_the_dashed_order(ws):
    diamond_dir(ws, max_parallel=1)
    proc = ws.run("graph")
    assert proc.returncode == 0, proc.stderr
    _nodes, edges = parse_dot(proc.stdout)
    assert dashed_edges(edges) == {("20-b.sh", "30-c.sh")}


def test_graph_format_svg(ws):
    need_dot()
    diamond_dir(ws)
    ws.task('30-we"ird näme')
    proc = subprocess.run(ws.command("graph", "--format", "svg"), capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    svg = proc.stdout.decode("utf-8")
    assert "<svg" in svg and "</svg>" in svg
    assert "30&#45;we&quot;ird näme" in svg
    assert "10&#45;a.sh&#45;&gt;20&#45;b.sh" in svg  # the title of an edge


def test_graph_format_svg_without_dot_is_one_line_and_exit_1(ws):
    diamond_dir(ws)
    env = {**os.environ, "PATH": "/nonexistent"}
    # RUNNER is an absolute path whose #! line names the venv's python: no PATH needed.
    proc = ws.run("graph", "--format", "svg", env=env)
    assert_one_line_error(proc, NEEDS_DOT, status=1)
    assert proc.stdout == ""
    assert proc.stderr.strip() == NEEDS_DOT
    proc = ws.run("graph", env=env)  # DOT needs no Graphviz
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("digraph runner {")


def test_a_dependency_cycle_is_a_config_error(ws):
    ws.task("a")
    ws.task("b")
    ws.config("[a]\ndepends_on = b\n[b]\ndepends_on = a\n", max_parallel=2)
    for command in ("plan", "graph"):
        assert_one_line_error(ws.run(command), "dependency cycle")


def test_a_bad_config_or_format_is_78(ws):
    ws.task("a")
    ws.config(max_parallel=0)
    assert_one_line_error(ws.run("plan"), "max_parallel")
    assert_one_line_error(ws.run("graph"), "max_parallel")
    ws.config()
    assert_one_line_error(ws.run("graph", "--format", "png"), "--format")
    proc = ws.run("plan", "--json")
    assert proc.returncode == 0, proc.stderr


def test_options_before_the_command_word(ws):
    diamond_dir(ws)
    # --format takes a value, so `svg`/`dot` is not taken for the command word.
    proc = subprocess.run([RUNNER, "--format", "dot", "-c", str(ws.cfg), "graph", str(ws.tasks)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("digraph"), proc.stderr
