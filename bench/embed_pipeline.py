"""Embedding pipeline throughput: memories remembered over stdio, embedded end to end, against the model alone.

    python bench/embed_pipeline.py [--memories 3000] [--rounds 1]

A real stdio server on a fresh database (what a desktop host spawns). Once its model has loaded, the memories
are remembered one call at a time, as a host sends them, and the clock runs until the server reports no
memory waiting for a vector. The model alone: a plain `SentenceTransformer.encode` (batch 64) of the same
texts in this process, right after the server has exited. The ratio (pipeline / model, memories per second)
is what the embedding writer keeps of the model's speed while it also serves the remembers. Texts: the
synthetic sentences of bench/scale.py (8-20 words).

On a shared machine the wall-clock ratio swings with other work (the model-alone pass runs minutes after
the pipeline); the CPU ratio (model-alone CPU seconds / the server's CPU seconds over the whole burst, every
thread counted, remembers included) is steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from scale import Corpus  # noqa: E402  (bench/scale.py, beside this script)

from agentcache_mcp.embeddings import bundled_model_dir  # noqa: E402

from stdio_helper import StdioServer  # noqa: E402


def pipeline(texts: list[str], workdir: Path) -> dict[str, float]:
    server = StdioServer(workdir / "pipeline.db")
    try:
        server.initialize()
        server.wait_model_ready()
        remember_ms = []
        cpu_started = process_cpu_s(server.proc.pid)
        started = time.perf_counter()
        for text in texts:
            t = time.perf_counter()
            server.call("remember", text=text, namespace="bench")
            remember_ms.append(1000 * (time.perf_counter() - t))
        sent_s = time.perf_counter() - started
        while server.stats()["pending_embeddings"]:
            time.sleep(0.05)
        done_s = time.perf_counter() - started
        cpu_s = process_cpu_s(server.proc.pid) - cpu_started
    finally:
        server.close()
    return {
        "remembered_s": sent_s,
        "embedded_s": done_s,
        "pipeline_per_s": len(texts) / done_s,
        "pipeline_cpu_s": cpu_s,
        "remember_p50_ms": statistics.median(remember_ms),
    }


def model_alone(texts: list[str]) -> dict[str, float]:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    model.encode(texts[:64], batch_size=64, show_progress_bar=False)  # warm-up
    cpu_started = time.process_time()
    started = time.perf_counter()
    model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    elapsed = time.perf_counter() - started
    return {"model_s": elapsed, "model_per_s": len(texts) / elapsed, "model_cpu_s": time.process_time() - cpu_started}


def process_cpu_s(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--memories", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=1, help="pipeline then model, this many times")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    corpus = Corpus(seed=11)
    texts = [f"{corpus.sentence()} #{i}" for i in range(args.memories)]
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            row = pipeline(texts, Path(tmp))
        row.update(model_alone(texts))
        row["ratio"] = row["pipeline_per_s"] / row["model_per_s"]
        row["cpu_ratio"] = row["model_cpu_s"] / row["pipeline_cpu_s"]
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"memories {args.memories}, load average at the end {os.getloadavg()[0]:.2f}")
    print("")
    print(
        "| round | remembered in (s) | all embedded after (s) | pipeline (memories/s) | model alone (memories/s) "
        "| ratio | CPU s: server / model alone | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rounds, 1):
        print(
            f"| {i} | {r['remembered_s']:.1f} | {r['embedded_s']:.1f} | {r['pipeline_per_s']:.1f} | "
            f"{r['model_per_s']:.1f} | {r['ratio']:.2f} | {r['pipeline_cpu_s']:.0f} / {r['model_cpu_s']:.0f} | "
            f"{r['cpu_ratio']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
