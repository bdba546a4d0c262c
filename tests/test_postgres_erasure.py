"""What PostgreSQL keeps of a forgotten memory, measured on the bundled server's files, and what the backend's
erase removes, when (AGENTCACHE_PG_ERASE: daily, after-forget, manual) and what stats say meanwhile. The
contract suite asserts the promise; these tests pin down why the backend needs VACUUM FULL, and what it
cannot erase (the WAL)."""

from __future__ import annotations

import calendar
import json
import threading
import time

import anyio
import psycopg
import pytest
from contract.harness import PostgresHarness

from agentcache_mcp import app, cli
from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend, schema
from agentcache_mcp.config import ENV_VARIABLES, ConfigError, Settings
from agentcache_mcp.memory.model import DAY
from agentcache_mcp.memory.service import MemoryService
from agentcache_mcp.workers import App

from conftest import HashEmbedder, PostgresServer

SECRET = "my locker code is 7731 zorblequint vashtomirel"
TOKENS = [SECRET.encode(), b"zorblequ", b"vashtomi"]


@pytest.fixture
def harness(postgres_server: PostgresServer, postgres_url: str) -> PostgresHarness:
    if postgres_server.data_directory is None:
        pytest.skip("these measurements read the server's files: they run on the bundled server only")
    return PostgresHarness(postgres_server, postgres_url)


def remember_and_forget(memory: MemoryService) -> None:
    for i in range(200):
        memory.remember(f"routine note {i} about the garden")
    secret = memory.remember(SECRET).id
    memory.remember("the next note, indexed with the secret as its context")
    memory.embed_pending()
    assert memory.forget(ids=[secret]).deleted == [secret]


def held(harness: PostgresHarness) -> list[bytes]:
    stored = harness.stored_bytes()
    return [t for t in TOKENS if t in stored]


def backend_of(memory: MemoryService) -> PostgresBackend:
    assert isinstance(memory.backend, PostgresBackend)
    return memory.backend


def test_a_delete_leaves_the_text_in_the_files_until_the_erase(harness: PostgresHarness) -> None:
    memory = harness.open(pg_erase="manual")
    try:
        remember_and_forget(memory)
        assert held(harness) == TOKENS  # a dead tuple: the row, its terms and the next row's old version
        backend = memory.backend
        assert isinstance(backend, PostgresBackend) and backend.erase_pending()
        with psycopg.connect(harness.url, autocommit=True) as conn:
            conn.execute("VACUUM memories")
        # Plain VACUUM is not enough: the GIN index keeps a deleted memory's lexemes as keys.
        assert held(harness) != []
        assert backend.erase().erased
        assert held(harness) == []
        assert not backend.erase_pending() and not backend.erase().erased  # nothing new to erase
        assert memory.recall("routine garden note")  # the rest is intact
    finally:
        memory.close()


def test_an_erase_that_an_older_snapshot_kept_from_removing_the_rows_does_not_report_them_erased(
    harness: PostgresHarness,
) -> None:
    """VACUUM FULL copies a deleted row that a transaction still running may see (a long report on another table,
    a standby's hot_standby_feedback): the bytes stay in the new files. The erase must not say they are gone."""
    memory = harness.open(pg_erase="manual")
    try:
        with psycopg.connect(harness.url) as reader:
            reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            reader.execute("SELECT count(*) FROM meta").fetchone()  # its snapshot predates the forget
            remember_and_forget(memory)
            report = backend_of(memory).erase()
            still_held = held(harness)
            reader.rollback()
        assert not (report.erased and still_held), (report.note, still_held)
        assert backend_of(memory).erase_pending()
    finally:
        memory.close()


def at_utc(day: str, hhmm: str) -> float:
    return float(calendar.timegm(time.strptime(f"{day} {hhmm}", "%Y-%m-%d %H:%M")))


def test_in_daily_mode_a_forget_rewrites_nothing_and_stats_say_what_stays_until_the_erase_at_its_time(
    harness: PostgresHarness,
) -> None:
    memory = harness.open(pg_erase_at="04:30")  # daily is the default
    before = time.time()
    remember_and_forget(memory)
    App(Settings(database_url=harness.url), memory)._sweep_alone()  # a sweep does not erase either
    memory.close()  # nor does the shutdown
    assert held(harness) == TOKENS
    memory = harness.open(pg_erase_at="04:30")
    try:
        erasure = memory.stats()["index"]["erasure"]
        assert erasure["setting"] == "daily at 04:30 UTC"
        assert erasure["forgotten_on_disk"] == 1
        since = calendar.timegm(time.strptime(erasure["forgotten_since"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert before - 2 <= since <= time.time() + 1
        assert erasure["next_erase"].endswith("T04:30:00.000Z") and erasure["last_erase"] is None
        backend = backend_of(memory)
        assert backend.erasure(time.time() + 2 * DAY)["next_erase"].startswith("overdue")
        forgotten = time.time()
        day = time.strftime("%Y-%m-%d", time.gmtime(forgotten + DAY))
        # The check before the next 04:30 leaves it; the one at 04:30 erases, and says when it checks again.
        slot = at_utc(day, "04:30")
        if slot - DAY > forgotten:
            slot -= DAY
        assert backend.scheduled_erase(slot - 60) == slot
        assert backend.erase_pending()
        assert backend.scheduled_erase(slot + 1) == slot + DAY
        assert not backend.erase_pending()
        erasure = memory.stats()["index"]["erasure"]
        assert erasure["forgotten_on_disk"] == 0 and erasure["forgotten_since"] is None
        assert erasure["last_erase"] is not None and erasure["last_erase_locked_s"] >= 0
        assert memory.recall("routine garden note")
    finally:
        memory.close()
    assert held(harness) == []


def test_in_daily_mode_a_start_after_a_missed_erase_catches_up(harness: PostgresHarness) -> None:
    """No server ran at the erase's time (stdio servers live as long as a host's session): the first check
    after it erases, rather than keep the bytes another day."""
    memory = harness.open(pg_erase_at="04:30")
    try:
        remember_and_forget(memory)
        two_days_later = time.time() + 2 * DAY
        assert backend_of(memory).scheduled_erase(two_days_later) is not None
        assert not backend_of(memory).erase_pending()
    finally:
        memory.close()
    assert held(harness) == []


def test_after_forget_mode_erases_after_each_sweep_and_at_shutdown(harness: PostgresHarness) -> None:
    memory = harness.open(pg_erase="after-forget")
    remember_and_forget(memory)
    assert backend_of(memory).scheduled_erase(time.time() + 2 * DAY) is None  # no schedule: it has no backlog
    App(Settings(database_url=harness.url), memory)._sweep_alone()
    assert not backend_of(memory).erase_pending()
    assert held(harness) == []
    gone = memory.remember("a second secret: qwindlebrax").id
    memory.forget(ids=[gone])
    memory.close()  # checkpoint(): the erase
    assert b"qwindleb" not in harness.stored_bytes()
    assert held(harness) == []


def test_manual_mode_erases_only_when_asked(harness: PostgresHarness) -> None:
    memory = harness.open(pg_erase="manual")
    try:
        remember_and_forget(memory)
        App(Settings(database_url=harness.url), memory)._sweep_alone()
        assert backend_of(memory).scheduled_erase(time.time() + 2 * DAY) is None
        assert memory.stats()["index"]["erasure"]["next_erase"] == "only when `agentcache-mcp erase` is run"
    finally:
        memory.close()
    assert held(harness) == TOKENS
    memory = harness.open(pg_erase="manual")
    try:
        report = memory.backend.erase()
        assert report.erased and report.memories == 1 and report.attempts == 1 and report.locked_s > 0
    finally:
        memory.close()
    assert held(harness) == []


def test_the_erase_asks_for_the_table_briefly_and_gives_up_when_it_stays_busy(postgres_url: str) -> None:
    """VACUUM FULL waiting for its lock makes every later call wait behind it: it asks with a short timeout
    (0.2 s, then 0.4 s), lets the callers through, asks again, and gives up after its tries, nothing rewritten."""
    memory = open_memory(Settings(database_url=postgres_url, pg_erase="manual"), embedder=HashEmbedder())
    try:
        gone = memory.remember("a note to forget").id
        memory.remember("a note to keep")
        memory.forget(ids=[gone])
        backend = backend_of(memory)
        waits: list[float] = []
        with psycopg.connect(postgres_url) as reader, psycopg.connect(postgres_url, autocommit=True) as caller:
            reader.execute("SELECT count(*) FROM memories")  # a long read: its transaction holds the table
            result = []
            erasing = threading.Thread(target=lambda: result.append(backend.erase(attempts=2)))
            erasing.start()
            while erasing.is_alive():
                started = time.monotonic()
                caller.execute("SELECT count(*) FROM memories")
                waits.append(time.monotonic() - started)
                time.sleep(0.02)
            erasing.join()
        [report] = result
        assert not report.erased and report.attempts == 2 and "stayed busy" in report.note
        assert backend.erase_pending()
        assert max(waits) < 1.5  # one try's wait (0.4 s at most) and a loaded machine's scheduling; 2 s before
        assert backend.erase().erased  # the reader is gone: now it runs
    finally:
        memory.close()


def schema_1_with_an_erase_pending(postgres_url: str) -> None:
    """A database as the version before the erase setting left it, with a delete not erased yet."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)")
        for statement in schema.MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 0)")
        conn.execute(
            "INSERT INTO memories(id, namespace, text, content_hash, created_at, updated_at) "
            "VALUES ('a', 'default', 'an old secret', 'h1', 0, 0), ('b', 'default', 'an old note', 'h2', 0, 0)"
        )
        conn.execute("DELETE FROM memories WHERE id = 'a'")


def test_a_database_at_schema_1_with_an_erase_pending_migrates_and_says_its_count_is_unknown(
    postgres_url: str,
) -> None:
    schema_1_with_an_erase_pending(postgres_url)
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        assert memory.backend.describe()["schema_version"] == len(schema.MIGRATIONS)
        erasure = memory.stats()["index"]["erasure"]
        assert erasure["forgotten_on_disk"] is None and erasure["forgotten_since"] is None
        memory.forget(ids=[memory.remember("a new one to forget").id])
        erasure = memory.stats()["index"]["erasure"]
        assert erasure["forgotten_on_disk"] is None and erasure["forgotten_since"] is None  # still unknown
        assert erasure["next_erase"].startswith("overdue")
        assert memory.backend.erase().erased
        assert memory.stats()["index"]["erasure"]["forgotten_on_disk"] == 0
    finally:
        memory.close()


def test_a_server_that_starts_after_a_missed_daily_erase_runs_it_shortly_after_its_start(postgres_url: str) -> None:
    from agentcache_mcp.workers import open_app

    schema_1_with_an_erase_pending(postgres_url)  # since when: unknown, so before the last 03:00
    settings = Settings(database_url=postgres_url, auto_forget_enabled=False, auto_forget_first_delay_s=0)

    async def serve() -> None:
        async with open_app(settings, embedder=HashEmbedder()) as server:
            backend = backend_of(server.memory)
            with anyio.fail_after(60):
                while backend.erase_pending():
                    await anyio.sleep(0.2)

    anyio.run(serve)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("AGENTCACHE_PG_ERASE", "weekly", "AGENTCACHE_PG_ERASE 'weekly' is invalid: expected daily, after-forget or manual"),
        ("AGENTCACHE_PG_ERASE_AT", "3pm", "AGENTCACHE_PG_ERASE_AT '3pm' is invalid: expected a time of day HH:MM"),
        ("AGENTCACHE_PG_ERASE_AT", "24:00", "AGENTCACHE_PG_ERASE_AT '24:00' is invalid: expected a time of day HH:MM"),
    ],
)
def test_an_invalid_erase_setting_stops_the_start_with_one_line(
    variable: str, value: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="^" + message):
        Settings.from_env({variable: value})
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exited:
        cli.main(["--db", "postgresql://me@db.invalid/m", "stats"])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("agentcache-mcp: invalid configuration: " + message)


def test_the_erase_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"AGENTCACHE_PG_ERASE": "After-Forget", "AGENTCACHE_PG_ERASE_AT": "3:05"})
    assert (settings.pg_erase, settings.pg_erase_at) == ("after-forget", "03:05")
    assert "AGENTCACHE_PG_ERASE" in ENV_VARIABLES and Settings().pg_erase == "daily"


def test_the_erase_command_rewrites_now_and_says_how_long_the_table_was_locked(
    harness: PostgresHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(app, "SentenceTransformerEmbedder", lambda *a, **k: HashEmbedder())
    memory = harness.open()
    remember_and_forget(memory)
    by_hand = memory.remember("a note a person forgets from the terminal").id
    memory.close()
    cli.main(["forget", by_hand, "--yes", "--db", harness.url])
    out = capsys.readouterr().out
    assert "PostgreSQL keeps their bytes in the database files until the erase (daily at 03:00 UTC" in out
    assert held(harness) == TOKENS
    cli.main(["erase", "--db", harness.url])
    out = capsys.readouterr().out
    assert out.startswith("erased: rewrote the memories table") and "2 forgotten memories" in out
    assert "the table was locked" in out and "pg_wal" in out
    assert held(harness) == []
    cli.main(["erase", "--db", harness.url, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["erased"] is False and report["note"].startswith("nothing to erase")
    assert report["erasure"]["forgotten_on_disk"] == 0


def test_the_wal_still_holds_the_forgotten_text(harness: PostgresHarness) -> None:
    """What no backend can erase, stated in the README: the write-ahead log keeps the text until its segment
    is recycled and overwritten (and so does any WAL archive, replica or backup)."""
    memory = harness.open(pg_erase="after-forget")
    remember_and_forget(memory)
    memory.close()
    assert held(harness) == []
    assert SECRET.encode() in harness.wal_bytes()


def test_statistics_never_sample_the_users_words(harness: PostgresHarness) -> None:
    memory = harness.open()
    try:
        remember_and_forget(memory)
        with psycopg.connect(harness.url, autocommit=True) as conn:
            conn.execute("ANALYZE memories")
            sampled = conn.execute(
                "SELECT attname FROM pg_stats WHERE tablename = 'memories' AND attname IN "
                "('text', 'terms', 'tags', 'metadata')"
            ).fetchall()
        assert sampled == []
    finally:
        memory.close()


def test_open_memory_on_postgres_uses_the_url(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        assert memory.backend.describe()["backend"] == "postgres"
    finally:
        memory.close()


def test_the_ui_stats_page_says_what_forgotten_memories_left_on_disk(postgres_url: str) -> None:
    from starlette.testclient import TestClient

    from agentcache_mcp import serving
    from agentcache_mcp.server import build_server

    config = Settings(database_url=postgres_url, auto_forget_enabled=False)
    memory = open_memory(config, embedder=HashEmbedder())
    try:
        memory.forget(ids=[memory.remember("a note to forget").id])
        server = App(config, memory)
        asgi = serving.http_server(build_server(config, app=server), config, "streamable-http", app=server).config.app
        with TestClient(asgi, base_url="http://127.0.0.1:8765") as client:
            page = client.get("/ui/stats").text
        assert "<dt>forgotten, still on disk</dt><dd>1 memory, since " in page
        assert "<dt>erase</dt><dd>daily at 03:00 UTC; next: " in page
    finally:
        memory.close()
