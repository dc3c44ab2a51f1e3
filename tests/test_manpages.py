"""Man pages: generated from the configspec and the parsers, committed, and warning-free."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import skip_unless

from runner.manpages import PAGES
from runner.spec import load_spec

MAN = Path(__file__).resolve().parent.parent / "man"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_committed_page_is_what_the_generator_makes(name):
    assert (MAN / name).read_text() == PAGES[name](), "regenerate: python3 -m runner.manpages man"


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_without_warnings(name):
    man = shutil.which("man")
    skip_unless(man is not None, "man is not installed (Debian packages man-db, groff-base)")
    env = {**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"}
    proc = subprocess.run([man, "--warnings", "-l", str(MAN / name)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "SEE ALSO" in proc.stdout


def test_runner_cfg_page_documents_every_key():
    page = (MAN / "runner.cfg.5").read_text()
    spec = load_spec()
    for section in ("runner", "task"):
        for name in spec.sections[section]:
            assert f"\\fB{name.replace('-', chr(92) + '-')}\\fR = " in page, name


def test_runner_page_lists_every_option():
    page = (MAN / "runner.8").read_text().replace("\\-", "-")
    for option in ("--config", "--define", "--times", "--halt-after", "--syslog", "--get",
                   "--daemon", "--pidfile", "--log-file"):
        assert option in page, option
