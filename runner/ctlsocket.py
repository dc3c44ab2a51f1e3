"""The control socket (runtime_dir/control.sock): operator commands to a running runner.

`runner ctl ACTION [TASK]` connects, sends one JSON line ``{"command": [words]}`` and
reads one JSON line ``{"ok": bool, "reply": str}``; one request per connection. The
socket is mode 0600 and the server also checks the peer with SO_PEERCRED: only root and
the user runner runs as may use it.

The server runs in a daemon thread and serves connections one at a time, each with a
short deadline, so a client that connects and says nothing delays others by at most
REQUEST_TIMEOUT seconds. It validates the action and its arguments, then calls
`handle(words)` *in the server thread*; handle returns the reply text or raises
ControlError for a refused command.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable

from .ctlwords import ControlError, check_words
from .files import make_dir

log = logging.getLogger("runner.control")

REQUEST_TIMEOUT = 2.0  # seconds a client has to send its whole request
MAX_REQUEST = 64 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class ControlServer:
    """Serves the control socket at `path` in a daemon thread (see the module docstring)."""

    def __init__(self, path: str, handle: Callable[[list[str]], str]) -> None:
        self.path = path
        self.handle = handle
        self.allowed_uids = {0, os.geteuid()}
        self.listening = False
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._thread: threading.Thread | None = None
        self._wake_r = self._wake_w = -1
        self._stopping = False

    # -- life cycle -------------------------------------------------------------

    def start(self) -> None:
        """Listen on the socket; on any problem log one warning and go on without it."""
        if self.listening:
            return
        try:
            sock = self._bind()
        except OSError as exc:
            log.warning("control socket %s: cannot listen (%s); runner ctl will not work",
                        self.path, exc.strerror or exc)
            return
        if sock is None:
            return
        self._sock = sock
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = False
        self.listening = True
        self._thread = threading.Thread(target=self._serve, name="runner-control", daemon=True)
        self._thread.start()
        log.debug("control socket %s: listening", self.path)

    def _bind(self) -> socket.socket | None:
        make_dir(os.path.dirname(self.path) or ".", 0o755)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            for _attempt in range(2):
                try:
                    sock.bind(self.path)
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE or not self._remove_stale():
                        raise
            else:
                raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
            os.chmod(self.path, 0o600)
            info = os.stat(self.path)
            self._inode = (info.st_dev, info.st_ino)
            sock.listen(8)
            sock.setblocking(False)
        except _Refused:
            sock.close()
            return None
        except BaseException:
            sock.close()
            raise
        return sock

    def _remove_stale(self) -> bool:
        """The path is taken: True after removing a dead socket; _Refused when it is live
        (or not a socket at all)."""
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return True
        if not stat.S_ISSOCK(info.st_mode):
            log.warning("control socket %s: the path exists and is not a socket; "
                        "runner ctl will not work", self.path)
            raise _Refused
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # nobody listens: a leftover of a runner that died
        except OSError as exc:
            log.warning("control socket %s: cannot tell whether another runner uses it "
                        "(%s); runner ctl will not work", self.path, exc.strerror or exc)
            raise _Refused from None
        else:
            log.warning("control socket %s: another runner is listening on it; "
                        "runner ctl will reach that one, not this one", self.path)
            raise _Refused
        finally:
            probe.close()
        log.debug("control socket %s: removing a stale socket", self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        return True

    def close(self) -> None:
        """Stop serving and remove the socket (only if it is still ours)."""
        if not self.listening:
            return
        self.listening = False
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(REQUEST_TIMEOUT + 1)
        self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        try:
            info = os.lstat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("control socket %s: cannot remove it (%s)", self.path,
                        exc.strerror or exc)
        self._inode = None

    # -- serving ----------------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                try:
                    ready = selector.select()
                except OSError:  # closed under us
                    return
                if self._stopping:
                    return
                if not any(key.fileobj is self._sock for key, _ in ready):
                    continue
                try:
                    conn, _ = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    if self._stopping:
                        return
                    log.warning("control socket %s: accept failed (%s)", self.path, exc)
                    time.sleep(0.1)  # e.g. EMFILE: do not spin
                    continue
                with conn:
                    try:
                        self._connection(conn)
                    except Exception:  # never let one client end the server
                        log.warning("control socket: a request failed", exc_info=True)

    def _connection(self, conn: socket.socket) -> None:
        conn.setblocking(True)
        uid = self._peer_uid(conn)
        allowed = uid in self.allowed_uids
        # Read the request before answering, even a refusal: a reply sent while the client
        # still writes would break its write (EPIPE) and the client might never read it.
        try:
            data = self._read_request(conn)
        except ControlError as exc:
            self._reply(conn, False, str(exc) if allowed else "permission denied")
            return
        except TimeoutError:
            log.debug("control socket: dropped a client that sent no request in time")
            self._reply(conn, False, "timed out waiting for the request")
            return
        except OSError as exc:
            log.debug("control socket: client went away (%s)", exc)
            return
        if not allowed:
            log.warning("control socket: refused a request from uid %s", uid)
            self._reply(conn, False, "permission denied")
            return
        if data is None:  # connected and closed without a word (e.g. a liveness probe)
            return
        try:
            words = self._parse(data)
            reply = self.handle(words)
        except ControlError as exc:
            self._reply(conn, False, str(exc))
            return
        except Exception as exc:
            log.error("control: %s failed", data[:200], exc_info=True)
            self._reply(conn, False, f"internal error in runner: {type(exc).__name__}: {exc}")
            return
        log.info("control: %s: %s", " ".join(words), reply)
        self._reply(conn, True, reply if isinstance(reply, str) else str(reply))

    @staticmethod
    def _peer_uid(conn: socket.socket) -> int | None:
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError:
            return None
        return _UCRED.unpack(raw)[1]

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes | None:
        """The request line (without the newline); None for a client that sent nothing."""
        deadline = time.monotonic() + REQUEST_TIMEOUT
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                if not data.strip():
                    return None
                break  # end of file ends the request too
            data += chunk
            if len(data) > MAX_REQUEST and b"\n" not in data[:MAX_REQUEST]:
                raise ControlError(f"malformed request: longer than {MAX_REQUEST} bytes")
        return data.split(b"\n", 1)[0]

    @staticmethod
    def _parse(data: bytes) -> list[str]:
        try:
            request = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ControlError("malformed request: not a JSON line") from None
        if not isinstance(request, dict) or "command" not in request:
            raise ControlError('malformed request: expected {"command": [ACTION, ...]}')
        return check_words(request["command"])

    @staticmethod
    def _reply(conn: socket.socket, ok: bool, reply: str) -> None:
        line = json.dumps({"ok": ok, "reply": reply}).encode() + b"\n"
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(line)
            conn.shutdown(socket.SHUT_WR)
        except OSError as exc:
            log.debug("control socket: cannot reply (%s)", exc)


class _Refused(Exception):
    """Another runner (or something else) holds the socket path; already logged."""


def send(path: str, words: list[str], timeout: float = 5.0) -> tuple[bool, str]:
    """Send one command; (ok, reply). OSError when runner cannot be reached
    (FileNotFoundError / ConnectionRefusedError: not running; PermissionError; TimeoutError),
    ControlError when the answer is not a reply."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        request = json.dumps({"command": list(words)}).encode() + b"\n"
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)  # a refused request still gets its reply: read it
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply within {timeout:g}s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data.split(b"\n", 1)[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        if not data:
            raise ControlError("runner closed the connection without a reply") from None
        raise ControlError("malformed reply from runner") from None
    if (not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool)
            or not isinstance(answer.get("reply"), str)):
        raise ControlError("malformed reply from runner")
    return answer["ok"], answer["reply"]
