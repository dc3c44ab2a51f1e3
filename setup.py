"""Packaging of runner; the version lives in runner/__init__.py only."""

import re
from pathlib import Path

from setuptools import find_packages, setup

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
    entry_points={
        "console_scripts": [
            "runner = runner.cli:entry",
            "runner-config = runner.getconf:entry",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Environment :: No Input/Output (Daemon)",
    ],
)
