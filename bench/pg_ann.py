"""PostgreSQL's approximate vector search at 100k real and 1M synthetic vectors: recall@10 of the search as served
(PgVectors.search: HNSW with iterative scans) against the exact top-10, its p50/p95 latency, the index's build time
and size. Each data set is loaded once into its own database on a PostgreSQL server (schema by the backend's own
migrations; rows and vectors by binary COPY, bypassing the product's write path) and reused by later runs.

    python bench/pg_ann.py --server URL load-real --sqlite /work/scalework/scale-100000.db --database pgann_100k
    python bench/pg_ann.py --server URL load-synthetic --n 1000000 --stats-from scale-100000.db --database pgann_1m
    python bench/pg_ann.py --server URL build --database pgann_1m [--m 16 --ef-construction 64] [--workers 1]
    python bench/pg_ann.py --server URL measure --database pgann_1m [--ef 100,200,400] [--runs 3]

The real set: the SQLite store's MiniLM vectors (one namespace), queried with the bundled model's embeddings of
200 bench/scale.py Corpus.query() texts. The synthetic set (see `Synthetic`): unit vectors drawn from a mixture
of Gaussian clusters whose common mean and covariance are the real store's, so they share its strong common
direction (mean cosine ~0.70) and its spectrum; queries are fresh draws of the same mixture, not in the set.
Exact top-10 is computed in numpy (float32 cosines) at load time and kept in the database (`pgann_queries`).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentcache_mcp.backends.postgres import PostgresBackend
from agentcache_mcp.backends.postgres.schema import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    ensure_vector_table,
    hnsw_index_sql,
)
from agentcache_mcp.memory.model import MemoryFilter

DIM = 384
NAMESPACE = "bench"
SYNTHETIC_MODEL = "synthetic-clustered-384"
QUERIES = 200
F32 = npt.NDArray[np.float32]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def url_of(server: str, database: str) -> str:
    base, _, query = server.partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + ("?" + query if query else "")


def real_vectors(path: Path) -> tuple[str, F32]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    [(model,)] = db.execute("SELECT DISTINCT model FROM embeddings").fetchall()
    rows = db.execute("SELECT vector FROM embeddings WHERE model = ? ORDER BY memory_pk", (model,)).fetchall()
    x = np.vstack([np.frombuffer(v, dtype=np.float32) for (v,) in rows])
    return model, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Synthetic:
    """A mixture of `clusters` Gaussian clusters in 384 dimensions, normalised to unit length. Every cluster's
    centre is the real set's mean vector plus a draw from the real covariance scaled by `between` (the share of
    the variance between clusters); a point is its centre plus a draw from the real covariance scaled by
    (1 - between) x the cluster's spread. Cluster sizes are Pareto(1.2) (a few large topics, many small ones),
    spreads log-normal (sigma 0.3, root-mean-square 1). Using the real mean and covariance keeps what makes
    sentence embeddings hard for a graph index: one strong shared direction (all cosines ~0.6-0.9) and a
    decaying spectrum (top 50 of 384 components ~70% of the variance)."""

    def __init__(self, mean: F32, cov: npt.NDArray[np.float64], clusters: int = 3000, between: float = 0.15,
                 seed: int = 20):
        rng = np.random.default_rng(seed)
        w, v = np.linalg.eigh(cov)
        self.root = (v * np.sqrt(np.clip(w, 0, None))).T  # x @ root ~ N(0, cov)
        sizes = rng.pareto(1.2, clusters) + 1
        self.p = sizes / sizes.sum()
        self.centres = mean + rng.standard_normal((clusters, DIM)) @ self.root * np.sqrt(between)
        spread = np.exp(rng.normal(0, 0.3, clusters))
        self.spread = spread / np.sqrt(np.mean(spread**2)) * np.sqrt(1 - between)

    def draw(self, n: int, rng: np.random.Generator) -> F32:
        label = rng.choice(len(self.p), n, p=self.p)
        x = self.centres[label] + (rng.standard_normal((n, DIM)) @ self.root) * self.spread[label, None]
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def neighbour_stats(x: F32, sample: int = 2000) -> dict[str, float]:
    """Mean cosine to the 1st / 10th / 100th nearest neighbour and to everything, for `sample` points of x."""
    s = x[:sample] @ x.T
    s[np.arange(sample), np.arange(sample)] = -2
    top = -np.sort(-np.partition(s, -100, axis=1)[:, -100:], axis=1)
    return {
        "mean_cos": float(s[s > -2].mean()),
        "nn1_cos": float(top[:, 0].mean()),
        "nn10_cos": float(top[:, 9].mean()),
        "nn100_cos": float(top[:, 99].mean()),
        "mean_vector_norm": float(np.linalg.norm(x.mean(0))),
    }


def exact_top10(x: F32, queries: F32) -> npt.NDArray[np.int64]:
    """Row numbers (0-based) of each query's 10 nearest by cosine."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(x), 100_000):
        s = queries @ x[start : start + 100_000].T
        idx = np.argpartition(-s, 10, axis=1)[:, :10]
        best_s = np.hstack([best_s, np.take_along_axis(s, idx, 1)])
        best_i = np.hstack([best_i, idx + start])
        keep = np.argsort(-best_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def create_database(server: str, database: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def load(url: str, model: str, x: F32, queries: F32, texts: list[str] | None) -> None:
    """The product's schema (migrations, the model's vector table), then memories and vectors by COPY with the
    HNSW index dropped (`build` makes it), then the queries and their exact top-10 (as memory keys)."""
    PostgresBackend(url, model, pool_size=1).db.close()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        table = ensure_vector_table(conn, model, DIM)
        conn.commit()
        if conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone() != (0,):
            log(f"{table} already loaded: reusing it")
            return
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(table + "_hnsw")))
        conn.execute("SET session_replication_role = replica")  # no triggers: terms and FK checks are not measured
        now = time.time()
        started = time.perf_counter()
        with conn.cursor().copy(
            "COPY memories (id, namespace, text, content_hash, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i in range(len(x)):
                text = texts[i] if texts else f"synthetic memory {i}"
                copy.write_row((f"m{i:08d}", NAMESPACE, text, f"h{i}", now, now))
        first = conn.execute("SELECT min(pk) FROM memories").fetchone()
        base = int(first[0]) if first else 1
        log(f"memories: {len(x)} rows in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        with conn.cursor().copy(
            sql.SQL("COPY {} (memory_pk, namespace, content_hash, vector) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table)
            )
        ) as copy:
            copy.set_types(["int8", "text", "text", "vector"])
            for i in range(len(x)):
                copy.write_row((base + i, NAMESPACE, f"h{i}", x[i]))
        log(f"vectors: {len(x)} rows in {time.perf_counter() - started:.0f} s")
        truth = exact_top10(x, queries) + base
        conn.execute("CREATE TABLE pgann_queries (i INT PRIMARY KEY, vector vector(384), top10 BIGINT[])")
        with conn.cursor().copy("COPY pgann_queries FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector", "int8[]"])
            for i, q in enumerate(queries):
                copy.write_row((i, q, [int(k) for k in truth[i]]))
        conn.execute("SET session_replication_role = origin")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE memories")
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))


def cmd_load_real(args: argparse.Namespace) -> None:
    from agentcache_mcp.embeddings import SentenceTransformerEmbedder

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scale import Corpus

    model, x = real_vectors(args.sqlite)
    db = sqlite3.connect(f"file:{args.sqlite}?mode=ro", uri=True)
    texts = [t for (t,) in db.execute("SELECT m.text FROM memories m JOIN embeddings e ON e.memory_pk = m.pk "
                                      "ORDER BY e.memory_pk")]
    embedder = SentenceTransformerEmbedder(model.split("@")[0])
    embedder.load()
    corpus = Corpus()
    queries = np.asarray(embedder.embed([corpus.query() for _ in range(QUERIES)]), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    log(f"real: {len(x)} vectors of {model}; stats {json.dumps(neighbour_stats(x))}")
    create_database(args.server, args.database)
    load(url_of(args.server, args.database), model, x, queries, texts)


def cmd_load_synthetic(args: argparse.Namespace) -> None:
    _, real = real_vectors(args.stats_from)
    synthetic = Synthetic(real.mean(0), np.cov(real.T.astype(np.float64)))
    rng = np.random.default_rng(args.seed)
    x = np.vstack([synthetic.draw(min(100_000, args.n - s), rng) for s in range(0, args.n, 100_000)])
    queries = synthetic.draw(QUERIES, np.random.default_rng(args.seed + 1))
    n = min(len(real), len(x))
    log(f"real ({n}): {json.dumps(neighbour_stats(real[:n]))}")
    log(f"synthetic ({n} of {len(x)}): {json.dumps(neighbour_stats(x[:n]))}")
    create_database(args.server, args.database)
    load(url_of(args.server, args.database), SYNTHETIC_MODEL, x, queries, None)


def the_table(conn: psycopg.Connection[Any]) -> tuple[str, str]:
    [(model, table)] = conn.execute("SELECT model, table_name FROM vector_models").fetchall()
    return str(model), str(table)


def cmd_build(args: argparse.Namespace) -> None:
    url = url_of(args.server, args.database)
    with psycopg.connect(url, autocommit=True) as conn:
        _, table = the_table(conn)
        conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {args.workers}")
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(table + "_hnsw")))
        done = threading.Event()

        def progress() -> None:
            with psycopg.connect(url, autocommit=True) as watch:
                while not done.wait(30):
                    row = watch.execute(
                        "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index "
                        "WHERE datname = current_database()"
                    ).fetchone()
                    if row:
                        log(f"build: {row[0]} {row[1]}/{row[2]}")

        watcher = threading.Thread(target=progress, daemon=True)
        watcher.start()
        started = time.perf_counter()
        conn.execute(hnsw_index_sql(table, m=args.m, ef_construction=args.ef_construction))
        seconds = time.perf_counter() - started
        done.set()
        size = conn.execute("SELECT pg_relation_size(%s)", (table + "_hnsw",)).fetchone()
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    result = {
        "database": args.database, "rows": rows[0] if rows else 0, "m": args.m,
        "ef_construction": args.ef_construction, "workers": args.workers, "build_s": round(seconds, 1),
        "index_mib": round((size[0] if size else 0) / 2**20, 1), "load": os.getloadavg(),
    }
    print(json.dumps(result), flush=True)


def cmd_measure(args: argparse.Namespace) -> None:
    from agentcache_mcp.backends.postgres import vectors as pgv

    url = url_of(args.server, args.database)
    with psycopg.connect(url) as conn:
        register_vector(conn)
        model, table = the_table(conn)
        rows = conn.execute("SELECT vector, top10 FROM pgann_queries ORDER BY i").fetchall()
        index = conn.execute(
            "SELECT pg_relation_size(c.oid), pg_get_indexdef(c.oid) FROM pg_class c WHERE relname = %s",
            (table + "_hnsw",),
        ).fetchone()
    queries = [np.asarray(v.to_numpy(), dtype=np.float32) for v, _ in rows]
    truth = [set(t) for _, t in rows]
    backend = PostgresBackend(url, model, pool_size=2)
    vectors = backend.index_vectors  # the HNSW search, whatever AGENTCACHE_PG_VECTOR_SEARCH says
    where = MemoryFilter(NAMESPACE, live_at=time.time())
    out: dict[str, Any] = {
        "database": args.database,
        "index": index[1] if index else None,
        "index_mib": round(index[0] / 2**20, 1) if index else None,
        "load_before": os.getloadavg(),
    }
    efs: list[int | None] = [None] if not args.ef else [int(e) for e in args.ef.split(",")]
    default_ef = pgv.ef_search_for
    for ef in efs:
        if ef is not None:
            pgv.ef_search_for = lambda k, total, _ef=ef: _ef  # type: ignore[assignment]  # the curve only
        else:
            pgv.ef_search_for = default_ef  # type: ignore[assignment]
        for k in (int(k) for k in args.k.split(",")):
            recalls, p50s, p95s = [], [], []
            for _ in range(args.runs):
                ms, found = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = vectors.search(NAMESPACE, q, k, where)
                    ms.append(1000 * (time.perf_counter() - t))
                    found.append({key for key, _ in hits[:10]})
                recalls.append(statistics.mean(len(f & e) / 10 for f, e in zip(found, truth, strict=True)))
                qs = statistics.quantiles(ms, n=20)
                p50s.append(statistics.median(ms))
                p95s.append(qs[18])
            label = f"ef{ef if ef is not None else 'served'}_k{k}"
            out[label] = {
                "recall10": round(statistics.median(recalls), 4),
                "p50_ms": round(statistics.median(p50s), 2),
                "p50_ms_runs": [round(v, 2) for v in p50s],
                "p95_ms": round(statistics.median(p95s), 2),
            }
            log(f"{args.database} {label}: {json.dumps(out[label])}")
    pgv.ef_search_for = default_ef  # type: ignore[assignment]
    backend.db.close()
    out["load_after"] = os.getloadavg()
    print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", default="postgresql://postgres:@/postgres?host=/work/pgbench/data")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("load-real")
    p.add_argument("--sqlite", type=Path, required=True)
    p.add_argument("--database", required=True)
    p.set_defaults(run=cmd_load_real)
    p = sub.add_parser("load-synthetic")
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--stats-from", type=Path, required=True, help="a SQLite store whose vectors give mean/covariance")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database", required=True)
    p.set_defaults(run=cmd_load_synthetic)
    p = sub.add_parser("build")
    p.add_argument("--database", required=True)
    p.add_argument("--m", type=int, default=HNSW_M)
    p.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION)
    p.add_argument("--workers", type=int, default=1, help="max_parallel_maintenance_workers")
    p.add_argument("--maintenance-work-mem", default="3GB")
    p.set_defaults(run=cmd_build)
    p = sub.add_parser("measure")
    p.add_argument("--database", required=True)
    p.add_argument("--k", default="10,100")
    p.add_argument("--ef", default="", help="fixed ef_search values to sweep (default: as served)")
    p.add_argument("--runs", type=int, default=3)
    p.set_defaults(run=cmd_measure)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
