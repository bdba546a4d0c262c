"""Forget at scale on PostgreSQL: concurrent recalls' latency before, during and after a forget of many
memories, under each AGENTCACHE_PG_ERASE setting, and how long the erase (VACUUM FULL) holds the table.

    python bench/pg_forget.py --database-url 'postgresql://postgres:@/postgres?host=/work/pgbench/data' \\
        --memories 100000 --forget 1000 --clients 8 --runs 3 [--corpus /work/scalework/scale-100000.db]

One database (`--db-name`, created on the server, dropped at the end unless --keep) holds N memories in one
namespace, loaded by COPY with the vector index built after the load: the texts and real MiniLM vectors of a
SQLite store built by bench/scale.py (`--corpus`), or synthetic sentences (8-20 words drawn by a Zipf law from a
20,000-word vocabulary) with clustered random unit vectors (the rewrite's cost depends on the rows' bytes,
not on what the vectors mean). Then, per run and per setting (`--modes`, default daily and after-forget), over
the product's own MemoryService (pool of --pool connections), C client threads recall without pause through
MemoryService.recall, the whole pipeline (keyword and vector search, fusion, neighbours, hydration), with a
stand-in embedder that returns the vector of the memory the query's words come from (no model runs: what is
measured is the store), while the phases follow one another:

- before: recalls only, --phase-s seconds;
- forget: one thread forgets F memories by id, one forget call each (as agents call the tool);
- sweep: the maintenance an auto-forget sweep runs after its deletes (`backend.maintenance()`, under the
  sweep's lock): nothing in daily and manual, the erase in after-forget;
- after: recalls only, --phase-s seconds;
- erase (daily and manual): the erase itself, as the daily schedule (or `agentcache-mcp erase`) runs it;
- after erase: recalls only, --phase-s seconds.

At the end, F more forgets and the erase alone, no recall running: its lock time without contention.

A recall counts in the phase in which it started, or in the rewrite's (erase, or sweep in after-forget) if it was
running while the rewrite held the table. Each line gives the recalls' count and p50/p95/p99/max in
ms, and each erase the time it held the table's lock. The load average is printed before and after: on a
shared machine, compare runs taken together.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sqlite3
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server's CLI does, before numpy loads

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402

from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.backends.postgres import PostgresBackend  # noqa: E402
from agentcache_mcp.backends.postgres.schema import ensure_vector_table  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.memory.model import content_hash, new_id  # noqa: E402
from agentcache_mcp.memory.service import MemoryService  # noqa: E402

NAMESPACE = "bench"
DIM = 384
MODEL_ID = "bench-stand-in"
QUERIES = 2000


class StandInEmbedder:
    """Returns the vector stored for the memory a query was cut from (the query embedding's cost is not what
    is measured here); an unknown text gets a random unit vector."""

    model_id = MODEL_ID
    ready = True
    dim = DIM

    def __init__(self, vectors: dict[str, np.ndarray]):
        self.vectors = vectors
        self.rng = np.random.default_rng(1)

    def load(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> bool:
        return True

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            v = self.vectors.get(text)
            if v is None:
                v = self.rng.normal(size=DIM).astype(np.float32)
                v /= np.linalg.norm(v)
            out.append(v)
        return np.asarray(out, dtype=np.float32)


# -- the corpus


def synthetic(n: int) -> tuple[list[str], np.ndarray]:
    rng = random.Random(7)
    syllables = ["ba", "ce", "di", "fo", "gu", "ha", "ji", "ko", "lu", "ma", "ne", "pi", "ro", "su", "ta", "vi", "wo", "zu"]
    vocabulary = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(20_000)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))
    texts = [
        " ".join(rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(8, 20))) + f" #{i}" for i in range(n)
    ]
    vrng = np.random.default_rng(0)
    centres = vrng.normal(size=(200, DIM)).astype(np.float32)
    x = centres[vrng.integers(0, 200, n)] + 0.6 * vrng.normal(size=(n, DIM)).astype(np.float32)
    return texts, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def from_corpus(path: Path, n: int) -> tuple[list[str], np.ndarray]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT m.text, e.vector FROM memories m JOIN embeddings e ON e.memory_pk = m.pk ORDER BY m.pk LIMIT ?", (n,)
    ).fetchall()
    db.close()
    texts = [t for t, _ in rows]
    vectors = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), DIM)
    return texts, vectors


def admin_url(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def load(url: str, texts: list[str], vectors: np.ndarray) -> None:
    """The schema by the product's own migrations, then the rows by COPY (the insert trigger writes each row's
    keyword terms), the vectors by binary COPY and the HNSW index built once after them."""
    open_memory(Settings(database_url=url, pg_erase="manual"), embedder=StandInEmbedder({})).close()
    now = time.time()
    started = time.monotonic()
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur, cur.copy(
            "COPY memories (id, namespace, text, content_hash, created_at, updated_at) FROM STDIN"
        ) as copy:
            for i, text in enumerate(texts):
                copy.write_row((new_id(), NAMESPACE, text, content_hash(text), now - len(texts) + i, now))
        conn.commit()
        print(f"  memories copied in {time.monotonic() - started:.0f} s", flush=True)
        table = ensure_vector_table(conn, MODEL_ID, DIM)
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(table + "_hnsw")))
        pks = [pk for (pk,) in conn.execute("SELECT pk FROM memories ORDER BY pk")]
        hashes = {pk: h for pk, h in conn.execute("SELECT pk, content_hash FROM memories")}
        with conn.cursor() as cur, cur.copy(
            sql.SQL("COPY {} (memory_pk, namespace, content_hash, vector) FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(table)
            )
        ) as copy:
            copy.set_types(["int8", "text", "text", "vector"])
            for pk, v in zip(pks, vectors, strict=True):
                copy.write_row((pk, NAMESPACE, hashes[pk], v))
        conn.commit()
        print(f"  vectors copied at {time.monotonic() - started:.0f} s", flush=True)
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            sql.SQL("CREATE INDEX {} ON {} USING hnsw (vector vector_cosine_ops)").format(
                sql.Identifier(table + "_hnsw"), sql.Identifier(table)
            )
        )
        conn.commit()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"  loaded {len(texts)} memories in {time.monotonic() - started:.0f} s", flush=True)


# -- where a slow recall's time goes (--trace)


class Tracer:
    """Times each stage of every recall (the backend's retriever and repository calls, the keyword counts, the
    pool's connection wait, an exact vector search), per thread; and samples pg_stat_activity's wait events and
    the vacuum progress of the bench's database every 50 ms, to set beside the slowest recalls."""

    def __init__(self, backend: PostgresBackend, url: str):
        from agentcache_mcp.backends.postgres import vectors as pg_vectors

        self.local = threading.local()
        self.samples: list[tuple[float, list[tuple[Any, ...]]]] = []
        self.stop = False
        self.url = url
        self.pg_vectors = pg_vectors
        self.undo: list[tuple[Any, str, Any]] = []
        for owner, names in (
            (backend.keywords, ("informative_terms", "search", "_namespace_counts", "_total", "_rows", "_sampled")),
            (backend.vectors, ("search", "scores_for")),
            (backend.memories, ("neighbours", "live_keys", "get_by_keys", "texts")),
            (backend.db.pool, ("getconn",)),
        ):
            for name in names:
                self._wrap(owner, name, f"{type(owner).__name__}.{name}")
        original = pg_vectors.search_sql

        def search_sql(table: str, clause: str, *, exact: bool = False) -> Any:
            if exact:
                self.note("exact vector search", 0.0)
            return original(table, clause, exact=exact)

        pg_vectors.search_sql = search_sql
        self.undo.append((pg_vectors, "search_sql", original))
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.note(label, time.perf_counter() - started)

        setattr(owner, name, timed)
        self.undo.append((owner, name, None))

    def note(self, label: str, seconds: float) -> None:
        stages = getattr(self.local, "stages", None)
        if stages is not None:
            stages[label] = stages.get(label, 0.0) + seconds

    def begin(self) -> None:
        self.local.stages = {}

    def end(self) -> dict[str, float]:
        stages, self.local.stages = self.local.stages, None
        return stages

    def watch(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop:
                rows = conn.execute(
                    "SELECT pid, backend_type, state, wait_event_type, wait_event, left(query, 60) "
                    "FROM pg_stat_activity WHERE (datname = current_database() OR backend_type LIKE 'autovacuum%%') "
                    "AND pid <> pg_backend_pid() AND state IS DISTINCT FROM 'idle'"
                ).fetchall()
                rows += [("vacuum", *r) for r in conn.execute(
                    "SELECT relid::regclass::text, phase, heap_blks_scanned, heap_blks_total, index_vacuum_count "
                    "FROM pg_stat_progress_vacuum WHERE datname = current_database()"
                ).fetchall()]
                self.samples.append((time.monotonic(), rows))
                time.sleep(0.05)

    def close(self) -> None:
        self.stop = True
        self.watcher.join()
        for owner, name, original in self.undo:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def during(self, start: float, end: float) -> list[str]:
        """What the database's sessions were waiting on while [start, end] ran, counted over the samples."""
        seen: dict[str, int] = {}
        for at, rows in self.samples:
            if start <= at <= end:
                for row in rows:
                    if row[0] == "vacuum":
                        key = f"vacuum {row[1]} {row[2]} {row[3]}/{row[4]}"
                    else:
                        key = f"{row[1]}:{row[2]}:{row[3]}:{row[4]}:{(row[5] or '')[:40]}"
                    seen[key] = seen.get(key, 0) + 1
        return [f"{n}x {k}" for k, n in sorted(seen.items(), key=lambda kv: -kv[1])[:8]]


def autovacuum_times(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT relname, n_dead_tup, last_autovacuum, last_autoanalyze, autovacuum_count, autoanalyze_count "
            "FROM pg_stat_user_tables WHERE relname = 'memories' OR relname LIKE 'vectors%%' OR relname = 'meta'"
        ).fetchall()


# -- the measurement


@dataclass
class Recorder:
    phase: str = "before"
    stop: bool = False
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    tracer: Tracer | None = None
    traced: list[tuple[str, float, float, float, dict[str, float]]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def enter(self, phase: str) -> None:
        self.marks[phase] = time.monotonic()
        self.phase = phase

    def client(self, memory: MemoryService, queries: list[str], seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop:
            phase = self.phase
            if self.tracer is not None:
                self.tracer.begin()
            began = time.monotonic()
            started = time.perf_counter()
            try:
                memory.recall(rng.choice(queries), namespace=NAMESPACE, touch=False)
            except Exception as exc:  # counted and reported: a bench must not stop on one
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            took = time.perf_counter() - started
            stages = self.tracer.end() if self.tracer is not None else {}
            with self.lock:
                self.traced.append((phase, began, began + took, took, stages))

    def settle(self, rewrites: list[tuple[str, str]]) -> dict[str, list[float]]:
        """Each phase's latencies. A recall counts in the phase in which it started, except one that was running
        while a rewrite held the table (the erase; the sweep's in after-forget, each phase named with the phase
        that follows it): it counts in the rewrite's phase, having waited for it. (Counted by its start alone,
        the recalls in flight when the erase began were charged to "after": at 100k they were its p99.)"""
        windows = [(name, self.marks[name], self.marks[then]) for name, then in rewrites if name in self.marks]
        settled = []
        for phase, began, ended, took, stages in self.traced:
            for name, start, end in windows:
                if began < end and ended > start:
                    phase = name
            settled.append((phase, began, ended, took, stages))
        self.traced = settled
        latencies: dict[str, list[float]] = {}
        for phase, _, _, took, _ in settled:
            latencies.setdefault(phase, []).append(took)
        return latencies


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50": float(np.percentile(a, 50)),
        "p95": float(np.percentile(a, 95)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def report_trace(recorder: Recorder, url: str, slowest: int) -> None:
    """The slowest recalls of each phase with their stages (ms) and what the database waited on meanwhile; each
    phase's mean per stage; autovacuum's times."""
    tracer = recorder.tracer
    assert tracer is not None
    origin = recorder.marks.get("forget", 0.0)
    print("  phases start (s from the forgets' start): "
          + ", ".join(f"{p} {t - origin:+.1f}" for p, t in recorder.marks.items()), flush=True)
    for phase in dict.fromkeys(p for p, *_ in recorder.traced):
        mine = [t for t in recorder.traced if t[0] == phase]
        labels = sorted({k for t in mine for k in t[4]})
        means = {k: 1000 * sum(t[4].get(k, 0.0) for t in mine) / len(mine) for k in labels}
        print(f"  [{phase}] n={len(mine)} mean ms per stage: "
              + ", ".join(f"{k} {v:.1f}" for k, v in means.items()), flush=True)
        for _, began, ended, took, stages in sorted(mine, key=lambda t: -t[3])[:slowest]:
            parts = ", ".join(f"{k} {1000 * v:.0f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1]))
            print(f"    {1000 * took:7.0f} ms at {began - origin:+6.2f} s: {parts}", flush=True)
            for line in tracer.during(began, ended):
                print(f"        {line}", flush=True)
    for row in autovacuum_times(url):
        print(f"  {row}", flush=True)


def one_run(
    url: str, mode: str, victims: list[str], queries: list[str], vectors: dict[str, np.ndarray], args: argparse.Namespace
) -> dict[str, Any]:
    settings = Settings(database_url=url, pg_erase=mode, pg_pool_size=args.pool)
    memory = open_memory(settings, embedder=StandInEmbedder(vectors))
    backend = memory.backend
    assert isinstance(backend, PostgresBackend)
    recorder = Recorder()
    if args.trace:
        recorder.tracer = Tracer(backend, url)
    clients = [
        threading.Thread(target=recorder.client, args=(memory, queries, seed), daemon=True)
        for seed in range(args.clients)
    ]
    for query in queries[:20]:  # warm the caches and the pool
        memory.recall(query, namespace=NAMESPACE, touch=False)
    result: dict[str, Any] = {"mode": mode}
    for c in clients:
        c.start()
    time.sleep(args.phase_s)
    recorder.enter("forget")
    started = time.monotonic()
    for memory_id in victims:
        memory.forget(ids=[memory_id], namespace=NAMESPACE)
    result["forget_s"] = time.monotonic() - started
    recorder.enter("sweep")
    started = time.monotonic()
    with backend.exclusive("auto-forget") as alone:
        assert alone
        backend.maintenance()
    result["sweep_maintenance_s"] = time.monotonic() - started
    if mode == "after-forget":
        result["erase_locked_s"] = backend.db.read(lambda c: c.execute(
            "SELECT value FROM meta WHERE key = 'last_erase_locked_s'").fetchone()[0])
    recorder.enter("after")
    time.sleep(args.phase_s)
    if mode != "after-forget":
        result["on_disk_before_erase"] = backend.erasure(time.time())["forgotten_on_disk"]
        recorder.enter("erase")
        report = backend.erase()
        result["erase_locked_s"] = round(report.locked_s, 3)
        result["erase_s"] = round(report.seconds, 3)
        result["erase_attempts"] = report.attempts
        recorder.enter("after erase")
        time.sleep(args.phase_s)
    recorder.stop = True
    for c in clients:
        c.join()
    rewrites = [("erase", "after erase")] + ([("sweep", "after")] if mode == "after-forget" else [])
    latencies = recorder.settle(rewrites)
    if recorder.tracer is not None:
        report_trace(recorder, url, args.trace)
        recorder.tracer.close()
    memory.close()
    result["phases"] = {phase: percentiles(values) for phase, values in latencies.items()}
    result["errors"] = len(recorder.errors)
    if recorder.errors:
        result["first_error"] = recorder.errors[0][:200]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres:@/postgres?host=/work/pgbench/data")
    parser.add_argument("--db-name", default="pgerase_forget")
    parser.add_argument("--memories", type=int, default=100_000)
    parser.add_argument("--forget", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pool", type=int, default=12, help="the service's pool (clients + the forgetter)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--modes", default="daily,after-forget")
    parser.add_argument("--corpus", type=Path, default=None, help="a SQLite store built by bench/scale.py")
    parser.add_argument("--reuse", action="store_true", help="use the database as loaded by an earlier run")
    parser.add_argument("--keep", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--trace", type=int, default=0, metavar="N",
                        help="time each recall's stages and print each phase's N slowest with the server's waits")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    modes = args.modes.split(",")
    needed = args.forget * (args.runs * len(modes) + 1)  # and once more for the erase alone
    if needed * 2 > args.memories:
        parser.error(f"{args.runs} runs x {len(modes)} settings x {args.forget} forgets need more memories")
    url = admin_url(args.database_url, args.db_name)
    print(f"load average: {os.getloadavg()}", flush=True)
    if args.corpus is not None:
        texts, matrix = from_corpus(args.corpus, args.memories)
        source = f"{args.corpus.name} (its texts and MiniLM vectors)"
    else:
        texts, matrix = synthetic(args.memories)
        source = "synthetic Zipf sentences, clustered random unit vectors"
    print(f"{len(texts)} memories in one namespace: {source}", flush=True)
    if not args.reuse:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db_name)))
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(args.db_name)))
        load(url, texts, matrix)
    rng = random.Random(3)
    queries: list[str] = []
    query_vectors: dict[str, np.ndarray] = {}
    for i in rng.sample(range(len(texts)), QUERIES):
        words = texts[i].split()
        start = rng.randrange(max(1, len(words) - 4))
        query = " ".join(words[start : start + rng.randint(2, 4)])
        queries.append(query)
        query_vectors[query] = matrix[i]
    with psycopg.connect(url) as conn:
        ids = [i for (i,) in conn.execute("SELECT id FROM memories WHERE namespace = %s ORDER BY pk", (NAMESPACE,))]
        size = conn.execute("SELECT pg_total_relation_size('memories')").fetchone()[0]  # type: ignore[index]
    print(f"memories table with its indexes and TOAST: {size / 1e6:.0f} MB", flush=True)
    victims_pool = rng.sample(ids, needed)
    results = []
    for run in range(args.runs):
        for mode in modes:
            victims = [victims_pool.pop() for _ in range(args.forget)]
            result = one_run(url, mode, victims, queries, query_vectors, args)
            result["run"] = run + 1
            result["load_average"] = os.getloadavg()
            results.append(result)
            print(
                f"run {run + 1} {mode}: forget of {args.forget} took {result['forget_s']:.1f} s; erase held the table "
                f"{result.get('erase_locked_s')} s; errors {result['errors']}; load {result['load_average'][0]:.2f}",
                flush=True,
            )
            for phase, p in result["phases"].items():
                if p["n"]:
                    print(
                        f"    {phase:<12} n={p['n']:<6} p50 {p['p50']:7.1f}  p95 {p['p95']:7.1f}  p99 {p['p99']:7.1f}  "
                        f"max {p['max']:7.1f} ms",
                        flush=True,
                    )
    memory = open_memory(Settings(database_url=url, pg_erase="manual"), embedder=StandInEmbedder(query_vectors))
    victims = [victims_pool.pop() for _ in range(args.forget)]
    for memory_id in victims:
        memory.forget(ids=[memory_id], namespace=NAMESPACE)
    alone = memory.backend.erase()
    memory.close()
    print(
        f"the erase alone (no recalls running) after {args.forget} forgets: held the table {alone.locked_s:.2f} s, "
        f"{alone.seconds:.2f} s in all; load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print("\nsummary: median [min-max] over runs of each phase's p99 (ms), and of the erase's lock time (s)")
    for mode in modes:
        mine = [r for r in results if r["mode"] == mode]
        for phase in ("before", "forget", "sweep", "after", "erase", "after erase"):
            p99 = [r["phases"][phase]["p99"] for r in mine if r["phases"].get(phase, {}).get("n")]
            if p99:
                print(f"  {mode:<12} {phase:<12} p99 {statistics.median(p99):7.1f} [{min(p99):.1f}-{max(p99):.1f}]")
        locked = [float(r["erase_locked_s"]) for r in mine if r.get("erase_locked_s") not in (None, "")]
        if locked:
            print(f"  {mode:<12} erase held the table {statistics.median(locked):.2f} s [{min(locked):.2f}-{max(locked):.2f}]")
    print(f"load average: {os.getloadavg()}")
    if args.json:
        figures = {"source": source, "memories": len(texts), "results": results, "erase_alone_locked_s": alone.locked_s}
        args.json.write_text(json.dumps(figures, indent=1))
    if not args.keep:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(args.db_name)))


if __name__ == "__main__":
    main()
