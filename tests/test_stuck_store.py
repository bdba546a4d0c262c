"""A stuck store never holds up the exit: with a call in flight while another process holds SQLite's write lock,
or while PostgreSQL is frozen (SIGSTOP) or down, the server exits within the hosts' 2 s of stdin EOF or SIGTERM,
the call in flight is answered with a tool error that says why, and what was acknowledged before is stored.

Real subprocesses (tests/stdio_helper.py); PostgreSQL is a server of this module's own, which the tests freeze
and stop (the session's shared server is left alone).
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import sqlean as sqlite3

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import connection as pg_connection
from agentcache_mcp.backends.sqlite import connection
from agentcache_mcp.backends.sqlite.connection import Database
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.ports import StoreBusy

from conftest import HashEmbedder
from stdio_helper import StdioServer

pytestmark = pytest.mark.slow

HOST_GRACE_S = 2.0
"""Hosts close stdin, wait about 2 s, then send SIGTERM (and later SIGKILL)."""
HANG_LIMIT_S = 20.0
"""How long a test waits for the process before it calls the exit a hang (and kills it)."""
IN_FLIGHT_S = 1.0
"""How long the calls are left waiting on the stuck store before the host ends the session."""


def send(server: StdioServer, request_id: int, tool: str, **arguments: Any) -> None:
    """Write one tools/call without waiting for its answer: it stays in flight."""
    assert server.proc.stdin is not None
    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    server.proc.stdin.write(json.dumps(message) + "\n")
    server.proc.stdin.flush()


def end_session(server: StdioServer, how: str) -> float:
    """Close stdin or send SIGTERM, as a host does; the seconds until the process was gone (exit 0)."""
    assert server.proc.stdin is not None
    started = time.monotonic()
    if how == "eof":
        server.proc.stdin.close()
    else:
        server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(timeout=HANG_LIMIT_S)
    except Exception:
        server.proc.kill()
        server.proc.wait(timeout=30)
        raise AssertionError(f"no exit within {HANG_LIMIT_S:g} s of {how}; stderr:\n{server.stderr_tail()}") from None
    elapsed = time.monotonic() - started
    assert code == 0, server.stderr_tail()
    print(f"\nexit {elapsed:.2f} s after {how}")
    return elapsed


def answers(server: StdioServer) -> dict[int, dict[str, Any]]:
    """Every answer left on stdout after the exit, by request id."""
    assert server.proc.stdout is not None
    replies = [json.loads(line) for line in server.proc.stdout.read().splitlines() if line.strip()]
    return {r["id"]: r for r in replies if "id" in r}


def tool_error(reply: dict[str, Any] | None) -> str:
    """The text of a tool error (isError), or fail: a protocol error or no answer is not a clear error."""
    assert reply is not None, "the call in flight got no answer"
    assert "result" in reply, f"a protocol error, not a tool error with a reason: {reply}"
    assert reply["result"].get("isError"), reply
    text = str(reply["result"]["content"][0]["text"])
    assert "Traceback" not in text
    return text


# --- SQLite: another process holds the write lock ---------------------------------------------------------------


def write_a_row(db: Database) -> None:
    db.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))


@pytest.fixture
def locked_db(db_path: Path) -> Iterator[tuple[Database, sqlite3.Connection]]:
    """A Database and another connection (another process, for SQLite) holding its write lock."""
    db = Database(db_path)
    db.write(lambda c: c.execute("CREATE TABLE t (x)"))
    other = sqlite3.connect(str(db_path), isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield db, other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        db.close()


def test_a_write_waits_past_the_busy_slice_for_another_process_to_commit(
    locked_db: tuple[Database, sqlite3.Connection],
) -> None:
    db, other = locked_db
    threading.Timer(1.0, other.execute, args=("COMMIT",)).start()
    started = time.monotonic()
    write_a_row(db)
    assert time.monotonic() - started >= 0.9
    assert db.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 1


def test_a_write_behind_a_lock_held_too_long_fails_with_store_busy_saying_nothing_was_written(
    locked_db: tuple[Database, sqlite3.Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, _ = locked_db
    monkeypatch.setattr(connection, "LOCK_WAIT_S", 0.5)
    with pytest.raises(StoreBusy, match=r"busy: another process has held its lock for 0\.\d s; nothing was written; try"):
        write_a_row(db)


def test_a_write_waiting_for_the_lock_stops_waiting_once_the_server_gives_up(
    locked_db: tuple[Database, sqlite3.Connection],
) -> None:
    db, _ = locked_db
    outcome: list[BaseException] = []

    def write() -> None:
        try:
            write_a_row(db)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)  # waiting for the lock by now
    asked = time.monotonic()
    db.give_up_waits(0.2)
    writer.join(10)
    assert not writer.is_alive()
    assert time.monotonic() - asked < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], StoreBusy), outcome
    assert "nothing was written; the server is shutting down" in str(outcome[0])


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_exit_within_2_s_while_another_process_holds_the_sqlite_write_lock(db_path: Path, how: str) -> None:
    server = StdioServer(db_path)
    other = None
    try:
        server.initialize()
        server.wait_model_ready()
        acknowledged = server.call("remember", text="written before the lock was taken")["id"]
        other = sqlite3.connect(str(db_path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # and held: this process's writes must wait for it
        send(server, 77, "remember", text="written while another process holds the lock")
        time.sleep(IN_FLIGHT_S)
        elapsed = end_session(server, how)
        replies = answers(server)
    finally:
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
        server.close()
    message = tool_error(replies.get(77))
    assert "busy" in message and "nothing was written" in message, message
    assert elapsed < HOST_GRACE_S, f"{elapsed:.2f} s"
    db = sqlite3.connect(str(db_path))
    try:
        stored = {r[0] for r in db.execute("SELECT id FROM memories")}
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    assert acknowledged in stored and len(stored) == 1  # the refused write was not stored either


def test_sigterm_stops_an_http_server_within_2_s_while_another_process_holds_the_sqlite_write_lock(
    db_path: Path,
) -> None:
    import sys
    import urllib.request

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from load import free_port, start_server

    port = free_port()
    proc = start_server(db_path, port)
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    def remember(text: str) -> str:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "remember", "arguments": {"text": text}}}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return str(response.read().decode())

    other = None
    answer: list[str] = []
    try:
        assert '"isError":false' in remember("written before the lock was taken")
        other = sqlite3.connect(str(db_path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        caller = threading.Thread(target=lambda: answer.append(remember("written while the lock is held")))
        caller.start()
        time.sleep(IN_FLIGHT_S)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = proc.wait(timeout=HANG_LIMIT_S)
        elapsed = time.monotonic() - started
        caller.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if other is not None:
            other.execute("ROLLBACK")
            other.close()
    print(f"\nhttp: exit {elapsed:.2f} s after sigterm")
    assert code == 0 and elapsed < HOST_GRACE_S, elapsed
    assert answer and '"isError":true' in answer[0] and "busy" in answer[0] and "nothing was written" in answer[0]


# --- PostgreSQL: frozen, or down --------------------------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL server (the bundled pgserver's) that the tests may freeze, stop and start again."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
            import pgserver

            self.root = Path(tempfile.mkdtemp(prefix="agentcache-pg-stuck-"))
            self.server = pgserver.get_server(self.root / "data", cleanup_mode="delete")

    def url(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def processes(self) -> list[psutil.Process]:
        postmaster = psutil.Process(self.server.get_pid())
        return [postmaster, *postmaster.children(recursive=True)]

    def freeze(self) -> None:
        for process in self.processes():
            process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        for process in self.processes():
            process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def own_postgres_url(own_postgres: OwnPostgres, tmp_path: Path) -> str:
    name = "stuck_" + tmp_path.name.replace("-", "_").lower()[-40:]
    with psycopg.connect(own_postgres.url("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return own_postgres.url(name)


def test_a_postgresql_write_behind_a_lock_held_too_long_fails_with_store_busy(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_connection, "LOCK_TIMEOUT", "300ms")  # 10s in the server
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        with psycopg.connect(postgres_url) as other:
            other.execute("LOCK TABLE memories IN ACCESS EXCLUSIVE MODE")  # held until the rollback below
            started = time.monotonic()
            with pytest.raises(StoreBusy, match=r"busy: another session held a lock .* for more than 300ms; nothing"):
                memory.remember("written while a person's session locks the table")
            assert time.monotonic() - started < 5
            other.rollback()
        assert memory.remember("written once the lock is gone").id
    finally:
        memory.close()


def stored_texts(url: str) -> set[str]:
    with psycopg.connect(url, connect_timeout=10) as db:
        return {r[0] for r in db.execute("SELECT text FROM memories")}


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_exit_within_2_s_while_postgresql_is_frozen(own_postgres: OwnPostgres, own_postgres_url: str, how: str) -> None:
    server = StdioServer(own_postgres_url)  # type: ignore[arg-type]
    frozen = False
    try:
        server.initialize()
        server.wait_model_ready()
        server.call("remember", text="written before the freeze")
        own_postgres.freeze()
        frozen = True
        send(server, 77, "remember", text="written while the server is frozen")
        time.sleep(IN_FLIGHT_S)
        elapsed = end_session(server, how)
        replies = answers(server)
    finally:
        if frozen:
            own_postgres.thaw()
        server.close()
    message = tool_error(replies.get(77))
    # Sent to the frozen server and abandoned, or still waiting for a pooled connection (the pool's one is
    # stuck on the frozen server too, and no new one can be made): either way, the error says so.
    assert "did not answer" in message or "not answering" in message, message
    assert elapsed < HOST_GRACE_S, f"{elapsed:.2f} s"
    assert "written before the freeze" in stored_texts(own_postgres_url)


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_exit_within_2_s_while_postgresql_is_down(own_postgres: OwnPostgres, own_postgres_url: str, how: str) -> None:
    server = StdioServer(own_postgres_url)  # type: ignore[arg-type]
    stopped = False
    try:
        server.initialize()
        server.wait_model_ready()
        server.call("remember", text="written before the outage")
        own_postgres.stop()
        stopped = True
        # The first calls find the pool's connections closed and fail at once; the rest wait for a connection.
        for n in range(6):
            send(server, 100 + n, "remember", text=f"written while the server is down {n}")
        time.sleep(IN_FLIGHT_S)
        elapsed = end_session(server, how)
        replies = answers(server)
    finally:
        if stopped:
            own_postgres.start()
        server.close()
    for n in range(6):
        message = tool_error(replies.get(100 + n))
        assert "unreachable" in message or "closed the connection" in message, message
    assert elapsed < HOST_GRACE_S, f"{elapsed:.2f} s"
    assert "written before the outage" in stored_texts(own_postgres_url)
