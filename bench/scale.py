"""Speed at scale: remember latency, embedding throughput, recall latency vs the query-embedding floor,
start-up time and memory, on synthetic corpora.

    python bench/scale.py                      # 10k and 100k memories (real model; ~15 min on 2 cores)
    python bench/scale.py --sizes 2000 --quick # a smoke run

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

from load import percentile  # noqa: E402  (bench/load.py, beside this script)
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


async def measure_tools(path: Path, corpus: Corpus, n_remember: int, n_recall: int) -> dict[str, float]:
    settings = Settings(db_path=path, auto_forget_enabled=False)
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


def measure_process(path: Path, expect_vectors: int) -> dict[str, float]:
    """A real stdio server: time to tools/list, then peak RSS once everything is loaded and recalled."""
    sys.path.insert(0, str(ROOT / "tests"))
    from stdio_helper import StdioServer

    started = time.perf_counter()
    server = StdioServer(path)
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
    args = parser.parse_args()
    n_remember, n_recall = (50, 50) if args.quick else (500, 300)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp) / "built"
        workdir.mkdir(parents=True, exist_ok=True)
        empty = Path(tmp) / "empty.db"
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
            row.update(anyio.run(measure_tools, path, corpus, n_remember, n_recall))
            row.update(measure_process(path, size))
            row["db_mib"] = path.stat().st_size / 2**20
            results[str(size)] = row
            print(json.dumps({str(size): row}), file=sys.stderr)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict[str, Any]) -> str:
    sizes = [k for k in results if k != "empty"]
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
    for name, fmt in fields:
        lines.append(f"| {name} | " + " | ".join(fmt(results[s]) for s in sizes) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
