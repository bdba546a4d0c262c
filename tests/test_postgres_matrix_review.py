"""Review of the in-memory PostgreSQL vector search (backends/postgres/matrix.py): the interleavings and write
paths tests/test_postgres_matrix.py does not cover."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from test_postgres_connections import running_pgbouncer
from test_postgres_matrix import DIM, MODEL, literal, matrix_of, remember, top, two_replicas, unit

from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres import schema as pg_schema
from agentcache_mcp.backends.postgres.matrix import PgMatrixVectors
from agentcache_mcp.memory.model import Memory, MemoryFilter, content_hash, new_id

from conftest import PostgresServer


@pytest.fixture
def replicas(postgres_url: str) -> Iterator[tuple[PostgresBackend, PostgresBackend]]:
    with two_replicas(postgres_url, 3) as pair:
        yield pair


def restored(text: str, seed: int, now: float) -> tuple[Memory, tuple[str, np.ndarray]]:
    """A memory as an import hands it to restore, with its vector."""
    memory = Memory(0, new_id(), "team", text, [], 0.5, {}, now, now, None, 0, None, None, content_hash(text))
    return memory, (MODEL, unit(seed))


def table_created_when_looked_up(
    a: PostgresBackend, b: PostgresBackend, key: int, monkeypatch: pytest.MonkeyPatch
) -> list[bool]:
    """b's first lookup that finds no vector table lets `a` create it (writing `key`'s first vector, committed)
    before it returns: the interleaving a replica meets while another writes the model's first vector. The
    list gets True once that happened."""
    plain = b.embeddings.table
    interleaved: list[bool] = []

    def table(db: psycopg.Connection[tuple], model_id: str) -> str | None:
        found = plain(db, model_id)
        if found is None and not interleaved:
            interleaved.append(True)
            a.embeddings.write(MODEL, [(key, content_hash("the first one"), unit(3))])  # commits meanwhile
        return found

    monkeypatch.setattr(b.embeddings, "table", table)
    return interleaved


def test_restored_vectors_reach_a_replica_that_loaded_before(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    a, b = replicas
    remember(a, "makes the table", vector=unit(0))
    matrix_of(b).load()
    now = time.time()
    assert a.memories.restore([restored(f"restored {i}", 400 + i, now) for i in range(3)]) == (3, 0)
    keys = {m.text: m.key for m in a.memories.find(MemoryFilter("team"))}
    assert top(b, unit(401), k=1) == [keys["restored 1"]]
    with a.bulk_load(100):  # the import path that drops the HNSW index first
        a.memories.restore([restored(f"bulk {i}", 500 + i, now) for i in range(3)])
        keys = {m.text: m.key for m in a.memories.find(MemoryFilter("team"))}
        assert top(b, unit(502), k=1) == [keys["bulk 2"]]


def test_a_vector_written_in_a_savepoint_follows_the_savepoint(
    postgres_url: str, replicas: tuple[PostgresBackend, PostgresBackend]
) -> None:
    a, b = replicas
    remember(a, "makes the table", vector=unit(0))
    kept, dropped = remember(a, "kept"), remember(a, "dropped")
    matrix_of(b).load()
    table = sql.Identifier(pg_schema.vector_table_name(MODEL))
    insert = sql.SQL("INSERT INTO {} (memory_pk, namespace, content_hash, vector) VALUES (%s, 'team', 'h', %s)").format(
        table
    )
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SELECT 1")
        with conn.transaction():
            with conn.transaction():  # a savepoint, released
                conn.execute(insert, (kept, literal(unit(11))))
            try:
                with conn.transaction():  # a savepoint, rolled back
                    conn.execute(insert, (dropped, literal(unit(12))))
                    raise RuntimeError
            except RuntimeError:
                pass
        top(b, unit(1))
    assert top(b, unit(11), k=1) == [kept]
    assert dropped not in top(b, unit(12), k=5)
    assert kept in matrix_of(b).matrix  # type: ignore[operator]
    assert dropped not in matrix_of(b).matrix  # type: ignore[operator]


def test_a_vector_table_created_while_a_replica_reads_the_log_is_not_missed(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No vector table yet when b loads; another replica creates it and writes the first vector between b's
    lookup of the table and its reading of the snapshot: b must still get that vector."""
    a, b = replicas
    key = remember(a, "the first one")
    assert matrix_of(b).load() == 0 and matrix_of(b).in_memory
    plain = b.embeddings.table
    interleaved = table_created_when_looked_up(a, b, key, monkeypatch)
    top(b, unit(3))  # the catch-up in which the table appears
    assert interleaved
    monkeypatch.setattr(b.embeddings, "table", plain)
    assert top(b, unit(3), k=1) == [key]


def test_a_load_that_meets_the_vector_table_being_created_does_not_miss_its_vectors(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    key = remember(a, "the first one")
    plain = b.embeddings.table
    interleaved = table_created_when_looked_up(a, b, key, monkeypatch)
    matrix_of(b).load()
    assert interleaved
    monkeypatch.setattr(b.embeddings, "table", plain)
    assert top(b, unit(3), k=1) == [key]


def test_a_search_while_the_first_load_ends_does_not_come_back_empty(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    """A search that found the vectors not loaded yet (another thread loading them) and goes to read them as
    the load ends: it answers from the index or from the loaded matrix, never with nothing."""
    a, b = replicas
    key = remember(a, "one", vector=unit(1))
    vectors = matrix_of(b)
    loaded = PgMatrixVectors(b.db, b.memories, b.embeddings, b.index_vectors)
    loaded.load()

    class LoadEndsNow(PgMatrixVectors):
        """The loading thread publishes its result (the matrix and the in-memory flag, under the lock) right
        after a search read `matrix`: unless that search holds the lock, as the loader then cannot publish."""

        @property  # type: ignore[override]
        def matrix(self):  # type: ignore[no-untyped-def]
            value = self.__dict__["matrix"]
            if not self.__dict__.get("_published") and self._lock.acquire(blocking=False):
                try:
                    self.__dict__["_published"] = True
                    self.__dict__["matrix"], self._snapshot = loaded.matrix, loaded._snapshot
                    self._in_memory = self._decided = True
                finally:
                    self._lock.release()
            return value

        @matrix.setter
        def matrix(self, value) -> None:  # type: ignore[no-untyped-def]
            self.__dict__["matrix"] = value

    vectors._decided = False
    vectors._load_lock.acquire()  # "another thread" is loading: the search must not load itself
    try:
        vectors.__class__ = LoadEndsNow
        assert [k for k, _ in vectors.search("team", unit(1), 1, MemoryFilter("team", live_at=time.time()))] == [key]
        vectors.__dict__.pop("_published", None)
        vectors.__dict__["matrix"], vectors._in_memory, vectors._decided = None, False, False
        assert list(vectors.scores_for("team", unit(1), [key])) == [key]
    finally:
        vectors._load_lock.release()
        vectors.__class__ = PgMatrixVectors


def test_a_forget_on_one_replica_leaves_no_score_on_another(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    a, b = replicas
    keys = [remember(a, f"memory {i}", vector=unit(i)) for i in range(3)]
    matrix_of(b).load()
    gone = next(m for m in a.memories.find(MemoryFilter("team")) if m.key == keys[1])
    a.memories.delete(MemoryFilter("team", ids=(gone.id,)))
    assert keys[1] not in b.vectors.scores_for("team", unit(1), keys)
    assert keys[1] not in matrix_of(b).vectors("team")[0].tolist()
    assert keys[1] not in top(b, unit(1))


def test_a_reload_after_a_prune_runs_once_for_searches_that_wait_for_it(
    replicas: tuple[PostgresBackend, PostgresBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several recall threads find the log pruned past their snapshot at once: one loads again, the others
    wait for that load and use it rather than each load the whole table again in turn."""
    a, b = replicas
    for i in range(4):
        remember(a, f"memory {i}", vector=unit(i))
    matrix_of(b).load()
    for i in range(4):
        remember(a, f"later {i}", vector=unit(10 + i))
    matrix_of(a).prune(keep=0)
    vectors = matrix_of(b)
    loads: list[int] = []
    plain = vectors._load
    gate = threading.Barrier(3)

    def counted() -> int:
        loads.append(1)
        time.sleep(0.3)
        return plain()

    monkeypatch.setattr(vectors, "_load", counted)
    errors: list[BaseException] = []

    def search() -> None:
        try:
            gate.wait()
            top(b, unit(11), k=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(loads) == 1
    assert len(b.vectors) == 8


def test_the_change_log_is_pruned_by_a_replica_that_searches_the_index(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The triggers log every vector write whatever a replica's setting: replicas that all search the index
    (AGENTCACHE_PG_VECTOR_SEARCH=index) must still keep the log from growing without bound."""
    from agentcache_mcp.backends.postgres import matrix

    backend = PostgresBackend(postgres_url, MODEL, pool_size=2, vector_search="index")
    try:
        for i in range(6):
            remember(backend, f"memory {i}", vector=unit(i))
        monkeypatch.setattr(matrix, "CHANGE_LOG_KEEP", 2)
        backend.maintenance()
        [(left,)] = backend.db.read(lambda db: db.execute("SELECT count(*) FROM vector_changes").fetchall())
        assert left <= 3
    finally:
        backend.close()


def test_a_vector_written_again_for_the_same_memory_reaches_the_other_replica(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    a, b = replicas
    key = remember(a, "one", vector=unit(1))
    other = remember(a, "two", vector=unit(2))
    matrix_of(b).load()
    assert a.embeddings.write(MODEL, [(key, content_hash("one"), unit(2))]) == 1  # ON CONFLICT DO UPDATE
    scores = b.vectors.scores_for("team", unit(2), [key, other])
    assert scores[key] == pytest.approx(scores[other], abs=2e-3)


@pytest.fixture
def pooled_url(postgres_server: PostgresServer, postgres_url: str) -> Iterator[str]:
    """The test's database through PgBouncer in transaction mode (tests/test_postgres_connections.py)."""
    with running_pgbouncer(postgres_server, "transaction") as url:
        yield f"{url}/{conninfo_to_dict(postgres_url)['dbname']}"


def test_behind_a_transaction_mode_pooler_the_load_runs_with_the_timeouts(
    pooled_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No call waits without bound: behind PgBouncer the session's timeouts are not ours, so every transaction
    sets them itself; the load's too."""
    backend = PostgresBackend(pooled_url, MODEL, pool_size=2)
    try:
        assert backend.db.pooled
        remember(backend, "one", vector=unit(1))
        seen: list[tuple[str, str]] = []
        plain = backend.embeddings.table

        def table(db: psycopg.Connection[tuple], model_id: str) -> str | None:
            row = db.execute("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')").fetchone()
            seen.append(row)  # type: ignore[arg-type]
            return plain(db, model_id)

        monkeypatch.setattr(backend.embeddings, "table", table)
        assert matrix_of(backend).load() == 1
        assert seen and all(s == ("1min", "10s") for s in seen)
    finally:
        backend.close()


def test_writes_forgets_and_prunes_racing_a_reader_leave_it_with_what_the_table_holds(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    """A few seconds of one replica writing and forgetting vectors and pruning the log to nothing, while the
    other searches from several threads: at the end the reader's matrix holds exactly the table's vectors."""
    a, b = replicas
    remember(a, "makes the table", vector=unit(0))
    matrix_of(b).load()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                key = remember(a, f"racing {i}", vector=unit(1000 + i))
                if i % 3 == 0:
                    gone = [m.id for m in a.memories.get_by_keys("team", [key - 2]).values()]
                    a.memories.delete(MemoryFilter("team", ids=tuple(gone)))
                if i % 5 == 0:
                    matrix_of(a).prune(keep=0)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                top(b, unit(7), k=3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]
    top(b, unit(7))
    table = sql.Identifier(pg_schema.vector_table_name(MODEL))
    stored = set(
        b.db.read(lambda db: [pk for (pk,) in db.execute(sql.SQL("SELECT memory_pk FROM {}").format(table))])
    )
    held = set(matrix_of(b).vectors("team")[0].tolist())
    assert held == stored and len(stored) > 10


def test_a_first_vector_write_that_fails_leaves_no_table_the_process_believes_in(
    replicas: tuple[PostgresBackend, PostgresBackend],
) -> None:
    """The transaction that creates the model's vector table fails (here: pgvector refuses a NaN): the table
    was rolled back with it, so the process must not go on as if it existed (every later write and every
    search would fail on a missing table until a restart)."""
    a, _ = replicas
    key = remember(a, "one")
    with pytest.raises(psycopg.errors.DataException):
        a.embeddings.write(MODEL, [(key, content_hash("one"), np.full(DIM, np.nan, dtype=np.float32))])
    assert a.embeddings.write(MODEL, [(key, content_hash("one"), unit(1))]) == 1
    assert top(a, unit(1), k=1) == [key]
