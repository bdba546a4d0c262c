"""PostgreSQL's write path: `remember` latency in a large namespace, and import speed with vectors.

    python bench/pg_write.py --database-url 'postgresql://postgres:@/postgres?host=/run/pg' \
        --corpus /work/scalework/scale-100000.db --runs 3

The corpus is a SQLite store built by bench/scale.py (one namespace `bench`, every memory with its vector; it is
only read). Each run:
- import: the corpus moved as bench/scale.py's move_to_postgres moves it (`export --with-vectors`, then the
  service's import into a fresh database); memories per second of the import alone;
- remember: into that database (the corpus plus what earlier runs added), `--remember` new memories through the
  MCP tools with the SDK's in-process client (as bench/scale.py's measure_tools, with the model loaded), and as
  many through the repository alone (`PgMemories.remember`: the database's part, no MCP, no validation); the
  tools are timed back to back and again with `--gap-ms` between calls (see measure_tools);
- `--sqlite`: the same two tools timings on a copy of the corpus's SQLite store, to compare.
Prints median and spread over the runs, and the load average, as JSON and as a table. The databases it creates
(`--prefix`_...) are dropped at the end. `--what import` or `--what remember` runs one half (remember then
loads the corpus once by the import).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from load import Postgres, percentile  # noqa: E402  (bench/load.py, beside this script)
from mcp import Client  # noqa: E402

import agentcache_mcp.backends.postgres as pg_backend  # noqa: E402
from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.memory.exchange import export_jsonl, import_jsonl  # noqa: E402
from agentcache_mcp.memory.model import NewMemory, content_hash, new_id  # noqa: E402
from agentcache_mcp.memory.service import merge_remembered  # noqa: E402
from agentcache_mcp.server import build_server  # noqa: E402

WORDS = [a + b for a in "bcdfghklmnprstvz" for b in ("a", "e", "i", "o", "u", "ai", "ou", "ei")]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(WORDS) for _ in range(rng.randint(8, 20))) + f" #{n}"


def export_corpus(corpus: Path, dump: Path) -> int:
    source = open_memory(Settings(db_path=corpus))
    try:
        with dump.open("w", encoding="utf-8") as out:
            return export_jsonl(source, out, namespaces=None, with_vectors=True)
    finally:
        source.close()


def measure_import(url: str, dump: Path, expected: int) -> dict[str, float]:
    """The import's whole time (what a user waits for), and of it the index builds after a bulk load
    (PostgresBackend.bulk_load: CREATE INDEX and ANALYZE), timed around schema.build_missing_indexes."""
    builds: list[float] = []
    build = pg_backend.build_missing_indexes

    def timed_build(*args: Any, **kwargs: Any) -> list[str]:
        started = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            builds.append(time.perf_counter() - started)

    target = open_memory(Settings(database_url=url))
    pg_backend.build_missing_indexes = timed_build  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        report = import_jsonl(target, dump, namespace=None, dry_run=False, skip_invalid=False)
        import_s = time.perf_counter() - started
        vectors = len(target.backend.vectors)
    finally:
        pg_backend.build_missing_indexes = build
        target.close()
    if report.added != expected or vectors != expected:
        raise RuntimeError(f"imported {report.added} memories and {vectors} vectors of {expected}")
    index_s = sum(builds)
    return {
        "import_s": import_s,
        "import_per_s": expected / import_s,
        "load_s": import_s - index_s,
        "index_build_s": index_s,
        "batches": report.batches,
    }


def measure_repository(url: str, n: int, rng: random.Random) -> list[float]:
    """PgMemories.remember alone: the pool, the statements, the commit."""
    memory = open_memory(Settings(database_url=url))
    try:
        ms = []
        for i in range(n + 20):
            text = sentence(rng, i) + " repository"
            new = NewMemory(new_id(), "bench", text, content_hash(text), [], 0.5, {}, time.time(), None)
            t = time.perf_counter()
            memory.backend.memories.remember(new, merge_remembered)
            if i >= 20:  # the first ones warm the pool and the plans
                ms.append(1000 * (time.perf_counter() - t))
        return ms
    finally:
        memory.close()


async def measure_tools(url: str, n: int, rng: random.Random, gap_s: float = 0.0) -> list[float]:
    """Through the MCP tools, model loaded. Back to back (gap_s 0) the background embedding of the memories
    before runs on the CPU meanwhile (on 2 cores, torch's two threads and the call share them); with a gap
    (`--gap-ms`: an agent's pace, a remember now and then) each call finds that embedding done."""
    where = {"database_url": url} if url.startswith("postgres") else {"db_path": Path(url)}
    server = build_server(Settings(**where, auto_forget_enabled=False))
    async with Client(server) as client:
        deadline = time.monotonic() + 600
        while True:
            stats = json.loads((await client.read_resource("agentcache://stats")).contents[0].text)  # type: ignore[union-attr]
            if stats["index"]["embedding_model_ready"] and stats["index"]["vector_index_loaded"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("model did not load")
            await anyio.sleep(0.1)
        ms = []
        for i in range(n + 20):
            t = time.perf_counter()
            result = await client.call_tool("remember", {"text": sentence(rng, i) + " tools", "namespace": "bench"})
            if i >= 20:
                ms.append(1000 * (time.perf_counter() - t))
            assert not result.is_error, result
            if gap_s > 0:
                await anyio.sleep(gap_s)
    return ms


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=None, help="a server whose user may CREATE DATABASE (else bundled)")
    parser.add_argument("--corpus", type=Path, required=True, help="a SQLite store built by bench/scale.py")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--remember", type=int, default=300, help="remember calls per run, each way")
    parser.add_argument("--what", choices=["all", "import", "remember"], default="all")
    parser.add_argument(
        "--gap-ms", type=float, default=250.0, help="also time the tools' remember with this pause between calls (0: not)"
    )
    parser.add_argument("--prefix", default="pgwrite_bench")
    parser.add_argument("--sqlite", action="store_true", help="also time the tools' remember on SQLite (a copy)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--keep-index", action="store_true", help="import into the HNSW index (no bulk load), to compare"
    )
    parser.add_argument("--keep-terms-index", action="store_true", help="a bulk load keeps the GIN index")
    args = parser.parse_args()
    pg_backend.BULK_LOAD_TERMS_INDEX = not args.keep_terms_index
    # each index build's time ("built index ... in N s") on stderr
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("agentcache_mcp.backends.postgres.schema").setLevel(logging.INFO)
    if args.keep_index:
        pg_backend.BULK_LOAD_RATIO = -1  # the table always holds "more" than the load: the index stays
    rng = random.Random(11)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        postgres = Postgres(args.database_url, Path(tmp))
        try:
            dump = Path(tmp) / "corpus.jsonl"
            exported = export_corpus(args.corpus, dump)
            url = ""
            for run in range(args.runs):
                row: dict[str, Any] = {"load_before": os.getloadavg()[0]}
                if args.what != "remember" or not url:
                    url = postgres.database(f"{args.prefix}_{exported}")
                    moved = measure_import(url, dump, exported)
                    if args.what != "remember":
                        row.update(moved)
                if args.what != "import":
                    repo = measure_repository(url, args.remember, rng)
                    tools = anyio.run(measure_tools, url, args.remember, rng)
                    row.update(
                        repository_p50_ms=statistics.median(repo),
                        repository_p95_ms=percentile(repo, 95),
                        tools_p50_ms=statistics.median(tools),
                        tools_p95_ms=percentile(tools, 95),
                    )
                    if args.gap_ms > 0:
                        spaced = anyio.run(measure_tools, url, args.remember, rng, args.gap_ms / 1000)
                        row.update(
                            tools_spaced_p50_ms=statistics.median(spaced), tools_spaced_p95_ms=percentile(spaced, 95)
                        )
                if args.sqlite and args.what != "import":
                    copy = Path(tmp) / "sqlite-copy.db"
                    if not copy.exists():  # SQLite's backup: the store's -wal, if any, comes along
                        src = sqlite3.connect(f"file:{args.corpus}?mode=ro", uri=True)
                        dst = sqlite3.connect(copy)
                        try:
                            src.backup(dst)
                        finally:
                            src.close()
                            dst.close()
                    for name, gap in (("sqlite_tools", 0.0), ("sqlite_tools_spaced", args.gap_ms / 1000)):
                        if name.endswith("spaced") and gap <= 0:
                            continue
                        timed = anyio.run(measure_tools, str(copy), args.remember, rng, gap)
                        row[f"{name}_p50_ms"], row[f"{name}_p95_ms"] = statistics.median(timed), percentile(timed, 95)
                row["load_after"] = os.getloadavg()[0]
                runs.append(row)
                print(json.dumps({"run": run + 1, **row}), file=sys.stderr, flush=True)
        finally:
            postgres.close()
    keys = [k for k in runs[0] if k not in ("batches",)]
    summary = {k: spread([float(r[k]) for r in runs]) for k in keys}
    result = {"memories": exported, "runs": runs, "summary": summary}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(f"{exported} memories, {len(runs)} runs: median (min-max)")
    for k, s in summary.items():
        print(f"  {k:22s} {s['median']:9.2f}  ({s['min']:.2f}-{s['max']:.2f})")


if __name__ == "__main__":
    main()
