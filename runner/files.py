"""Files and directories runner makes for other programs (and users) to read."""

from __future__ import annotations

import errno
import os
import threading


def write_atomic(path: str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace `path` with `data` so a reader sees the old file or the new one, never half.

    The temporary file lives in the same directory (rename is atomic only within one
    file system), starts with a dot and ends in .tmp, which node_exporter's textfile
    collector (it reads *.prom) and most globbing readers skip. fsync before the rename,
    so a crash cannot leave an empty file (unless not `durable`: for files that do not
    outlive a boot anyway).
    """
    directory, base = os.path.split(os.path.abspath(path))
    # Named for this process and thread, so no other writer can share it; cheaper than
    # mkstemp's random names, and these files are written at every task.
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            if durable:
                os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def make_dir(path: str, mode: int) -> bool:
    """Create directory `path` (and missing parents) with exactly `mode`, whatever the umask.

    True when this call created it. A directory that already exists is left as it is: its
    mode is the administrator's choice. The mode is set through a descriptor opened with
    O_NOFOLLOW, so a symlink swapped in after mkdir cannot redirect the chmod.
    """
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        return False
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if parent == os.path.abspath(path):
            raise
        make_dir(parent, mode)
        return make_dir(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)  # mkdir's mode went through the umask
    finally:
        os.close(fd)
    return True
