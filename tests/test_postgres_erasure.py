"""What PostgreSQL keeps of a forgotten memory, measured on the bundled server's files, and what the backend's
erase (checkpoint / maintenance) removes. The contract suite asserts the promise; these tests pin down why
the backend needs VACUUM FULL, and what it cannot erase (the WAL)."""

from __future__ import annotations

import psycopg
import pytest
from contract.harness import PostgresHarness

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.service import MemoryService

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


def test_a_delete_leaves_the_text_in_the_files_until_the_erase(harness: PostgresHarness) -> None:
    memory = harness.open()
    try:
        remember_and_forget(memory)
        assert held(harness) == TOKENS  # a dead tuple: the row, its terms and the next row's old version
        backend = memory.backend
        assert isinstance(backend, PostgresBackend) and backend.erase_pending()
        with psycopg.connect(harness.url, autocommit=True) as conn:
            conn.execute("VACUUM memories")
        # Plain VACUUM is not enough: the GIN index keeps a deleted memory's lexemes as keys.
        assert held(harness) != []
        assert backend.erase() is True
        assert held(harness) == []
        assert not backend.erase_pending() and backend.erase() is False  # nothing new to erase
        assert memory.recall("routine garden note")  # the rest is intact
    finally:
        memory.close()


def test_the_shutdown_checkpoint_erases(harness: PostgresHarness) -> None:
    memory = harness.open()
    remember_and_forget(memory)
    memory.close()  # checkpoint(): the erase
    assert held(harness) == []


def test_the_wal_still_holds_the_forgotten_text(harness: PostgresHarness) -> None:
    """What no backend can erase, stated in the README: the write-ahead log keeps the text until its segment
    is recycled and overwritten (and so does any WAL archive, replica or backup)."""
    memory = harness.open()
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
