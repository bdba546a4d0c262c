"""The SQLite store: durability settings, migrations, dedup, the keyword index and its safety."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agentcache_mcp.config import Settings, default_db_path
from agentcache_mcp.recall import fts_match_expression, query_terms
from agentcache_mcp.store import Filters, Store, StoreError, content_hash, new_id


def test_pragmas_wal_full_sync_and_busy_timeout(db_path: Path) -> None:
    store = Store(db_path)
    try:
        assert store.read(lambda db: db.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
        assert store.read(lambda db: db.execute("PRAGMA synchronous").fetchone()[0]) == 2  # FULL
        assert store.read(lambda db: db.execute("PRAGMA busy_timeout").fetchone()[0]) >= 5000
    finally:
        store.close()


def test_migrations_are_recorded_and_idempotent(db_path: Path) -> None:
    Store(db_path).close()
    store = Store(db_path)
    try:
        rows = store.read(lambda db: db.execute("SELECT version FROM schema_migrations").fetchall())
        assert rows == [(1,)]
        assert store.schema_version == 1
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
    match = fts_match_expression(query)
    if match is not None:
        engine.store.keyword_search("ns", match, 10, Filters(), 0.0)


def test_query_terms_drop_stop_words_but_keep_something() -> None:
    assert query_terms("What did Caroline do at the support group?") == ["caroline", "support", "group"]
    assert query_terms("who is it") == ["who", "is", "it"]
    assert query_terms("🙂 -- !!") == []


def test_keyword_index_lives_in_the_same_transaction(db_path: Path) -> None:
    store = Store(db_path)
    try:
        with pytest.raises(RuntimeError), store.atomic() as db:
            db.execute(
                "INSERT INTO memories (id, namespace, text, content_hash, created_at, updated_at) "
                "VALUES ('x', 'ns', 'rolled back words', 'h', 0, 0)"
            )
            raise RuntimeError("abort")
        assert store.keyword_search("ns", '"rolled"', 10, Filters(), 0.0) == []
        assert store.fts_ok()
    finally:
        store.close()


def test_fts_rebuild_repairs_a_damaged_index(engine) -> None:  # type: ignore[no-untyped-def]
    engine.remember("alpha memory about apples", namespace="ns")
    engine.remember("beta memory about bananas", namespace="ns")
    engine.store.write(lambda db: db.execute("DELETE FROM memories_fts"))
    assert not engine.store.fts_ok()
    report = engine.verify_index()
    assert report.fts_rebuilt
    assert engine.store.fts_ok()
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
            store.insert_or_merge(namespace=f"d{i}", text=text, tags=[], importance=0.5, metadata={}, expires_at=None)
        reference = BM25Okapi([t.split() for t in corpus])
        for query in ["apple pie", "walnut", "red wine", "orchard autumn", "cake"]:
            match = fts_match_expression(query) or ""
            ours = [hit for i in range(len(corpus)) for hit in store.keyword_search(f"d{i}", match, 20, Filters(), 0.0)]
            ours.sort(key=lambda hit: -hit[1])
            rows = store.get_by_pks([pk for pk, _ in ours])
            ours_texts = [rows[pk].text for pk, _ in ours]
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

    def work(store: Store, n: int) -> None:
        try:
            for i in range(50):
                store.insert_or_merge(
                    namespace="ns", text=f"writer {n} memory {i}", tags=[], importance=0.5, metadata={}, expires_at=None
                )
        except BaseException as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert stores[0].counts_by_namespace() == {"ns": 200}
    for s in stores:
        s.close()


def test_integrity_check_ok(engine) -> None:  # type: ignore[no-untyped-def]
    engine.remember("something", namespace="ns")
    assert engine.store.integrity_check() == "ok"


def test_sqlite_has_fts5() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE t USING fts5(x)")


def test_keyword_search_falls_back_when_the_best_matches_are_not_live(engine) -> None:  # type: ignore[no-untyped-def]
    import time as _time

    best = engine.remember("apple apple apple", namespace="ns")
    second = engine.remember("apple pie", namespace="ns")
    engine.remember("apple orchard and a long sentence about other things", namespace="ns")
    engine.store.write(lambda db: db.execute("UPDATE memories SET expires_at = 1 WHERE id = ?", (best.id,)))
    match = fts_match_expression("apple") or ""
    [(pk, _)] = engine.store.keyword_search("ns", match, 1, Filters(), _time.time())
    assert engine.store.get_by_pks([pk])[pk].id == second.id


def test_keyword_search_is_confined_to_its_namespace_inside_fts(engine) -> None:  # type: ignore[no-untyped-def]
    # Namespaces that tokenise alike ("a-b" and "a.b") must still be told apart.
    engine.remember("shared words here", namespace="a-b")
    other = engine.remember("shared words here too", namespace="a.b")
    match = fts_match_expression("shared words") or ""
    hits = engine.store.keyword_search("a.b", match, 10, Filters(), 0.0)
    assert [engine.store.get_by_pks([pk])[pk].id for pk, _ in hits] == [other.id]


def test_terms_in_most_memories_are_dropped_from_large_stores_only(db_path: Path) -> None:
    from agentcache_mcp.store import PRUNE_TERMS_FROM_ROWS

    store = Store(db_path)
    try:
        for i in range(PRUNE_TERMS_FROM_ROWS):
            text = f"common word entry {i}" + (" rare" if i % 100 == 0 else "")
            store.insert_or_merge(namespace="ns", text=text, tags=[], importance=0.5, metadata={}, expires_at=None)
        assert store.informative_terms(["common", "rare"]) == ["rare"]
        assert store.informative_terms(["common", "word"]) == ["common", "word"]  # never drops every term
        store.write(lambda db: db.execute("DELETE FROM memories WHERE pk > 10"))
        assert store.informative_terms(["common", "rare"]) == ["common", "rare"]  # small store: exact
    finally:
        store.close()


def test_neighbours_within_a_namespace_at_each_distance(engine) -> None:  # type: ignore[no-untyped-def]
    ids = [engine.remember(f"memory {i}", namespace="ns").id for i in range(5)]
    engine.remember("other namespace in between", namespace="other")
    ids.append(engine.remember("memory 5", namespace="ns").id)
    pk = {r.id: r.pk for r in engine.store.get_by_ids(ids)}
    p = [pk[i] for i in ids]
    got = engine.store.neighbours("ns", [p[0], p[2], p[5]], width=2)
    assert got[p[0]] == [(None, p[1]), (None, p[2])]
    assert got[p[2]] == [(p[1], p[3]), (p[0], p[4])]
    assert got[p[5]] == [(p[4], None), (p[3], None)]  # skips the other namespace's row
