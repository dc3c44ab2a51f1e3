"""The PostgreSQL test harness itself: pg_server, pg_url and TcpProxy."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from pgserver import PgServer, TcpProxy, via

try:
    import psycopg
except ImportError:  # every test needs pg_server, which skips (fails in CI) saying why
    psycopg = None


def test_pg_url_is_a_working_empty_database(pg_url: str) -> None:
    with psycopg.connect(pg_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SELECT current_database()").fetchone()[0] == urlsplit(
            pg_url).path.lstrip("/")
        tables = conn.execute("SELECT count(*) FROM pg_tables "
                              "WHERE schemaname = 'public'").fetchone()[0]
        assert tables == 0


def test_two_pg_urls_are_distinct_databases(pg_server: PgServer, pg_url: str) -> None:
    other = pg_server.create_database()
    try:
        assert other != pg_url
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        with psycopg.connect(other) as conn:
            assert conn.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    finally:
        pg_server.drop_database(other.rsplit("/", 1)[1])


def test_drop_database_ends_open_sessions(pg_server: PgServer) -> None:
    name = pg_server.unique_name()
    url = pg_server.create_database(name)
    conn = psycopg.connect(url)
    try:
        pg_server.drop_database(name)
        with pg_server.admin_connect() as admin:
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 [name]).fetchone() is None
    finally:
        conn.close()


def test_tcp_proxy_outage_and_recovery(pg_server: PgServer, pg_url: str) -> None:
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        url = via(pg_url, proxy.port)
        conn = psycopg.connect(url, connect_timeout=2, autocommit=True)
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert proxy.open_connections == 1

        proxy.stop()  # outage: the open connection is cut, new ones are refused
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
        began = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=2)
        assert time.monotonic() - began < 2

        port = proxy.port
        proxy.start()  # recovery, on the same port
        assert proxy.port == port
        with psycopg.connect(url, connect_timeout=2) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
    assert not proxy.running


def test_tcp_proxy_carries_a_large_result(pg_server: PgServer, pg_url: str) -> None:
    with (TcpProxy(pg_server.host, pg_server.port) as proxy,
          psycopg.connect(via(pg_url, proxy.port), connect_timeout=2) as conn):
        big = "x" * 3_000_000
        assert conn.execute("SELECT length(%s::text)", [big]).fetchone() == (len(big),)
        rows = conn.execute("SELECT repeat('y', 1000) FROM generate_series(1, 5000)")
        assert len(rows.fetchall()) == 5000
