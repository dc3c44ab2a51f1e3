"""The docs are derived from the configspec; these tests fail when they drift."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from conftest import RUNNER, output_of, started

from runner.docs import GENERATED, readme_with_table, sample_config
from runner.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent


def test_runner_cfg_is_what_the_configspec_generates():
    text = (ROOT / "runner.cfg").read_text()
    command = next(line for line in text.splitlines() if line.startswith(GENERATED))
    argv = shlex.split(command[len(GENERATED):])
    assert argv[:4] == ["python3", "-m", "runner.docs", "sample-config"]
    settings = argv[5::2]
    assert sample_config(settings) == text, "regenerate runner.cfg with the command in its header"


def test_runner_cfg_documents_every_runner_key():
    text = (ROOT / "runner.cfg").read_text()
    for name, key in load_spec().sections["runner"].items():
        assert f"\n{name} = " in text or f"\n# {name} =" in text, name
        assert key.doc and key.doc[0][:40] in text.replace("\n# ", " "), name


def test_readme_config_table_matches_the_configspec():
    readme = (ROOT / "README.md").read_text()
    assert readme_with_table(readme) == readme, "run: python3 -m runner.docs readme README.md"
    for name in load_spec().sections["runner"]:
        assert f"| `{name}` |" in readme


def test_demo_chain_from_the_repository_passes(tmp_path):
    proc = subprocess.run(
        [RUNNER, "-c", str(ROOT / "runner.cfg"), "-n", "1",
         "-D", f"runner.state_dir={tmp_path}", "-D", "runner.sleep_time=0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert started(proc.stderr) == [
        "10-hello.sh", "20-flaky.sh", "10-hello.sh", "20-flaky.sh", "30-start-worker.sh",
    ]
    assert output_of(proc.stderr, "10-hello.sh")[0].startswith("good morning from 10-hello.sh")


def test_docs_module_prints_the_table():
    proc = subprocess.run([sys.executable, "-m", "runner.docs", "config-table"],
                          capture_output=True, text=True, check=True)
    assert "| `max_tries` | integer ≥ 1 | 5 |" in proc.stdout


def test_every_module_has_its_room_in_the_readme():
    """The Architecture table names every module of the package (commands/* as a group):
    a new module says there what concern it holds."""
    root = Path(__file__).resolve().parent.parent
    text = (root / "README.md").read_text()
    table = text[text.index("### Architecture"):text.index("### Exit statuses")]
    modules = [p.stem for p in (root / "runner").glob("*.py")
               if p.stem not in ("__init__", "__main__")]
    missing = [m for m in modules if f"`{m}`" not in table]
    assert not missing, missing
    assert "`commands/*`" in table
