"""The SQLite backend: durability settings, migrations, dedup, the keyword index and its safety."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import sqlean as sqlite3

from agentcache_mcp.backends.sqlite import SqliteBackend
from agentcache_mcp.backends.sqlite.connection import BUSY_SLICE_MS
from agentcache_mcp.backends.sqlite.keywords import PRUNE_TERMS_FROM_ROWS
from agentcache_mcp.backends.sqlite.schema import SCHEMA_VERSION
from agentcache_mcp.config import Settings, default_db_path
from agentcache_mcp.memory.fusion import query_terms
from agentcache_mcp.memory.model import MemoryFilter, NewMemory, content_hash, new_id
from agentcache_mcp.memory.ports import StoreError
from agentcache_mcp.memory.service import merge_remembered

MODEL = "test-hash-embedder"


def Store(path: Path) -> SqliteBackend:
    return SqliteBackend(path, MODEL)


def put(store: SqliteBackend, namespace: str, text: str) -> str:
    now = time.time()
    new = NewMemory(new_id(), namespace, text, content_hash(text), [], 0.5, {}, now, None)
    return store.memories.remember(new, merge_remembered)[0].id


def keyword_search(
    store: SqliteBackend, namespace: str, query: str, limit: int, now: float = 0.0
) -> list[tuple[int, float]]:
    return store.keywords.search(namespace, query_terms(query), limit, MemoryFilter(namespace, live_at=now), 0.4)


def test_pragmas_wal_full_sync_and_busy_timeout(db_path: Path) -> None:
    store = Store(db_path)
    try:
        writer = store.db.write  # the connection every write goes through
        assert writer(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert writer(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        # SQLite's busy handler waits a slice at a time; Database.retry waits on, up to LOCK_WAIT_S (test_stuck_store)
        assert writer(lambda db: db.execute("PRAGMA busy_timeout").fetchone()[0]) == BUSY_SLICE_MS
        assert writer(lambda db: db.execute("PRAGMA secure_delete").fetchone()[0]) == 1
        assert store.db.read(lambda db: db.execute("PRAGMA query_only").fetchone()[0]) == 1
        assert store.db.read(lambda db: db.execute("PRAGMA busy_timeout").fetchone()[0]) == BUSY_SLICE_MS
    finally:
        store.close()


def test_migrations_are_recorded_and_idempotent(db_path: Path) -> None:
    Store(db_path).close()
    store = Store(db_path)
    try:
        rows = store.db.read(lambda db: db.execute("SELECT version FROM schema_migrations").fetchall())
        assert rows == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert store.schema_version == SCHEMA_VERSION
    finally:
        store.close()


def test_default_db_path_is_in_user_data_dir_not_cwd_or_package() -> None:
    path = default_db_path()
    assert path.is_absolute()
    assert path.name == "memory.db"
    assert Path.cwd() not in path.parents
    assert Path(__file__).resolve().parent.parent not in path.parents


def test_env_db_path_is_resolved_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"AGENTCACHE_DB": "rel/memory.db"})
    assert settings.db_path == tmp_path / "rel" / "memory.db"


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope" / "memory.db")


def test_corrupt_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="left untouched"):
        Store(path)
    assert path.read_bytes() == junk


def test_ids_are_unique_and_sortable() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 26 for i in ids)


def test_content_hash_normalises_case_and_whitespace() -> None:
    assert content_hash("Hello   World\n") == content_hash("hello world")
    assert content_hash("hello world") != content_hash("hello, world")


@pytest.mark.parametrize(
    "query",
    [
        '"',
        '""',
        "AND",
        "OR",
        "NOT",
        "NEAR(",
        "NEAR(a b, 2)",
        "*",
        "a*",
        "^start",
        "col:value",
        "text:secret",
        "{text context}: x",
        "(",
        ")",
        "🙂",
        "🙂🙂 🎉",
        "-",
        "'; DROP TABLE memories; --",
        "a AND OR NOT b",
        'she said "hi',
        "__",
        "+",
    ],
)
def test_hostile_fts_strings_never_error(engine, query: str) -> None:  # type: ignore[no-untyped-def]
    engine.remember("the quick brown fox said hi", namespace="ns")
    engine.remember("text context value start", namespace="ns")
    # Every one of these must be a valid query: a (possibly empty) result, never an exception.
    engine.recall(query, namespace="ns")
    keyword_search(engine.backend, "ns", query, 10)


def test_query_terms_drop_stop_words_but_keep_something() -> None:
    assert query_terms("What did Caroline do at the support group?") == ["caroline", "support", "group"]
    assert query_terms("who is it") == ["who", "is", "it"]
    assert query_terms("🙂 -- !!") == []


def test_keyword_index_lives_in_the_same_transaction(db_path: Path) -> None:
    store = Store(db_path)
    try:
        with pytest.raises(RuntimeError), store.db.atomic() as db:
            db.execute(
                "INSERT INTO memories (id, namespace, text, content_hash, created_at, updated_at) "
                "VALUES ('x', 'ns', 'rolled back words', 'h', 0, 0)"
            )
            raise RuntimeError("abort")
        assert keyword_search(store, "ns", "rolled", 10) == []
        assert store.keywords.check()
    finally:
        store.close()


def test_fts_rebuild_repairs_a_damaged_index(engine) -> None:  # type: ignore[no-untyped-def]
    engine.remember("alpha memory about apples", namespace="ns")
    engine.remember("beta memory about bananas", namespace="ns")
    engine.backend.db.write(lambda db: db.execute("DELETE FROM memories_fts"))
    assert not engine.backend.keywords.check()
    report = engine.verify_index()
    assert report.fts_rebuilt
    assert engine.backend.keywords.check()
    assert engine.recall("bananas", namespace="ns")[0].text == "beta memory about bananas"


def test_bm25_ranking_agrees_with_rank_bm25(db_path: Path) -> None:
    """Our FTS5 ranking orders documents as the reference Okapi BM25 does.

    Each document goes into a namespace of its own, so its indexed context (the preceding memory in its
    namespace) is empty and the index holds exactly the corpus; scores are then comparable across
    namespaces because FTS5 keeps its statistics over the whole table.
    """
    from rank_bm25 import BM25Okapi

    corpus = [
        "red apple pie recipe",
        "green apple tart",
        "apple apple orchard visit in autumn",
        "banana bread with walnut",
        "walnut cake and red wine",
        "autumn walk in the orchard",
        "pie crust tips",
        "chocolate cake",
        "wine tasting trip",
        "bread baking class",
        "garden tomato harvest",
        "morning run schedule",
    ]
    store = Store(db_path)
    try:
        for i, text in enumerate(corpus):
            put(store, f"d{i}", text)
        reference = BM25Okapi([t.split() for t in corpus])
        for query in ["apple pie", "walnut", "red wine", "orchard autumn", "cake"]:
            ours = [(f"d{i}", hit) for i in range(len(corpus)) for hit in keyword_search(store, f"d{i}", query, 20)]
            ours.sort(key=lambda hit: -hit[1][1])
            ours_texts = [store.memories.get_by_keys(ns, [key])[key].text for ns, (key, _) in ours]
            ref_scores = reference.get_scores(query.split())
            ref_texts = [
                corpus[i] for i in sorted(range(len(corpus)), key=lambda i: -ref_scores[i]) if ref_scores[i] > 0
            ]
            assert ours_texts == ref_texts, query
    finally:
        store.close()


def test_concurrent_writers_in_one_process_never_see_locked(db_path: Path) -> None:
    import threading

    stores = [Store(db_path) for _ in range(4)]
    errors: list[BaseException] = []

    def work(store: SqliteBackend, n: int) -> None:
        try:
            for i in range(50):
                put(store, "ns", f"writer {n} memory {i}")
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stores[0].memories.counts_by_namespace() == {"ns": 200}
    for s in stores:
        s.close()


def test_integrity_check_ok(engine) -> None:  # type: ignore[no-untyped-def]
    engine.remember("something", namespace="ns")
    assert engine.backend.db.integrity_check() == "ok"


def test_sqlite_has_fts5() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")


def test_keyword_search_falls_back_when_the_best_matches_are_not_live(engine) -> None:  # type: ignore[no-untyped-def]
    import time as _time

    best = engine.remember("apple apple apple", namespace="ns")
    second = engine.remember("apple pie", namespace="ns")
    engine.remember("apple orchard and a long sentence about other things", namespace="ns")
    engine.backend.db.write(lambda db: db.execute("UPDATE memories SET expires_at = 1 WHERE id = ?", (best.id,)))
    [(key, _)] = keyword_search(engine.backend, "ns", "apple", 1, _time.time())
    assert engine.backend.memories.get_by_keys("ns", [key])[key].id == second.id


def test_keyword_search_is_confined_to_its_namespace_inside_fts(engine) -> None:  # type: ignore[no-untyped-def]
    # Namespaces that tokenise alike ("a-b" and "a.b") must still be told apart.
    engine.remember("shared words here", namespace="a-b")
    other = engine.remember("shared words here too", namespace="a.b")
    hits = keyword_search(engine.backend, "a.b", "shared words", 10)
    assert [engine.backend.memories.get_by_keys("a.b", [key])[key].id for key, _ in hits] == [other.id]


def test_a_namespace_alone_in_the_store_is_searched_without_its_token_and_scored_the_same(
    engine,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentcache_mcp.backends.sqlite.keywords import Fts5Keywords, namespace_token

    only = Fts5Keywords._only_namespace
    alone = lambda ns: engine.backend.db.read(lambda db: only(db, ns))  # noqa: E731
    for i in range(6):
        engine.remember(f"apple number {i} " + "pear " * i, namespace="m")
    assert alone("m") and not alone("elsewhere")
    statements: list[str] = []
    engine.backend.db.read(lambda db: db.set_trace_callback(statements.append))
    try:
        fast = keyword_search(engine.backend, "m", "apple pear", 10)
        assert statements and not any(namespace_token("m") in s for s in statements)
        with monkeypatch.context() as m:  # the confined query, as with other namespaces present
            m.setattr(Fts5Keywords, "_only_namespace", staticmethod(lambda db, ns: False))
            statements.clear()
            confined = keyword_search(engine.backend, "m", "apple pear", 10)
            assert any(namespace_token("m") in s for s in statements)
    finally:
        engine.backend.db.read(lambda db: db.set_trace_callback(None))
    assert len(fast) == 6 and fast == confined  # same rows, same scores, same order
    # Another namespace sorts before / after "m": the token is back and confines the search.
    for ns in ("a", "z"):
        engine.remember("apple pear pear pear", namespace=ns)
        assert not alone("m") and not alone(ns)
        hits = keyword_search(engine.backend, "m", "apple pear", 10)
        assert sorted(k for k, _ in hits) == sorted(k for k, _ in fast)


def test_a_memory_written_to_another_namespace_between_the_check_and_the_search_is_not_matched(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The namespace-alone check and the FTS5 search share one snapshot: a second process that writes to another
    namespace in between (forced here, inside the check) is not seen by the search."""
    from agentcache_mcp.backends.sqlite.keywords import Fts5Keywords

    me, other = Store(db_path), Store(db_path)
    try:
        for i in range(5):
            put(me, "alice", f"note {i} about gardening")
        put(me, "alice", "the launch code is apple")
        check = Fts5Keywords._only_namespace
        written: list[str] = []

        def check_then_write(db, namespace):  # type: ignore[no-untyped-def]
            alone = check(db, namespace)
            if not written:
                written.append(put(other, "bob", "bob's secret apple password"))
            return alone

        monkeypatch.setattr(Fts5Keywords, "_only_namespace", staticmethod(check_then_write))
        hits = keyword_search(me, "alice", "apple", 10, time.time())
        assert written
        bob = other.db.read(lambda db: db.execute("SELECT pk FROM memories WHERE namespace = 'bob'").fetchone()[0])
        assert len(hits) == 1 and bob not in dict(hits)
    finally:
        me.close()
        other.close()


def test_terms_in_most_memories_are_dropped_from_large_stores_only(db_path: Path) -> None:
    store = Store(db_path)
    try:
        with store.db.atomic():
            for i in range(PRUNE_TERMS_FROM_ROWS):
                put(store, "ns", f"common word entry {i}" + (" rare" if i % 100 == 0 else ""))
        assert store.keywords.informative_terms("ns", ["common", "rare"]) == ["rare"]
        assert store.keywords.informative_terms("ns", ["common", "word"]) == ["common", "word"]  # never drops all
        assert store.keywords.informative_terms("other", ["common", "rare"]) == ["common", "rare"]  # per namespace
        store.memories.delete(MemoryFilter("ns", key_after=10))
        assert store.keywords.informative_terms("ns", ["common", "rare"]) == ["common", "rare"]  # small: exact
    finally:
        store.close()


def test_the_row_budget_keeps_rare_terms_and_leaves_out_the_commonest(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.sqlite import keywords

    monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 50)
    store = Store(db_path)
    try:
        with store.db.atomic():
            for i in range(PRUNE_TERMS_FROM_ROWS):
                words = ["entry"]
                words += ["rare"] if i % 100 == 0 else []  # 10 rows
                words += ["middle"] if i % 33 == 0 else []  # 31 rows
                words += ["common"] if i % 3 == 0 else []  # 334 rows: under half, over the budget
                put(store, "ns", " ".join(words) + f" {i}")
        terms = store.keywords.informative_terms
        assert terms("ns", ["common", "middle", "rare"]) == ["middle", "rare"]  # query order kept
        assert terms("ns", ["common"]) == ["common"]  # the rarest term is always kept
        assert terms("ns", ["common", "nowhere"]) == ["nowhere"]
        monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 40)
        assert terms("ns", ["common", "middle", "rare"]) == ["rare"]  # 10 + 31 rows would pass 40
        monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 50)
        for i in range(40):  # counts are cached between writes only: "rare" is now in 50 rows
            put(store, "ns", f"rare again {i}")
        assert terms("ns", ["common", "middle", "rare"]) == ["middle"]
    finally:
        store.close()


def test_neighbours_within_a_namespace_at_each_distance(engine) -> None:  # type: ignore[no-untyped-def]
    ids = [engine.remember(f"memory {i}", namespace="ns").id for i in range(5)]
    engine.remember("other namespace in between", namespace="other")
    ids.append(engine.remember("memory 5", namespace="ns").id)
    key = {m.id: m.key for m in engine.backend.memories.get("ns", ids)}
    p = [key[i] for i in ids]
    got = engine.backend.memories.neighbours("ns", [p[0], p[2], p[5]], 2)
    assert got[p[0]] == [(None, p[1]), (None, p[2])]
    assert got[p[2]] == [(p[1], p[3]), (p[0], p[4])]
    assert got[p[5]] == [(p[4], None), (p[3], None)]  # skips the other namespace's row


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_database_from_a_newer_version_is_refused_untouched(db_path: Path, journal_mode: str) -> None:
    Store(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("INSERT INTO schema_migrations VALUES (?, 0)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.execute(f"PRAGMA journal_mode = {journal_mode}")
    db.close()
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="newer agentcache-mcp"):
        Store(db_path)
    assert db_path.read_bytes() == before


def test_schema_1_database_is_migrated_with_its_memories_and_vectors(db_path: Path) -> None:
    """A store written by the first release: rows, vectors and a deleted row whose pk the old schema would
    reuse. Migration keeps every memory and vector, rebuilds the keyword index with context, and new keys
    start above every key the old store ever handed out."""
    from agentcache_mcp.backends.sqlite.connection import Database
    from agentcache_mcp.backends.sqlite.schema import MIGRATIONS

    old = Database(db_path)
    old.write(lambda db: db.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)"))
    old.write(MIGRATIONS[0])
    old.write(lambda db: db.execute("INSERT INTO schema_migrations VALUES (1, 0)"))
    vector = np.ones(4, dtype="<f4").tobytes()
    for pk, text in [(1, "first old memory about lighthouses"), (2, "second old memory"), (3, "third, deleted")]:
        old.write(
            lambda db, pk=pk, text=text: db.execute(
                "INSERT INTO memories (pk, id, namespace, text, content_hash, created_at, updated_at, embedding, "
                "embedding_model) VALUES (?, ?, 'ns', ?, ?, 0, 0, ?, ?)",
                (pk, f"ID{pk}", text, content_hash(text), vector, MODEL if pk < 3 else ""),
            )
        )
    old.write(lambda db: db.execute("DELETE FROM memories WHERE pk = 3"))
    old.close()

    store = Store(db_path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert [m.id for m in store.memories.find(MemoryFilter("ns"))] == ["ID1", "ID2"]
        assert store.vectors.load() == 2
        assert store.embeddings.count_pending(MODEL) == 0
        assert store.keywords.check()
        hits = keyword_search(store, "ns", "lighthouses", 10)
        assert [key for key, _ in hits] == [1, 2]  # memory 2 matches through its context
        new_key = store.memories.get("ns", [put(store, "ns", "a new memory")])[0].key
        assert new_key > 3
    finally:
        store.close()


def test_a_read_does_not_wait_for_a_write_transaction(db_path: Path) -> None:
    """Reads use their own connection: a write held open (here for 1 s) does not hold up a recall's reads."""
    import threading

    store = Store(db_path)
    try:
        put(store, "ns", "something to read")
        entered, release = threading.Event(), threading.Event()

        def slow_write(db: object) -> None:
            entered.set()
            release.wait(5)

        writer = threading.Thread(target=store.db.write, args=(slow_write,))
        writer.start()
        assert entered.wait(5)
        started = time.monotonic()
        assert store.memories.counts_by_namespace() == {"ns": 1}
        waited = time.monotonic() - started
        release.set()
        writer.join()
        assert waited < 0.5, waited
    finally:
        store.close()


def test_neighbours_at_twice_the_width_give_every_adjacent_memorys_own_neighbours(engine) -> None:  # type: ignore[no-untyped-def]
    import random

    from agentcache_mcp.memory.recall import neighbours_within

    rng = random.Random(5)
    for i in range(60):
        engine.remember(f"memory {i}", namespace=rng.choice(["ns", "ns", "other"]))
    keys = sorted(
        engine.backend.db.read(
            lambda db: [pk for (pk,) in db.execute("SELECT pk FROM memories WHERE namespace = 'ns'")]
        )
    )
    memories = engine.backend.memories
    for width in (1, 2, 3):
        top = [keys[0], keys[1], keys[len(keys) // 2], keys[-1]]
        derived = neighbours_within(memories.neighbours("ns", top, 2 * width), width)
        direct = memories.neighbours("ns", list(derived), width)
        assert derived == direct
        assert set(top) <= set(derived)
        assert len(derived) > len(top)  # the adjacent memories came with their own neighbours
