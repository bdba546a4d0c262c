"""PostgreSQL vectors searched in each replica's memory (backends/postgres/matrix.py): kept current through the
`vector_changes` log across replicas, including a transaction that commits after a later one was read; pruning;
the size limit; what still goes to the HNSW index."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import psycopg
import pytest
from psycopg import sql

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres import schema as pg_schema
from agentcache_mcp.backends.postgres.matrix import PgMatrixVectors
from agentcache_mcp.config import ConfigError, Settings
from agentcache_mcp.memory.model import MemoryFilter, NewMemory, content_hash, new_id
from agentcache_mcp.memory.service import merge_remembered

from conftest import HashEmbedder

MODEL = "test-matrix"
DIM = 8


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def remember(backend: PostgresBackend, text: str, namespace: str = "team", vector: np.ndarray | None = None) -> int:
    """A memory, and its vector written as the embedding writer writes it; returns its key."""
    new = NewMemory(new_id(), namespace, text, content_hash(text), [], 0.5, {}, time.time(), None)
    memory = backend.memories.remember(new, merge_remembered)[0]
    if vector is not None:
        assert backend.embeddings.write(MODEL, [(memory.key, memory.content_hash, vector)]) == 1
    return memory.key


def top(backend: PostgresBackend, query: np.ndarray, k: int = 5, namespace: str = "team") -> list[int]:
    return [key for key, _ in backend.vectors.search(namespace, query, k, MemoryFilter(namespace, live_at=time.time()))]


def literal(v: np.ndarray) -> str:
    return "[" + ",".join(map(str, v)) + "]"


def insert_vector(conn: psycopg.Connection, key: int, vector: np.ndarray) -> None:  # type: ignore[type-arg]
    """Write a memory's vector on `conn` (its own transaction, left open), as the embedding writer would."""
    conn.execute(
        sql.SQL("INSERT INTO {} (memory_pk, namespace, content_hash, vector) VALUES (%s, 'team', 'h', %s)").format(
            sql.Identifier(pg_schema.vector_table_name(MODEL))
        ),
        (key, literal(vector)),
    )


@contextmanager
def two_replicas(url: str, pool_size: int) -> Iterator[tuple[PostgresBackend, PostgresBackend]]:
    """Two backends on one database, as two replicas of the server are."""
    a = PostgresBackend(url, MODEL, pool_size=pool_size)
    b = PostgresBackend(url, MODEL, pool_size=pool_size)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[PostgresBackend, PostgresBackend]]:
    with two_replicas(postgres_url, 2) as pair:
        yield pair


def matrix_of(backend: PostgresBackend) -> PgMatrixVectors:
    assert isinstance(backend.vectors, PgMatrixVectors)
    return backend.vectors


def test_a_replica_sees_the_vectors_another_writes_and_forgets(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    a, b = replicas
    first = remember(a, "the first", vector=unit(1))
    assert matrix_of(b).load() == 1 and matrix_of(b).in_memory
    second = remember(a, "the second", vector=unit(2))
    assert top(b, unit(2), k=1) == [second]  # written after b loaded: read from the log
    assert set(top(b, unit(2))) == {first, second}
    forgotten = a.memories.find(MemoryFilter("team"))
    a.memories.delete(MemoryFilter("team", ids=tuple(m.id for m in forgotten if m.key == second)))
    assert top(b, unit(2)) == [first]  # the cascade's delete is logged too
    assert len(b.vectors) == 1


def test_a_transaction_that_commits_after_a_later_one_was_read_is_not_missed(
    postgres_url: str, replicas: tuple[PostgresBackend, PostgresBackend]
) -> None:
    """The log's sequence is taken at insert, not at commit: a reader that had remembered the highest number it
    read would skip the slow transaction's row for ever."""
    a, b = replicas
    remember(a, "makes the table", vector=unit(0))
    slow_key = remember(a, "the slow one")
    quick_key = remember(a, "the quick one")
    matrix_of(b).load()
    with psycopg.connect(postgres_url) as slow:
        insert_vector(slow, slow_key, unit(5))  # its log row has the lower number, uncommitted
        a.embeddings.write(MODEL, [(quick_key, content_hash("the quick one"), unit(6))])
        assert top(b, unit(6), k=1) == [quick_key]  # b read past the slow row's number
        slow.commit()
    assert top(b, unit(5), k=1) == [slow_key]


def test_a_replica_behind_a_pruned_log_loads_again_and_one_that_is_not_does_not(
    replicas: tuple[PostgresBackend, PostgresBackend], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    keys = [remember(a, f"memory {i}", vector=unit(i)) for i in range(5)]
    matrix_of(a).load()
    matrix_of(b).load()
    more = [remember(a, f"later {i}", vector=unit(100 + i)) for i in range(5)]
    assert top(a, unit(104), k=1) == [more[4]]  # a is current; b has not read the log since its load
    assert matrix_of(a).prune(keep=2) > 0
    with caplog.at_level(logging.INFO, logger="agentcache_mcp.backends.postgres.matrix"):
        assert top(b, unit(103), k=1) == [more[3]]  # b's snapshot is older than the prune: it loads again
        assert any("loading the vectors again" in r.getMessage() for r in caplog.records)
        caplog.clear()
        assert top(b, unit(2), k=1) == [keys[2]]
        assert not any("loading the vectors again" in r.getMessage() for r in caplog.records)
    assert len(b.vectors) == 10
    newest = remember(a, "after the prune", vector=unit(200))
    assert top(b, unit(200), k=1) == [newest]


def test_a_prune_keeps_what_a_running_transaction_may_still_add(
    postgres_url: str, replicas: tuple[PostgresBackend, PostgresBackend], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replicas
    remember(a, "makes the table", vector=unit(0))
    slow_key = remember(a, "the slow one")
    matrix_of(b).load()
    with psycopg.connect(postgres_url) as slow:
        insert_vector(slow, slow_key, unit(7))
        for i in range(4):
            remember(a, f"quick {i}", vector=unit(300 + i))
        top(b, unit(1))  # b reads past the slow transaction's row
        matrix_of(a).prune(keep=0)  # cannot prune at or above the slow transaction
        slow.commit()
    with caplog.at_level(logging.INFO, logger="agentcache_mcp.backends.postgres.matrix"):
        assert top(b, unit(7), k=1) == [slow_key]  # read from the log: nothing b needed was pruned
    assert not any("loading the vectors again" in r.getMessage() for r in caplog.records)


def test_auto_searches_the_index_for_a_table_larger_than_it_keeps_in_memory(
    postgres_url: str, replicas: tuple[PostgresBackend, PostgresBackend]
) -> None:
    a, b = replicas
    keys = [remember(a, f"memory {i}", vector=unit(i)) for i in range(4)]
    matrix_of(b).max_rows = 3
    assert matrix_of(b).load() == 4 and not matrix_of(b).in_memory
    assert top(b, unit(2), k=1) == [keys[2]]  # the HNSW index answers
    assert "HNSW" in b.describe()["vector_index"]
    matrix_of(a).max_rows = 5
    matrix_of(a).load()
    assert matrix_of(a).in_memory and "memory" in a.describe()["vector_index"]
    keys += [remember(b, f"more {i}", vector=unit(10 + i)) for i in range(2)]
    assert top(a, unit(11), k=1) == [keys[5]]  # grown past its limit while running: the index from now on
    assert not matrix_of(a).in_memory


def test_a_narrowed_search_and_one_whose_top_is_mostly_superseded_ask_the_index(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = replicas
    keys = [remember(a, f"memory {i}", vector=unit(i)) for i in range(6)]
    matrix = matrix_of(a)
    matrix.load()
    asked: list[str] = []
    plain = matrix.index.search

    def spy(*args: object, **kwargs: object) -> list[tuple[int, float]]:
        asked.append("index")
        return plain(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(matrix.index, "search", spy)
    assert top(a, unit(3), k=2)[0] == keys[3] and asked == []
    tagged = MemoryFilter("team", live_at=time.time(), created_since=time.time() - 3600)
    assert tagged.narrows_recall
    assert next(k for k, _ in a.vectors.search("team", unit(3), 2, tagged)) == keys[3]
    assert asked == ["index"]
    asked.clear()
    memories = {m.key: m for m in a.memories.find(MemoryFilter("team"))}
    newer = next(m for m in memories.values() if m.key == keys[5])
    a.memories.supersede([(memories[k].id, newer.id) for k in keys[:5]], time.time())
    assert top(a, unit(3), k=2) == [keys[5]]  # every other memory superseded: the index confirms the one left
    assert asked == ["index"]


def test_the_in_memory_search_finds_what_the_exact_search_finds(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=32))
    try:
        rng = np.random.default_rng(11)
        words = [f"w{i}" for i in range(60)]
        for i in range(300):
            memory.remember(" ".join(rng.choice(words, size=6)) + f" n{i}", namespace="team")
        memory.embed_pending()
        assert isinstance(memory.backend.vectors, PgMatrixVectors)
        for _ in range(30):
            query = memory.embedder.embed([" ".join(rng.choice(words, size=3))])[0]
            where = MemoryFilter("team", live_at=time.time())
            found = memory.backend.vectors.search("team", query, 10, where)
            exact = memory.backend.vectors.exact_search("team", query, 300, where)
            exact_score = dict(exact)
            # The same top 10 up to float16's rounding (~1e-3): bag-of-words vectors tie a lot, and which of
            # several equal scores makes the cut may differ.
            assert len(found) == 10
            assert all(abs(score - exact_score[key]) < 2e-3 for key, score in found)
            assert min(exact_score[key] for key, _ in found) >= exact[9][1] - 2e-3
        assert memory.backend.vectors.in_memory
    finally:
        memory.close()


def test_a_store_of_the_release_before_gains_the_log_for_its_vector_table(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as old:
        old.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:4])
        old.setattr(pg_schema, "SCHEMA_VERSION", 4)
        before = PostgresBackend(postgres_url, MODEL, pool_size=2, vector_search="index")
        # The release before created vector tables without the log's triggers: so does this one while the
        # trigger function does nothing, and the function is dropped again, leaving what that release left.
        before.db.write(
            lambda db: db.execute(
                "CREATE FUNCTION agentcache_log_vector_changes(vector_table TEXT) RETURNS void LANGUAGE sql AS ''"
            )
        )
        kept = remember(before, "written before", vector=unit(1))
        before.db.write(lambda db: db.execute("DROP FUNCTION agentcache_log_vector_changes(TEXT)"))
        before.close()
    a = PostgresBackend(postgres_url, MODEL, pool_size=2)
    b = PostgresBackend(postgres_url, MODEL, pool_size=2)
    try:
        assert a.schema_version == 5
        assert matrix_of(b).load() == 1
        added = remember(a, "written after", vector=unit(2))
        assert top(b, unit(2), k=1) == [added] and top(b, unit(1), k=1) == [kept]
    finally:
        a.close()
        b.close()


def test_index_mode_keeps_nothing_in_memory(postgres_url: str) -> None:
    backend = PostgresBackend(postgres_url, MODEL, pool_size=2, vector_search="index")
    try:
        key = remember(backend, "one", vector=unit(1))
        assert not isinstance(backend.vectors, PgMatrixVectors)
        assert top(backend, unit(1), k=1) == [key]
    finally:
        backend.close()


@pytest.mark.parametrize("value", ["Memory", " index ", "auto"])
def test_the_vector_search_setting_is_read_from_the_environment(value: str) -> None:
    assert Settings.from_env({"AGENTCACHE_PG_VECTOR_SEARCH": value}).pg_vector_search == value.strip().lower()


def test_an_unknown_vector_search_setting_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({"AGENTCACHE_PG_VECTOR_SEARCH": "gpu"})
    assert "AGENTCACHE_PG_VECTOR_SEARCH" in str(refused.value) and "auto, memory or index" in str(refused.value)


def test_a_replica_that_many_vectors_changed_behind_loads_again_rather_than_catch_up_in_one_statement(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agentcache_mcp.backends.postgres import matrix

    a, b = replicas
    remember(a, "first", vector=unit(0))
    matrix_of(b).load()
    monkeypatch.setattr(matrix, "CATCH_UP_MAX", 2)
    keys = [remember(a, f"bulk {i}", vector=unit(50 + i)) for i in range(3)]
    with caplog.at_level(logging.INFO, logger="agentcache_mcp.backends.postgres.matrix"):
        assert top(b, unit(52), k=1) == [keys[2]]
    assert any("loading the vectors again" in r.getMessage() for r in caplog.records)
    assert len(b.vectors) == 4


def drop_log_triggers(url: str) -> str:
    """Leave the model's vector table as a replica of the release before created it: without the log's triggers."""
    table = pg_schema.vector_table_name(MODEL)
    with psycopg.connect(url, autocommit=True) as conn:
        for event in ("insert", "update", "delete"):
            conn.execute(
                sql.SQL("DROP TRIGGER {} ON {}").format(sql.Identifier(f"{table}_{event}"), sql.Identifier(table))
            )
    return table


def test_a_start_adds_the_log_to_a_vector_table_an_earlier_version_created(postgres_url: str) -> None:
    a = PostgresBackend(postgres_url, MODEL, pool_size=2)
    remember(a, "first", vector=unit(1))
    a.close()
    drop_log_triggers(postgres_url)
    a = PostgresBackend(postgres_url, MODEL, pool_size=2)
    b = PostgresBackend(postgres_url, MODEL, pool_size=2)
    try:
        assert matrix_of(b).load() == 1 and matrix_of(b).in_memory
        added = remember(a, "second", vector=unit(2))
        assert top(b, unit(2), k=1) == [added]  # logged again
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("when", ["at its load", "after its load"])
def test_a_replica_searches_the_index_of_a_vector_table_without_the_log(
    when: str, replicas: tuple[PostgresBackend, PostgresBackend], postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A replica of an earlier version may create a new model's table while this one runs: its changes are not
    logged, so the in-memory copy could not follow them; the index can."""
    a, b = replicas
    if when == "after its load":
        assert matrix_of(b).load() == 0 and matrix_of(b).in_memory  # no table yet
    first = remember(a, "first", vector=unit(1))
    table = drop_log_triggers(postgres_url)
    with caplog.at_level(logging.WARNING, logger="agentcache_mcp.backends.postgres.matrix"):
        if when == "at its load":
            matrix_of(b).load()
        assert top(b, unit(1), k=1) == [first]
    assert not matrix_of(b).in_memory
    assert any(table in r.getMessage() and "no change log" in r.getMessage() for r in caplog.records)
    second = remember(a, "second", vector=unit(2))
    assert top(b, unit(2), k=1) == [second]  # the index is current


def test_a_command_of_the_cli_searches_the_index_rather_than_load_every_vector(postgres_url: str) -> None:
    """A CLI command or hook serves one call: loading every vector (2-3 s and ~250 MiB at 100k) would cost more
    than the HNSW search it replaces."""
    from agentcache_mcp import commands

    settings = Settings(database_url=postgres_url)
    with commands._store(settings, must_exist=False) as memory:
        assert not isinstance(memory.backend.vectors, PgMatrixVectors)
    assert "HNSW" in commands.stats(settings)["index"]["vector_index"]
    assert settings.for_one_command().pg_vector_search == "index"
    assert Settings(db_path=settings.db_path).for_one_command() == Settings(db_path=settings.db_path)


def test_a_table_that_got_the_log_after_its_first_vectors_is_read_whole_when_a_replica_first_meets_it(
    replicas: tuple[PostgresBackend, PostgresBackend], postgres_url: str
) -> None:
    """A replica of an earlier version created the table and wrote vectors the log never saw; a start then added
    the log's triggers. A replica that loaded before the table existed meets it logged: the log alone lacks those
    vectors."""
    a, b = replicas
    assert matrix_of(b).load() == 0 and matrix_of(b).in_memory  # no table yet
    first = remember(a, "first", vector=unit(1))
    drop_log_triggers(postgres_url)
    unlogged = remember(a, "written by the earlier version", vector=unit(2))
    PostgresBackend(postgres_url, MODEL, pool_size=2).close()  # a start adds the triggers
    assert top(b, unit(2), k=1) == [unlogged]
    assert set(top(b, unit(1))) == {first, unlogged} and len(b.vectors) == 2


def test_a_start_does_not_wait_without_bound_for_a_vector_table_it_adds_the_log_to(postgres_url: str) -> None:
    """Adding the triggers takes the table's SHARE ROW EXCLUSIVE lock, under the migration lock: behind a long
    writer (a bulk import's index build) the start, and every other replica's, would wait for it. It gives up
    after a moment; the replica searches the index and a later start adds the log."""
    import threading

    a = PostgresBackend(postgres_url, MODEL, pool_size=2)
    remember(a, "first", vector=unit(1))
    a.close()
    table = drop_log_triggers(postgres_url)
    started: list[PostgresBackend] = []
    with psycopg.connect(postgres_url) as writer:
        writer.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.Identifier(table)))
        thread = threading.Thread(target=lambda: started.append(PostgresBackend(postgres_url, MODEL, pool_size=2)))
        thread.start()
        thread.join(timeout=15)
        blocked = thread.is_alive()
        writer.rollback()
    thread.join()
    try:
        assert not blocked
        assert matrix_of(started[0]).load() == 1 and not matrix_of(started[0]).in_memory  # the index, for now
    finally:
        for backend in started:
            backend.close()


def test_a_start_by_a_user_who_may_not_create_triggers_on_a_table_without_the_log_still_starts(
    postgres_url: str,
) -> None:
    import secrets
    from urllib.parse import urlsplit, urlunsplit

    a = PostgresBackend(postgres_url, MODEL, pool_size=2)
    remember(a, "first", vector=unit(1))
    a.close()
    table = drop_log_triggers(postgres_url)
    role = "limited_" + secrets.token_hex(4)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        database = admin.execute("SELECT current_database()").fetchone()
        assert database is not None
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
        admin.execute(f"GRANT ALL ON DATABASE {database[0]} TO {role}")
        admin.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        admin.execute(sql.SQL("REVOKE TRIGGER ON {} FROM {}").format(sql.Identifier(table), sql.Identifier(role)))
    parts = urlsplit(postgres_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    limited = urlunsplit((parts.scheme, f"{role}:pw@{host}", parts.path, parts.query, parts.fragment))
    try:
        b = PostgresBackend(limited, MODEL, pool_size=2)
        try:
            assert matrix_of(b).load() == 1 and not matrix_of(b).in_memory  # the index
        finally:
            b.close()
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")


def test_inside_one_read_a_thread_catches_up_once_and_the_next_block_sees_what_changed(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    """A recall's search and scorings read the change log once (service.recall_outcome's one_read); a forget by
    another replica shows from the next recall on, and other threads are not held to the block's state."""
    import threading

    a, b = replicas
    kept = remember(a, "kept", vector=unit(1))
    gone = remember(a, "forgotten by the other replica", vector=unit(2))
    vectors = matrix_of(b)
    reads = {"n": 0}
    catch_up = vectors._catch_up

    def counted() -> bool:
        reads["n"] += 1
        return catch_up()

    vectors._catch_up = counted  # type: ignore[method-assign]
    assert set(top(b, unit(2))) == {kept, gone}
    reads["n"] = 0
    with vectors.one_read():
        assert top(b, unit(2))[0] == gone
        a.memories.delete(MemoryFilter("team", ids=(a.memories.get_by_keys("team", [gone])[gone].id,)))
        assert set(vectors.scores_for("team", unit(2), [kept, gone])) == {kept, gone}  # not caught up again
        other: list[int] = []
        thread = threading.Thread(target=lambda: other.extend(top(b, unit(2))))
        thread.start()
        thread.join()
        assert other == [kept]  # another thread catches up as usual
        assert top(b, unit(2)) == [kept]  # the shared matrix, caught up by the other thread
    assert reads["n"] == 2  # the block's first search, and the other thread's
    assert top(b, unit(2)) == [kept]  # after the block: caught up
    with vectors.one_read(), vectors.one_read():  # nested: one block
        top(b, unit(1))
        vectors.scores_for("team", unit(1), [kept])
    assert reads["n"] == 4


def test_a_block_whose_first_read_found_the_vectors_loading_catches_up_at_its_next_read(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another thread loads (the server's index sync at start), the block's first search goes to the index
    and catches up with nothing: the block's next read must catch up, not score on the load's older rows."""
    import threading

    from agentcache_mcp.backends import matrix as matrix_module

    a, b = replicas
    first = remember(a, "in the table before the load", vector=unit(1))
    vectors = matrix_of(b)
    read, publish = threading.Event(), threading.Event()
    add_batch = matrix_module.VectorMatrix.add_batch

    def held(self: matrix_module.VectorMatrix, *args: object) -> None:
        if threading.current_thread().name == "loader":  # its rows are read: wait before publishing them
            read.set()
            assert publish.wait(30)
        add_batch(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(matrix_module.VectorMatrix, "add_batch", held)
    loader = threading.Thread(target=vectors.load, name="loader")
    loader.start()
    try:
        assert read.wait(30)
        second = remember(a, "embedded after the load read its rows, before the recall", vector=unit(2))
        with vectors.one_read():
            assert top(b, unit(2))[0] == second  # the index answers while the load runs
            publish.set()
            loader.join(30)
            assert vectors.in_memory
            assert set(vectors.scores_for("team", unit(2), [first, second])) == {first, second}
    finally:
        publish.set()
        loader.join(30)
