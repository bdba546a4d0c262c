"""A large import into PostgreSQL loads without the model's HNSW index and builds it at the end, whatever
happens meanwhile: a failed import rebuilds it in its finally, a killed one leaves it to the next start of any
backend, which builds every missing derived index. Searches stay right (exact) while it is missing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from test_postgres_writes import record, stored_rows, vector_of, write_file

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import schema
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.exchange import ImportInterrupted, import_jsonl
from agentcache_mcp.memory.model import MemoryFilter
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder

HNSW = schema.vector_table_name(HashEmbedder.model_id) + "_hnsw"
TERMS = "memories_terms"


@pytest.fixture
def store(postgres_url: str) -> Iterator[MemoryService]:
    memory = open_memory(Settings(database_url=postgres_url, auto_forget_enabled=False), embedder=HashEmbedder())
    yield memory
    memory.close()


def indexes(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {str(name) for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}


def url_of(store: MemoryService) -> str:
    return str(store.backend.memories.db.url)  # type: ignore[attr-defined]


def test_a_large_import_loads_without_the_vector_index_and_builds_it_at_the_end(
    store: MemoryService, tmp_path: Path
) -> None:
    store.remember("a memory before the import", namespace="imported")
    path = write_file(tmp_path / "large.jsonl", [record(n) for n in range(300)])
    during: list[tuple[set[str], int | None]] = []

    def progress(done: int, total: int) -> None:
        # Between batches: the indexes are gone, and a search is exact (the memory with this very vector first),
        # a keyword search too.
        assert store.backend.keywords.search("imported", ["topic"], 5, MemoryFilter(namespace="imported"), 0.0) or not done
        hits = store.backend.vectors.search("imported", vector_of(record(5)["text"]), 3, MemoryFilter(namespace="imported"))
        stored = {m.id: m.key for m in store.backend.memories.get("imported", [record(5)["id"]])}
        during.append(({HNSW, TERMS} & indexes(url_of(store)), hits[0][0] if hits and stored else None))
        if stored:
            assert hits[0][0] == stored[record(5)["id"]]

    report = import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False, progress=progress, batch_size=100)
    assert report.added == 300 and report.batches == 3
    assert [present for present, _ in during] == [set(), set(), set()]
    assert {HNSW, TERMS} <= indexes(url_of(store))
    assert len(store.backend.embeddings.vectors_of(HashEmbedder.model_id, [r[0] for r in stored_rows(store)])) == 300


def test_a_small_import_into_a_large_store_keeps_the_vector_index(store: MemoryService, tmp_path: Path) -> None:
    import_jsonl(store, write_file(tmp_path / "first.jsonl", [record(n) for n in range(100)]), namespace=None, dry_run=False, skip_invalid=False)
    path = write_file(tmp_path / "small.jsonl", [record(n) for n in range(1000, 1010)])
    present: list[bool] = []
    report = import_jsonl(
        store,
        path,
        namespace=None,
        dry_run=False,
        skip_invalid=False,
        progress=lambda d, t: present.append({HNSW, TERMS} <= indexes(url_of(store))),
    )
    assert report.added == 10 and present == [True]


def test_a_failing_import_ends_with_the_vector_index_built_and_its_rerun_adds_the_rest_once(
    store: MemoryService, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "fails.jsonl", [record(n) for n in range(300)])

    def fail_after_first_batch(done: int, total: int) -> None:
        raise RuntimeError("the disk went away")

    with pytest.raises(ImportInterrupted):
        import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False, progress=fail_after_first_batch, batch_size=100)
    assert {HNSW, TERMS} <= indexes(url_of(store)) and len(stored_rows(store)) == 100  # one whole batch
    again = import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False, batch_size=100)
    assert (again.added, again.skipped_existing) == (200, 100)
    assert HNSW in indexes(url_of(store)) and len(stored_rows(store)) == 300


def test_a_backend_opening_a_store_with_an_index_missing_builds_it(
    store: MemoryService, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import_jsonl(store, write_file(tmp_path / "some.jsonl", [record(n) for n in range(20)]), namespace=None, dry_run=False, skip_invalid=False)
    with psycopg.connect(url_of(store), autocommit=True) as conn:  # what an import killed mid-load leaves
        conn.execute(f'DROP INDEX "{HNSW}"')
        conn.execute(f"DROP INDEX {TERMS}")
    assert not {HNSW, TERMS} & indexes(url_of(store))
    with caplog.at_level(logging.WARNING):
        reopened = open_memory(Settings(database_url=url_of(store), auto_forget_enabled=False), embedder=HashEmbedder())
    try:
        assert {HNSW, TERMS} <= indexes(url_of(store))
        assert sum("building the missing index" in r.getMessage() for r in caplog.records) == 2
        assert [m.text for m in reopened.recall("imported memory number 7", namespace="imported", limit=1)] == [
            record(7)["text"]
        ]
    finally:
        reopened.close()


def test_a_backend_opening_while_an_import_loads_in_bulk_leaves_the_index_to_the_import(
    store: MemoryService, tmp_path: Path
) -> None:
    path = write_file(tmp_path / "large.jsonl", [record(n) for n in range(200)])
    seen: list[bool] = []

    def open_another(done: int, total: int) -> None:
        if not seen:
            other = open_memory(Settings(database_url=url_of(store), auto_forget_enabled=False), embedder=HashEmbedder())
            other.close()
            seen.append(HNSW in indexes(url_of(store)))

    import_jsonl(store, path, namespace=None, dry_run=False, skip_invalid=False, progress=open_another, batch_size=100)
    assert seen == [False] and HNSW in indexes(url_of(store))


KILLED_IMPORT = """
import sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.exchange import import_jsonl
from conftest import HashEmbedder

def stall(done, total):
    print("loading", flush=True)
    time.sleep(120)

memory = open_memory(Settings(database_url={url!r}, auto_forget_enabled=False), embedder=HashEmbedder())
import_jsonl(memory, Path({path!r}), namespace=None, dry_run=False, skip_invalid=False, progress=stall, batch_size=100)
"""


def test_an_import_killed_mid_load_leaves_the_indexes_to_the_next_start(store: MemoryService, tmp_path: Path) -> None:
    path = write_file(tmp_path / "killed.jsonl", [record(n) for n in range(300)])
    script = KILLED_IMPORT.format(tests=str(Path(__file__).parent), url=url_of(store), path=str(path))
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"loading"
        assert not {HNSW, TERMS} & indexes(url_of(store))  # mid-load, one batch in
    finally:
        child.kill()  # SIGKILL: no finally of its own runs
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    reopened = open_memory(Settings(database_url=url_of(store), auto_forget_enabled=False), embedder=HashEmbedder())
    try:
        assert {HNSW, TERMS} <= indexes(url_of(store)) and len(stored_rows(reopened)) == 100
    finally:
        reopened.close()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_only_sqlite_pauses_between_an_imports_batches(
    backend: str, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite lets go of its one write lock between batches so a waiting write goes first; PostgreSQL queues a
    waiting write on the namespace's lock ahead of the next batch, so a pause there only slows the import."""
    from agentcache_mcp.memory import exchange

    settings = Settings(database_url=postgres_url) if backend == "postgres" else Settings(db_path=tmp_path / "m.db")
    memory = open_memory(settings, embedder=HashEmbedder())
    slept: list[float] = []
    sleep = time.sleep

    def recorded(seconds: float) -> None:  # the import's own pauses: time.sleep is every thread's
        if sys._getframe(1).f_code.co_name == "_apply":
            slept.append(seconds)
        sleep(seconds)

    monkeypatch.setattr(exchange.time, "sleep", recorded)
    try:
        path = write_file(tmp_path / "three.jsonl", [record(n) for n in range(30)])
        report = import_jsonl(memory, path, namespace=None, dry_run=False, skip_invalid=False, batch_size=10)
        assert report.added == 30 and report.batches == 3
    finally:
        memory.close()
    assert slept == ([] if backend == "postgres" else [0.12, 0.12])
