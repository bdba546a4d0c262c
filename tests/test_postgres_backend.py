"""The PostgreSQL backend's own promises, beyond the contract suite: URLs and their masking, clear errors for
a missing driver, an unreachable server or a missing pgvector, the shared embedding backlog (claims and
leases), the sweep's advisory lock, and filtered vector searches that stay complete."""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg import sql

from agentcache_mcp import app, cli
from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres.schema import MIGRATIONS
from agentcache_mcp.backends.postgres.vectors import search_sql, use_iterative_scan
from agentcache_mcp.config import ENV_VARIABLES, ConfigError, Settings, mask_url
from agentcache_mcp.memory.model import Memory, MemoryFilter, content_hash, new_id
from agentcache_mcp.memory.ports import StoreUnavailable
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder, PostgresServer

# --- URLs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://agent:s3cret@db.example:5432/memories?sslmode=require",
        "postgres://agent:s3cret@db.example/memories",
        "postgresql:///memories?host=/var/run/postgresql",  # libpq: a socket directory as the host
        "postgresql://agent@/memories?host=/tmp/sockets&port=5433",
        "POSTGRESQL://agent:s3cret@db.example/memories",
    ],
)
def test_a_postgres_url_in_agentcache_db_selects_postgres_and_is_kept_verbatim(url: str) -> None:
    settings = Settings.from_env({"AGENTCACHE_DB": url})
    assert settings.database_url == url
    assert "s3cret" not in settings.store_location
    assert Settings.from_env({}, db_path=url).database_url == url  # --db


def test_sqlite_paths_still_select_sqlite(tmp_path: Path) -> None:
    settings = Settings.from_env({"AGENTCACHE_DB": str(tmp_path / "m.db")})
    assert settings.database_url is None and settings.db_path == tmp_path / "m.db"
    assert settings.store_location == str(tmp_path / "m.db")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://agent:s3cret@db/m", "postgresql://agent:***@db/m"),
        # a parameter libpq does not know may be a misspelt password: its value is hidden too
        ("postgres://agent:p%40ss:w@db:5432/m?x=1", "postgres://agent:***@db:5432/m?x=***"),
        ("postgresql://agent@db/m", "postgresql://agent@db/m"),
        ("postgresql:///m?host=/run/pg&password=s3cret&user=a", "postgresql:///m?host=/run/pg&password=***&user=a"),
        ("postgresql://db/m", "postgresql://db/m"),
    ],
)
def test_mask_url_hides_every_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_the_pool_size_is_a_setting_read_from_the_environment() -> None:
    assert "AGENTCACHE_PG_POOL_SIZE" in ENV_VARIABLES
    assert Settings.from_env({"AGENTCACHE_PG_POOL_SIZE": "3"}).pg_pool_size == 3
    with pytest.raises(ConfigError, match="AGENTCACHE_PG_POOL_SIZE"):
        Settings.from_env({"AGENTCACHE_PG_POOL_SIZE": "1"})


def with_user(url: str, user: str, password: str) -> str:
    """The URL with this user and password in place of its own."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting from the developer's shell; whatever main() sets in the environment is undone afterwards."""
    for name in (*ENV_VARIABLES, *cli.QUIET_THIRD_PARTY, "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = 0
    try:
        cli.main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("cli_environment")
def test_a_missing_driver_is_a_one_line_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "postgres_driver_missing", lambda: "psycopg")
    code, out, err = run(capsys, "--db", "postgresql://agent:s3cret@db.example/m", "stats")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        "agentcache-mcp: invalid configuration: --db names a PostgreSQL database, but its driver is not installed "
        "(psycopg): pip install 'agentcache-mcp[postgres]'"
    ]


@pytest.mark.usefixtures("cli_environment")
def test_an_unreachable_server_is_a_one_line_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--db", "postgresql://agent:s3cret@127.0.0.1:1/m", "stats")
    assert code == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("agentcache-mcp: invalid configuration: cannot connect to the PostgreSQL database ")
    assert "postgresql://agent:***@127.0.0.1:1/m" in line and "s3cret" not in err


def test_serve_refuses_an_unreachable_server_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentcache_mcp", "--db", "postgresql://agent:s3cret@127.0.0.1:1/m", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert "invalid configuration: cannot connect to the PostgreSQL database" in proc.stderr
    assert "s3cret" not in proc.stderr


def test_a_server_without_usable_pgvector_is_refused_clearly(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """CREATE EXTENSION failing (here: a role that may not create it; elsewhere: pgvector not installed)."""
    import psycopg

    role = "agentcache_weak_" + postgres_url.rsplit("agentcache_test_", 1)[1].split("?")[0]
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak'")
    try:
        weak = with_user(postgres_url, role, "weak")
        with pytest.raises(StoreUnavailable, match="cannot use pgvector: CREATE EXTENSION IF NOT EXISTS vector failed"):
            PostgresBackend(weak, "m")
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute(f"DROP ROLE {role}")


@pytest.mark.parametrize(
    ("installed", "refused"),
    [
        ("0.7.4", True),
        ("0.5.1", True),
        ("0.8.0", False),
        ("0.8.1", False),
        ("0.10.2", False),
        ("1.0", False),
        ("0.9.0-dev", False),
    ],
)
def test_a_pgvector_older_than_0_8_is_refused_with_the_fix(installed: str, refused: bool) -> None:
    from agentcache_mcp.backends.postgres.schema import check_pgvector_version

    if refused:
        with pytest.raises(
            StoreUnavailable, match=rf"has pgvector {installed}; .* needs 0\.8 or newer .*ALTER EXTENSION"
        ):
            check_pgvector_version(installed, "postgresql://db/m")
    else:
        check_pgvector_version(installed, "postgresql://db/m")


def test_the_installed_pgvector_version_is_checked_at_start(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentcache_mcp.backends.postgres import schema

    monkeypatch.setattr(schema, "PGVECTOR_MINIMUM", (99, 0))  # as if the bundled server's pgvector were old
    with pytest.raises(StoreUnavailable, match=r"has pgvector \d+\.\d+\.\d+; agentcache-mcp needs 99\.0 or newer"):
        PostgresBackend(postgres_url, "m")


def test_a_replica_starting_on_a_database_set_up_earlier_checks_pgvector_too(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check must run on every start, not only the one that created the extension and the schema: a
    replica (or a restart) on an existing database whose pgvector is old is refused too. The start test
    above uses a fresh database, so it still passes if the check is moved under `if not done:`."""
    from agentcache_mcp.backends.postgres import schema

    PostgresBackend(postgres_url, "m").close()  # extension created, migrations applied
    monkeypatch.setattr(schema, "PGVECTOR_MINIMUM", (99, 0))
    with pytest.raises(StoreUnavailable, match=r"has pgvector \d+\.\d+\.\d+; agentcache-mcp needs 99\.0 or newer"):
        PostgresBackend(postgres_url, "m")


@pytest.mark.parametrize("installed", ["0.7rc1", "0.7-1", "0.5beta3"])
def test_a_suffix_is_not_read_as_more_digits_of_the_version(installed: str) -> None:
    """check_pgvector_version joins every digit of a component: '0.7rc1' is read as (0, 71) and accepted.
    Latent (pgvector's released extversions are plain X.Y.Z), but the parser claims to handle suffixes."""
    from agentcache_mcp.backends.postgres.schema import check_pgvector_version

    with pytest.raises(StoreUnavailable, match="needs 0\\.8 or newer"):
        check_pgvector_version(installed, "postgresql://db/m")


def test_the_password_is_shown_nowhere(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    parts = urlsplit(postgres_url)
    password = parts.password or "hunter2"  # the bundled server trusts local connections: any password works
    url = with_user(postgres_url, parts.username or "postgres", password)
    memory = open_memory(Settings(database_url=url), embedder=HashEmbedder())
    try:
        memory.remember("a note")
        shown = json.dumps(memory.stats()) + json.dumps(memory.backend.describe())
        assert password not in shown and ":***@" in shown
        assert memory.stats()["index"]["backend"] == "postgres"
    finally:
        memory.close()
    assert "applied schema migration 1 to postgresql://" in caplog.text  # the URL is logged, masked
    assert password not in caplog.text


# --- the shared embedding backlog ------------------------------------------------------------------------


@pytest.fixture
def pair(postgres_url: str) -> tuple[MemoryService, MemoryService]:
    a = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    b = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    yield a, b
    a.close()
    b.close()


def test_a_claimed_batch_is_not_claimed_again_until_its_lease_runs_out(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    a, b = pair
    for i in range(10):
        a.remember(f"note number {i}")
    store_a, store_b = a.backend.embeddings, b.backend.embeddings
    claimed = store_a.claim("test-hash-embedder", 6, lease_s=1.0)
    assert len(claimed) == 6
    rest = store_b.claim("test-hash-embedder", 100, lease_s=1.0)
    assert {k for k, _, _ in rest}.isdisjoint({k for k, _, _ in claimed}) and len(rest) == 4
    assert store_b.claim("test-hash-embedder", 100, lease_s=1.0) == []  # all claimed, none embedded
    assert b.pending_embeddings() == 10  # claimed is still pending
    time.sleep(1.2)  # a dies with its claims: after the lease they are anyone's
    again = store_b.claim("test-hash-embedder", 100, lease_s=60)
    assert {k for k, _, _ in again} == {k for k, _, _ in claimed} | {k for k, _, _ in rest}
    assert b.embed_pending() == 0  # b's own claims are live: embed_pending claims anew and finds nothing
    texts = {k: t for k, t, _ in again}
    vectors_ = b.embedder.embed([texts[k] for k, _, _ in again])
    assert b.store_embeddings(again, vectors_) == 10
    assert a.pending_embeddings() == 0


def test_replicas_claiming_at_once_share_the_backlog_without_overlap(
    pair: tuple[MemoryService, MemoryService],
) -> None:
    a, b = pair
    for i in range(300):
        a.remember(f"backlog item {i}")
    got: dict[str, list[int]] = {"a": [], "b": []}

    def drain(name: str, memory: MemoryService) -> None:
        while batch := memory.backend.embeddings.claim("test-hash-embedder", 16, lease_s=60):
            got[name] += [k for k, _, _ in batch]

    threads = [threading.Thread(target=drain, args=(n, m)) for n, m in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got["a"]) + len(got["b"]) == 300
    assert set(got["a"]).isdisjoint(got["b"])


# --- one sweep at a time ---------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from agentcache_mcp.backends.postgres import PostgresBackend
    backend = PostgresBackend(sys.argv[1], "m")
    with backend.exclusive("auto-forget") as held:
        print(held, flush=True)
        time.sleep(600)
    """
)


def test_the_sweep_lock_is_held_by_one_process_and_freed_when_it_dies(postgres_url: str) -> None:
    backend = PostgresBackend(postgres_url, "m")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, postgres_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        with backend.exclusive("auto-forget") as held:
            assert held is False
        with backend.exclusive("another-lock") as held:
            assert held is True
        holder.kill()  # SIGKILL: the server ends its session, and the lock with it
        holder.wait(timeout=30)
        deadline = time.monotonic() + 10
        while True:
            with backend.exclusive("auto-forget") as held:
                if held:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
        backend.close()


def test_migrations_from_replicas_starting_at_once_apply_once(postgres_url: str) -> None:
    errors: list[BaseException] = []
    opened: list[PostgresBackend] = []

    def start() -> None:
        try:
            opened.append(PostgresBackend(postgres_url, "m"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(opened) == 4
        rows = opened[0].db.read(lambda db: db.execute("SELECT version FROM schema_migrations").fetchall())
        assert sorted(rows) == [(v,) for v in range(1, len(MIGRATIONS) + 1)]  # each once
    finally:
        for backend in opened:
            backend.close()


# --- filtered vector search stays complete ---------------------------------------------------------------

DIM = 32


def fill(
    memory: MemoryService, namespaces: int, per_namespace: int, seed: int = 7, *, bulk: bool = False
) -> dict[str, np.ndarray]:
    """Many namespaces of random unit vectors, stored in one transaction through restore(); `bulk`: as a bulk load
    (the HNSW index built once at the end, as a large import does: row by row, 10k vectors took most of a 120 s
    test under load; its ANALYZE changes the plans the HNSW-only tests force)."""
    rng = np.random.default_rng(seed)
    now = time.time()
    out: dict[str, np.ndarray] = {}
    items = []
    for n in range(namespaces):
        ns = f"ns{n}"
        matrix = rng.normal(size=(per_namespace, DIM)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        out[ns] = matrix
        for i in range(per_namespace):
            text = f"{ns} item {i}"
            m = Memory(0, new_id(), ns, text, [], 0.5, {}, now, now, None, 0, None, None, content_hash(text))
            items.append((m, ("test-hash-embedder", matrix[i])))
    with memory.backend.bulk_load(len(items)) if bulk else nullcontext():
        memory.backend.memories.restore(items)
    return out


@contextmanager
def hnsw_only(url: str) -> Iterator[tuple[psycopg.Connection, str]]:  # type: ignore[type-arg]
    """A transaction in which the planner can only order by the HNSW index: the namespace btree is dropped
    (rolled back at the end) and sequential and bitmap scans are off. At these test sizes the planner would
    otherwise, rightly, search the namespace exactly, and there would be nothing approximate to measure."""
    with psycopg.connect(url) as conn:
        register_vector(conn)
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(table + "_ns")))
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        try:
            yield conn, table
        finally:
            conn.rollback()


def top10(conn: psycopg.Connection, table: str, namespace: str, query: np.ndarray) -> list[int]:  # type: ignore[type-arg]
    rows = conn.execute(search_sql(table, "TRUE"), [query, namespace, query, 10]).fetchall()
    return [int(pk) for pk, _ in rows]


def uses_hnsw(conn: psycopg.Connection, table: str, query: np.ndarray) -> bool:  # type: ignore[type-arg]
    plan = conn.execute(sql.SQL("EXPLAIN ") + search_sql(table, "TRUE"), [query, "ns0", query, 10]).fetchall()
    return any(table + "_hnsw" in line for (line,) in plan)


def test_a_filtered_hnsw_scan_misses_without_iterative_scan_and_not_with_it(postgres_url: str) -> None:
    """Without iterative scans, HNSW hands ef_search (40) candidates to the namespace filter: a namespace of
    1/50 of the table gets about one of them. With the backend's settings every namespace gets its 10."""
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=50, per_namespace=60)
        total = 50 * 60
    finally:
        memory.close()
    query = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    with hnsw_only(postgres_url) as (conn, table):
        assert uses_hnsw(conn, table, query)
        plain = [len(top10(conn, table, f"ns{n}", query)) for n in range(50)]
        assert sum(plain) < 50 * 10 / 2  # the problem is real: most namespaces come back short
        use_iterative_scan(conn, 10, total, 60)
        assert [len(top10(conn, table, f"ns{n}", query)) for n in range(50)] == [10] * 50


def test_ann_recall_at_10_against_exact_search_with_many_namespaces(postgres_url: str) -> None:
    """ANN recall@10 of the backend's HNSW query (iterative scan, its ef_search) against exact search, over 20
    namespaces of 500 random vectors; the figure is printed (pytest -s) for the README."""
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=20, per_namespace=500, bulk=True)
        rng = np.random.default_rng(3)
        queries = [(f"ns{q % 20}", rng.normal(size=DIM).astype(np.float32)) for q in range(200)]
        exact = [
            {k for k, _ in memory.backend.vectors.exact_search(ns, v, 10, MemoryFilter(ns))}  # type: ignore[attr-defined]
            for ns, v in queries
        ]
    finally:
        memory.close()
    with hnsw_only(postgres_url) as (conn, table):
        assert uses_hnsw(conn, table, queries[0][1])
        use_iterative_scan(conn, 10, 20 * 500, 500)
        found = [set(top10(conn, table, ns, v)) for ns, v in queries]
    assert all(len(f) == 10 for f in found)  # complete
    recall = float(np.mean([len(f & e) / 10 for f, e in zip(found, exact, strict=True)]))
    print(f"ANN recall@10 vs exact (20 namespaces x 500 vectors, dim {DIM}, 200 queries): {recall:.3f}")
    assert recall >= 0.9


def test_a_small_namespace_is_searched_exactly(postgres_url: str) -> None:
    memory = open_memory(Settings(database_url=postgres_url, pg_vector_search="index"), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=30, per_namespace=40)
        rng = np.random.default_rng(5)
        for q in range(20):
            ns = f"ns{q}"
            query = rng.normal(size=DIM).astype(np.float32)
            where = MemoryFilter(ns, live_at=time.time())
            found = memory.backend.vectors.search(ns, query, 10, where)
            exact = memory.backend.vectors.exact_search(ns, query, 10, where)  # type: ignore[attr-defined]
            assert [k for k, _ in found] == [k for k, _ in exact]
    finally:
        memory.close()


def test_a_namespace_past_the_exact_limit_is_searched_through_the_index_completely(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.postgres import vectors

    monkeypatch.setattr(vectors, "EXACT_SEARCH_MAX", 20)
    searches: list[bool] = []
    plain_search_sql = vectors.search_sql

    def spy(table: str, clause: str, *, exact: bool = False):  # type: ignore[no-untyped-def]
        searches.append(exact)
        return plain_search_sql(table, clause, exact=exact)

    monkeypatch.setattr(vectors, "search_sql", spy)
    memory = open_memory(Settings(database_url=postgres_url, pg_vector_search="index"), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=6, per_namespace=40)
        rng = np.random.default_rng(9)
        overlap = []
        for q in range(12):
            ns = f"ns{q % 6}"
            query = rng.normal(size=DIM).astype(np.float32)
            where = MemoryFilter(ns, live_at=time.time())
            searches.clear()
            found = memory.backend.vectors.search(ns, query, 10, where)
            assert searches == [False]  # the index answered: no exact fallback
            exact = memory.backend.vectors.exact_search(ns, query, 10, where)  # type: ignore[attr-defined]
            assert len(found) == 10
            overlap.append(len({k for k, _ in found} & {k for k, _ in exact}) / 10)
        assert sum(overlap) / len(overlap) >= 0.9
    finally:
        memory.close()


def test_the_vector_table_size_comes_from_the_catalogue_once_it_has_an_estimate(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.postgres import vectors

    monkeypatch.setattr(vectors, "EXACT_SEARCH_MAX", 10)
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=3, per_namespace=40)
    finally:
        memory.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE memory_pk IN (SELECT memory_pk FROM {} WHERE namespace = 'ns1' LIMIT 20)").format(
                sql.Identifier(table), sql.Identifier(table)
            )
        )
        conn.execute("UPDATE pg_class SET reltuples = -1 WHERE oid = %s::regclass", (table,))
        assert vectors.sizes(conn, table, "ns0") == (100, 11)  # no estimate yet: counted; ns0 counted to 11
        assert vectors.sizes(conn, table, "nobody") == (0, 0)  # searched exactly (nothing): no count needed
        conn.execute("UPDATE pg_class SET reltuples = 12345 WHERE oid = %s::regclass", (table,))
        assert vectors.sizes(conn, table, "ns0") == (12345, 11)  # an estimate: the catalogue's figure, not a count


def test_ef_search_grows_with_the_table_and_with_k_up_to_pgvectors_limit() -> None:
    from agentcache_mcp.backends.postgres.vectors import EF_SEARCH_BY_ROWS, ef_search_for

    for rows, ef in EF_SEARCH_BY_ROWS:
        assert ef_search_for(10, rows) == ef  # as measured
    (smallest, ef_smallest), (largest, ef_largest) = EF_SEARCH_BY_ROWS[0], EF_SEARCH_BY_ROWS[-1]
    assert ef_search_for(10, smallest // 3) == ef_smallest  # held below the smallest measured size
    assert ef_search_for(10, 10 * largest) == ef_largest  # and beyond the largest
    sizes = [smallest, *(rows * 2 for rows, _ in EF_SEARCH_BY_ROWS[:-1]), largest]
    assert all(ef_search_for(10, a) < ef_search_for(10, b) for a, b in itertools.pairwise(sorted(sizes)))
    assert ef_search_for(300, smallest) == max(ef_smallest, 600)  # at least twice k
    assert ef_search_for(900, largest) == 1_000  # pgvector refuses more


def test_a_search_in_a_large_table_sets_the_candidate_list_for_its_size(postgres_url: str) -> None:
    from agentcache_mcp.backends.postgres.vectors import ef_search_for

    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        use_iterative_scan(conn, 100, 1_000_000, 5_000)
        settings = conn.execute(
            "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan'), "
            "current_setting('hnsw.max_scan_tuples')"
        ).fetchone()
        assert settings == (str(ef_search_for(100, 1_000_000)), "relaxed_order", "100000")
        conn.rollback()  # set for the transaction only
        assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == ("40",)


def test_the_vector_index_is_the_one_definition_of_hnsw_index_sql(postgres_url: str) -> None:
    from agentcache_mcp.backends.postgres.schema import HNSW_EF_CONSTRUCTION, HNSW_M

    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=1, per_namespace=3)
    finally:
        memory.close()
    with psycopg.connect(postgres_url) as conn:
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        [(definition,)] = conn.execute(
            "SELECT pg_get_indexdef(%s::regclass)", (table + "_hnsw",)
        ).fetchall()
    assert "USING hnsw (vector vector_cosine_ops)" in definition
    assert f"m='{HNSW_M}'" in definition and f"ef_construction='{HNSW_EF_CONSTRUCTION}'" in definition


def test_replicas_answer_a_recall_identically(pair: tuple[MemoryService, MemoryService]) -> None:
    a, b = pair
    for i in range(40):
        a.remember(f"the ferry to island {i} leaves at {i % 12} o'clock", namespace="travel")
    a.embed_pending()
    assert len(b.backend.vectors) == 40  # no load, no refresh: b sees a's vectors at once
    ra = [(h.id, h.score) for h in a.recall("ferry island 7", namespace="travel", touch=False)]
    rb = [(h.id, h.score) for h in b.recall("ferry island 7", namespace="travel", touch=False)]
    assert ra == rb and ra


def test_app_refuses_without_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psycopg(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith(("psycopg", "pgvector")) or "backends.postgres" in name or name == "postgres":
            raise ImportError("No module named 'psycopg'", name="psycopg")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.delitem(sys.modules, "agentcache_mcp.backends.postgres", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_psycopg)
    with pytest.raises(StoreUnavailable, match=r"pip install 'agentcache-mcp\[postgres\]'"):
        app.open_backend(Settings(database_url="postgresql://x/y"), "m")


def test_a_sweep_with_its_erase_runs_on_the_smallest_pool(postgres_url: str) -> None:
    """The sweep holds one connection for its lock; the sweep's work and the erase make do with the other."""
    from agentcache_mcp.workers import App

    settings = Settings(database_url=postgres_url, pg_pool_size=2, pg_erase="after-forget")
    memory = open_memory(settings, embedder=HashEmbedder())
    try:
        gone = memory.remember("a note to forget").id
        memory.remember("a note to keep")
        memory.forget(ids=[gone])
        backend = memory.backend
        assert isinstance(backend, PostgresBackend) and backend.erase_pending()
        started = time.monotonic()
        report = App(settings, memory)._sweep_alone()
        assert report is not None and time.monotonic() - started < 10
        assert not backend.erase_pending()
        other = open_memory(settings, embedder=HashEmbedder())
        try:
            with backend.exclusive("auto-forget") as held:  # another replica's sweep skips meanwhile
                assert held
                assert App(settings, other)._sweep_alone() is None
        finally:
            other.close()
    finally:
        memory.close()


def _insert_rows(url: str, namespace: str, texts: list[str]) -> None:
    """Memories written in one statement (the insert trigger still writes their terms)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO memories (id, namespace, text, content_hash, created_at, updated_at) "
            "SELECT md5(random()::text || t), %s, t, md5(t), 0, 0 FROM unnest(%s::text[]) WITH ORDINALITY AS x(t, n) "
            "ORDER BY n",
            (namespace, texts),
        )


def _statements(fn: Any) -> list[str]:
    """The SQL statements fn runs."""
    seen: list[str] = []
    original = psycopg.Connection.execute

    def recording(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        seen.append(str(query))
        return original(self, query, params, **kwargs)

    psycopg.Connection.execute = recording  # type: ignore[method-assign,assignment]
    try:
        fn()
    finally:
        psycopg.Connection.execute = original  # type: ignore[method-assign]
    return seen


def _keyword_budget_store(url: str) -> tuple[MemoryService, dict[str, set[int]]]:
    """1,000 memories: "rare" in 10, "middle" in 31, "common" in 334 (a third: under half) and "entry" in every
    one, by their own words; each word is also in the next memory's context, so a term matches about twice as many
    rows (rare 20, middle 62, common 667). Returns the keys holding each word in their own text."""
    memory = open_memory(Settings(database_url=url), embedder=HashEmbedder())
    texts = []
    for i in range(1000):
        words = ["entry"]
        words += ["rare"] if i % 100 == 0 else []
        words += ["middle"] if i % 33 == 0 else []
        words += ["common"] if i % 3 == 0 else []
        texts.append(" ".join(words) + f" n{i}")
    _insert_rows(url, "ns", texts)
    rows = memory.backend.memories.find(MemoryFilter("ns"))
    holding = {w: {m.key for m in rows if w in m.text.split()} for w in ("rare", "middle", "common")}
    return memory, holding


def test_the_keyword_budget_takes_candidates_from_the_rarest_terms_and_scores_every_term(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.postgres import keywords

    monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 90)
    memory, holding = _keyword_budget_store(postgres_url)
    try:
        kw = memory.backend.keywords
        where = MemoryFilter("ns", live_at=time.time())
        # "entry" is in every memory's own words (judged from the sample: past the budget): dropped.
        assert kw.informative_terms("ns", ["entry", "common", "middle", "rare"]) == ["common", "middle", "rare"]
        hits = kw.search("ns", ["common", "middle", "rare"], 100, where, 0.0)
        found = {k for k, _ in hits}
        # 20 + 62 rows fit the budget of 90; "common" (667 rows) does not: no memory with only "common" is read.
        assert found == holding["rare"] | holding["middle"]
        # ...but "common" still ranks the candidates that hold it: "rare common" above "rare" alone.
        score = dict(hits)
        with_common = holding["rare"] & holding["common"]
        without = holding["rare"] - holding["common"] - holding["middle"]
        assert with_common and without
        assert min(score[k] for k in with_common) > max(score[k] for k in without)
        monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 80)  # 20 + 62 rows would pass 80
        assert {k for k, _ in kw.search("ns", ["common", "middle", "rare"], 100, where, 0.0)} == holding["rare"]
        # The rarest term is always searched; past the budget, in its newest budget rows.
        alone = [k for k, _ in kw.search("ns", ["common"], 100, where, 0.0)]
        assert set(alone) == set(sorted(holding["common"])[-80:])
    finally:
        memory.close()


def test_keyword_counts_are_taken_again_after_a_write_or_a_delete(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends.postgres import keywords

    monkeypatch.setattr(keywords, "KEYWORD_ROW_BUDGET", 90)
    memory, holding = _keyword_budget_store(postgres_url)
    try:
        kw = memory.backend.keywords
        where = MemoryFilter("ns", live_at=time.time())

        def found() -> set[int]:
            return {k for k, _ in kw.search("ns", ["middle", "rare"], 100, where, 0.0)}

        assert found() == holding["rare"] | holding["middle"]
        _insert_rows(postgres_url, "ns", [f"rare again n{i}" for i in range(60)])  # "rare" now in 81 rows
        assert found() == holding["middle"]  # 62 + 81 rows pass the budget: only the rarer "middle" is read
        newest = max(m.key for m in memory.backend.memories.find(MemoryFilter("ns")))
        assert len(memory.backend.memories.delete(MemoryFilter("ns", key_after=newest - 60))) == 60
        assert found() == holding["rare"] | holding["middle"]  # "rare" is back to 20 rows
    finally:
        memory.close()


def test_a_term_first_searched_when_absent_finds_the_memory_another_replica_writes_with_it_next(
    postgres_url: str,
) -> None:
    """A term counted in no row is left out of the search; the count must not outlive the memory that brings the
    term (a rare word, an error code: what keyword search is for), even while the namespace grew by less than
    a hundredth."""
    replica_a = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    replica_b = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        _insert_rows(postgres_url, "ns", [f"routine entry number {i}" for i in range(500)])
        kw = replica_a.backend.keywords
        assert kw.search("ns", ["zx81"], 10, MemoryFilter("ns", live_at=time.time()), 0.0) == []
        written = replica_b.remember("build failed with error zx81 on the arm runner", namespace="ns").id
        [key] = [m.key for m in replica_a.backend.memories.get("ns", [written])]
        hits = kw.search("ns", ["zx81"], 10, MemoryFilter("ns", live_at=time.time()), 0.0)
        assert [k for k, _ in hits] == [key]
    finally:
        replica_b.close()
        replica_a.close()


def test_a_repeated_keyword_search_counts_nothing_until_the_store_changes(postgres_url: str) -> None:
    """The counts behind the term rules and the IDFs are taken once (bounded), not on every recall: a repeated
    query runs the stamp lookup and the search, and no count(*) of the namespace."""
    memory, _ = _keyword_budget_store(postgres_url)
    try:
        kw = memory.backend.keywords
        where = MemoryFilter("ns", live_at=time.time())

        def recall_keywords() -> list[tuple[int, float]]:
            return kw.search("ns", kw.informative_terms("ns", ["common", "middle", "rare"]), 100, where, 0.4)

        first = _statements(recall_keywords)
        assert any("count(*)" in s for s in first)
        again = _statements(recall_keywords)
        assert not any("count(*)" in s for s in again), again
        assert len(again) == 3  # the stamp for each call, and the search
        _insert_rows(postgres_url, "ns", [f"common n{i} again" for i in range(20)])  # past a hundredth: recount
        assert any("count(*)" in s for s in _statements(recall_keywords))
    finally:
        memory.close()


def test_forgetting_a_few_memories_keeps_the_keyword_counts_until_a_hundredth_is_gone(postgres_url: str) -> None:
    """Regression: every DELETE made the next recall count the namespace's keyword terms afresh, so while agents
    forget one memory a call, nearly every concurrent recall recounted (at 100k: ~0.1 s for the namespace's size
    and ~0.2 s for its terms, per recall, bench/pg_forget.py). Deletes now count as growth does: the counts
    are kept until memories deleted (anywhere in the store) and added add up to a RECOUNT_SHARE-th of it."""
    memory, _ = _keyword_budget_store(postgres_url)  # 1,000 memories: a hundredth is 10
    try:
        kw = memory.backend.keywords
        where = MemoryFilter("ns", live_at=time.time())

        def recall_keywords() -> list[tuple[int, float]]:
            return kw.search("ns", kw.informative_terms("ns", ["common", "middle", "rare"]), 100, where, 0.4)

        assert any("count(*)" in s for s in _statements(recall_keywords))
        rows = memory.backend.memories.find(MemoryFilter("ns"))
        for m in rows[:5]:  # five forgets, one call each
            assert memory.forget(ids=[m.id], namespace="ns").deleted == [m.id]
        again = _statements(recall_keywords)
        assert not any("count(*)" in s for s in again), again
        for m in rows[5:11]:  # eleven in all: past a hundredth
            assert memory.forget(ids=[m.id], namespace="ns").deleted == [m.id]
        assert any("count(*)" in s for s in _statements(recall_keywords))
    finally:
        memory.close()


def test_the_live_filter_looks_up_a_superseding_memory_by_id_not_by_scanning_the_table(postgres_url: str) -> None:
    """Regression: NOT EXISTS let the planner hash the superseding memories, a scan of the whole table on every
    recall as soon as one candidate was superseded (55 ms at 10k memories); an index lookup per such row serves."""
    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        _insert_rows(postgres_url, "ns", [f"memory number {i}" for i in range(2000)])
        rows = memory.backend.memories.find(MemoryFilter("ns"))
        with psycopg.connect(postgres_url) as conn:
            conn.execute("UPDATE memories SET superseded_by = %s WHERE pk = %s", (rows[-1].id, rows[0].key))
            conn.execute("UPDATE memories SET superseded_by = 'gone' WHERE pk = %s", (rows[1].key,))
            conn.execute("ANALYZE memories")
        keys = [m.key for m in rows[:300]]
        now = time.time()
        live = memory.backend.memories.live_keys("ns", keys, MemoryFilter("ns", live_at=now))
        assert live == set(keys) - {rows[0].key}  # superseded by a live memory; one whose superseder is gone stays
        recorded: list[tuple[str, Any]] = []
        original = psycopg.Connection.execute

        def recording(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            recorded.append((str(query), params))
            return original(self, query, params, **kwargs)

        psycopg.Connection.execute = recording  # type: ignore[method-assign,assignment]
        try:
            memory.backend.memories.live_keys("ns", keys, MemoryFilter("ns", live_at=now))
        finally:
            psycopg.Connection.execute = original  # type: ignore[method-assign]
        [(statement, params)] = recorded
        with psycopg.connect(postgres_url) as conn:
            plan = "\n".join(line for (line,) in conn.execute("EXPLAIN ANALYZE " + statement, params))
        assert "Seq Scan" not in plan and "hashed" not in plan, plan
    finally:
        memory.close()


def test_an_index_of_an_earlier_version_keeps_the_candidate_lists_it_was_measured_with(postgres_url: str) -> None:
    """An m=16 index (earlier versions; kept until dropped) needs longer candidate lists than today's m=24 one:
    the search reads the index's m from the catalogue and takes the breakpoints measured for it."""
    from agentcache_mcp.backends.postgres import vectors
    from agentcache_mcp.backends.postgres.schema import HNSW_M, hnsw_index_sql

    memory = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder(dim=DIM))
    try:
        fill(memory, namespaces=1, per_namespace=5)
    finally:
        memory.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        assert vectors.index_m(conn, table) == HNSW_M
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(table + "_hnsw")))
        assert vectors.index_m(conn, table) is None
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (vector vector_cosine_ops)").format(
            sql.Identifier(table + "_hnsw"), sql.Identifier(table)))
        assert vectors.index_m(conn, table) == 16  # pgvector's default when no m was given
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(table + "_hnsw")))
        conn.execute(hnsw_index_sql(table))
    for rows, ef in vectors.EF_SEARCH_BY_ROWS_M16:
        assert vectors.ef_search_for(10, rows, 16) == ef
    assert vectors.ef_search_for(10, 30_000, 16) > vectors.ef_search_for(10, 30_000, HNSW_M)
