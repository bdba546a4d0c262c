"""PostgreSQL's write path: a new memory is one statement and one round trip; an import batch and an embedding
batch are a few statements whatever their size; and every promise of the slower path still holds (the namespace
lock before any read, keys in commit order, replicas remembering the same text merge, whole import batches,
nothing twice). Round trips are counted from libpq's own trace of the messages the client sent: each Sync (the
end of a parameterised statement) and each simple Query waits for the server once."""

from __future__ import annotations

import base64
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import schema
from agentcache_mcp.backends.postgres.connection import Connection, Database, lock_key
from agentcache_mcp.backends.postgres.repository import RESTORE_CHUNK_MIN
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.exchange import FORMAT, import_jsonl
from agentcache_mcp.memory.model import MemoryFilter, content_hash, new_id
from agentcache_mcp.memory.service import MemoryService

from conftest import DIM, HashEmbedder


@pytest.fixture
def store(postgres_url: str) -> Iterator[MemoryService]:
    memory = open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
    yield memory
    memory.close()


@contextmanager
def round_trips(database: Database) -> Iterator[list[str]]:
    """The frontend messages that wait for the server (Sync, Query), of every connection `database` hands out
    inside the block: libpq traces what the client sent, so nothing here guesses at the driver's behaviour."""
    sent: list[str] = []
    real = database.connection

    @contextmanager
    def traced() -> Iterator[Connection]:
        with real() as conn, tempfile.TemporaryFile("w+") as trace:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
            try:
                yield conn
            finally:
                conn.pgconn.untrace()
                trace.seek(0)
                for line in trace:
                    parts = line.split("\t")
                    if len(parts) > 2 and parts[0] == "F" and parts[2].split()[0] in ("Sync", "Query"):
                        sent.append(line.strip())

    database.connection = traced  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        del database.connection


# --- remember -----------------------------------------------------------------------------------------------


def test_a_new_memory_is_remembered_in_one_round_trip(store: MemoryService) -> None:
    store.remember("the first memory warms the pool", namespace="team")
    with round_trips(store.backend.memories.db) as sent:  # type: ignore[attr-defined]
        result = store.remember("the staging database moved to the new cluster", namespace="team")
    assert not result.deduplicated
    assert len(sent) == 1, sent
    assert [m.text for m in store.backend.memories.find(MemoryFilter(namespace="team"))] == [
        "the first memory warms the pool",
        "the staging database moved to the new cluster",
    ]


def test_remembering_the_same_text_again_merges_as_the_core_says(store: MemoryService) -> None:
    first = store.remember("deploys go out on Tuesdays", namespace="team", tags=["ops"], importance=0.3)
    again = store.remember("deploys go out on Tuesdays", namespace="team", tags=["release"], importance=0.8)
    assert again.deduplicated and again.id == first.id
    (stored,) = store.backend.memories.find(MemoryFilter(namespace="team"))
    assert stored.tags == ["ops", "release"] and stored.importance == 0.8


def test_a_supersedes_naming_no_memory_writes_nothing(store: MemoryService) -> None:
    with pytest.raises(Exception, match="not memories of namespace"):
        store.remember("the correction", namespace="team", supersedes=["NOSUCHMEMORY0000000000000"])
    assert store.backend.memories.find(MemoryFilter(namespace="team")) == []


def test_two_replicas_remembering_the_same_text_at_once_merge_into_one_memory(postgres_url: str) -> None:
    """Both calls are held at the namespace lock (taken by a third session), then let go together: one inserts,
    the other waits for its commit and merges into it; neither fails on the unique index."""
    replicas = [
        open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
        for _ in range(2)
    ]
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def remember(memory: MemoryService, tag: str) -> None:
        try:
            r = memory.remember("the on-call rota lives in the wiki", namespace="team", tags=[tag])
            results.append((r.id, r.deduplicated))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    try:
        with psycopg.connect(postgres_url) as holder:
            holder.execute(f"SELECT pg_advisory_xact_lock({lock_key('%s')})", ("ns:team",))
            threads = [
                threading.Thread(target=remember, args=(memory, tag))
                for memory, tag in zip(replicas, ["a", "b"], strict=True)
            ]
            for t in threads:
                t.start()
            with psycopg.connect(postgres_url, autocommit=True) as watcher:  # both wait for the lock
                for _ in range(400):
                    waiting = watcher.execute(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).fetchone()
                    if waiting and waiting[0] == 2:
                        break
                    threading.Event().wait(0.05)
                else:
                    pytest.fail("the two remembers never waited for the namespace lock")
            holder.commit()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert sorted(merged for _, merged in results) == [False, True]
        assert len({memory_id for memory_id, _ in results}) == 1
        (stored,) = replicas[0].backend.memories.find(MemoryFilter(namespace="team"))
        assert sorted(stored.tags) == ["a", "b"]
    finally:
        for memory in replicas:
            memory.close()


def test_keys_follow_commit_order_within_a_namespace_when_replicas_write_at_once(postgres_url: str) -> None:
    replicas = [
        open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
        for _ in range(3)
    ]
    try:

        def write(memory: MemoryService, n: int) -> None:
            for i in range(30):
                memory.remember(f"replica {n} memory {i}", namespace="team")

        threads = [threading.Thread(target=write, args=(m, n)) for n, m in enumerate(replicas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stored = replicas[0].backend.memories.find(MemoryFilter(namespace="team"))
        assert len(stored) == 90
        for n in range(3):  # each replica's own memories: in the order it wrote them
            mine = [m.text for m in stored if m.text.startswith(f"replica {n} ")]
            assert mine == [f"replica {n} memory {i}" for i in range(30)]
    finally:
        for memory in replicas:
            memory.close()


def test_a_database_at_schema_1_migrates_and_remembers_in_one_round_trip(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as old:
        old.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        old.setattr(schema, "SCHEMA_VERSION", 1)
        before = open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
        before.close()
    with psycopg.connect(postgres_url) as conn:  # as a replica of the version before wrote it
        text = "written at schema 1"
        conn.execute(
            "INSERT INTO memories (id, namespace, text, content_hash, created_at, updated_at) "
            "VALUES (%s, 'team', %s, %s, 1, 1)",
            (new_id(), text, content_hash(text)),
        )
    memory = open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
    try:
        assert memory.backend.describe()["schema_version"] == schema.SCHEMA_VERSION
        with round_trips(memory.backend.memories.db) as sent:  # type: ignore[attr-defined]
            memory.remember("written after the upgrade", namespace="team")
        assert len(sent) == 1, sent
        assert memory.remember("written at schema 1", namespace="team").deduplicated
        assert [m.text for m in memory.backend.memories.find(MemoryFilter(namespace="team"))] == [
            "written at schema 1",
            "written after the upgrade",
        ]
    finally:
        memory.close()


# --- import -------------------------------------------------------------------------------------------------


def vector_of(text: str) -> np.ndarray:
    return HashEmbedder().embed([text])[0]


def record(n: int, namespace: str = "imported", **fields: Any) -> dict[str, Any]:
    text = fields.pop("text", f"imported memory number {n} about topic {n % 7}")
    return {
        "id": f"IMPORTED{n:06d}",
        "namespace": namespace,
        "text": text,
        "tags": ["imported"],
        "importance": 0.5,
        "metadata": {"n": n},
        "created_at": "2026-01-01T00:00:00.000000Z",
        "updated_at": "2026-01-01T00:00:00.000000Z",
        "last_accessed_at": None,
        "access_count": 0,
        "expires_at": None,
        "superseded_by": None,
        "vector": {
            "model": HashEmbedder.model_id,
            "dim": DIM,
            "float32_base64": base64.b64encode(vector_of(text).astype("<f4").tobytes()).decode("ascii"),
        },
    } | fields


def write_file(path: Path, records: list[dict[str, Any]]) -> Path:
    header = {"format": FORMAT, "version": 1, "schema": 1, "embedding_model": HashEmbedder.model_id, "namespaces": "all"}
    path.write_text("\n".join(json.dumps(r) for r in [header, *records]) + "\n", encoding="utf-8")
    return path


def stored_rows(store: MemoryService) -> list[tuple[int, str, str, str | None]]:
    return [(m.key, m.id, m.namespace, m.superseded_by) for m in store.backend.memories.find(MemoryFilter(namespace=None))]


def test_an_import_batch_takes_a_few_round_trips_whatever_its_size(store: MemoryService, tmp_path: Path) -> None:
    store.remember("a memory before the import", namespace="imported")
    path = write_file(tmp_path / "batch.jsonl", [record(n) for n in range(400)])
    with round_trips(store.backend.memories.db) as sent:  # type: ignore[attr-defined]
        report = import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False)
    assert report.added == 400
    # A few per batch (BEGIN, the temporary table, the lock, the model's table, COMMIT) and two per chunk of
    # at least RESTORE_CHUNK_MIN memories (the COPY, the INSERT); row by row it was three per memory.
    assert len(sent) <= 6 * report.batches + 2 * (400 / RESTORE_CHUNK_MIN + report.batches), (len(sent), report)


def test_an_import_keeps_order_vectors_supersession_and_skips_counted_and_adds_nothing_twice(
    store: MemoryService, tmp_path: Path
) -> None:
    store.remember("imported memory number 3 about topic 3", namespace="imported")  # stored: skipped
    records = [record(n) for n in range(1100)]
    records[10]["superseded_by"] = records[11]["id"]  # a correction later in the file
    records += [record(2000, namespace="second"), record(2001, namespace="second")]
    records.insert(20, record(5000, text=records[7]["text"]))  # the same text as a line of its batch: skipped
    path = write_file(tmp_path / "many.jsonl", records)
    report = import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False)
    assert (report.added, report.skipped_existing) == (1101, 2) and report.batches >= 3

    rows = stored_rows(store)
    imported = [r for r in rows if r[1].startswith("IMPORTED")]
    order = [r[1] for r in sorted(imported)]
    expected = [r["id"] for r in records if r["id"] not in ("IMPORTED000003", "IMPORTED005000")]
    assert order == expected  # keys in file order, across batches and namespaces
    assert {r[1]: r[3] for r in imported}["IMPORTED000010"] == "IMPORTED000011"
    vectors = store.backend.embeddings.vectors_of(HashEmbedder.model_id, [r[0] for r in imported])
    assert len(vectors) == 1101
    key_of = {r[1]: r[0] for r in imported}
    assert np.allclose(vectors[key_of["IMPORTED000500"]], vector_of(record(500)["text"]), atol=1e-6)
    assert store.backend.embeddings.count_pending(HashEmbedder.model_id) == 1  # the remembered one only

    again = import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False)
    assert (again.added, again.skipped_existing) == (0, 1103)
    assert stored_rows(store) == rows


def test_an_import_indexes_each_memory_with_the_text_before_it_as_its_context(
    store: MemoryService, tmp_path: Path
) -> None:
    """The keyword index's context (the memory before in the namespace) is what the trigger writes for a
    remember: the same whether the memories came one by one or in one batch."""
    store.remember("zebra crossing near the office", namespace="imported")
    path = write_file(tmp_path / "few.jsonl", [record(n, text=f"plain note {n} quokka{n}") for n in range(5)])
    import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False)
    with psycopg.connect(store.backend.memories.db.url) as conn:  # type: ignore[attr-defined]
        rows = conn.execute(
            "SELECT text, terms = agentcache_terms(text, lag(text) OVER (ORDER BY pk)) FROM memories "
            "WHERE namespace = 'imported' ORDER BY pk"
        ).fetchall()
    assert len(rows) == 6 and all(same for _, same in rows[1:]), rows


# --- embedding writer ---------------------------------------------------------------------------------------


def test_an_embedding_batch_takes_the_same_round_trips_whatever_its_size(store: MemoryService) -> None:
    for n in range(120):
        store.remember(f"memory waiting for its vector {n}", namespace="team")
    embeddings = store.backend.embeddings
    model = HashEmbedder.model_id
    pending = embeddings.pending(model, 200)
    vectors = HashEmbedder().embed([text for _, text, _ in pending])
    embeddings.write(model, [(pending[0][0], pending[0][2], vectors[0])])  # creates the table
    counts = []
    for lo, hi in ((1, 11), (11, 120)):
        with round_trips(embeddings.db) as sent:  # type: ignore[attr-defined]
            written = embeddings.write(
                model, [(key, digest, vectors[i]) for i, (key, _, digest) in enumerate(pending) if lo <= i < hi]
            )
        assert written == hi - lo
        counts.append(len(sent))
    assert counts[0] == counts[1], counts
    assert embeddings.count_pending(model) == 0
    assert np.allclose(embeddings.vectors_of(model, [pending[50][0]])[pending[50][0]], vectors[50], atol=1e-6)


def test_a_vector_for_text_that_changed_meanwhile_is_not_written(store: MemoryService) -> None:
    store.remember("a memory", namespace="team")
    (key, _, digest), = store.backend.embeddings.pending(HashEmbedder.model_id, 10)
    written = store.backend.embeddings.write(
        HashEmbedder.model_id, [(key, "another hash", vector_of("x")), (key + 1000, digest, vector_of("y"))]
    )
    assert written == 0
    assert store.backend.embeddings.count_pending(HashEmbedder.model_id) == 1


def test_a_restore_given_one_id_twice_stores_the_first_with_its_vector(store: MemoryService) -> None:
    from agentcache_mcp.memory.model import Memory

    def item(text: str) -> tuple[Memory, tuple[str, np.ndarray]]:
        memory = Memory(0, "SAMEID", "team", text, [], 0.5, {}, 1.0, 1.0, None, 0, None, None, content_hash(text))
        return memory, (HashEmbedder.model_id, vector_of(text))

    assert store.backend.memories.restore([item("the first text"), item("the second text")]) == (1, 1)
    (stored,) = store.backend.memories.find(MemoryFilter(namespace="team"))
    assert stored.text == "the first text"
    (vector,) = store.backend.embeddings.vectors_of(HashEmbedder.model_id, [stored.key]).values()
    assert np.allclose(vector, vector_of("the first text"), atol=1e-6)


def test_a_restore_given_one_id_twice_whose_first_text_is_stored_keeps_the_second_with_its_own_vector(
    store: MemoryService,
) -> None:
    """The first row of the id is skipped (its text is stored already, under another id) and the second added:
    the vector stored with the added memory must be its own, not the skipped row's (a wrong vector whose content
    hash matches is never embedded again)."""
    from agentcache_mcp.memory.model import Memory

    store.remember("the first text", namespace="team")

    def item(text: str) -> tuple[Memory, tuple[str, np.ndarray]]:
        memory = Memory(0, "SAMEID", "team", text, [], 0.5, {}, 1.0, 1.0, None, 0, None, None, content_hash(text))
        return memory, (HashEmbedder.model_id, vector_of(text))

    assert store.backend.memories.restore([item("the first text"), item("the second text")]) == (1, 1)
    (stored,) = store.backend.memories.get("team", ["SAMEID"])
    assert stored.text == "the second text"
    vectors = store.backend.embeddings.vectors_of(HashEmbedder.model_id, [stored.key])
    assert stored.key not in vectors or np.allclose(vectors[stored.key], vector_of("the second text"), atol=1e-6)
