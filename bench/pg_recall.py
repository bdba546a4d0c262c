"""Where a PostgreSQL recall's time goes: the whole recall against the query embedding, and the database's
share split into keyword, vector and hydration calls.

    python bench/pg_recall.py --database-url postgresql://postgres:@/postgres?host=/path --sizes 10000,100000
    python bench/pg_recall.py ... --explain          # also EXPLAIN (ANALYZE, BUFFERS) of one query's statements
    python bench/pg_recall.py ... --rebuild          # load the corpus again even if its database is there

Corpus: the SQLite store bench/scale.py builds (`--workdir`, scale-<N>.db: synthetic Zipf sentences in one
namespace, each with its real MiniLM vector). It is copied into a fresh database of the server named by
`--database-url` (`<--prefix>_<N>`, kept between runs: `--rebuild` loads it again, `--drop` drops it at the
end) by COPY, in the store's key order, with the product's schema (its migrations) and its indexes built
after the load; nothing is embedded again. Without the SQLite store, `--synthetic` loads the same generator's
sentences with random vectors (the vector figures then say little; keyword and hydration figures hold: the texts are the same).

Each run makes `--queries` recalls (the queries bench/scale.py makes for that corpus) through the service
(MemoryService.recall_outcome, the shipped settings, the bundled model embedding each query) and times, per
recall: the whole call, the query embedding inside it, and every backend call, grouped as keyword
(informative_terms, search), vector (search, scores_for) and hydration/other (the repository and embedding
store calls: neighbours, live_keys, texts, get_by_keys, vectors_of). The floor is the same model embedding the
same queries back to back, nothing else. `--runs` runs; the report gives each run's p50s and the median and
spread (min-max) over runs.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sqlite3
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server's CLI does, before numpy loads
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from scale import Corpus  # noqa: E402  (bench/scale.py: the same corpus and queries)

from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.memory.fusion import query_terms  # noqa: E402
from agentcache_mcp.memory.service import MemoryService  # noqa: E402

NAMESPACE = "bench"
DIM = 384
GROUPS = {"keywords": "keyword", "vectors": "vector", "memories": "hydration", "embeddings": "hydration"}


def database_url(server: str, name: str) -> str:
    """The server's postgresql:// URL with its database replaced by `name`."""
    parts = urlsplit(server)
    return urlunsplit(parts._replace(path="/" + name))


def exists(server: str, name: str) -> bool:
    with psycopg.connect(server, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def loaded(url: str) -> int:
    """Memories in a database this script finished loading (0 if it did not)."""
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'bench_loaded'").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def rows_from_sqlite(path: Path) -> Iterator[tuple[Any, ...]]:
    """(memory columns..., vector as pgvector text) in key order, from a SQLite store (read-only)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for row in db.execute(
            "SELECT m.id, m.namespace, m.text, m.content_hash, m.tags, m.importance, m.metadata, m.created_at, "
            "m.updated_at, m.last_accessed_at, m.access_count, m.expires_at, m.superseded_by, e.vector "
            "FROM memories m LEFT JOIN embeddings e ON e.memory_pk = m.pk ORDER BY m.pk"
        ):
            blob = row[-1]
            vector = None if blob is None else "[" + ",".join(map(repr, np.frombuffer(blob, "<f4").tolist())) + "]"
            yield (*row[:-1], vector)
    finally:
        db.close()


def fast_corpus() -> Corpus:
    """bench/scale.py's Corpus, drawing the same sentences with its cumulative weights computed once
    (random.choices draws identically from cum_weights; with weights it sums all 20,000 of them per sentence)."""
    from itertools import accumulate

    corpus = Corpus()
    cumulative = list(accumulate(corpus.weights))

    def sentence(lo: int = 8, hi: int = 20) -> str:
        return " ".join(corpus.rng.choices(corpus.words, cum_weights=cumulative, k=corpus.rng.randint(lo, hi)))

    corpus.sentence = sentence  # type: ignore[method-assign]
    return corpus


def synthetic_rows(size: int) -> Iterator[tuple[Any, ...]]:
    """bench/scale.py's sentences (when the SQLite corpus is not built); no vector: load() gives each a random
    one."""
    import hashlib
    import uuid

    corpus = fast_corpus()
    now = time.time() - size
    for i in range(size):
        text = f"{corpus.sentence()} #{i}"
        digest = hashlib.sha256(text.encode()).hexdigest()
        yield (uuid.uuid4().hex, NAMESPACE, text, digest, "[]", 0.5, "{}", now + i, now + i, None, 0, None, None, None)


def load(url: str, rows: Iterator[tuple[Any, ...]], model_id: str) -> dict[str, float]:
    """The rows into the (empty) database: the product's schema, COPY into a staging table, one INSERT in key
    order with the terms computed as the insert trigger would (lag over the namespace), vectors joined by id;
    the memories table's GIN index and the vector table's indexes dropped for the load and built again from
    their own definitions."""
    from agentcache_mcp.backends.postgres import PostgresBackend
    from agentcache_mcp.backends.postgres.schema import ensure_vector_table

    PostgresBackend(url, model_id, pool_size=1).close()  # the migrations
    timings: dict[str, float] = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET maintenance_work_mem = '1GB'")
        table = ensure_vector_table(conn, model_id, DIM)
        indexes = conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index "
            "WHERE indrelid IN ('memories'::regclass, %s::regclass) AND NOT indisprimary AND NOT indisunique",
            (table,),
        ).fetchall()
        for name, _ in indexes:
            conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
        conn.execute(
            f"CREATE TEMP TABLE staging (seq bigint, id text, namespace text, text text, content_hash text, "
            "tags jsonb, importance float8, metadata text, created_at float8, updated_at float8, "
            f"last_accessed_at float8, access_count bigint, expires_at float8, superseded_by text, vector vector({DIM}))"
        )
        started = time.perf_counter()
        n = 0
        with conn.cursor().copy("COPY staging FROM STDIN") as copy:
            for n, row in enumerate(rows, start=1):
                copy.write_row((n, *row))
        timings["copy_s"] = time.perf_counter() - started
        started = time.perf_counter()
        conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_bi")
        conn.execute(
            "INSERT INTO memories (id, namespace, text, content_hash, tags, importance, metadata, created_at, "
            "updated_at, last_accessed_at, access_count, expires_at, superseded_by, terms) "
            "SELECT id, namespace, text, content_hash, tags, importance, metadata, created_at, updated_at, "
            "last_accessed_at, access_count, expires_at, superseded_by, "
            "agentcache_terms(text, lag(text) OVER (PARTITION BY namespace ORDER BY seq)) FROM staging ORDER BY seq"
        )
        conn.execute("ALTER TABLE memories ENABLE TRIGGER memories_bi")
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (memory_pk, namespace, content_hash, vector) "
                "SELECT m.pk, m.namespace, m.content_hash, s.vector FROM staging s JOIN memories m ON m.id = s.id "
                "WHERE s.vector IS NOT NULL"
            ).format(sql.Identifier(table))
        )
        conn.execute(  # synthetic rows: a random vector each
            sql.SQL(
                "INSERT INTO {} (memory_pk, namespace, content_hash, vector) SELECT m.pk, m.namespace, m.content_hash, "
                f"(SELECT array_agg(random() - 0.5) FROM generate_series(1, {DIM}) WHERE m.pk > 0)::vector "
                "FROM staging s JOIN memories m ON m.id = s.id WHERE s.vector IS NULL"
            ).format(sql.Identifier(table))
        )
        timings["insert_s"] = time.perf_counter() - started
        started = time.perf_counter()
        for _, definition in indexes:
            conn.execute(definition)
        timings["index_s"] = time.perf_counter() - started
        conn.execute("INSERT INTO meta(key, value) VALUES ('bench_loaded', %s)", (str(n),))
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) memories")
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
    timings["memories"] = n
    return timings


class Timed:
    """A backend port whose every call adds its time to `spent[group]`."""

    def __init__(self, inner: Any, group: str, spent: dict[str, float]):
        self._inner = inner
        self._group = group
        self._spent = spent

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value):
            return value
        group, spent = self._group, self._spent

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                spent[group] += time.perf_counter() - started
                spent[f"{group}.{name}"] += time.perf_counter() - started

        return timed


@contextmanager
def timed_backend(memory: MemoryService, spent: dict[str, float]) -> Iterator[None]:
    backend: Any = memory.backend
    saved = {port: getattr(backend, port) for port in GROUPS}
    embedder: Any = memory.embedder
    embed = embedder.embed

    def timed_embed(texts: list[str]) -> Any:
        started = time.perf_counter()
        try:
            return embed(texts)
        finally:
            spent["query embedding"] += time.perf_counter() - started

    try:
        for port, group in GROUPS.items():
            setattr(backend, port, Timed(saved[port], group, spent))
        embedder.embed = timed_embed
        yield
    finally:
        for port, inner in saved.items():
            setattr(backend, port, inner)
        del embedder.embed


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def one_run(memory: MemoryService, queries: list[str]) -> dict[str, float]:
    per_call: dict[str, list[float]] = defaultdict(list)
    for q in queries[:20]:  # warm-up
        memory.recall_outcome(q, NAMESPACE)
    for q in queries:
        spent: dict[str, float] = defaultdict(float)
        with timed_backend(memory, spent):
            started = time.perf_counter()
            outcome = memory.recall_outcome(q, NAMESPACE)
            total = time.perf_counter() - started
        assert outcome.retrieval == "hybrid", outcome
        per_call["recall"].append(1000 * total)
        database = sum(v for k, v in spent.items() if k in ("keyword", "vector", "hydration"))
        per_call["database"].append(1000 * database)
        per_call["python"].append(1000 * (total - database - spent["query embedding"]))
        for key in ("keyword", "vector", "hydration", "query embedding"):
            per_call[key].append(1000 * spent[key])
        for key, value in spent.items():
            if "." in key:
                per_call[key].append(1000 * value)
    floor = []
    for q in queries:  # the floor: the model alone, the same queries
        started = time.perf_counter()
        memory.embedder.embed([q])
        floor.append(1000 * (time.perf_counter() - started))
    out = {f"{k} p50": statistics.median(v) for k, v in per_call.items()}
    out["recall p95"] = p(per_call["recall"], 95)
    out["database p95"] = p(per_call["database"], 95)
    out["floor p50"] = statistics.median(floor)
    out["recall / floor"] = out["recall p50"] / out["floor p50"]
    return out


def explain(memory: MemoryService, query: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of every SELECT the recall of `query` runs, grouped by backend call; the
    keyword counts are taken afresh (the cache emptied first)."""
    statements: list[tuple[str, str, Any]] = []
    current = [""]
    original = psycopg.Connection.execute

    def recording(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        if current[0]:
            statements.append((current[0], text, params))
        return original(self, query, params, **kwargs)

    spent: dict[str, float] = defaultdict(float)
    backend: Any = memory.backend
    for cache in ("_counts", "_namespace_counts"):
        if isinstance(getattr(backend.keywords, cache, None), dict):
            getattr(backend.keywords, cache).clear()

    class Named(Timed):
        def __getattr__(self, name: str) -> Any:
            value = getattr(self._inner, name)
            if not callable(value):
                return value

            def named(*args: Any, **kwargs: Any) -> Any:
                current[0] = f"{self._group}.{name}"
                try:
                    return value(*args, **kwargs)
                finally:
                    current[0] = ""

            return named

    saved = {port: getattr(backend, port) for port in GROUPS}
    psycopg.Connection.execute = recording  # type: ignore[method-assign,assignment]
    try:
        for port, group in GROUPS.items():
            setattr(backend, port, Named(saved[port], group, spent))
        memory.recall_outcome(query, NAMESPACE, touch=False)
    finally:
        psycopg.Connection.execute = original  # type: ignore[method-assign]
        for port, inner in saved.items():
            setattr(backend, port, inner)
    print(f"\nEXPLAIN (ANALYZE, BUFFERS) for the recall of {query!r} (terms {query_terms(query)})")
    with psycopg.connect(memory.backend.db.url) as conn:  # type: ignore[attr-defined]
        from pgvector.psycopg import register_vector

        register_vector(conn)
        for call, text, params in statements:
            if text.lstrip().upper().startswith(("SELECT SET_CONFIG", "SELECT PG_")):
                conn.execute(text, params)  # the call's settings (SET LOCAL), kept for its statements
                continue
            if not text.lstrip().upper().startswith(("SELECT", "WITH")):
                continue
            plan = [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params)]
            print(f"\n-- {call}: {text[:600]}{'...' if len(text) > 600 else ''}")
            print("\n".join("   " + re.sub(r"\[[-0-9.e,]{200,}\]", "[...]", line) for line in plan))
        conn.rollback()


def summary(runs: list[dict[str, float]]) -> list[str]:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    lines = ["| figure (ms) | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | spread |"]
    lines.append("|---" * (len(runs) + 3) + "|")
    for k in keys:
        values = [r[k] for r in runs]
        fmt = "{:.2f}x" if k == "recall / floor" else "{:.2f}"
        lines.append(
            f"| {k} | "
            + " | ".join(fmt.format(v) for v in values)
            + f" | **{fmt.format(statistics.median(values))}** | {fmt.format(min(values))}-{fmt.format(max(values))} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True, help="a server whose user may CREATE DATABASE")
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--workdir", type=Path, default=Path("/work/scalework"), help="where scale-<N>.db is")
    parser.add_argument("--prefix", default="agentcache_pg_recall", help="database <prefix>_<N>")
    parser.add_argument("--rebuild", action="store_true", help="load the corpus again")
    parser.add_argument("--drop", action="store_true", help="drop the databases at the end")
    parser.add_argument("--synthetic", action="store_true", help="random vectors when scale-<N>.db is missing")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--explain", action="store_true", help="EXPLAIN (ANALYZE, BUFFERS) of one recall")
    parser.add_argument(
        "--vector-search",
        default="auto",
        choices=["auto", "memory", "index"],
        help="AGENTCACHE_PG_VECTOR_SEARCH: vectors in the replica's memory, or the HNSW index",
    )
    args = parser.parse_args()
    memory_model = None
    for size in [int(s) for s in args.sizes.split(",")]:
        name = f"{args.prefix}_{size}"
        url = database_url(args.database_url, name)
        source = args.workdir / f"scale-{size}.db"
        built = source.exists() and (args.workdir / f"scale-{size}.build.json").exists()
        if not built and not args.synthetic:
            sys.exit(f"{source} is not built (bench/scale.py builds it); or pass --synthetic")
        if args.rebuild or loaded(url) != size:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            from agentcache_mcp.embeddings import SentenceTransformerEmbedder

            model_id = SentenceTransformerEmbedder().model_id
            rows = rows_from_sqlite(source) if built else synthetic_rows(size)
            print(f"loading {size} memories into {name} ({'corpus' if built else 'synthetic'})", file=sys.stderr)
            print(f"  {load(url, rows, model_id)}", file=sys.stderr)
        corpus = fast_corpus()
        for _ in range(size):  # replay the generator: the queries bench/scale.py makes for this corpus
            corpus.sentence()
        queries = [corpus.query() for _ in range(args.queries)]
        random.Random(size).shuffle(queries)
        memory = open_memory(
            Settings(database_url=url, auto_forget_enabled=False, pg_vector_search=args.vector_search)
        )
        started = time.perf_counter()
        vectors = memory.load_vectors()  # as a server's index sync does at start
        load_s = time.perf_counter() - started
        memory.embedder.load()
        memory.mark_embeddings_caught_up()
        memory_model = memory.embedder.model_id
        with open("/proc/loadavg") as f:
            load_before = f.read().split()[:3]
        runs = [one_run(memory, queries) for _ in range(args.runs)]
        with open("/proc/loadavg") as f:
            load_after = f.read().split()[:3]
        print(f"\n### {size} memories, one namespace ({name}; model {memory_model})")
        print(
            f"{args.runs} runs x {len(queries)} recalls; load average before {' '.join(load_before)}, "
            f"after {' '.join(load_after)}; AGENTCACHE_PG_VECTOR_SEARCH={args.vector_search}: "
            f"{memory.backend.describe()['vector_index']}, {vectors} vectors, loaded in {load_s:.2f} s\n"
        )
        print("\n".join(summary(runs)))
        if args.explain:
            explain(memory, queries[0])
        memory.close(write_accesses=False)
        if args.drop:
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


if __name__ == "__main__":
    main()
