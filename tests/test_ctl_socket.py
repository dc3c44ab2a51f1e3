"""The control socket (runner.ctlsocket) over real sockets, and `runner ctl` end to end."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from runner import ctlsocket, ctlwords
from runner.ctlsocket import ControlServer, send
from runner.ctlwords import ControlError, socket_path

NOBODY = 65534


class Recorder:
    """A handler that records every command; `refuse` makes it raise ControlError."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.threads: list[str] = []
        self.refuse: str | None = None

    def __call__(self, words: list[str]) -> str:
        self.calls.append(list(words))
        self.threads.append(threading.current_thread().name)
        if self.refuse:
            raise ControlError(self.refuse)
        return "done: " + " ".join(words)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(tmp_path: Path, recorder: Recorder) -> Iterator[ControlServer]:
    srv = ControlServer(socket_path(str(tmp_path / "run")), recorder)
    srv.start()
    assert srv.listening
    yield srv
    srv.close()


def read_line(sock: socket.socket) -> bytes:
    """What the server sends up to its first newline (or until it closes)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def raw(path: str, payload: bytes, *, shut: bool = False, timeout: float = 5.0) -> dict:
    """Send raw bytes, read the one-line JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(payload)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = read_line(sock)
    assert data.endswith(b"\n") and data.count(b"\n") == 1, data
    return json.loads(data)


def still_serving(srv: ControlServer) -> None:
    assert send(srv.path, ["pause"]) == (True, "done: pause")


# -- the protocol ----------------------------------------------------------------


@pytest.mark.parametrize("words", [
    ["retry-now"], ["skip", "20-puppet.sh"], ["pause"], ["resume"], ["halt"],
])
def test_each_action_reaches_the_handler_in_the_server_thread(server, recorder, words):
    assert send(server.path, words) == (True, "done: " + " ".join(words))
    assert recorder.calls == [words]
    assert recorder.threads == ["runner-control"]


def test_a_refused_command_is_an_error_reply(server, recorder):
    recorder.refuse = "nothing to retry: no backoff in progress"
    assert send(server.path, ["retry-now"]) == (False, "nothing to retry: no backoff in progress")
    recorder.refuse = None
    still_serving(server)


def test_a_crashing_handler_is_an_error_reply_not_a_dead_server(server, recorder, caplog):
    def broken(words):
        raise RuntimeError("boom")

    server.handle = broken
    with caplog.at_level(logging.ERROR, "runner.control"):
        ok, reply = send(server.path, ["halt"])
    assert not ok and "internal error" in reply and "boom" in reply
    server.handle = recorder
    still_serving(server)


@pytest.mark.parametrize("words, fragment", [
    (["bogus"], "unknown action 'bogus' (valid: retry-now, skip TASK, pause, resume, halt)"),
    ([], "no action given"),
    (["skip"], "skip takes 1 argument(s): skip TASK"),
    (["skip", "a", "b"], "skip takes 1 argument(s)"),
    (["skip", ""], "empty argument"),
    (["pause", "now"], "pause takes no arguments"),
    (["halt", "--force"], "halt takes no arguments"),
])
def test_bad_commands_never_reach_the_handler(server, recorder, words, fragment):
    ok, reply = send(server.path, words)
    assert not ok
    assert fragment in reply
    assert recorder.calls == []
    still_serving(server)


@pytest.mark.parametrize("payload", [
    b"not json\n",
    b"\xff\xfe\x00\x01garbage\x80\n",
    b"[\"pause\"]\n",
    b"{\"verb\": [\"pause\"]}\n",
    b"{\"command\": \"pause\"}\n",
    b"{\"command\": [\"skip\", 3]}\n",
    b"{\"command\": [\"pau",
    b"\n",
])
def test_malformed_requests_get_an_error_reply_and_the_server_goes_on(server, recorder,
                                                                      payload):
    answer = raw(server.path, payload, shut=True)
    assert answer["ok"] is False
    assert "malformed request" in answer["reply"] or "no action" in answer["reply"]
    assert recorder.calls == []
    still_serving(server)


def test_a_huge_request_is_refused(server, recorder):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.path)
        try:
            sock.sendall(b"x" * (ctlsocket.MAX_REQUEST + 8192))
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = sock.recv(4096)
    assert json.loads(data)["ok"] is False
    assert b"longer than" in data
    still_serving(server)


def test_one_request_per_connection(server, recorder):
    answer = raw(server.path, b'{"command": ["pause"]}\n{"command": ["halt"]}\n')
    assert answer == {"ok": True, "reply": "done: pause"}
    assert recorder.calls == [["pause"]]


def test_a_silent_client_delays_the_next_only_until_its_timeout(server, recorder):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.connect(server.path)
        time.sleep(0.1)  # the server is now waiting for the silent client's request
        start = time.monotonic()
        assert send(server.path, ["resume"]) == (True, "done: resume")
        waited = time.monotonic() - start
        assert waited < ctlsocket.REQUEST_TIMEOUT + 1.0, waited
        silent.settimeout(1)
        reply = silent.recv(4096)  # dropped, with a word of explanation
        assert json.loads(reply) == {"ok": False,
                                     "reply": "timed out waiting for the request"}
    assert recorder.calls == [["resume"]]


def test_a_client_that_connects_and_leaves_is_ignored(server, recorder):
    for _ in range(3):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server.path)
    still_serving(server)
    assert recorder.calls == [["pause"]]


# -- the socket file ---------------------------------------------------------------


def test_socket_is_0600_and_close_removes_it(server):
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    server.close()
    assert not os.path.exists(server.path)
    with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
        send(server.path, ["pause"])
    server.close()  # twice is harmless


def test_start_creates_the_runtime_dir(tmp_path, recorder):
    srv = ControlServer(str(tmp_path / "a" / "b" / ctlwords.SOCKET_NAME), recorder)
    srv.start()
    try:
        assert send(srv.path, ["halt"]) == (True, "done: halt")
    finally:
        srv.close()


def test_a_second_server_refuses_and_leaves_the_first_working(server, recorder, caplog):
    second = ControlServer(server.path, lambda words: "the second one")
    with caplog.at_level(logging.WARNING, "runner.control"):
        second.start()
    assert not second.listening
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "another runner is listening" in warnings[0].getMessage()
    second.close()  # must not remove the first one's socket
    assert os.path.exists(server.path)
    still_serving(server)


def test_a_stale_socket_is_replaced(tmp_path, recorder):
    path = socket_path(str(tmp_path))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listening, then closed: what a crashed runner leaves
    dead.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    with pytest.raises(ConnectionRefusedError):
        send(path, ["pause"])
    srv = ControlServer(path, recorder)
    srv.start()
    try:
        assert srv.listening
        assert send(path, ["pause"]) == (True, "done: pause")
    finally:
        srv.close()


def test_a_path_that_is_not_a_socket_is_left_alone(tmp_path, recorder, caplog):
    path = tmp_path / ctlwords.SOCKET_NAME
    path.write_text("precious\n")
    srv = ControlServer(str(path), recorder)
    with caplog.at_level(logging.WARNING, "runner.control"):
        srv.start()
    assert not srv.listening
    assert "not a socket" in caplog.text
    srv.close()
    assert path.read_text() == "precious\n"


def test_an_unusable_path_is_one_warning_not_a_crash(tmp_path, recorder, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    srv = ControlServer(str(blocker / ctlwords.SOCKET_NAME), recorder)
    with caplog.at_level(logging.WARNING, "runner.control"):
        srv.start()
    assert not srv.listening
    assert len(caplog.records) == 1 and "cannot listen" in caplog.text


# -- who may use it ----------------------------------------------------------------


def _as_nobody(path: str, payload: bytes) -> tuple[str, str]:
    """Connect as uid/gid 65534 from a forked child; ("reply", line) or ("error", name)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, always _exit
        status = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(5)
            try:
                sock.connect(path)
                sock.sendall(payload)
                result = b"reply " + read_line(sock)
            except OSError as exc:
                result = b"error " + type(exc).__name__.encode()
            os.write(write_fd, result)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        output = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    kind, _, rest = output.decode().partition(" ")
    return kind, rest.strip()


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is 0700 under root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to connect as another user")
    path = Path(tempfile.mkdtemp(prefix="runner-ctl-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_another_uid_is_refused_by_peer_credentials(open_dir, recorder):
    srv = ControlServer(socket_path(str(open_dir)), recorder)
    srv.start()
    try:
        os.chmod(srv.path, 0o666)  # past the file mode: the SO_PEERCRED check must hold
        kind, line = _as_nobody(srv.path, b'{"command": ["halt"]}\n')
        assert kind == "reply", line
        assert json.loads(line) == {"ok": False, "reply": "permission denied"}
        assert recorder.calls == []
        still_serving(srv)
    finally:
        srv.close()


def test_another_uid_cannot_even_connect_through_the_0600_socket(open_dir, recorder):
    srv = ControlServer(socket_path(str(open_dir)), recorder)
    srv.start()
    try:
        assert _as_nobody(srv.path, b'{"command": ["halt"]}\n') == ("error", "PermissionError")
        assert recorder.calls == []
    finally:
        srv.close()


# -- runner ctl --------------------------------------------------------------------


@pytest.fixture
def ws_server(ws, recorder) -> Iterator[ControlServer]:
    """A control server where `runner -c ws.cfg ctl` looks for it."""
    srv = ControlServer(socket_path(str(ws.root / "run")), recorder)
    srv.start()
    assert srv.listening
    yield srv
    srv.close()


def test_ctl_prints_the_reply_and_exits_0(ws, ws_server, recorder):
    proc = ws.run("ctl", "pause", tasks=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done: pause\n"
    assert proc.stderr == ""
    proc = ws.run("ctl", "skip", "20-puppet.sh", tasks=False)
    assert (proc.returncode, proc.stdout) == (0, "done: skip 20-puppet.sh\n"), proc.stderr
    assert recorder.calls == [["pause"], ["skip", "20-puppet.sh"]]


def test_ctl_a_refused_command_exits_1_with_the_reply(ws, ws_server, recorder):
    recorder.refuse = "not paused"
    proc = ws.run("ctl", "resume", tasks=False)
    line = assert_one_line_error(proc, "not paused", status=1)
    assert line == "runner: not paused"
    assert proc.stdout == ""


def test_ctl_without_a_runner_says_so(ws):
    proc = ws.run("ctl", "halt", tasks=False)
    path = ws.root / "run" / "control.sock"
    line = assert_one_line_error(proc, "runner is not running", str(path), status=1)
    assert line == f"runner: runner is not running (no control socket at {path})"


def test_ctl_with_a_stale_socket_says_not_running(ws):
    (ws.root / "run").mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(ws.root / "run" / "control.sock"))
    dead.close()
    proc = ws.run("ctl", "retry-now", tasks=False)
    assert_one_line_error(proc, "runner is not running", status=1)


@pytest.mark.parametrize("args, fragment", [
    (("bogus",), "invalid choice: 'bogus'"),
    ((), "ACTION"),
    (("skip",), "skip takes 1 argument(s): skip TASK"),
    (("pause", "extra"), "pause takes no arguments"),
])
def test_ctl_bad_usage_is_78_and_sends_nothing(ws, ws_server, recorder, args, fragment):
    proc = ws.run("ctl", *args, tasks=False)
    assert_one_line_error(proc, fragment)
    assert recorder.calls == []


def test_ctl_with_a_bad_config_is_78(ws):
    proc = ws.run("-D", "runner.no_such_key=1", "ctl", "pause", tasks=False)
    assert_one_line_error(proc, "no_such_key")
