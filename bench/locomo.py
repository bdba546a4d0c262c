"""LoCoMo retrieval benchmark, scored with the protocol in ../shared/bench/locomo/README.md.

    python bench/locomo.py [PATH_TO_locomo_dev.json] [--limit-conversations N] [--questions N]
    python bench/locomo.py --cv today='keyword_weight=0.4/0.5/0.6;neighbour_weights=0.3,0.15/0.3,0.2,0.1'

One namespace per conversation, one memory per turn ("<speaker>: <text>" plus " [shares <caption>]"),
dia_id and session date in metadata; each question is a recall (limit 10) in its own conversation. Prints
BM25-only, dense-only and the shipped hybrid side by side. The data is CC BY-NC: it is read from
../shared at run time and never copied into this repository.

--cv NAME=GRID: leave-one-conversation-out cross-validation. GRID is a product of settings
(`field=v1/v2/...;field=...`, tuple values written `0.3,0.2,0.1`) applied to the shipped FusionParams; for
each conversation the setting with the best R@10 (categories 1-4) on the other conversations is chosen and
scored on it. The cross-validated figure is the mean over every question, each scored by a setting that
was chosen without it. Several --cv grids share one run (each distinct setting is scored once).

Query and memory embeddings are cached on disk by text (--embedding-cache), so sweeps cost the recalls
only; --fake-embedder swaps the model for a hashed bag of words (the smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
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

import numpy as np  # noqa: E402

from agentcache_mcp.app import open_memory  # noqa: E402
from agentcache_mcp.config import Settings  # noqa: E402
from agentcache_mcp.embeddings import Embedder, SentenceTransformerEmbedder  # noqa: E402
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
    "bm25": FusionParams(method="keyword", context_weight=0.0, neighbour_weights=(), temporal_weight=0.0),
    "dense": FusionParams(method="vector", neighbour_weights=(), temporal_weight=0.0),
    "hybrid": None,  # the shipped default
}


class CachedEmbedder:
    """An embedder that remembers every text's vector in a file, so reruns and sweeps skip the model."""

    def __init__(self, inner: Embedder, path: Path | None):
        self.inner = inner
        self.model_id = inner.model_id
        self.path = path
        self.cache: dict[str, np.ndarray] = {}
        self.misses = 0
        if path is not None and path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                self.cache = dict(zip(stored["texts"].tolist(), stored["vectors"], strict=True))

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def ready(self) -> bool:
        return True

    def load(self) -> None:
        pass  # the model loads on the first miss

    def wait_ready(self, timeout: float) -> bool:
        return True

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            self.misses += len(missing)
            self.cache.update(zip(missing, self.inner.embed(missing), strict=True))
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)

    def save(self) -> None:
        if self.path is None or not self.misses:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self.cache)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, texts=np.array(texts), vectors=np.stack([self.cache[t] for t in texts]))
        tmp.replace(self.path)


class HashedWordsEmbedder:
    """A stand-in model for smoke runs: a hashed bag of lower-cased words (no torch)."""

    model_id = "hashed-words"
    dim = 64
    ready = True

    def load(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> bool:
        return True

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[i, h % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out


def parse_setting(fields: str, separator: str = ",") -> dict[str, Any]:
    """'field=value,...' (tuples with /) -> FusionParams fields, typed like the defaults."""
    defaults = FusionParams()
    values: dict[str, Any] = {}
    for key, value in (f.split("=") for f in fields.split(separator) if f):
        values[key] = typed(key, value, defaults, "/")
    return values


def typed(key: str, value: str, defaults: FusionParams, tuple_separator: str) -> Any:
    default = getattr(defaults, key)
    if isinstance(default, tuple):
        return tuple(float(x) for x in value.split(tuple_separator) if x)
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    return type(default)(value)


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """'field=v1/v2;field=v3/v4' -> every combination, as FusionParams overrides (tuples written 0.3,0.2)."""
    defaults = FusionParams()
    axes: list[list[tuple[str, Any]]] = []
    for part in (p for p in spec.split(";") if p):
        key, _, values = part.partition("=")
        axes.append([(key, typed(key, v, defaults, ",")) for v in values.split("/")])
    return [dict(combo) for combo in itertools.product(*axes)]


def label(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "shipped"
    return ";".join(
        f"{k}={','.join(f'{x:g}' for x in v) if isinstance(v, tuple) else v}" for k, v in sorted(overrides.items())
    )


def score_questions(engine: Any, questions: list[Question], fusion: FusionParams | None) -> list[dict[str, float]]:
    rows = []
    for q in questions:
        hits = engine.recall(q.text, namespace=q.namespace, limit=10, fusion=fusion, touch=False)
        rows.append(score([str(h.metadata["dia_id"]) for h in hits], q.gold))
    return rows


def summarise(questions: list[Question], rows: list[dict[str, float]]) -> dict[str, Any]:
    per_cat: dict[int, list[dict[str, float]]] = defaultdict(list)
    for q, r in zip(questions, rows, strict=True):
        per_cat[q.category].append(r)
    headline = [r for c in (1, 2, 3, 4) for r in per_cat.get(c, [])]
    return {
        "headline": mean(headline),
        "n": len(headline),
        "by_category": {c: {"n": len(rs), **mean(rs)} for c, rs in sorted(per_cat.items())},
    }


def headline_objective(questions: list[Question], rows: list[dict[str, float]]) -> tuple[float, float]:
    """What a setting is chosen by: R@10, then R@5, over categories 1-4."""
    h = summarise(questions, rows)["headline"]
    return h["R@10"], h["R@5"]


def cross_validate(
    questions: list[Question], scored: dict[str, list[dict[str, float]]], settings: list[str]
) -> dict[str, Any]:
    """Leave one conversation out: choose the setting on the others (R@10, then R@5, categories 1-4), score it
    on the one left out; every question is scored exactly once, by a setting chosen without it."""
    conversations = list(dict.fromkeys(q.namespace for q in questions))
    held_out_rows: list[dict[str, float] | None] = [None] * len(questions)
    chosen: dict[str, str] = {}
    for left_out in conversations:
        train = [i for i, q in enumerate(questions) if q.namespace != left_out and q.category in (1, 2, 3, 4)]

        def objective(setting: str, train: list[int] = train) -> tuple[float, float]:
            rows = scored[setting]
            return (
                sum(rows[i]["R@10"] for i in train) / max(1, len(train)),
                sum(rows[i]["R@5"] for i in train) / max(1, len(train)),
            )

        best = max(settings, key=objective)  # ties: the first listed (the grid's order)
        chosen[left_out] = best
        for i, q in enumerate(questions):
            if q.namespace == left_out:
                held_out_rows[i] = scored[best][i]
    rows = [r for r in held_out_rows if r is not None]
    return {**summarise(questions, rows), "chosen": chosen, "settings": len(settings)}


def ingest(engine: Any, conversations: dict[str, list[tuple[str, str, str]]]) -> None:
    for namespace, conv_turns in conversations.items():
        for dia_id, text, date in conv_turns:
            engine.remember(text, namespace=namespace, metadata={"dia_id": dia_id, "session_date": date})


def run(
    data: Path,
    max_conversations: int | None,
    max_questions: int | None,
    retrievers: list[str],
    grids: dict[str, list[dict[str, Any]]],
    embedder: Embedder,
    database_url: str | None = None,
) -> dict[str, Any]:
    conversations, questions = load(data, max_conversations)
    if max_questions:
        questions = questions[:max_questions]
    with tempfile.TemporaryDirectory() as tmp:
        store = Settings(database_url=database_url) if database_url else Settings(db_path=Path(tmp) / "locomo.db")
        engine = open_memory(store, embedder=embedder)
        started = time.perf_counter()
        ingest(engine, conversations)
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        engine.embedder.load()
        engine.embed_pending()
        embed_s = time.perf_counter() - started

        results: dict[str, dict[str, Any]] = {}
        for name in retrievers:
            started = time.perf_counter()
            rows = score_questions(engine, questions, RETRIEVERS[name])
            elapsed = time.perf_counter() - started
            results[name] = {**summarise(questions, rows), "ms_per_query": 1000 * elapsed / max(1, len(rows))}

        cv: dict[str, dict[str, Any]] = {}
        if grids:
            # Only categories 1-4 choose a setting; category 5 is scored for the report below.
            scored: dict[str, list[dict[str, float]]] = {}
            for grid in grids.values():
                for overrides in grid:
                    key = label(overrides)
                    if key not in scored:
                        scored[key] = score_questions(
                            engine, questions, dataclasses.replace(FusionParams(), **overrides)
                        )
            for name, grid in grids.items():
                settings = list(dict.fromkeys(label(o) for o in grid))
                cv[name] = cross_validate(questions, scored, settings)
                best_all = max(settings, key=lambda s: headline_objective(questions, scored[s]))
                cv[name]["all_dev_best"] = {"setting": best_all, **summarise(questions, scored[best_all])}
                cv[name]["each_setting_all_dev"] = {s: summarise(questions, scored[s])["headline"] for s in settings}
        engine.close()
    return {
        "memories": sum(len(t) for t in conversations.values()),
        "questions": len(questions),
        "ingest_s": ingest_s,
        "embed_s": embed_s,
        "results": results,
        "cv": cv,
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
    if out["cv"]:
        lines += [
            "",
            "Cross-validated (leave one conversation out; categories 1-4 choose, R@10 per category):",
            "| grid | settings | CV R@5 | CV R@10 | "
            + " | ".join(CATEGORY_NAMES.values())
            + " | all-dev best R@5 / R@10 |",
            "|---" * 10 + "|",
        ]
        for name, r in out["cv"].items():
            h, best = r["headline"], r["all_dev_best"]["headline"]
            cells = [f"{r['by_category'].get(c, {}).get('R@10', float('nan')):.3f}" for c in CATEGORY_NAMES]
            lines.append(
                f"| {name} | {r['settings']} | {h['R@5']:.3f} | {h['R@10']:.3f} | "
                + " | ".join(cells)
                + f" | {best['R@5']:.3f} / {best['R@10']:.3f} |"
            )
        lines += ["", "Chosen per held-out conversation:"]
        for name, r in out["cv"].items():
            lines.append(f"- {name}: " + "; ".join(f"{c}: {s}" for c, s in r["chosen"].items()))
            lines.append(f"  all-dev best: {r['all_dev_best']['setting']}")
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
    parser.add_argument("--cv", action="append", default=[], metavar="NAME=GRID", help="cross-validate a grid")
    parser.add_argument(
        "--embedding-cache",
        default=str(Path(tempfile.gettempdir()) / "agentcache-locomo-embeddings.npz"),
        help="vectors by text, reused across runs ('' for none)",
    )
    parser.add_argument("--fake-embedder", action="store_true", help="a hashed bag of words instead of the model")
    parser.add_argument(
        "--database-url",
        default=None,
        help="score on this (empty) PostgreSQL database instead of a temporary SQLite file",
    )
    parser.add_argument(
        "--row-budget-share",
        type=float,
        default=None,
        help="simulate SQLite's keyword row budget at LoCoMo's size: the common-term rules act in every "
        "namespace, with a budget of this share of a conversation's memories (100k store: 5000 rows = 0.05)",
    )
    args = parser.parse_args()
    retrievers = [r for r in args.retrievers.split(",") if r]
    for spec in args.variant:
        name, _, fields = spec.partition(":")
        RETRIEVERS[name] = dataclasses.replace(FusionParams(), **parse_setting(fields))
        retrievers.append(name)
    grids = {}
    for spec in args.cv:
        name, _, grid = spec.partition("=")
        grids[name] = parse_grid(grid)
    if not args.data.is_file():
        sys.exit(f"LoCoMo data not found at {args.data} (pass the path to locomo_dev.json)")
    if args.row_budget_share is not None:
        from agentcache_mcp.backends.sqlite import keywords

        conversations, _ = load(args.data, args.limit_conversations)
        mean_size = sum(len(t) for t in conversations.values()) / len(conversations)
        keywords.PRUNE_TERMS_FROM_ROWS = 0
        keywords.KEYWORD_ROW_BUDGET = max(1, round(args.row_budget_share * mean_size))
        print(f"row budget {keywords.KEYWORD_ROW_BUDGET} rows in every namespace", file=sys.stderr)
    inner: Embedder = HashedWordsEmbedder() if args.fake_embedder else SentenceTransformerEmbedder()
    cache_path = None if args.fake_embedder or not args.embedding_cache else Path(args.embedding_cache)
    embedder = CachedEmbedder(inner, cache_path)
    try:
        out = run(args.data, args.limit_conversations, args.questions, retrievers, grids, embedder, args.database_url)
    finally:
        embedder.save()
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
