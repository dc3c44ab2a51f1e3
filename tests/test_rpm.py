"""The .rpm: built from the sdist by packaging/build-rpm.sh, checked with rpm itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import skip_unless

import runner

# Slow as a whole: the first test to run builds the package.
pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SITE = r"/usr/lib/python3[.\d]*/(site|dist)-packages"


def rpm_q(package: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(package)], capture_output=True, text=True,
                          check=True, timeout=60).stdout


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    skip_unless(shutil.which("rpmbuild") is not None,
                "rpmbuild is not installed (Debian package rpm)")
    out = tmp_path_factory.mktemp("rpm")
    proc = subprocess.run([str(ROOT / "packaging/build-rpm.sh"), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.parent == out and path.is_file(), proc.stdout
    return path


def test_version_from_runner_init_and_noarch(package):
    assert rpm_q(package, "--queryformat", "%{VERSION} %{ARCH} %{LICENSE}") == (
        f"{runner.__version__} noarch MPL-2.0")
    assert package.name.startswith(f"runner-{runner.__version__}-")
    spec = (ROOT / "runner.spec").read_text()
    assert runner.__version__ not in spec, "the spec must not hard-code the version"


def test_files_are_where_they_belong(package):
    files = set(rpm_q(package, "-l").split())
    for path in ("/usr/bin/runner", "/usr/bin/runner-config",
                 "/usr/lib/systemd/system/runner.service",
                 "/etc/runner", "/etc/runner/runner.cfg",
                 "/etc/runner/tasks.d", "/etc/runner/tasks.d/halt.sh", "/var/lib/runner"):
        assert path in files, (path, sorted(files))
    for man in ("man1/runner-config.1", "man5/runner.cfg.5", "man8/runner.8"):
        assert any(re.fullmatch(rf"/usr/share/man/{re.escape(man)}(\.gz|\.xz|\.bz2)?", f)
                   for f in files), (man, sorted(files))
    for module in ("__init__.py", "cli.py", "getconf.py", "configspec.ini",
                   "commands/run.py"):
        assert any(re.fullmatch(rf"{SITE}/runner/{re.escape(module)}", f) for f in files), (
            module, sorted(files))
    # The commands are scripts built by setup.py (no console-script entry points).
    assert any(re.fullmatch(rf"{SITE}/runner-{re.escape(runner.__version__)}\.dist-info/"
                            r"METADATA", f) for f in files), sorted(files)
    assert not [f for f in files if f.startswith("/usr/local") or "direct_url" in f], files


def test_the_config_file_is_readable_by_root_only(package):
    # runner.cfg is where journal_url and its password go (README: Safe defaults).
    listing = rpm_q(package, "-lv").splitlines()
    [line] = [entry for entry in listing if entry.endswith(" /etc/runner/runner.cfg")]
    mode, _links, owner, group = line.split()[:4]
    assert (mode, owner, group) == ("-rw-r-----", "root", "root"), line


def test_config_files_requires_and_scriptlets(package):
    assert sorted(rpm_q(package, "--configfiles").split()) == [
        "/etc/logrotate.d/runner", "/etc/runner/runner.cfg", "/etc/runner/tasks.d/halt.sh"]
    requires = {line.split()[0] for line in rpm_q(package, "--requires").splitlines()}
    for dep in ("python3", "python3-configobj", "python3-daemon", "python3-sdnotify"):
        assert dep in requires, requires
    scripts = rpm_q(package, "--scripts")
    for scriptlet in ("postinstall", "preuninstall", "postuninstall"):
        assert f"{scriptlet} scriptlet" in scripts, scripts
    for tag in ("POSTIN", "PREUN", "POSTUN"):
        assert "runner.service" in rpm_q(package, "--queryformat", f"%{{{tag}}}"), scripts


def _run_scriptlet(package: Path, tag: str, arg: int, tmp_path: Path, systemd: bool) -> list:
    """Run one scriptlet with rpm's argument ($1) against a fake systemctl; its calls."""
    script = rpm_q(package, "--queryformat", f"%{{{tag}}}")
    booted = tmp_path / "run-systemd-system"
    if systemd:
        booted.mkdir(exist_ok=True)
    # Fedora's macros go through systemd-update-helper; the fallback calls systemctl.
    script = script.replace("/run/systemd/system", str(booted))
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    log = tmp_path / "systemctl.log"
    log.write_text("")
    (fake / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (fake / "systemctl").chmod(0o755)
    proc = subprocess.run(["sh", "-c", script, "scriptlet", str(arg)], capture_output=True,
                          text=True, env={"PATH": f"{fake}:/usr/bin:/bin"}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    if booted.exists():
        booted.rmdir()
    return log.read_text().splitlines()


def test_scriptlets_preset_on_install_disable_on_removal_restart_on_upgrade(package,
                                                                             tmp_path):
    if "systemd-update-helper" in rpm_q(package, "--scripts"):
        pytest.skip("built with Fedora's systemd macros: they are Fedora's to test")
    run = _run_scriptlet
    assert run(package, "POSTIN", 1, tmp_path, systemd=False) == [
        "--no-reload preset runner.service"]
    assert run(package, "POSTIN", 1, tmp_path, systemd=True) == [
        "--no-reload preset runner.service", "daemon-reload"]
    assert run(package, "POSTIN", 2, tmp_path, systemd=True) == ["daemon-reload"]
    assert run(package, "PREUN", 1, tmp_path, systemd=True) == []
    assert run(package, "PREUN", 0, tmp_path, systemd=False) == [
        "--no-reload disable runner.service"]
    assert run(package, "PREUN", 0, tmp_path, systemd=True) == [
        "--no-reload disable runner.service", "stop runner.service"]
    assert run(package, "POSTUN", 1, tmp_path, systemd=True) == [
        "daemon-reload", "try-restart runner.service"]
    assert run(package, "POSTUN", 0, tmp_path, systemd=True) == ["daemon-reload"]
    assert run(package, "POSTUN", 1, tmp_path, systemd=False) == []


def test_installs_into_a_throwaway_root(package, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    # The empty root has no /bin/sh for the scriptlets (tested above): --noscripts.
    proc = subprocess.run(["rpm", "-i", "--nodeps", "--noscripts", "--root", str(root),
                           str(package)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr.lower(), proc.stderr
    entry = root / "usr/bin/runner"
    assert entry.is_file() and entry.stat().st_mode & 0o111
    text = entry.read_text()
    assert text.startswith("#!/usr/bin/python3\n"), text
    assert "runner.cli" in text, text
    assert "runner.getconf" in (root / "usr/bin/runner-config").read_text()
    halt = (root / "etc/runner/tasks.d/halt.sh").read_text()
    assert halt == (ROOT / "tasks.d/halt.sh").read_text()
    assert not re.search(r"^\s*(shutdown|poweroff|halt|systemctl)\b", halt, re.M), halt
    assert (root / "etc/runner/tasks.d/halt.sh").stat().st_mode & 0o111
    sample = subprocess.run([sys.executable, "-m", "runner.docs", "sample-config", "--packaged"],
                            capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert (root / "etc/runner/runner.cfg").read_text() == sample
    assert (root / "var/lib/runner").is_dir()
    unit = (root / "usr/lib/systemd/system/runner.service").read_text()
    assert unit == (ROOT / "packaging/runner.service").read_text()
