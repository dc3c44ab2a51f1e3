"""hooks/post-json, the sample task_hook that posts the stats to an HTTP endpoint."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

HOOK = Path(__file__).resolve().parent.parent / "hooks" / "post-json"

STATS = {
    "task": "20-puppet.sh", "try_num": 2, "max_retries": 5, "result": "OK", "iteration": 1,
    "exit_code": 0, "signal": None, "duration_s": 12.4,
    "started_at": "2026-11-23T10:00:00.123Z", "hostname": "builder-1", "kind": "task",
}


class Recorder:
    """A real HTTP server on 127.0.0.1 that records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status = 204
        self.delay = 0.0
        self.trickle = False  # answer with a body of one byte every 0.1 s, forever
        self.release = threading.Event()  # ends a delay early at teardown
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                recorder.requests.append({
                    "method": "POST", "path": self.path, "headers": self.headers,
                    "body": body,
                })
                if recorder.delay:
                    recorder.release.wait(recorder.delay)
                self.send_response(recorder.status)
                self.send_header("Content-Length", "0" if not recorder.trickle else "100000")
                self.end_headers()
                while recorder.trickle and not recorder.release.wait(0.1):
                    self.wfile.write(b"x")
                    self.wfile.flush()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def server():
    recorder = Recorder()
    yield recorder
    recorder.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without proxies (they would catch 127.0.0.1) or hook settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("RUNNER_HOOK_")}
    return {**env, **extra}


def hook(*args: str, stats: dict | str | None = None, timeout: float = 30,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run hooks/post-json ARGS JSON as runner would (JSON last)."""
    last = [] if stats is None else [stats if isinstance(stats, str) else json.dumps(stats)]
    return subprocess.run(
        [sys.executable, str(HOOK), *args, *last], capture_output=True, text=True,
        timeout=timeout, env=env if env is not None else clean_env(),
    )


def one_line(proc: subprocess.CompletedProcess, status: int) -> str:
    assert proc.returncode == status, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert proc.stdout == ""
    return lines[0]


# -- line protocol, parsed independently of the hook --------------------------


def split_unescaped(text: str, sep: str) -> list[str]:
    """Split at `sep` characters not preceded by a backslash."""
    return re.split(rf"(?<!\\){re.escape(sep)}", text)


def unescape(text: str) -> str:
    return re.sub(r"\\([, =])", r"\1", text)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int | None]:
    """measurement, tags, raw field values, timestamp of one line-protocol point."""
    parts = split_unescaped(line, " ")
    assert len(parts) in (2, 3), line
    key, fieldset = parts[0], parts[1]
    timestamp = int(parts[2]) if len(parts) == 3 else None
    measurement, *tagset = split_unescaped(key, ",")
    tags = {}
    for tag in tagset:
        name, value = split_unescaped(tag, "=")
        assert value, f"empty tag value in {line!r}"
        tags[unescape(name)] = unescape(value)
    fields = dict(field.split("=", 1) for field in split_unescaped(fieldset, ","))
    return unescape(measurement), tags, fields, timestamp


# -- direct invocation -----------------------------------------------------------


def test_posts_exactly_the_json_it_was_given(server):
    raw = json.dumps(STATS)
    proc = hook(server.url + "runner", stats=raw)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == proc.stderr == ""
    [request] = server.requests
    assert request["method"] == "POST"
    assert request["path"] == "/runner"
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["body"] == raw.encode()


def test_the_running_call_posts_nothing_unless_all(server):
    running = {**STATS, "result": "RUNNING", "exit_code": None, "duration_s": None}
    proc = hook(server.url, stats=running)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert server.requests == []
    proc = hook("--all", server.url, stats=running)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(r["body"])["result"] for r in server.requests] == ["RUNNING"]
    proc = hook("--all", server.url, stats=STATS)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(r["body"])["result"] for r in server.requests] == ["RUNNING", "OK"]


def test_influx_sends_valid_line_protocol_with_escaped_tags(server):
    stats = {**STATS, "task": "20-pup pet,x=y.sh", "hostname": "rack 1,a"}
    proc = hook("--influx", "runner tasks", server.url + "write?db=fleet", stats=stats)
    assert proc.returncode == 0, proc.stderr
    [request] = server.requests
    assert request["path"] == "/write?db=fleet"
    assert request["headers"]["Content-Type"].startswith("text/plain")
    text = request["body"].decode()
    assert text.endswith("\n") and text.count("\n") == 1
    line = text.rstrip("\n")
    assert "task=20-pup\\ pet\\,x\\=y.sh" in line
    assert line.startswith("runner\\ tasks,")
    measurement, tags, fields, timestamp = parse_line(line)
    assert measurement == "runner tasks"
    assert tags == {"task": "20-pup pet,x=y.sh", "result": "OK", "hostname": "rack 1,a",
                    "kind": "task"}
    assert list(tags) == sorted(tags)  # sorted tag keys, as InfluxDB recommends
    assert fields == {"try_num": "2i", "max_retries": "5i", "iteration": "1i",
                      "exit_code": "0i", "duration_s": "12.4"}
    expected = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
    assert timestamp == int(expected.timestamp()) * 10**9 + 123_000_000


def test_influx_leaves_out_missing_fields(server):
    killed = {**STATS, "result": "TIMEOUT", "exit_code": None, "signal": 15,
              "duration_s": 3, "started_at": "2026-11-23T10:00:00Z"}
    proc = hook("--influx", "runner", server.url, stats=killed)
    assert proc.returncode == 0, proc.stderr
    _, tags, fields, timestamp = parse_line(server.requests[0]["body"].decode().strip())
    assert tags["result"] == "TIMEOUT"
    assert "exit_code" not in fields
    assert fields["signal"] == "15i"
    assert fields["duration_s"] == "3.0"  # always a float, or InfluxDB rejects the point
    assert timestamp == int(datetime(2026, 11, 23, 10, tzinfo=UTC).timestamp()) * 10**9


def test_influx_carries_the_cost_of_the_run_where_it_is_known(server):
    costly = {**STATS, "cpu_user_s": 9.87, "cpu_system_s": 1, "peak_memory_bytes": 52428800}
    unmeasured = {**STATS, "cpu_user_s": 0.5, "cpu_system_s": 0.25, "peak_memory_bytes": None}
    for stats in (costly, unmeasured):
        assert hook("--influx", "runner", server.url, stats=stats).returncode == 0
    (_, _, measured, _), (_, _, plain, _) = (
        parse_line(r["body"].decode().strip()) for r in server.requests)
    assert (measured["cpu_user_s"], measured["cpu_system_s"]) == ("9.87", "1.0")
    assert measured["peak_memory_bytes"] == "52428800i"
    assert (plain["cpu_user_s"], plain["cpu_system_s"]) == ("0.5", "0.25")
    assert "peak_memory_bytes" not in plain


def test_a_slow_server_is_given_up_after_the_timeout(server):
    server.delay = 20
    begin = time.monotonic()
    proc = hook("--timeout", "0.5", server.url + "slow", stats=STATS)
    elapsed = time.monotonic() - begin
    line = one_line(proc, 1)
    assert server.url + "slow" in line
    assert "timed out" in line
    assert elapsed < 5, elapsed


def test_the_timeout_bounds_the_whole_exchange(server):
    """A server that trickles its answer never trips a socket timeout; --timeout still ends it."""
    server.status, server.trickle = 200, True
    begin = time.monotonic()
    proc = hook("--timeout", "1", server.url, stats=STATS)
    elapsed = time.monotonic() - begin
    assert "timed out after 1s" in one_line(proc, 1)
    assert elapsed < 5, elapsed


def test_the_timeout_can_come_from_the_environment(server):
    server.delay = 20
    begin = time.monotonic()
    proc = hook(server.url, stats=STATS, env=clean_env(RUNNER_HOOK_TIMEOUT="0.5"))
    assert "timed out after 0.5s" in one_line(proc, 1)
    assert time.monotonic() - begin < 5


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_one_line_without_a_traceback():
    url = f"http://127.0.0.1:{free_port()}/runner"
    line = one_line(hook(url, stats=STATS), 1)
    assert url in line
    assert "refused" in line


def test_the_password_in_the_url_is_never_printed():
    port = free_port()
    proc = hook(f"http://fleet:hunter2pw@127.0.0.1:{port}/write?db=x&p=hunter2pw",
                stats=STATS)
    line = one_line(proc, 1)
    assert "hunter2pw" not in proc.stderr
    assert f"127.0.0.1:{port}/write" in line
    assert "fleet" not in line


def test_url_userinfo_is_sent_as_basic_auth(server):
    url = server.url.replace("http://", "http://fleet:s%40cret@")
    proc = hook(url, stats=STATS)
    assert proc.returncode == 0, proc.stderr
    [request] = server.requests
    assert request["headers"]["Authorization"] == (
        "Basic " + base64.b64encode(b"fleet:s@cret").decode()
    )


def test_http_errors_exit_1_naming_the_status(server):
    server.status = 500
    line = one_line(hook("--header", "Authorization: Token t0ps3cret", server.url,
                         stats=STATS), 1)
    assert server.url in line
    assert "HTTP 500" in line
    assert "t0ps3cret" not in line


def test_a_header_arrives(server):
    proc = hook("--header", "Authorization: Token abc123", "--header=X-Fleet: try",
                server.url, stats=STATS)
    assert proc.returncode == 0, proc.stderr
    [request] = server.requests
    assert request["headers"]["Authorization"] == "Token abc123"
    assert request["headers"]["X-Fleet"] == "try"


def test_url_and_token_can_come_from_the_environment(server):
    env = clean_env(RUNNER_HOOK_URL=server.url + "from-env", RUNNER_HOOK_TOKEN="Bearer xyz")
    proc = hook(stats=STATS, env=env)
    assert proc.returncode == 0, proc.stderr
    [request] = server.requests
    assert request["path"] == "/from-env"
    assert request["headers"]["Authorization"] == "Bearer xyz"


@pytest.mark.parametrize("last", ["", "not json", "[1, 2]", "{\"task\": "])
def test_a_bad_json_argument_exits_2_with_one_line(server, last):
    line = one_line(hook(server.url, stats=last), 2)
    assert "JSON" in line
    assert server.requests == []


@pytest.mark.parametrize("args", [
    [],                                      # no URL and no RUNNER_HOOK_URL
    ["--timeout", "soon", "http://x/"],
    ["--header", "no colon secretvalue", "http://x/"],
    ["ftp://x/"],
    ["--frobnicate", "http://x/"],
])
def test_bad_arguments_exit_2_with_one_line(args):
    line = one_line(hook(*args, stats=STATS), 2)
    assert "secretvalue" not in line


def test_missing_json_argument_exits_2():
    line = one_line(hook(), 2)
    assert "JSON" in line


# -- through runner ----------------------------------------------------------------


def test_runner_posts_one_json_per_task_run(ws, server):
    ws.task("10-first")
    ws.task("20-second", "echo hi")
    hook_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(HOOK))} {server.url}"
    ws.config(task_hook=hook_cmd)
    proc = ws.run("-n", "1", env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "task_hook" not in proc.stderr  # no hook failure was logged
    bodies = [json.loads(r["body"]) for r in server.requests]
    assert [b["task"] for b in bodies] == ["10-first", "20-second"]
    assert {b["result"] for b in bodies} == {"OK"}
    assert {b["try_num"] for b in bodies} == {1}
    assert {r["headers"]["Content-Type"] for r in server.requests} == {"application/json"}
