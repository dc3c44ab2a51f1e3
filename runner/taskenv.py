"""The environment every task and hook gets (SPEC §3): runner's own environment, [env],
and the RUNNER_* variables, including a RUNNER_CONFIG_CMD that answers from a snapshot
of the effective configuration."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import getconf, lookup
from .config import Config
from .states import TaskRun

log = logging.getLogger("runner")


class TaskEnvironment:
    """Owns the config snapshot that RUNNER_CONFIG_CMD reads; rewrite it on every reload."""

    def __init__(self, config: Config, run_id: str = "") -> None:
        self.run_id = run_id
        runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        # The runtime directory first (tmpfs, private to the service); when it is full or
        # unwritable, the system's temporary directory rather than no snapshot at all.
        for parent in dict.fromkeys([runtime, None]):
            try:
                self.directory = Path(tempfile.mkdtemp(prefix="runner-", dir=parent))
                self.snapshot = self.directory / "config.snapshot"
                self.config_cmd = self._config_command()
                self.update(config)
                break
            except OSError as exc:
                if parent is None:
                    raise
                log.warning("%s: cannot write the configuration snapshot there (%s); "
                            "using %s", parent, exc.strerror or exc, tempfile.gettempdir())
                shutil.rmtree(getattr(self, "directory", ""), ignore_errors=True)

    def _config_command(self) -> str:
        # -I -S: no site-packages, no user paths, so the lookup costs little more than
        # the interpreter's own start; lookup.py needs only the standard library.
        parts = [sys.executable, "-I", "-S", os.path.abspath(lookup.__file__),
                 "--snapshot", str(self.snapshot)]
        if any(c.isspace() for part in parts for c in part):
            log.warning("RUNNER_CONFIG_CMD contains a path with spaces; "
                        "tasks must not split it: %s", parts)
        return " ".join(parts)

    def update(self, config: Config) -> None:
        """Write the snapshot, then switch to `config`; on OSError nothing changes."""
        temporary = self.snapshot.with_suffix(".tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(getconf.snapshot_text(config.snapshot()))
            os.replace(temporary, self.snapshot)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        self.config = config
        # Built once per config: copying os.environ decodes every variable again.
        self.base = {**os.environ, **config.env}

    def for_run(self, run: TaskRun) -> dict[str, str]:
        env = dict(self.base)
        env.update({
            "RUNNER_CONFIG_CMD": self.config_cmd,
            "RUNNER_TASK": run.task.name,
            "RUNNER_TRY": str(run.try_num),
            "RUNNER_ITERATION": str(run.iteration),
            "RUNNER_STATE_DIR": self.config.runner["state_dir"],
            "RUNNER_RUN_ID": self.run_id,
        })
        return env

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
