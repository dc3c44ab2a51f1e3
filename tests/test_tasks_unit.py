"""Table-driven tests of the task name rules (SPEC §3)."""

import pytest

from runner.names import short_name, skip_reason


@pytest.mark.parametrize(("name", "skipped"), [
    ("10-mount.sh", False),
    ("halt.sh", False),
    ("0", False),
    ("README", False),
    (".hidden", True),
    (".", True),
    ("backup~", True),
    ("10-mount.sh.dpkg-old", True),
    ("10-mount.sh.dpkg-new", True),
    ("10-mount.sh.dpkg-dist", True),
    ("10-mount.sh.rpmnew", True),
    ("10-mount.sh.rpmsave", True),
    ("10-mount.sh.swp", True),
    ("dpkg-old", False),
    ("x.rpmnew.sh", False),
])
def test_name_filter(name, skipped):
    assert (skip_reason(name) is not None) is skipped


@pytest.mark.parametrize(("filename", "short"), [
    ("20-puppet-agent.sh", "puppet-agent"),
    ("3-buildbot.py", "buildbot"),
    ("0-check_ami.py", "check_ami"),
    ("buildbot.py", "buildbot"),
    ("buildbot", "buildbot"),
    ("halt.sh", "halt"),
    ("10-a.b.sh", "a.b"),
    ("10-", "10-"),
    ("0", "0"),
    ("reflect", "reflect"),
])
def test_short_name(filename, short):
    assert short_name(filename) == short
