"""Packaging of runner; the version lives in runner/__init__.py only."""

import os
import re
from pathlib import Path

from setuptools import Distribution, find_packages, setup

# distutils' command (setuptools has none of its own): the class, however it is vendored.
build_scripts = Distribution().get_command_class("build_scripts")

# runner-config is runner/lookup.py behind the line below. Tasks call it many times, and
# a generated console script pays for site-packages (5x the interpreter's start in an
# editable venv with setuptools' import finder) and `import re` before it answers. Run
# as `python3 -S`, it answers from a snapshot or a cache without importing anything and
# imports site itself only when it has to parse. The line is sh and a Python string;
# the interpreter is the python3 beside the script (a venv's bin/, /usr/bin), else the
# first on PATH. `#!python -S` would not do: pip and installer rewrite that line whole,
# dropping the option.
SH_PREAMBLE = (
    "#!/bin/sh\n"
    """''''true; p="${0%/*}/python3"; [ -x "$p" ] || p=python3; exec "$p" -S "$0" "$@" # '''\n"""
)
LOOKUP = "runner/lookup.py"
# runner itself: what a generated console script does, without its `import re` (a fifth
# of the interpreter's start, for `runner status` and the other commands people type).
# `#!python` becomes the interpreter build_scripts names (a wheel keeps `#!python`, which
# the installer replaces), as for a console script.
RUNNER_SCRIPT = """#!python
import sys

from runner.cli import entry

if __name__ == "__main__":
    sys.exit(entry())
"""


class BuildScripts(build_scripts):
    """Build the runner-config script from runner/lookup.py, and the runner script."""

    def copy_scripts(self):
        self.mkpath(self.build_dir)
        built = []
        for name, text in (("runner-config", SH_PREAMBLE + Path(LOOKUP).read_text(
                encoding="utf-8")), ("runner", RUNNER_SCRIPT)):
            target = os.path.join(self.build_dir, name)
            if name == "runner":
                text = text.replace("#!python", f"#!{self.executable}", 1)
            if not os.path.exists(target) or Path(target).read_text(encoding="utf-8") != text:
                Path(target).write_text(text, encoding="utf-8")
            os.chmod(target, 0o755)
            built.append(target)
        return built, built


INIT = Path(__file__).with_name("runner") / "__init__.py"
VERSION = re.search(r'^__version__ = "([^"]+)"', INIT.read_text(), re.M).group(1)

setup(
    name="runner",
    version=VERSION,
    description="Bring a machine from booted to ready for work, and keep it there",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MPL-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["runner", "runner.*"]),
    package_data={"runner": ["configspec.ini"]},
    install_requires=["configobj>=5.0.8", "python-daemon>=2.3", "sdnotify>=0.3.1"],
    extras_require={
        "postgresql": ["psycopg>=3.1"],
        "test": ["pytest>=7", "ruff", "mypy", "psycopg>=3.1", "prometheus_client",
                 "hypothesis"],
    },
    scripts=[LOOKUP],  # installed as runner-config and runner (BuildScripts)
    cmdclass={"build_scripts": BuildScripts},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Environment :: No Input/Output (Daemon)",
    ],
)
