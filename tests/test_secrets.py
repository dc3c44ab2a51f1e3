"""Secrets leak nowhere (issue 12, point 5): every channel runner writes to goes through
runner.masking, end to end through the real `runner` and `runner-config` commands.

Every test asserts both that the secret is absent and that the mask stands in its place,
so a test that printed nothing could not pass. The attacker's steps run as a real
unprivileged user (nobody, through runuser).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    RUNNER_CONFIG,
    LogWatcher,
    Workspace,
    as_nobody,
    assert_one_line_error,
    need_root,
    nobody_python,
    skip_unless,
    wait_for_file,
)
from pgserver import PgServer, free_port

MASK = "********"
SECRET = "hunter2-very-secret"
TOKEN = "tok-0123456789"
PIECE = 64 * 1024  # runner.process.LINE_LIMIT: longer lines are logged in pieces
TAIL = 64 * 1024  # runner.process.TAIL_BYTES: what the journal keeps of the output


def journal_outputs(ws: Workspace) -> list[tuple[bytes, str | None]]:
    with sqlite3.connect(ws.state / "journal.sqlite") as conn:
        return [(out or b"", err) for out, err in
                conn.execute("SELECT output, error FROM task_runs ORDER BY seq")]


def secret_env(ws: Workspace, text: str = "", **runner: object) -> None:
    ws.config(f"[env]\nDB_PASSWORD = {SECRET}\n[api]\ntoken = {TOKEN}\n{text}", **runner)


# -- the output stream, before it is cut -------------------------------------------------

@pytest.mark.parametrize("before", [PIECE - 3, PIECE - 1, PIECE - len(SECRET) + 1,
                                    PIECE - len(SECRET) // 2])
def test_a_secret_straddling_the_64k_piece_boundary_is_masked(ws, before):
    # No newline until after the secret: runner reads the line in 64 KiB pieces.
    ws.task("10-long.sh", f"""
        head -c {before} /dev/zero | tr '\\0' x
        printf '%s and more\\n' "$DB_PASSWORD"
    """)
    secret_env(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert SECRET not in proc.stderr
    assert f"{MASK} and more" in proc.stderr
    [(output, _error)] = journal_outputs(ws)
    assert SECRET.encode() not in output and f"{MASK} and more".encode() in output


def test_a_secret_cut_by_the_start_of_the_kept_tail_leaves_no_piece_of_it(ws):
    # Masked, the output is 100 bytes, the mask, then `filler`: the kept 64 KiB tail
    # starts 3 bytes into the mask. Unmasked, it would start inside the secret.
    filler = TAIL + 103 - 100 - len(MASK)
    lines, last = divmod(filler, 1000)
    ws.task("10-tail.py", f"""
        import os, sys
        out = sys.stdout
        out.write("a" * 100 + os.environ["DB_PASSWORD"])
        out.write(("y" * 999 + "\\n") * {lines} + "z" * {last})
    """, shebang=f"#!{sys.executable}")
    secret_env(ws)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    [(output, _error)] = journal_outputs(ws)
    assert len(output) == TAIL
    assert output.startswith(b"*****y"), output[:40]
    suffixes = [SECRET[i:].encode() for i in range(len(SECRET) - 3)]
    assert not any(output.startswith(s) for s in suffixes), output[:40]
    assert SECRET not in proc.stderr and MASK in proc.stderr


def test_a_secret_at_the_very_end_of_output_without_a_newline_is_masked(ws):
    ws.task("10-end.sh", 'printf "last words %s" "$DB_PASSWORD"')
    secret_env(ws)
    proc = ws.run("-n", "1")
    assert SECRET not in proc.stderr and f"[10-end.sh] last words {MASK}" in proc.stderr
    [(output, _error)] = journal_outputs(ws)
    assert output == f"last words {MASK}".encode()


# -- journal_url passwords in every form -------------------------------------------------

URL_FORMS = {
    # id: (journal_url with {port}, the forms a task may print)
    "userinfo-encoded": ("postgresql://runner:pg%40s3cret@127.0.0.1:{port}/x",
                         ["pg%40s3cret", "pg@s3cret"]),
    "query-password": ("postgresql://runner@127.0.0.1:{port}/x?password=qu%3Dery-pw",
                       ["qu%3Dery-pw", "qu=ery-pw"]),
    "sslpassword": ("postgresql://runner@127.0.0.1:{port}/x?sslmode=disable&"
                    "sslpassword=key-pass-phrase", ["key-pass-phrase"]),
}


@pytest.mark.parametrize("form", sorted(URL_FORMS))
def test_journal_url_passwords_are_masked_in_output_warnings_and_status(ws, form):
    url, secrets = URL_FORMS[form]
    url = url.format(port=free_port())  # nothing listens: forwarding fails, and says so
    ws.task("10-says.sh", "\n".join(f"echo 'form {s} end'" for s in secrets))
    ws.config(journal_url=url)
    proc = ws.run("-n", "1")
    assert proc.returncode == 0, proc.stderr
    status = (ws.root / "run" / "status.json").read_text()
    [(output, _error)] = journal_outputs(ws)
    for secret in secrets:
        assert secret not in proc.stderr and secret not in status
        assert secret.encode() not in output
    assert proc.stderr.count(f"form {MASK} end") == len(secrets)
    [warning] = [line for line in proc.stderr.splitlines() if "cannot forward" in line]
    assert MASK in warning, warning
    assert MASK in json.loads(status)["forward"]["url"]


# -- an attacker on the machine ----------------------------------------------------------

def test_nobody_reading_status_json_finds_no_password(open_ws):
    url = f"postgresql://runner:{SECRET}@127.0.0.1:{free_port()}/x?password={TOKEN}"
    open_ws.task("10-ok.sh")
    open_ws.config(journal_url=url)
    assert open_ws.run("-n", "1").returncode == 0
    proc = as_nobody("cat", str(open_ws.root / "run" / "status.json"))
    assert proc.returncode == 0, proc.stderr  # runner status works for everybody
    assert SECRET not in proc.stdout and TOKEN not in proc.stdout
    forward = json.loads(proc.stdout)["forward"]
    assert forward["url"].count(MASK) == 2 and forward["ok"] is False


def test_nobody_cannot_list_secrets_with_show_secrets(open_ws):
    secret_env(open_ws)
    # The command tasks get as $RUNNER_CONFIG_CMD, without a snapshot.
    lookup = str(ROOT / "runner" / "lookup.py")
    proc = as_nobody(nobody_python(), "-I", "-S", lookup, "-c", str(open_ws.cfg), "-l",
                     "--show-secrets")
    assert_one_line_error(proc, "--show-secrets", "only root")
    assert SECRET not in proc.stdout + proc.stderr


# -- listings ----------------------------------------------------------------------------

def listing_setup(ws: Workspace) -> None:
    ws.task("10-x.sh")
    secret_env(ws, f"[x]\ncheck = /bin/test {TOKEN} = {TOKEN}\n",
               interpreter=f"/usr/bin/env API_TOKEN={TOKEN} /bin/sh",
               journal_url=f"postgresql://runner:{SECRET}@db.example/x")


def runner_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUNNER_CONFIG, *args], capture_output=True, text=True, timeout=60)


def test_runner_config_lists_mask_secret_values(ws):
    listing_setup(ws)
    text = runner_config("-c", str(ws.cfg), "-l").stdout
    assert SECRET not in text and TOKEN not in text
    assert f"env.DB_PASSWORD = {MASK}\n" in text and f"api.token = {MASK}\n" in text
    assert f"runner.journal_url = postgresql://runner:{MASK}@db.example/x\n" in text
    assert f"x.check = /bin/test {MASK} = {MASK}\n" in text
    data = json.loads(runner_config("-c", str(ws.cfg), "-l", "--json").stdout)
    assert data["env"]["DB_PASSWORD"] == MASK and data["api"]["token"] == MASK
    assert SECRET not in json.dumps(data) and TOKEN not in json.dumps(data)


def test_runner_config_get_still_gives_a_task_the_secret(ws):
    listing_setup(ws)
    proc = runner_config("-c", str(ws.cfg), "-g", "env.DB_PASSWORD")
    assert (proc.returncode, proc.stdout) == (0, f"{SECRET}\n")


@pytest.mark.root
def test_root_sees_secrets_with_show_secrets(ws):
    need_root("--show-secrets is for root")
    listing_setup(ws)
    text = runner_config("-c", str(ws.cfg), "-l", "--show-secrets").stdout
    assert f"env.DB_PASSWORD = {SECRET}\n" in text and MASK not in text
    plan = ws.run("plan", "--json", "--show-secrets").stdout
    assert TOKEN in plan and MASK not in plan


def test_runner_list_and_plan_mask_secret_values(ws):
    listing_setup(ws)
    for args in (("list",), ("list", "--json"), ("plan", "--json")):
        proc = ws.run(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        assert TOKEN not in proc.stdout + proc.stderr, args
        assert MASK in proc.stdout, (args, proc.stdout)
    [record] = json.loads(ws.run("plan", "--json").stdout)["waves"][0]
    assert record["check"] == f"/bin/test {MASK} = {MASK}"


# -- error text, metrics and hook JSON ---------------------------------------------------

def test_an_error_quoting_a_secret_is_masked_in_log_journal_and_metrics(ws):
    # The interpreter (its path holds the secret) removes itself when the first task runs,
    # so the second task cannot start: runner's error quotes the path.
    interpreter = ws.root / f"interp-{TOKEN}"
    interpreter.write_text('#!/bin/sh\nrm -f "$0"\nexec /bin/sh "$@"\n')
    interpreter.chmod(0o755)
    ws.task("05-first.sh", "exit 0", mode=0o644)
    ws.task(f"10-{TOKEN}.sh", "exit 0", mode=0o644)  # not executable: the interpreter runs
    metrics = ws.root / "metrics.prom"
    secret_env(ws, interpreter=str(interpreter), max_tries=1, metrics_file=str(metrics))
    proc = ws.run("-n", "1")
    assert proc.returncode == 1, proc.stderr
    assert TOKEN not in proc.stderr and f"cannot start {ws.root}/interp-{MASK}" in proc.stderr
    [(_first, no_error), (_output, error)] = journal_outputs(ws)
    assert no_error is None
    assert TOKEN not in error and MASK in error
    text = metrics.read_text()
    assert TOKEN not in text and f'task="10-{MASK}.sh"' in text
    status = (ws.root / "run" / "status.json").read_text()
    assert TOKEN not in status


def test_a_secret_added_by_a_sighup_reload_is_masked_everywhere_from_then_on(ws):
    ready, go, metrics = ws.root / "ready", ws.root / "go", ws.root / "metrics.prom"
    ws.task("1-wait", f"""
        touch '{ready}'
        while [ ! -e '{go}' ]; do sleep 0.02; done
    """)
    ws.task(f"2-{TOKEN}.sh", 'echo "token is $($RUNNER_CONFIG_CMD -g api.token)"')
    ws.config(metrics_file=str(metrics))
    with LogWatcher(ws.start("-n", "1")) as runner:
        wait_for_file(ready)
        ws.config(f"[api]\ntoken = {TOKEN}\n", metrics_file=str(metrics))
        runner.proc.send_signal(signal.SIGHUP)
        go.touch()
        assert runner.finish() == 0, runner.text()
    log = runner.text()
    assert "SIGHUP: configuration reloaded" in log
    assert TOKEN not in log and f"token is {MASK}" in log
    # The metrics file is written by a listener made before the reload.
    text = metrics.read_text()
    assert TOKEN not in text and f'task="2-{MASK}.sh"' in text
    assert TOKEN not in (ws.root / "run" / "status.json").read_text()


# -- the password need not be in runner.cfg at all: libpq's passfile and service file --------

ROLE, PASSWORD = "runner_pw", "pw-from-libpq-file"


@pytest.fixture(scope="module")
def scram_server() -> Iterator[PgServer]:
    """A server of our own where a role must give its password (scram-sha-256)."""
    problem = PgServer.unavailable_reason()
    skip_unless(problem is None, problem or "")
    server = PgServer.throwaway()
    try:
        with server.admin_connect() as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
        assert server.datadir is not None
        # The admin (postgres) keeps trust for the fixture itself; everyone else: scram.
        (server.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with server.admin_connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()


@pytest.fixture
def scram_db(scram_server: PgServer) -> str:
    """A fresh database of the password-only role; its name."""
    name = scram_server.unique_name()
    with scram_server.admin_connect() as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {ROLE}")
    return name


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)  # libpq ignores a passfile others can read
    return path


def remote_tasks(server: PgServer, dbname: str) -> list[str]:
    with server.admin_connect(dbname) as conn:
        return [row[0] for row in conn.execute("SELECT task FROM runner_task_runs")]


@pytest.mark.parametrize("way", ["passfile", "service"])
def test_the_password_can_live_in_a_libpq_file_instead_of_runner_cfg(ws, scram_server,
                                                                      scram_db, way):
    where = f"127.0.0.1:{scram_server.port}"
    if way == "passfile":
        passfile = private_file(ws.root / "pgpass", f"{where}:{scram_db}:{ROLE}:{PASSWORD}\n")
        url, env = f"postgresql://{ROLE}@{where}/{scram_db}?passfile={passfile}", None
    else:
        services = private_file(ws.root / "pg_service.conf", (
            f"[fleet]\nhost=127.0.0.1\nport={scram_server.port}\ndbname={scram_db}\n"
            f"user={ROLE}\npassword={PASSWORD}\n"))
        url, env = "postgresql://?service=fleet", {**os.environ, "PGSERVICEFILE": str(services)}
    ws.task("10-ok.sh", "echo forwarded")
    ws.config(journal_url=f"postgresql://{ROLE}@{where}/{scram_db}")  # no password at all
    refused = ws.run("-n", "1", env=env if way == "service" else None)
    assert "cannot forward" in refused.stderr and "password" in refused.stderr
    ws.config(journal_url=url)
    proc = ws.run("-n", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "cannot forward" not in proc.stderr, proc.stderr
    assert PASSWORD not in ws.cfg.read_text()
    # The rows of both runs: the refused one was kept locally and sent with this one.
    assert remote_tasks(scram_server, scram_db) == ["10-ok.sh", "10-ok.sh"]


# -- the stream masker on its own ----------------------------------------------------------

def test_stream_masking_equals_masking_the_whole_wherever_the_stream_is_cut():
    import random

    from runner.masking import Masker

    masker = Masker(["secretvalue", "cretv1", "abc1"])
    rng = random.Random(12)
    for _ in range(3000):
        data = bytes(rng.choice(b"secrtvalub1x\n") for _ in range(rng.randint(0, 40)))
        at = rng.randint(0, len(data))
        data = data[:at] + b"secretvalue" + data[at:]
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 4)))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        stream = masker.stream()
        out = b"".join(stream.feed(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces))
        assert out == masker.data(data) and b"secretvalue" not in out, (data, cuts)
        assert len(stream.carry) < masker.longest


def test_a_refusal_at_start_that_quotes_a_secret_is_masked(ws):
    ws.task("10-a.sh")
    secret_env(ws, interpreter=f"/nonexistent/{TOKEN}")
    proc = ws.run("-n", "1")
    assert proc.returncode == 78, proc.stderr
    assert TOKEN not in proc.stderr and f"interpreter: /nonexistent/{MASK}" in proc.stderr
