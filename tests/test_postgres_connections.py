"""How the PostgreSQL backend behaves when connections are scarce or go away: every pooled connection busy, a
transaction-mode pooler (PgBouncer) in front of the server, the server restarted under load."""

from __future__ import annotations

import time

import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres.connection import POOL_WAIT_S
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.ports import StoreBusy

from conftest import HashEmbedder


def test_a_call_with_every_pooled_connection_busy_ends_within_the_bounded_wait_saying_what_to_raise(
    postgres_url: str,
) -> None:
    memory = open_memory(Settings(database_url=postgres_url, pg_pool_size=2), embedder=HashEmbedder())
    try:
        backend = memory.backend
        assert isinstance(backend, PostgresBackend)
        memory.remember("written while a connection was free")
        with backend.db.connection(), backend.db.connection():  # both of the pool's connections, held
            started = time.monotonic()
            with pytest.raises(StoreBusy) as refused:
                memory.remember("written while every connection is busy")
            waited = time.monotonic() - started
        message = str(refused.value)
        assert "\n" not in message
        assert "every one of this process's 2 connections is in use" in message, message
        assert "AGENTCACHE_PG_POOL_SIZE" in message and "nothing was written" in message, message
        assert POOL_WAIT_S - 0.5 <= waited < POOL_WAIT_S + 10, f"{waited:.1f} s"
        # The connections are free again: the next call goes through.
        memory.remember("written once the connections were handed back")
        assert memory.stats()["memories"] == 2
    finally:
        memory.close()
