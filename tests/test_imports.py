"""The runner package has no import cycle: each module can be read (and moved) on its own.

Every import of a runner module counts, at module level or inside a function (a lazy
import still ties the two modules together), relative or absolute. Two kinds do not:
- under `if TYPE_CHECKING:`: they never run, and annotations may need them both ways;
- under `if __name__ == "__main__":`: that code runs only when the file is the program,
  as the module `__main__`, which nothing imports (lookup.py, run as a script, hands
  over to runner.getconf, which imports runner.lookup: a second module, whose own
  `__main__` block does not run).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import runner

PACKAGE = Path(runner.__file__).parent


def module_name(path: Path) -> str:
    parts = ["runner", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main(test: ast.expr) -> bool:
    """`__name__ == "__main__"`, alone or as one term of an `and`."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main(value) for value in test.values)
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` or `if __name__ == "__main__":`
    (their `else:` runs when the module is imported: it counts)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and (_is_type_checking(node.test) or _is_main(node.test)):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The runner modules `name` imports: `from . import x` names the module x when there
    is one, else (a name defined in the package) the package itself."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            targets = [f"{parent}.{alias.name}" if f"{parent}.{alias.name}" in known
                       else parent for alias in node.names]
        else:
            continue
        for target in targets:
            # `import runner.a.b` runs runner.a.b (and its packages: those are not cycles
            # of ours unless their __init__ imports back, which its own edges show).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = modules()
    known = set(paths)
    return {name: imports_of(name, path, known) - {"runner"} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search, in name order so the
    message is the same every run."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child):], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_the_runner_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker itself: relative, absolute, lazy and TYPE_CHECKING imports."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"
        "from .c import thing\n"
        "import runner.d\n"
        "from runner import e as alias\n"
        "def lazy():\n"
        "    from .f import g\n"
        "if TYPE_CHECKING:\n"
        "    from .h import Type\n"
        "else:\n"
        "    from . import i\n"
        "if __name__ == '__main__' and ready():\n"
        "    from runner.j import entry\n"
    )
    path = tmp_path / "a.py"
    path.write_text(source)
    known = {f"runner.{x}" for x in "abcdefhij"} | {"runner"}
    assert imports_of("runner.a", path, known) == {
        "runner.b", "runner.c", "runner.d", "runner.e", "runner.f", "runner.i"}
    cycle = find_cycle({"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}})
    assert cycle == ["x", "y", "z", "x"]
    assert find_cycle({"x": {"y"}, "y": set(), "w": {"x", "y"}}) is None


def test_a_subpackage_resolves_relative_imports(tmp_path):
    path = tmp_path / "ctl.py"
    path.write_text("from .. import config\nfrom ..tasks import Plan\nfrom . import run\n")
    known = {"runner", "runner.config", "runner.tasks", "runner.commands",
             "runner.commands.run", "runner.commands.ctl"}
    assert imports_of("runner.commands.ctl", path, known) == {
        "runner.config", "runner.tasks", "runner.commands.run"}


RUN_MACHINERY = ("runner.supervisor", "runner.scheduler", "runner.tasklife", "runner.process",
                 "runner.reaper", "runner.commands.check", "runner.preflight")


def _loaded_by(tmp_path, argv, *, runs=2):
    """The modules `runner ARGV` (runner.cli.main, as the console script calls it) has
    imported when it ends; the last of `runs` runs, so runner.confcache is warm."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    probe = (
        "import sys\n"
        f"sys.argv = ['runner', *{argv!r}]\n"
        "from runner import cli\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    env = {**os.environ, "RUNNER_CACHE_DIR": str(cache), "COLUMNS": "80"}
    for _ in range(runs):
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=60, env=env)
    return set(proc.stderr.splitlines()[-1].split()), proc


def _config(tmp_path):
    cfg = tmp_path / "runner.cfg"
    cfg.write_text(f"[runner]\nstate_dir = {tmp_path}/state\nruntime_dir = {tmp_path}/run\n")
    return str(cfg)


def _journal_and_status(tmp_path):
    """What a runner that ran once and exited leaves for `runner status` and `history` to
    read: a journal with its run and a task run, and its last status file."""
    from runner import journalfile

    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    conn = journalfile.connect(str(tmp_path / "state" / journalfile.FILE_NAME))
    started = "2026-11-23T10:00:00.000Z"
    run = {"run_id": "r1", "host": "h", "boot_id": "b", "pid": 1, "started_at": started,
           "ended_at": started, "result": "DONE", "exit_status": 0}
    task_run = {"run_id": "r1", "seq": 1, "host": "h", "iteration": 1, "try_num": 1,
                "max_tries": 1, "task": "10-noop", "kind": "task", "result": "OK",
                "exit_code": 0, "started_at": started, "ended_at": started,
                "duration_s": 0.01}
    for op in (journalfile.insert("runs", run), journalfile.insert("task_runs", task_run)):
        conn.execute(*op)
    conn.close()
    (tmp_path / "run" / "status.json").write_text(
        '{"run_id": "r1", "pid": 1, "pid_start": 1, "boot_id": "b", "state": "finished", '
        '"started_at": "2026-11-23T10:00:00.000Z", "journal": {"ok": true}}\n')


@pytest.mark.parametrize("command", [["status"], ["history", "--limit", "20"],
                                     ["ctl", "pause"]])
def test_light_commands_do_not_import_the_run_machinery(tmp_path, command):
    """What an operator types often starts fast: `runner status`, `history` and `ctl`
    import nothing that runs tasks (issue 17)."""
    loaded, proc = _loaded_by(tmp_path, ["-c", _config(tmp_path), *command])
    assert "runner.cli" in loaded, (proc.stdout, proc.stderr)
    assert not loaded & set(RUN_MACHINERY), sorted(loaded & set(RUN_MACHINERY))


# What each command people type must not import (issue 17): the full parser, configobj
# while runner.confcache knows the answer, and what only other commands need.
FULL_PARSER = {"argparse", "runner.arguments"}
PARSING = {"configobj", "validate", "runner.config", "runner.spec", "runner.dialect",
           "runner.settings"}
# What writes the journal and the status file, takes the lock or identifies a run, and
# what that imports: none of it is a reader's.
WRITERS = {"logging", "dataclasses", "inspect", "socket", "uuid", "typing", "enum",
           "threading", "runner.journalfile", "runner.journal", "runner.livestatus",
           "runner.instance", "runner.identity", "runner.states", "runner.tasks",
           "runner.usage", "runner.events", "runner.masking", "runner.files",
           "runner.escape", "runner.names"}
LIGHT_IMPORTS = {
    "--help": FULL_PARSER | PARSING | {"logging", "re", "json", "sqlite3", "dataclasses",
                                       "typing", "enum"},
    "ctl": FULL_PARSER | PARSING | {"logging", "re", "json", "socket", "sqlite3",
                                    "dataclasses", "typing", "enum", "runner.ctlsocket",
                                    "runner.escape", "runner.logs"},
    # The journal, the status file and the lock are read through their light rooms
    # (runner.journalread, runner.statusfile, runner.lockprobe, runner.liveness), never
    # the writers' (logging, dataclasses, socket, uuid, the task states ...): os, sqlite3
    # and datetime; the status file without json's `import re`.
    "status": FULL_PARSER | PARSING | WRITERS | {"runner.ctlsocket", "runner.logs",
                                                 "psycopg", "json", "re", "glob"},
    "history": FULL_PARSER | PARSING | WRITERS | {"runner.ctlsocket", "runner.logs",
                                                  "psycopg", "json", "re", "glob", "fcntl",
                                                  "runner.statusfile", "runner.lockprobe"},
    # Answered by runner.checkcache (the second run): nothing that checks, only what
    # replays the observations.
    "check": FULL_PARSER | PARSING | WRITERS | {
        "sqlite3", "psycopg", "runner.supervisor", "runner.scheduler", "runner.tasklife",
        "runner.process", "runner.journal", "runner.journalfile", "runner.pgjournal",
        "runner.ctlsocket", "runner.commands.check", "runner.checkrecord",
        "runner.preflight", "runner.cgroup", "runner.logs", "json", "re"},
}


@pytest.mark.parametrize("argv", [["--help"], ["ctl", "pause"], ["status"],
                                  ["history", "--limit", "20"], ["check", "TASKS"]],
                         ids=lambda argv: argv[0])
def test_each_command_people_type_imports_only_what_it_needs(tmp_path, argv):
    """A regression that pulls argparse, configobj, sqlite3 ... into a command that does
    not need them fails here, whatever it costs on this machine."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    argv = [str(tasks) if arg == "TASKS" else arg for arg in argv]
    config = [] if argv == ["--help"] else ["-c", _config(tmp_path)]
    if argv[0] in ("status", "history"):
        _journal_and_status(tmp_path)
    loaded, proc = _loaded_by(tmp_path, [*config, *argv])
    assert "runner.cli" in loaded, (proc.stdout, proc.stderr)
    if argv[0] in ("status", "history"):  # it read them: the whole answer
        assert "10-noop" in proc.stdout and proc.returncode == 0, proc
    if argv[0] == "check":
        assert proc.stdout.endswith("OK (1 warning(s))\n") and proc.returncode == 0, proc
    if argv[0] in ("--help", "ctl"):  # the whole answer, without the full parser
        assert proc.stdout.startswith("usage: runner") if argv == ["--help"] else \
            "runner is not running" in proc.stderr, proc
    wrong = loaded & LIGHT_IMPORTS[argv[0].lstrip("-") if argv[0] != "--help" else "--help"]
    assert not wrong, sorted(wrong)
