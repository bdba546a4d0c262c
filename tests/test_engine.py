"""The engine end to end with the fake embedder: remember, recall, forget, auto_forget, the vector index."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest
from contract.test_unembedded_recall import ANSWER, QUESTION, remember_embedded

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import EmbeddingModelError
from agentcache_mcp.memory import recall as recall_pipeline
from agentcache_mcp.memory.model import Hit
from agentcache_mcp.memory.service import MemoryService
from agentcache_mcp.memory.validation import InvalidInput

from conftest import HashEmbedder


def ids(hits) -> list[str]:  # type: ignore[no-untyped-def]
    return [h.id for h in hits]


def test_remember_then_recall_by_keyword_before_any_embedding(engine: MemoryService) -> None:
    r = engine.remember("The deploy key lives in the team vault", namespace="work", tags=["ops"])
    assert engine.pending_embeddings() == 1
    hits = engine.recall("where is the deploy key?", namespace="work")
    assert ids(hits) == [r.id]
    hit = hits[0]
    assert hit.text == "The deploy key lives in the team vault"
    assert hit.tags == ["ops"] and hit.namespace == "work" and hit.importance == 0.5
    assert hit.created_at.endswith("Z") and hit.score > 0


def test_dedup_returns_existing_id_and_merges(engine: MemoryService) -> None:
    first = engine.remember("Alice prefers tea", namespace="ns", tags=["a"], importance=0.3)
    second = engine.remember("  alice   PREFERS tea ", namespace="ns", tags=["b"], importance=0.9)
    assert second.id == first.id and second.deduplicated and not first.deduplicated
    [hit] = engine.recall("alice tea", namespace="ns")
    assert hit.tags == ["a", "b"] and hit.importance == 0.9
    other = engine.remember("Alice prefers tea", namespace="other")
    assert other.id != first.id and not other.deduplicated


def test_namespace_isolation(engine: MemoryService) -> None:
    engine.remember("project phoenix launches in may", namespace="alpha")
    engine.embed_pending()
    assert engine.recall("phoenix launch", namespace="beta") == []
    assert len(engine.recall("phoenix launch", namespace="alpha")) == 1


def test_vector_recall_finds_a_memory_keywords_miss(engine: MemoryService) -> None:
    # The fake embedder maps shared words to shared dimensions; make the query share no indexed *term*
    # with the target (stemmed keyword search misses) but share words with it after lower-casing.
    target = engine.remember("zebra crossing outside office", namespace="ns")
    engine.remember("completely unrelated gardening note", namespace="ns")
    engine.embed_pending()
    assert engine.pending_embeddings() == 0
    hits = engine.recall("zebra", namespace="ns")
    assert hits[0].id == target.id
    vector_only = engine.recall("ZEBRA!!", namespace="ns")
    assert vector_only and vector_only[0].id == target.id


def test_recall_filters_tags_and_time(engine: MemoryService) -> None:
    a = engine.remember("meeting notes about budget", namespace="ns", tags=["work", "q3"])
    engine.remember("budget for holiday trip", namespace="ns", tags=["personal"])
    engine.embed_pending()
    assert ids(engine.recall("budget", namespace="ns", tags=["work"])) == [a.id]
    assert ids(engine.recall("budget", namespace="ns", tags=["work", "q3"])) == [a.id]
    assert engine.recall("budget", namespace="ns", tags=["work", "personal"]) == []
    assert len(engine.recall("budget", namespace="ns", since="2000-01-01")) == 2
    assert engine.recall("budget", namespace="ns", until="2000-01-01T00:00:00Z") == []
    with pytest.raises(InvalidInput, match="ISO 8601"):
        engine.recall("budget", namespace="ns", since="yesterday")


def test_limit_is_validated_and_respected(engine: MemoryService) -> None:
    for i in range(15):
        engine.remember(f"note number {i} about cats", namespace="ns")
    assert len(engine.recall("cats", namespace="ns", limit=3)) == 3
    for bad in (0, 101, -1):
        with pytest.raises(InvalidInput, match="limit"):
            engine.recall("cats", namespace="ns", limit=bad)


def test_recall_buffers_access_stats_and_the_flush_writes_them(engine: MemoryService) -> None:
    r = engine.remember("the wifi password is on the fridge", namespace="ns")
    engine.recall("wifi password", namespace="ns")
    engine.recall("wifi password", namespace="ns")
    [row] = engine.backend.memories.get(None, [r.id])
    assert row.access_count == 0  # a recall writes nothing: no disk sync on the read path
    assert engine.flush_accesses() == 1
    [row] = engine.backend.memories.get(None, [r.id])
    assert row.access_count == 2 and row.last_accessed_at is not None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "   "}, "empty"),
        ({"text": "x" * 40_000}, "limit"),
        ({"text": "a\x00b"}, "NUL"),
        ({"text": "bad \ud800 surrogate"}, "surrogate"),
        ({"namespace": "../etc"}, "namespace"),
        ({"namespace": "a/b"}, "namespace"),
        ({"namespace": "with space"}, "namespace"),
        ({"namespace": "x" * 200}, "namespace"),
        ({"tags": ["t"] * 1 + [f"t{i}" for i in range(40)]}, "at most 32 tags"),
        ({"tags": [""]}, "empty"),
        ({"tags": "notalist"}, "list"),
        ({"importance": 1.5}, "between 0 and 1"),
        ({"importance": float("nan")}, "between 0 and 1"),
        ({"ttl_days": 0}, "positive"),
        ({"ttl_days": -3}, "positive"),
        ({"metadata": {"nested": {"a": 1}}}, "flat"),
        ({"metadata": {"n": None}}, "flat"),
        ({"metadata": {"x": float("inf")}}, "finite"),
        ({"metadata": ["not", "a", "dict"]}, "object"),
    ],
)
def test_remember_rejects_bad_input_clearly(engine: MemoryService, kwargs: dict, message: str) -> None:
    args = {"text": "valid text", "namespace": "ns", **kwargs}
    with pytest.raises(InvalidInput, match=message):
        engine.remember(**args)


def test_metadata_is_returned_as_given(engine: MemoryService) -> None:
    meta = {"dia_id": "D1:3", "n": 3, "ratio": 0.25, "flag": True, "unicode": "ça va 🙂"}
    engine.remember("metadata carrier", namespace="ns", metadata=meta)
    [hit] = engine.recall("metadata carrier", namespace="ns")
    assert hit.metadata == meta


def test_forget_by_ids_leaves_no_trace(engine: MemoryService) -> None:
    r = engine.remember("secret launch codes", namespace="ns")
    engine.embed_pending()
    assert len(engine.backend.vectors) == 1
    result = engine.forget(ids=[r.id], namespace="ns")
    assert result.deleted == [r.id] and not result.dry_run
    assert engine.recall("secret launch codes", namespace="ns") == []
    assert engine.backend.db.read(lambda db: db.execute("SELECT count(*) FROM memories_fts").fetchone()[0]) == 0
    assert (
        engine.backend.db.read(
            lambda db: db.execute("SELECT count(*) FROM memories_fts WHERE memories_fts MATCH 'secret'").fetchone()[0]
        )
        == 0
    )
    assert len(engine.backend.vectors) == 0
    again = engine.forget(ids=[r.id], namespace="ns")  # already gone: nothing to delete, no error
    assert again.deleted == [] and again.not_found == [r.id]


def test_forget_by_filter_defaults_to_dry_run(engine: MemoryService) -> None:
    keep = engine.remember("keep me", namespace="ns", tags=["keep"])
    drop = engine.remember("drop me", namespace="ns", tags=["tmp"])
    preview = engine.forget(namespace="ns", tags=["tmp"])
    assert preview.dry_run and preview.deleted == [drop.id]
    assert len(engine.backend.memories.get(None, [drop.id])) == 1
    done = engine.forget(namespace="ns", tags=["tmp"], dry_run=False)
    assert done.deleted == [drop.id] and not done.dry_run
    assert engine.backend.memories.get(None, [drop.id]) == []
    assert len(engine.backend.memories.get(None, [keep.id])) == 1


def test_forget_older_than_days(engine: MemoryService) -> None:
    old = engine.remember("ancient history", namespace="ns")
    engine.backend.db.write(
        lambda db: db.execute("UPDATE memories SET created_at = ? WHERE id = ?", (time.time() - 40 * 86400, old.id))
    )
    engine.remember("fresh news", namespace="ns")
    assert engine.forget(namespace="ns", older_than_days=30).deleted == [old.id]


def test_forget_needs_ids_or_a_filter(engine: MemoryService) -> None:
    with pytest.raises(InvalidInput, match="needs ids"):
        engine.forget()
    with pytest.raises(InvalidInput, match="not both"):
        engine.forget(ids=["x"], tags=["a"])


def test_auto_forget_expired_rule(engine: MemoryService) -> None:
    r = engine.remember("temporary code 1234", namespace="ns", ttl_days=1)
    engine.remember("permanent fact", namespace="ns")
    later = time.time() + 2 * 86400
    dry = engine.auto_forget(dry_run=True, now=later)
    assert dry.expired == [r.id] and len(engine.backend.memories.get(None, [r.id])) == 1
    done = engine.auto_forget(now=later)
    assert done.expired == [r.id] and engine.backend.memories.get(None, [r.id]) == []


def test_expired_memories_are_never_recalled(engine: MemoryService) -> None:
    r = engine.remember("short lived token", namespace="ns", ttl_days=1)
    engine.backend.db.write(
        lambda db: db.execute("UPDATE memories SET expires_at = ? WHERE id = ?", (time.time() - 1, r.id))
    )
    engine.embed_pending()
    assert engine.recall("short lived token", namespace="ns") == []


def test_auto_forget_near_duplicate_rule(engine: MemoryService) -> None:
    older = engine.remember("the office wifi password is hunter2", namespace="ns")
    newer = engine.remember("the office wifi password is hunter2!", namespace="ns")  # same words: cosine 1
    other = engine.remember("lunch is at noon on fridays", namespace="ns")
    engine.embed_pending()
    dry = engine.auto_forget(dry_run=True)
    assert dry.superseded == [older.id]
    assert {h.id for h in engine.recall("wifi password", namespace="ns", limit=2)} == {older.id, newer.id}
    done = engine.auto_forget()
    assert done.superseded == [older.id]
    [row] = engine.backend.memories.get(None, [older.id])
    assert row.superseded_by == newer.id  # marked, not deleted
    after = [h.id for h in engine.recall("wifi password", namespace="ns")]
    assert after[0] == newer.id and older.id not in after
    assert engine.recall("lunch fridays", namespace="ns")[0].id == other.id
    assert engine.auto_forget().superseded == []  # already checked: the next sweep has nothing new


def test_near_duplicates_in_other_namespaces_are_not_superseded(engine: MemoryService) -> None:
    engine.remember("same words here", namespace="a")
    engine.remember("same words here!", namespace="b")
    engine.embed_pending()
    assert engine.auto_forget().superseded == []


def test_auto_forget_low_importance_rule(engine: MemoryService) -> None:
    stale = engine.remember("trivia nobody asked for", namespace="ns", importance=0.1)
    recalled = engine.remember("trivia someone asked for", namespace="ns", importance=0.1)
    important = engine.remember("important old fact", namespace="ns", importance=0.9)
    assert engine.recall("someone", namespace="ns", limit=1)[0].id == recalled.id
    old = time.time() - 200 * 86400
    engine.backend.db.write(lambda db: db.execute("UPDATE memories SET created_at = ?, updated_at = ?", (old, old)))
    dry = engine.auto_forget(dry_run=True)
    assert dry.low_importance == [stale.id]
    assert engine.auto_forget().low_importance == [stale.id]
    remaining = {r.id for r in engine.backend.memories.get(None, [stale.id, recalled.id, important.id])}
    assert remaining == {recalled.id, important.id}


def test_thresholds_are_configurable(db_path: Path) -> None:
    eng = open_memory(Settings(db_path=db_path, low_importance=0.5, low_importance_age_days=1), embedder=HashEmbedder())
    try:
        r = eng.remember("middling note", namespace="ns", importance=0.4)
        old = time.time() - 2 * 86400
        eng.backend.db.write(lambda db: db.execute("UPDATE memories SET created_at = ?, updated_at = ?", (old, old)))
        assert eng.auto_forget().low_importance == [r.id]
    finally:
        eng.close()


def test_second_engine_on_same_file_sees_writes_and_vectors(db_path: Path) -> None:
    a = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    b = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    try:
        b.load_vectors()
        r = a.remember("kiwi orchard in the south", namespace="ns")
        assert ids(b.recall("kiwi orchard", namespace="ns")) == [r.id]  # keyword, before any vector
        a.embed_pending()
        assert r.id in ids(b.recall("KIWI", namespace="ns"))
        assert len(b.backend.vectors) == 1
        a.forget(ids=[r.id], namespace="ns")
        assert b.recall("kiwi orchard", namespace="ns") == []
        assert len(b.backend.vectors) == 0  # the delete reached b's vector index through the change log
    finally:
        a.close()
        b.close()


def test_the_vector_index_reads_the_change_log_only_after_a_commit(db_path: Path) -> None:
    engine = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    other = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    statements: list[str] = []
    try:
        engine.load_vectors()
        engine.backend.vectors.db._reader.set_trace_callback(statements.append)
        engine.backend.vectors.refresh()
        statements.clear()
        engine.backend.vectors.refresh()  # nothing committed since: one pragma, no change-log query
        assert not [s for s in statements if "changes" in s]
        r = engine.remember("kiwi orchard in the south", namespace="ns")
        engine.embed_pending()  # this process's own writer commits: the reader's data_version moves
        assert len(engine.backend.vectors) == 1
        assert any("changes" in s for s in statements)
        other.remember("kiwi grove up north", namespace="ns")
        other.embed_pending()  # another connection's commit
        assert len(other.backend.vectors) == 2 and r.id in ids(engine.recall("kiwi", namespace="ns"))
        assert len(engine.backend.vectors) == 2
    finally:
        engine.close()
        other.close()


def test_a_forget_committed_while_the_change_log_is_read_is_not_skipped(db_path: Path) -> None:
    # The data_version that marks the log as read must be the one taken before reading it: a forget another
    # connection commits just after the (empty) log read must still reach the index at the next refresh.
    engine = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    other = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    try:
        doomed = other.remember("kiwi orchard in the south", namespace="ns")
        other.embed_pending()
        from agentcache_mcp.backends.sqlite.vectors import MatrixVectors

        vectors = engine.backend.vectors
        assert isinstance(vectors, MatrixVectors)
        vectors.load()
        key = vectors.db.read(lambda db: db.execute("SELECT pk FROM memories WHERE id = ?", (doomed.id,)).fetchone()[0])
        assert vectors.matrix is not None and key in vectors.matrix
        since = vectors.changes.since
        armed = [True]

        def since_then_forget(seq: int, limit: int = 10_000) -> tuple[list[tuple[int, int, str]], bool]:
            found = since(seq, limit)
            if armed and not found[0]:
                armed.clear()
                other.forget(ids=[doomed.id], namespace="ns")  # commits after the log was read to its end
            return found

        vectors.changes.since = since_then_forget  # type: ignore[method-assign]
        engine.remember("an unrelated write, so the next refresh reads the log", namespace="ns")
        vectors.refresh()
        assert not armed  # the forget ran inside that refresh
        vectors.refresh()
        assert key not in vectors.matrix
        assert key not in vectors.vectors("ns")[0].tolist()
    finally:
        engine.close()
        other.close()


def test_data_version_is_unknown_where_reads_share_the_writers_connection() -> None:
    from agentcache_mcp.backends.sqlite.connection import Database

    database = Database(Path(":memory:"))
    try:
        assert database.data_version() is None
    finally:
        database.close()


def test_pruned_change_log_triggers_full_reload(db_path: Path) -> None:
    a = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    b = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    try:
        b.load_vectors()
        for i in range(5):
            a.remember(f"memory {i} about rivers", namespace="ns")
        a.embed_pending()
        a.backend.changes.prune(keep_last=1)
        b.sync_vectors()
        assert len(b.backend.vectors) == 5
    finally:
        a.close()
        b.close()


def test_verify_index_reports_and_loads(engine: MemoryService) -> None:
    engine.remember("one", namespace="ns")
    engine.remember("two", namespace="ns")
    report = engine.verify_index()
    assert report.memories == 2 and report.pending_embeddings == 2 and not report.fts_rebuilt
    engine.embed_pending()
    assert engine.verify_index().vectors_loaded == 2


def test_vectors_from_another_model_are_not_mixed(db_path: Path) -> None:
    a = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    a.remember("model switch test", namespace="ns")
    a.embed_pending()
    a.close()

    class OtherModel(HashEmbedder):
        model_id = "another-model"

    b = open_memory(Settings(db_path=db_path), embedder=OtherModel(dim=32))
    try:
        report = b.verify_index()
        assert report.vectors_loaded == 0 and report.pending_embeddings == 1
        assert b.embed_pending() == 1
        assert b.backend.vectors.dim == 32 and len(b.backend.vectors) == 1
    finally:
        b.close()


def test_stats(engine: MemoryService) -> None:
    engine.remember("a", namespace="x")
    engine.remember("b", namespace="y")
    engine.remember("c", namespace="y")
    stats = engine.stats()
    assert stats["memories"] == 3 and stats["namespaces"] == {"x": 1, "y": 2}
    assert stats["pending_embeddings"] == 3 and stats["embedding_model"] == "test-hash-embedder"
    assert stats["db_path"].endswith("memory.db")


def test_namespace_with_a_trailing_newline_is_refused(engine: MemoryService) -> None:
    with pytest.raises(InvalidInput, match="namespace"):
        engine.remember("text", namespace="ns\n")


def test_a_date_only_until_covers_that_whole_day(engine: MemoryService) -> None:
    from datetime import UTC, datetime

    r = engine.remember("a note written today", namespace="ns")
    today = datetime.now(UTC).date().isoformat()
    assert ids(engine.recall("note", namespace="ns", until=today)) == [r.id]
    assert ids(engine.recall("note", namespace="ns", since=today, until=today)) == [r.id]


@pytest.mark.parametrize("until", ["9999-12-31", "2026-W05-6", "20260131", "0001-01-01"])
def test_any_iso_date_is_a_valid_until(engine: MemoryService, until: str) -> None:
    engine.recall("note", namespace="ns", until=until)  # a result, never an unhandled error


def test_a_date_only_until_in_week_form_covers_the_day() -> None:
    from agentcache_mcp.memory.validation import parse_time

    assert parse_time("2026-W05-6", "until", end_of_day=True) == parse_time("2026-01-31T23:59:59.999999Z", "until")


@pytest.mark.parametrize("since", ["10000-01-01", "2026-13-01", "yesterday"])
def test_out_of_range_times_are_clear_errors(engine: MemoryService, since: str) -> None:
    with pytest.raises(InvalidInput, match="ISO 8601"):
        engine.recall("note", namespace="ns", since=since)


# --- memories without a vector yet (tests/contract/test_unembedded_recall.py holds the promise) ----------


class RecordingEmbedder(HashEmbedder):
    """The fake model, remembering the texts of each call; it fails, or takes `delay_s`, on memories' texts."""

    def __init__(self, fail_on_memories: bool = False, delay_s: float = 0.0) -> None:
        super().__init__()
        self.texts: list[list[str]] = []
        self.fail_on_memories = fail_on_memories
        self.delay_s = delay_s

    def embed(self, texts: list[str]) -> np.ndarray:
        self.texts.append(list(texts))
        if texts != [QUESTION]:
            if self.fail_on_memories:
                raise EmbeddingModelError("the model ran out of memory")
            time.sleep(self.delay_s)
        return super().embed(texts)


def engine_with(db_path: Path, embedder: HashEmbedder, recall_embed_max: int, **limits: float) -> MemoryService:
    engine = open_memory(Settings(db_path=db_path), embedder=embedder)
    engine.limits = dataclasses.replace(engine.limits, recall_embed_max=recall_embed_max, **limits)
    return engine


def test_a_recall_embeds_at_most_its_bound_of_unembedded_candidates_best_first_and_none_twice(db_path: Path) -> None:
    embedder = RecordingEmbedder()
    engine = engine_with(db_path, embedder, recall_embed_max=1, recall_embed_wait_s=60.0)
    try:
        remember_embedded(engine)
        for i in range(4):
            engine.remember(f"wifi note {i} from the hotel")  # one word of the question: lower BM25
        answer = engine.remember(ANSWER).id
        embedder.texts.clear()
        assert engine.recall(QUESTION, limit=3)[0].id == answer
        assert embedder.texts == [[QUESTION], [ANSWER]]  # the query, then the best keyword match only
        embedder.texts.clear()
        assert engine.recall(QUESTION, limit=3)[0].id == answer
        assert embedder.texts == [[QUESTION]]  # kept from the first recall
        assert engine.pending_embeddings() == 5  # and never written: the writer stores vectors
        engine.embed_pending()
        embedder.texts.clear()
        assert engine.recall(QUESTION, limit=3)[0].id == answer
        assert embedder.texts == [[QUESTION]]  # every candidate has a vector: nothing more is embedded
    finally:
        engine.close()


def position(hits: list[Hit], memory_id: str) -> int:
    return [h.id for h in hits].index(memory_id)


def test_past_the_bound_a_memory_without_a_vector_gets_the_median_cosine_not_zero(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedder = RecordingEmbedder()
    engine = engine_with(db_path, embedder, recall_embed_max=0)
    try:
        remember_embedded(engine)
        answer = engine.remember(ANSWER).id
        embedder.texts.clear()
        with_stand_in = position(engine.recall(QUESTION, limit=5), answer)
        assert embedder.texts == [[QUESTION]]
        monkeypatch.setattr(recall_pipeline, "stand_in_cosines", lambda known, keys: {})
        as_zero = position(engine.recall(QUESTION, limit=5), answer)
        assert with_stand_in < as_zero and with_stand_in < 3
    finally:
        engine.close()


def test_a_recall_still_answers_when_embedding_its_candidates_fails(db_path: Path) -> None:
    engine = engine_with(db_path, RecordingEmbedder(), recall_embed_max=8)
    try:
        remember_embedded(engine)
        engine.remember(ANSWER)
        engine.embedder = RecordingEmbedder(fail_on_memories=True)
        outcome = engine.recall_outcome(QUESTION, limit=5)
        assert outcome.retrieval == "hybrid"
        engine.limits = dataclasses.replace(engine.limits, recall_embed_max=0)
        assert outcome.hits == engine.recall(QUESTION, limit=5)  # ranked with the stand-in cosine
    finally:
        engine.close()


def test_a_recall_waits_for_a_slow_model_only_briefly_and_the_next_one_has_the_vector(db_path: Path) -> None:
    # Behind the embedding writer's batch the model answers late: the recall uses the stand-in meanwhile.
    embedder = RecordingEmbedder(delay_s=3.0)
    engine = engine_with(db_path, embedder, recall_embed_max=8, recall_embed_wait_s=0.2)
    try:
        remember_embedded(engine)
        answer = engine.remember(ANSWER).id
        started = time.monotonic()
        engine.recall(QUESTION, limit=5)
        assert time.monotonic() - started < 2.5  # not the model's 3 s
        deadline = time.monotonic() + 30
        while len(embedder.texts) < 2 or engine._recall_embedding:  # the vector arrives in the background
            assert time.monotonic() < deadline
            time.sleep(0.05)
        embedder.texts.clear()
        assert engine.recall(QUESTION, limit=5)[0].id == answer
        assert embedder.texts == [[QUESTION]]
    finally:
        engine.close()
