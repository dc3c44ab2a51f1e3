"""The .deb: built from tracked files, lintian-clean, every file where it belongs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import skip_unless

import runner

# Slow as a whole: the first test to run builds the package.
pytestmark = [pytest.mark.packaging, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _tools() -> None:
    for tool, package in (("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"),
                          ("lintian", "lintian"), ("dh_python3", "dh-python")):
        skip_unless(shutil.which(tool) is not None or Path(f"/usr/bin/{tool}").exists(),
                    f"{tool} is not installed (Debian package {package})")


def _git_checkout() -> None:
    """packaging/build-deb.sh packs the files git tracks: outside a git checkout of runner
    (an unpacked sdist or `git archive`) there is nothing to build from."""
    why = "needs a git checkout (packaging/build-deb.sh packs the files git tracks)"
    skip_unless(shutil.which("git") is not None, f"{why}: git is not installed")
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"],
                          capture_output=True, text=True, timeout=60)
    error = (proc.stderr.strip().splitlines() or [""])[-1]
    skip_unless(proc.returncode == 0, f"{why}: {ROOT}: {error}")
    top = Path(proc.stdout.strip()).resolve()
    skip_unless(top == ROOT, f"{why}: {ROOT} is not one, only inside the one at {top}")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    _tools()
    _git_checkout()
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run([str(ROOT / "packaging/build-deb.sh"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def _contents(deb: Path) -> dict[str, str]:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    files = {}
    for line in listing.splitlines():
        mode, *_rest, path = line.split(maxsplit=5)
        files[path.lstrip(".").split(" -> ")[0]] = mode
    return files


def test_version_comes_from_one_place(deb):
    changelog = (ROOT / "debian/changelog").read_text().splitlines()[0]
    assert re.match(rf"runner \({re.escape(runner.__version__)}(-\d+)?\) ", changelog)
    field = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert field.split("-")[0] == runner.__version__


def test_lintian_reports_no_error_and_no_warning(deb):
    proc = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                          capture_output=True, text=True, timeout=300)
    findings = [line for line in proc.stdout.splitlines() if re.match(r"[EW]: ", line)]
    assert proc.returncode == 0 and not findings, proc.stdout + proc.stderr


def test_files_are_where_they_belong(deb):
    files = _contents(deb)
    for path in ("/usr/bin/runner", "/usr/bin/runner-config",
                 "/usr/lib/python3/dist-packages/runner/cli.py",
                 "/usr/lib/python3/dist-packages/runner/configspec.ini",
                 "/lib/systemd/system/runner.service",
                 "/etc/runner/runner.cfg", "/etc/runner/tasks.d/halt.sh", "/var/lib/runner/",
                 "/usr/share/man/man8/runner.8.gz", "/usr/share/man/man1/runner-config.1.gz",
                 "/usr/share/man/man5/runner.cfg.5.gz", "/usr/share/doc/runner/copyright",
                 "/etc/logrotate.d/runner"):
        assert path in files, (path, sorted(files))
    assert files["/usr/bin/runner"].startswith("-rwxr-xr-x")
    assert files["/etc/runner/tasks.d/halt.sh"].startswith("-rwxr-xr-x")


def test_the_config_file_is_readable_by_root_only(deb):
    # runner.cfg is where journal_url and its password go (README: Safe defaults).
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    [line] = [entry for entry in listing if entry.endswith(" ./etc/runner/runner.cfg")]
    mode, owner = line.split()[:2]
    assert (mode, owner) == ("-rw-r-----", "root/root"), line


def test_conffiles_dependencies_and_unit_enabling(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-e", str(deb), str(tmp_path / "ctl")], check=True)
    conffiles = (tmp_path / "ctl/conffiles").read_text().split()
    assert sorted(conffiles) == ["/etc/logrotate.d/runner", "/etc/runner/runner.cfg",
                                 "/etc/runner/tasks.d/halt.sh"]
    depends = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True,
                             text=True, check=True).stdout
    for package in ("python3-configobj", "python3-daemon", "python3-sdnotify", "python3"):
        assert package in depends, depends
    postinst = (tmp_path / "ctl/postinst").read_text()
    assert "deb-systemd-helper enable 'runner.service'" in postinst


def test_shipped_halt_task_only_logs_and_config_is_the_generated_sample(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")], check=True)
    halt = (tmp_path / "root/etc/runner/tasks.d/halt.sh").read_text()
    assert not re.search(r"^\s*(shutdown|poweroff|halt|systemctl)\b", halt, re.M), halt
    config = (tmp_path / "root/etc/runner/runner.cfg").read_text()
    assert "# Generated by: python3 -m runner.docs sample-config" in config
    assert "\n# max_tries = 5\n" in config


BOOT_PROBE = """#!/bin/sh
# Waits for runner.service to run the sample chain, records what systemd saw, powers off.
out=/out/result.txt
n=0
while [ "$n" -lt 300 ]; do
    journalctl -u runner --no-pager -o cat | grep -q "machine ready" && break
    sleep 0.1; n=$((n + 1))
done
echo "state=$(systemctl show runner -p ActiveState --value)" >> "$out"
echo "enabled=$(systemctl is-enabled runner)" >> "$out"
journalctl -u runner --no-pager -o cat > /out/journal.txt
echo done >> "$out"
systemctl poweroff
"""


def test_installed_package_runs_the_chain_at_boot_and_purges_clean(deb, systemd_tree,
                                                                    tmp_path):
    from conftest import boot_guest, copy_tree, in_guest

    guest, out = tmp_path / "guest", tmp_path / "out"
    out.mkdir()
    copy_tree(systemd_tree, guest)
    before = {str(p.relative_to(guest)) for p in guest.rglob("*")}
    shutil.copy(deb, guest / "srv" / deb.name)
    # The dependencies are in the tree already: apt-get resolves them offline.
    proc = in_guest(guest, "apt-get", "install", "-y", f"/srv/{deb.name}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (guest / "srv" / deb.name).unlink()
    # A sample chain dropped in by "configuration management"; the packaged
    # runner.cfg and halt.sh stay as shipped.
    tasks = guest / "etc/runner/tasks.d"
    # The installed runner-config, as a task calls it (the running runner's snapshot).
    (tasks / "10-hello.sh").write_text("#!/bin/sh\necho hello from the package\n"
                                       "echo \"max_tries from a task: $(runner-config -g "
                                       "runner.max_tries)\"\n")
    (tasks / "30-ready.sh").write_text("#!/bin/sh\necho machine ready\nexec sleep 1000\n")
    for task in ("10-hello.sh", "30-ready.sh"):
        (tasks / task).chmod(0o755)
    probe = guest / "usr/local/sbin/probe"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_text(BOOT_PROBE)
    probe.chmod(0o755)
    units = guest / "etc/systemd/system"
    (units / "probe.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/probe\n")
    (units / "multi-user.target.wants/probe.service").symlink_to(units / "probe.service")

    boot = boot_guest(guest, out)
    result = (out / "result.txt").read_text() if (out / "result.txt").exists() else ""
    journal = (out / "journal.txt").read_text() if (out / "journal.txt").exists() else ""
    context = f"{result}\n{journal}\n{boot.stdout[-2000:]}"
    assert "done" in result, context
    assert "enabled=enabled" in result, context
    assert "state=active" in result, context
    assert "[10-hello.sh] hello from the package" in journal, context
    assert "[30-ready.sh] machine ready" in journal, context
    in_task = re.search(r"max_tries from a task: (\d+)$", journal, re.M)
    assert in_task, context
    # And as an operator types it in a shell (no snapshot: the config, then its cache).
    for _ in range(2):
        shell = in_guest(guest, "runner-config", "-g", "runner.max_tries")
        assert shell.returncode == 0 and shell.stdout.strip() == in_task[1], shell

    for path in (tasks / "10-hello.sh", tasks / "30-ready.sh", probe, units / "probe.service",
                 units / "multi-user.target.wants/probe.service"):
        path.unlink()
    proc = in_guest(guest, "apt-get", "purge", "-y", "runner")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = {str(p.relative_to(guest)) for p in guest.rglob("*")}
    left = sorted(p for p in after - before
                  if not p.startswith(("var/lib/dpkg", "var/log", "var/cache", "var/lib/apt",
                                       # written by systemd's own boot, not by runner:
                                       "var/lib/systemd/timers", "var/lib/systemd/linger",
                                       "etc/ld.so.cache", "usr/local",
                                       "tmp", "var/tmp", "root", "run", "etc/machine-id",
                                       "out")))
    assert not left, left


def test_sdist_carries_what_packages_need(tmp_path):
    proc = subprocess.run(["make", "-f", "packaging/Makefile", "sdist", f"OUT={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    tarball = tmp_path / f"runner-{runner.__version__}.tar.gz"
    names = subprocess.run(["tar", "-tzf", str(tarball)], capture_output=True, text=True,
                           check=True).stdout.split()
    prefix = f"runner-{runner.__version__}/"
    for path in ("runner/configspec.ini", "runner/cli.py", "man/runner.8", "tasks.d/halt.sh",
                 "packaging/runner.service", "packaging/runner.logrotate", "runner.spec",
                 "debian/control", "README.md"):
        assert prefix + path in names, path
