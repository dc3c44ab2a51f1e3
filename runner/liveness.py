"""Whether the process behind an old record is still alive: the boot id, a process's
start time, and the two together with its pid (runner.identity re-exports them).

Imports nothing: `runner status` asks it about the runner in the status file and the
journal without importing what identifies a new run.
"""


BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str:
    try:
        with open(BOOT_ID_FILE) as file:
            return file.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it don't.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


def still_running(pid: int | None, pid_start: int | None, boot: str | None) -> bool:
    """Whether the runner that wrote a record is alive: same boot, same pid, same start time."""
    if not pid or boot != boot_id():
        return False
    start = process_start(pid)
    if start is None:
        return False
    return pid_start is None or start == pid_start
