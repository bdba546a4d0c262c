"""The flows both SQL backends share (agentcache_mcp/backends/sql.py), run on each backend: what a write
returns is what is stored, lists of any length, and the shared remember and restore flows on PostgreSQL
(whose repository still runs its own copies of the two; these tests hold the flows it is to adopt)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres.repository import POSTGRES
from agentcache_mcp.backends.sql import SqlMemories, filter_sql
from agentcache_mcp.backends.sqlite.repository import SQLITE
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.model import Memory, MemoryEdit, MemoryFilter, NewMemory, content_hash, new_id
from agentcache_mcp.memory.ports import UnknownMemories
from agentcache_mcp.memory.service import MemoryService, merge_remembered

from conftest import DIM, HashEmbedder


@pytest.fixture(params=["sqlite", "postgres"])
def memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MemoryService]:
    if request.param == "postgres":
        settings = Settings(database_url=request.getfixturevalue("postgres_url"))
    else:
        settings = Settings(db_path=tmp_path / "m.db")
    service = open_memory(settings, embedder=HashEmbedder())
    yield service
    service.close()


def repository(memory: MemoryService) -> SqlMemories[Any]:
    repo = memory.backend.memories
    assert isinstance(repo, SqlMemories)
    return repo


def new(text: str, namespace: str = "ns", tags: tuple[str, ...] = (), supersedes: tuple[str, ...] = ()) -> NewMemory:
    now = time.time()
    return NewMemory(
        id=new_id(),
        namespace=namespace,
        text=text,
        content_hash=content_hash(text),
        tags=list(tags),
        importance=0.5,
        metadata={"source": "test"},
        created_at=now,
        expires_at=None,
        supersedes=supersedes,
    )


def test_remember_returns_the_row_as_stored_when_it_inserts_and_when_it_merges(memory: MemoryService) -> None:
    repo = repository(memory)
    first, merged = repo.remember(new("the deploy key rotates monthly", tags=("ops",)), merge_remembered)
    assert not merged and repo.get("ns", [first.id]) == [first]
    again, merged = repo.remember(new("the deploy key rotates monthly", tags=("keys",)), merge_remembered)
    assert merged and again.key == first.key and sorted(again.tags) == ["keys", "ops"]
    assert repo.get("ns", [first.id]) == [again]


def test_edit_returns_the_row_as_stored(memory: MemoryService) -> None:
    repo = repository(memory)
    stored, _ = repo.remember(new("lunch is at noon"), merge_remembered)
    edited = repo.edit("ns", stored.id, lambda m: MemoryEdit(tags=["food"], importance=0.9, expires_at=None))
    assert edited is not None and edited.tags == ["food"] and edited.importance == 0.9
    assert repo.get("ns", [stored.id]) == [edited]
    assert repo.edit("other", stored.id, lambda m: MemoryEdit([], 0.1, None)) is None


def test_lists_of_ids_have_no_length_limit(memory: MemoryService) -> None:
    """SQLite once read id lists in chunks of 500 bound parameters; one JSON parameter has no such limit."""
    repo = repository(memory)
    target, _ = repo.remember(new("the old address"), merge_remembered)
    correction, _ = repo.remember(new("the new address", supersedes=(target.id,)), merge_remembered)
    ids = [new_id() for _ in range(1_200)] + [correction.id]
    assert repo.superseding(ids) == [(correction.id, "ns")]
    assert [m.id for m in repo.get("ns", ids)] == [correction.id]
    with pytest.raises(UnknownMemories):
        repo.remember(new("a third address", supersedes=(target.id, *ids[:600])), merge_remembered)


def test_every_filter_field_selects_the_same_memories_on_both_backends(memory: MemoryService) -> None:
    repo = repository(memory)
    a, _ = repo.remember(new("alpha", tags=("x", "y")), merge_remembered)
    b, _ = repo.remember(new("beta", tags=("x",)), merge_remembered)
    c, _ = repo.remember(new("gamma", supersedes=(a.id,)), merge_remembered)
    now = time.time() + 1
    cases = {
        MemoryFilter(namespace="ns", tags=("x", "y")): [a.id],
        MemoryFilter(namespace="ns", ids=(b.id, c.id)): [b.id, c.id],
        MemoryFilter(namespace="ns", key_after=a.key, key_upto=b.key): [b.id],
        MemoryFilter(namespace="ns", live_at=now): [b.id, c.id],
        MemoryFilter(namespace="ns", superseded_by=c.id): [a.id],
        MemoryFilter(namespace="ns", unused_since=now, max_importance=0.5, created_before=now): [a.id, b.id, c.id],
        MemoryFilter(namespace="ns", expired_at=now): [],
        MemoryFilter(namespace=None, created_since=a.created_at, created_until=b.created_at): [a.id, b.id],
    }
    for where, expected in cases.items():
        assert [m.id for m in repo.find(where)] == expected, where


def test_the_dialects_differ_only_in_how_they_write_a_parameter_a_list_and_a_tag_test() -> None:
    where = MemoryFilter(namespace="ns", key_after=3, live_at=1.0, unused_since=2.0)
    sqlite_clause, sqlite_params = filter_sql(where, SQLITE)
    postgres_clause, postgres_params = filter_sql(where, POSTGRES)
    assert sqlite_params == postgres_params
    assert postgres_clause == sqlite_clause.replace("?", "%s").replace("max(", "greatest(")
    assert filter_sql(MemoryFilter(namespace=None), SQLITE) == ("TRUE", [])


# --- the shared flows on PostgreSQL ------------------------------------------------------------------------


def test_the_shared_remember_flow_locks_merges_and_supersedes_on_postgres(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        repo = repository(memory)
        first, merged = SqlMemories.remember(repo, new("the api lives on port 8080"), merge_remembered)
        assert not merged and repo.get("ns", [first.id]) == [first]
        again, merged = SqlMemories.remember(repo, new("the api lives on port 8080", tags=("net",)), merge_remembered)
        assert merged and again.key == first.key and again.tags == ["net"]
        fix, _ = SqlMemories.remember(repo, new("the api lives on port 9090", supersedes=(first.id,)), merge_remembered)
        assert fix.key > first.key and repo.get("ns", [first.id])[0].superseded_by == fix.id
        with pytest.raises(UnknownMemories):
            SqlMemories.remember(repo, new("nothing", supersedes=(new_id(),)), merge_remembered)
        assert [m.text for m in repo.find(MemoryFilter(namespace="ns"))] == [
            "the api lives on port 8080",
            "the api lives on port 9090",
        ]
    finally:
        memory.close()


def test_postgres_restore_skips_a_duplicate_and_stores_the_vectors_in_the_models_table(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        repo = repository(memory)
        now = time.time()
        vector = np.linspace(-1, 1, DIM, dtype=np.float32)
        rows = [
            Memory(0, new_id(), ns, text, ["t"], 0.7, {}, now, now, None, 2, None, None, content_hash(text))
            for ns, text in [("a", "one"), ("b", "two"), ("a", "one")]  # the third is a duplicate: skipped
        ]
        added, skipped = repo.restore([(m, ("test-hash-embedder", vector)) for m in rows])  # its own, by COPY
        assert (added, skipped) == (2, 1)
        [stored] = repo.find(MemoryFilter(namespace="b"))
        assert stored.id == rows[1].id and stored.access_count == 2 and stored.tags == ["t"]
        vectors = memory.backend.embeddings.vectors_of("test-hash-embedder", [stored.key])
        np.testing.assert_allclose(vectors[stored.key], vector)
    finally:
        memory.close()
