"""LoCoMo retrieval benchmark, scored with the protocol in ../shared/bench/locomo/README.md.

    python bench/locomo.py [PATH_TO_locomo_dev.json] [--limit-conversations N] [--questions N]

One namespace per conversation, one memory per turn ("<speaker>: <text>" plus " [shares <caption>]"),
dia_id and session date in metadata; each question is a recall (limit 10) in its own conversation. Prints
BM25-only, dense-only and the shipped hybrid side by side. The data is CC BY-NC: it is read from
../shared at run time and never copied into this repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the server's CLI does, before numpy loads

from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.memory.fusion import FusionParams  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"
CATEGORY_NAMES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass
class Question:
    namespace: str
    text: str
    category: int
    gold: set[str]


def turns(sample: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dia_id, memory text, session date) for every turn, in order."""
    conversation = sample["conversation"]
    sessions = sorted(
        (int(k.split("_")[1]), v)
        for k, v in conversation.items()
        if re.fullmatch(r"session_\d+", k) and isinstance(v, list)
    )
    out = []
    for number, session in sessions:
        date = conversation.get(f"session_{number}_date_time", "")
        for turn in session:
            text = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                text += f" [shares {turn['blip_caption']}]"
            out.append((turn["dia_id"], text, date))
    return out


def normalise_gold(evidence: list[str], valid: set[str]) -> set[str]:
    gold = set()
    for entry in evidence:
        for part in re.split(r"[;,\s]+", entry):
            part = part.strip()
            m = re.fullmatch(r"D:?(\d+):0*(\d+)", part)
            if not m:
                continue
            dia = f"D{int(m.group(1))}:{int(m.group(2))}"
            if dia in valid:
                gold.add(dia)
    return gold


def load(path: Path, max_conversations: int | None) -> tuple[dict[str, list[tuple[str, str, str]]], list[Question]]:
    data = json.loads(path.read_text())
    if max_conversations:
        data = data[:max_conversations]
    conversations: dict[str, list[tuple[str, str, str]]] = {}
    questions: list[Question] = []
    for sample in data:
        namespace = sample["sample_id"]
        conv_turns = turns(sample)
        conversations[namespace] = conv_turns
        valid = {d for d, _, _ in conv_turns}
        for qa in sample["qa"]:
            gold = normalise_gold(qa.get("evidence", []), valid)
            if gold:
                questions.append(Question(namespace, qa["question"], int(qa["category"]), gold))
    return conversations, questions


def score(ranked: list[str], gold: set[str]) -> dict[str, float]:
    def recall_at(k: int) -> float:
        return len(gold & set(ranked[:k])) / len(gold)

    first = next((i for i, d in enumerate(ranked) if d in gold), None)
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in gold)
    idcg = sum(1 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    return {
        "R@5": recall_at(5),
        "R@10": recall_at(10),
        "MRR": 0.0 if first is None else 1 / (first + 1),
        "nDCG@10": dcg / idcg,
        "hit@10": 1.0 if first is not None and first < 10 else 0.0,
    }


def mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


RETRIEVERS: dict[str, FusionParams | None] = {
    # The baselines of ../shared/bench/locomo/README.md: each retriever alone, on the memory's own text.
    "bm25": FusionParams(method="keyword", context_weight=0.0, neighbour_weights=()),
    "dense": FusionParams(method="vector", neighbour_weights=()),
    "hybrid": None,  # the shipped default
}


def run(data: Path, max_conversations: int | None, max_questions: int | None, retrievers: list[str]) -> dict[str, Any]:
    conversations, questions = load(data, max_conversations)
    if max_questions:
        questions = questions[:max_questions]
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_memory(Settings(db_path=Path(tmp) / "locomo.db"))
        started = time.perf_counter()
        for namespace, conv_turns in conversations.items():
            for dia_id, text, date in conv_turns:
                engine.remember(text, namespace=namespace, metadata={"dia_id": dia_id, "session_date": date})
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        engine.embedder.load()
        engine.embed_pending()
        embed_s = time.perf_counter() - started

        results: dict[str, dict[str, Any]] = {}
        for name in retrievers:
            per_cat: dict[int, list[dict[str, float]]] = defaultdict(list)
            started = time.perf_counter()
            for q in questions:
                hits = engine.recall(q.text, namespace=q.namespace, limit=10, fusion=RETRIEVERS[name], touch=False)
                per_cat[q.category].append(score([str(h.metadata["dia_id"]) for h in hits], q.gold))
            elapsed = time.perf_counter() - started
            headline = [r for c in (1, 2, 3, 4) for r in per_cat.get(c, [])]
            results[name] = {
                "headline": mean(headline),
                "n": len(headline),
                "by_category": {c: {"n": len(rows), **mean(rows)} for c, rows in sorted(per_cat.items())},
                "ms_per_query": 1000 * elapsed / max(1, sum(len(v) for v in per_cat.values())),
            }
        engine.close()
    return {
        "memories": sum(len(t) for t in conversations.values()),
        "questions": len(questions),
        "ingest_s": ingest_s,
        "embed_s": embed_s,
        "results": results,
    }


def report(out: dict[str, Any]) -> str:
    lines = [
        f"memories {out['memories']}, questions {out['questions']}, remember {out['ingest_s']:.1f} s, "
        f"embed {out['embed_s']:.1f} s",
        "",
        "| retriever | R@5 | R@10 | MRR | nDCG@10 | hit@10 | cat 5 R@10 | ms/query |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out["results"].items():
        h = r["headline"]
        cat5 = r["by_category"].get(5, {}).get("R@10", float("nan"))
        lines.append(
            f"| {name} | {h['R@5']:.3f} | {h['R@10']:.3f} | {h['MRR']:.3f} | {h['nDCG@10']:.3f} | "
            f"{h['hit@10']:.3f} | {cat5:.3f} | {r['ms_per_query']:.1f} |"
        )
    lines += ["", "Per category (R@10):", "| retriever | " + " | ".join(CATEGORY_NAMES.values()) + " |"]
    lines.append("|---" * 6 + "|")
    for name, r in out["results"].items():
        cells = [
            f"{r['by_category'].get(c, {}).get('R@10', float('nan')):.3f} (n={r['by_category'].get(c, {}).get('n', 0)})"
            for c in CATEGORY_NAMES
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit-conversations", type=int, default=None)
    parser.add_argument("--questions", type=int, default=None, help="score only the first N questions")
    parser.add_argument("--retrievers", default="bm25,dense,hybrid")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:FIELD=VALUE,...",
        help="score a further fusion setting too, e.g. 'wide:candidates=200,neighbour_weights=0.3/0.1' (tuples with /)",
    )
    args = parser.parse_args()
    retrievers = args.retrievers.split(",")
    for spec in args.variant:
        name, _, fields = spec.partition(":")
        defaults = FusionParams()
        values: dict[str, Any] = {}
        for key, value in (f.split("=") for f in fields.split(",") if f):
            default = getattr(defaults, key)
            if isinstance(default, tuple):
                values[key] = tuple(float(x) for x in value.split("/") if x)
            else:
                values[key] = type(default)(value)
        RETRIEVERS[name] = dataclasses.replace(FusionParams(), **values)
        retrievers.append(name)
    if not args.data.is_file():
        sys.exit(f"LoCoMo data not found at {args.data} (pass the path to locomo_dev.json)")
    out = run(args.data, args.limit_conversations, args.questions, retrievers)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
