"""A store written before the OAuth tables (schema 2 on SQLite, 3 on PostgreSQL: today's release) opens with this
version, gains them, and keeps every memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentcache_mcp.auth.state import Grant, StoredClient, StoredToken, token_hash
from agentcache_mcp.backends.sqlite import SqliteBackend
from agentcache_mcp.backends.sqlite import schema as sqlite_schema
from agentcache_mcp.memory.model import MemoryFilter, NewMemory, content_hash, new_id
from agentcache_mcp.memory.ports import StorageBackend
from agentcache_mcp.memory.service import merge_remembered

MODEL = "test-hash-embedder"


def put(backend: StorageBackend, text: str) -> str:
    new = NewMemory(new_id(), "home", text, content_hash(text), [], 0.5, {}, time.time(), None)
    return backend.memories.remember(new, merge_remembered)[0].id


def use_oauth_state(backend: StorageBackend) -> None:
    state = backend.auth_state
    state.put_client(StoredClient("client-a", {"client_name": "Claude"}, 1.0))
    state.create_grant(Grant("grant-a", "client-a", ("memory",), None, 1.0, None))
    state.put_token(StoredToken(token_hash("secret"), "access", "grant-a", "client-a", ("memory",), None, None))
    assert state.get_token(token_hash("secret"), "access", 2.0) is not None


def test_a_sqlite_store_of_the_release_before_gains_the_oauth_tables_and_keeps_its_memories(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as old:
        old.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:2])
        old.setattr(sqlite_schema, "SCHEMA_VERSION", 2)
        before = SqliteBackend(db_path, MODEL)
        kept = put(before, "the lighthouse keeper's notebook")
        tables = before.db.read(lambda db: [n for (n,) in db.execute("SELECT name FROM sqlite_master")])
        assert not any(name.startswith("oauth_") for name in tables)
        before.close()

    store = SqliteBackend(db_path, MODEL)
    try:
        assert store.schema_version == sqlite_schema.SCHEMA_VERSION == 3
        versions = store.db.read(lambda db: db.execute("SELECT version FROM schema_migrations").fetchall())
        assert versions == [(1,), (2,), (3,)]
        assert [m.id for m in store.memories.find(MemoryFilter("home"))] == [kept]
        assert store.keywords.check()
        use_oauth_state(store)
    finally:
        store.close()


def test_a_postgres_store_of_the_release_before_gains_the_oauth_tables_and_keeps_its_memories(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.postgres import PostgresBackend
    from agentcache_mcp.backends.postgres import schema as pg_schema

    with monkeypatch.context() as old:
        old.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:3])
        old.setattr(pg_schema, "SCHEMA_VERSION", 3)
        before = PostgresBackend(postgres_url, MODEL, pool_size=2)
        kept = put(before, "the lighthouse keeper's notebook")
        tables = before.db.read(lambda db: db.execute("SELECT to_regclass('oauth_tokens')").fetchone()[0])
        assert tables is None
        before.close()

    store = PostgresBackend(postgres_url, MODEL, pool_size=2)
    try:
        assert store.schema_version == pg_schema.SCHEMA_VERSION >= 4
        versions = store.db.read(lambda db: db.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall())
        assert versions == [(v,) for v in range(1, pg_schema.SCHEMA_VERSION + 1)]
        assert [m.id for m in store.memories.find(MemoryFilter("home"))] == [kept]
        use_oauth_state(store)
    finally:
        store.close()
