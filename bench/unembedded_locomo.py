"""LoCoMo dev with a share of the memories left without a vector (a backlog, an import without vectors, a
replica that died with its claim): R@5 / R@10 (categories 1-4) for each way of scoring the keyword candidates
that have none.

    python bench/unembedded_locomo.py [--share 0.5] [--questions 400] [--embedding-cache PATH]

Rules compared: a missing vector counts 0 (before issue 19); the median stand-in only (recall_embed_max 0);
embedding the best 8 in the recall with the rest at 0; the shipped rule (the best 8 embedded, the rest the
median); and every vector stored. Which memories lack a vector is drawn at random (seed 19); the questions are
a random sample (seed 1) of all of dev's. Embeddings are cached by text as in bench/locomo.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import locomo

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import SentenceTransformerEmbedder
from agentcache_mcp.memory import recall
from agentcache_mcp.memory.ports import Vector

SHIPPED = recall.unembedded_cosines


def as_zero(query: Vector, keyword: dict[int, float], vector: dict[int, float], fresh: dict[int, Vector]) -> dict:
    return {}


def embedded_only(query: Vector, keyword: dict[int, float], vector: dict[int, float], fresh: dict[int, Vector]) -> dict:
    return SHIPPED(query, {k: s for k, s in keyword.items() if k in vector or k in fresh}, vector, fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=locomo.DEFAULT_DATA)
    parser.add_argument("--share", type=float, default=0.5, help="share of the memories without a vector")
    parser.add_argument("--questions", type=int, default=400, help="a random sample of this many (0: all)")
    parser.add_argument(
        "--embedding-cache", default=str(Path(tempfile.gettempdir()) / "agentcache-locomo-embeddings.npz")
    )
    args = parser.parse_args()
    conversations, questions = locomo.load(args.data, None)
    if args.questions:
        questions = random.Random(1).sample(questions, min(args.questions, len(questions)))
    embedder = locomo.CachedEmbedder(SentenceTransformerEmbedder(), Path(args.embedding_cache))
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_memory(Settings(db_path=Path(tmp) / "locomo.db"), embedder=embedder)
        locomo.ingest(engine, conversations)
        batch = engine.embedding_batch(0, 1_000_000)
        vectors = embedder.embed([text for _, text, _ in batch])
        embedder.save()
        rng = random.Random(19)
        stored = [i for i in range(len(batch)) if rng.random() >= args.share]
        engine.store_embeddings([batch[i] for i in stored], vectors[stored])
        engine.mark_embeddings_caught_up()
        print(f"{len(batch)} memories, {len(batch) - len(stored)} without a vector; {len(questions)} questions")
        print("| rule | recall_embed_max | R@5 | R@10 |\n|---|---|---|---|")

        def score(name: str, rule: object, embed_max: int) -> None:
            recall.unembedded_cosines = rule  # type: ignore[assignment]
            engine.limits = dataclasses.replace(engine.limits, recall_embed_max=embed_max)
            started = time.perf_counter()
            head = locomo.summarise(questions, locomo.score_questions(engine, questions, None))["headline"]
            print(f"| {name} | {embed_max} | {head['R@5']:.3f} | {head['R@10']:.3f} |", flush=True)
            print(f"  ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

        score("missing vector = 0 (before)", as_zero, 0)
        score("median stand-in only", SHIPPED, 0)
        score("best 8 embedded, rest 0", embedded_only, 8)
        score("shipped: best 8 embedded, rest median", SHIPPED, 8)
        missing = sorted(set(range(len(batch))) - set(stored))
        engine.store_embeddings([batch[i] for i in missing], vectors[missing])
        score("every vector stored", SHIPPED, 8)
        engine.close()


if __name__ == "__main__":
    main()
