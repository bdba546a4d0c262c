"""Does recall's `relevance` tell a hit from no match? Measured on the LoCoMo dev split.

    python bench/relevance.py [PATH_TO_locomo_dev.json] [--features FILE] [--fake-embedder]

Stores the dev split as bench/locomo.py does (one namespace per conversation, one memory per turn) and asks
every question with the shipped fusion, limit 10, keeping each hit's signals (its cosine with the question
under the bundled model, and the share of the question's content words its text holds):
- answerable: categories 1-4, asked in their own conversation;
- adversarial: category 5, asked in their own conversation (built to have no answer there: most name the
  other speaker of a fact that was said);
- foreign: categories 1-4 of each conversation asked in the next conversation's namespace (nothing there can
  answer them; the cleaner negative set).

A recall's signal is its best hit's relevance. The logistic fit of relevance (cosine and coverage; coverage
alone for a recall without vectors) and the `match` thresholds are chosen by leave-one-conversation-out
cross-validation: fitted on answerable against foreign recalls of four conversations, scored on the fifth,
so every figure below is of recalls the fit never saw. Then the fit on all five conversations is printed:
the constants in agentcache_mcp/memory/fusion.py. The data is CC BY-NC: read at run time, never copied here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from locomo import (
    DEFAULT_DATA,
    CachedEmbedder,
    HashedWordsEmbedder,
    ingest,
    load,
)

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import Embedder, SentenceTransformerEmbedder
from agentcache_mcp.memory import fusion
from agentcache_mcp.memory.fusion import FusionParams, dense_query_text
from agentcache_mcp.memory.model import MemoryFilter
from agentcache_mcp.memory.recall import RecallRequest, match_signals
from agentcache_mcp.memory.recall import recall as run_recall

MAX_FALSE_NONE = 0.05
"""The `none` threshold is the highest that leaves at most this share of the training folds' answerable
recalls marked `none`: telling the model that nothing matches when something does is the costly mistake."""
MAX_FALSE_GOOD = 0.05
"""The `good` threshold is the lowest that leaves at most this share of the training folds' foreign recalls
marked `good`."""


def collect(data: Path, embedder: Embedder, max_conversations: int | None = None) -> list[dict[str, Any]]:
    """One row per recall: its set, conversation, category, fused top score, and per hit (cosine, coverage,
    gold)."""
    conversations, questions = load(data, max_conversations)
    names = list(conversations)
    params = FusionParams()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_memory(Settings(db_path=Path(tmp) / "locomo.db"), embedder=embedder)
        ingest(engine, conversations)
        engine.embedder.load()
        engine.embed_pending()
        dia_of: dict[str, str] = {}
        for q in questions:
            asked = [("adversarial" if q.category == 5 else "answerable", q.namespace)]
            if q.category != 5:
                asked.append(("foreign", names[(names.index(q.namespace) + 1) % len(names)]))
            vector = engine.embedder.embed([dense_query_text(q.text, params)])[0]
            for kind, namespace in asked:
                request = RecallRequest(q.text, MemoryFilter(namespace=namespace, live_at=time.time()), 10)
                found = run_recall(engine.backend, request, vector, params)
                signals = match_signals(engine.backend, request, vector, found)
                for m, _ in found:
                    dia_of[m.id] = str(m.metadata["dia_id"])
                rows.append(
                    {
                        "kind": kind,
                        "conversation": q.namespace,
                        "category": q.category,
                        "top_score": found[0][1] if found else 0.0,
                        "hits": [
                            [c, v, kind == "answerable" and dia_of[m.id] in q.gold]
                            for (m, _), (c, v) in zip(found, signals, strict=True)
                        ],
                    }
                )
        engine.close()
    return rows


# --- fitting and scoring -------------------------------------------------------------------------------------


def features(hit: list[Any], use_cosine: bool) -> list[float]:
    cosine, coverage = hit[0], hit[1]
    return [cosine if cosine is not None else 0.0, coverage] if use_cosine else [coverage]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """Weights (intercept first) of a logistic regression, by Newton's method; classes weighted equally."""
    x1 = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(x1.shape[1])
    balance = np.where(y == 1, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum()))
    for _ in range(50):
        p = 1 / (1 + np.exp(-x1 @ w))
        grad = x1.T @ (balance * (p - y)) + l2 * np.r_[0, w[1:]]
        hess = (x1 * (balance * p * (1 - p))[:, None]).T @ x1 + l2 * np.diag(np.r_[0, np.ones(len(w) - 1)])
        w -= np.linalg.solve(hess, grad)
    return w


def relevance(w: np.ndarray, feats: list[float]) -> float:
    return float(1 / (1 + math.exp(-(w[0] + float(np.dot(w[1:], feats))))))


def best_relevance(row: dict[str, Any], w: np.ndarray, use_cosine: bool) -> float:
    return max((relevance(w, features(h, use_cosine)) for h in row["hits"]), default=0.0)


def training_hits(rows: list[dict[str, Any]], use_cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positives: the gold hits of answerable recalls; negatives: every hit of a foreign recall."""
    x, y = [], []
    for row in rows:
        for hit in row["hits"]:
            if row["kind"] == "answerable" and hit[2]:
                x.append(features(hit, use_cosine))
                y.append(1)
            elif row["kind"] == "foreign":
                x.append(features(hit, use_cosine))
                y.append(0)
    return np.array(x, dtype=float), np.array(y, dtype=float)


def auc(positives: list[float], negatives: list[float]) -> float:
    """The chance that a random positive outscores a random negative (ties count half)."""
    if not positives or not negatives:
        return float("nan")
    neg = np.sort(np.array(negatives))
    wins = sum(np.searchsorted(neg, p, side="left") + 0.5 * (np.searchsorted(neg, p, side="right") - np.searchsorted(neg, p, side="left")) for p in positives)
    return float(wins / (len(positives) * len(negatives)))


def thresholds(answerable: list[float], foreign: list[float]) -> tuple[float, float]:
    """(none below, good from): see MAX_FALSE_NONE and MAX_FALSE_GOOD."""
    pos = np.sort(np.array(answerable))
    none_below = float(pos[math.floor(MAX_FALSE_NONE * len(pos))])
    neg = np.sort(np.array(foreign))
    good_from = float(neg[min(len(neg) - 1, math.ceil((1 - MAX_FALSE_GOOD) * len(neg)))])
    return none_below, max(good_from, none_below)


def cross_validate(rows: list[dict[str, Any]], use_cosine: bool) -> dict[str, Any]:
    """Leave one conversation out: fit and choose thresholds on four, score the recalls of the fifth."""
    held: list[tuple[dict[str, Any], float, str]] = []
    folds = {}
    for left_out in dict.fromkeys(r["conversation"] for r in rows):
        train = [r for r in rows if r["conversation"] != left_out]
        w = fit_logistic(*training_hits(train, use_cosine))
        signal = {id(r): best_relevance(r, w, use_cosine) for r in rows}
        none_below, good_from = thresholds(
            [signal[id(r)] for r in train if r["kind"] == "answerable"],
            [signal[id(r)] for r in train if r["kind"] == "foreign"],
        )
        folds[left_out] = {"weights": [round(float(v), 3) for v in w], "none_below": none_below, "good_from": good_from}
        for r in rows:
            if r["conversation"] == left_out:
                s = signal[id(r)]
                held.append((r, s, "none" if s < none_below else "good" if s >= good_from else "weak"))
    return {"held": held, "folds": folds}


def summary(held: list[tuple[dict[str, Any], float, str]]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[tuple[float, str]]] = {}
    for r, s, level in held:
        by_kind.setdefault(r["kind"], []).append((s, level))
    out = {}
    answerable = [s for s, _ in by_kind["answerable"]]
    for kind, items in by_kind.items():
        n = len(items)
        out[kind] = {
            "n": n,
            "auc": auc(answerable, [s for s, _ in items]) if kind != "answerable" else float("nan"),
            **{level: sum(1 for _, lv in items if lv == level) / n for level in ("good", "weak", "none")},
            "median": float(np.median([s for s, _ in items])),
        }
    return out


def report(rows: list[dict[str, Any]]) -> str:
    answerable = [r for r in rows if r["kind"] == "answerable"]
    lines = [
        f"recalls: {len(answerable)} answerable, {sum(r['kind'] == 'adversarial' for r in rows)} adversarial, "
        f"{sum(r['kind'] == 'foreign' for r in rows)} foreign; a recall's signal is its best hit's",
        "",
        "AUC of each signal, answerable against each negative set (0.5: no better than chance):",
        "| signal | adversarial (cat 5) | foreign conversation |",
        "|---|---|---|",
    ]

    def raw(name: str, of_row: Any) -> None:
        pos = [of_row(r) for r in answerable]
        cells = [auc(pos, [of_row(r) for r in rows if r["kind"] == k]) for k in ("adversarial", "foreign")]
        lines.append(f"| {name} | {cells[0]:.3f} | {cells[1]:.3f} |")

    raw("fused score of the top hit (today's `score`)", lambda r: r["top_score"])
    raw("best cosine", lambda r: max((h[0] for h in r["hits"] if h[0] is not None), default=-1.0))
    raw("best coverage", lambda r: max((h[1] for h in r["hits"]), default=0.0))
    shipped = [
        fusion.RELEVANCE_WITH_VECTORS.intercept,
        fusion.RELEVANCE_WITH_VECTORS.cosine_weight,
        fusion.RELEVANCE_WITH_VECTORS.coverage_weight,
    ]
    raw(
        "shipped relevance of the top hit (fitted on the whole dev split)",
        lambda r: relevance(np.array(shipped), features(r["hits"][0], True)) if r["hits"] else 0.0,
    )
    results = {}
    for name, use_cosine in (("relevance (cosine + coverage), cross-validated", True), ("relevance without vectors (coverage), cross-validated", False)):
        cv = cross_validate(rows, use_cosine)
        results[name] = cv
        s = summary(cv["held"])
        lines.append(f"| {name} | {s['adversarial']['auc']:.3f} | {s['foreign']['auc']:.3f} |")
    lines += [
        "",
        f"`match` at the cross-validated thresholds (none: at most {MAX_FALSE_NONE:.0%} of the training folds' "
        f"answerable recalls; good: at most {MAX_FALSE_GOOD:.0%} of their foreign ones), share of recalls:",
        "| relevance | set | n | good | weak | none | median best relevance |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, cv in results.items():
        for kind, v in summary(cv["held"]).items():
            lines.append(
                f"| {name.split(' (')[0]}{' (no vectors)' if 'without' in name else ''} | {kind} | {v['n']} | "
                f"{v['good']:.3f} | {v['weak']:.3f} | {v['none']:.3f} | {v['median']:.3f} |"
            )
    lines += ["", "Answerable recalls by their `match`: how many, and how often a gold turn is among the 10 hits:"]
    lines += ["| relevance | match | n | hit@10 |", "|---|---|---|---|"]
    for name, cv in results.items():
        for level in ("good", "weak", "none"):
            got = [any(h[2] for h in r["hits"]) for r, _, lv in cv["held"] if r["kind"] == "answerable" and lv == level]
            if got:
                lines.append(f"| {name.split(',')[0]} | {level} | {len(got)} | {sum(got) / len(got):.3f} |")
    lines += ["", "Per held-out conversation (weights: intercept, cosine, coverage; thresholds):"]
    for name, cv in results.items():
        for conv, f in cv["folds"].items():
            lines.append(f"- {name.split(',')[0]}, {conv}: {f['weights']}, none < {f['none_below']:.3f}, good >= {f['good_from']:.3f}")
    lines += ["", "Fitted on every conversation (the shipped constants):"]
    for name, use_cosine in (("with vectors", True), ("without vectors", False)):
        w = fit_logistic(*training_hits(rows, use_cosine))
        signal = {id(r): best_relevance(r, w, use_cosine) for r in rows}
        none_below, good_from = thresholds(
            [signal[id(r)] for r in answerable], [signal[id(r)] for r in rows if r["kind"] == "foreign"]
        )
        lines.append(f"- {name}: weights {[round(float(v), 3) for v in w]}, none < {none_below:.3f}, good >= {good_from:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit-conversations", type=int, default=None, help="only the first N (at least 2)")
    parser.add_argument("--features", type=Path, default=None, help="reuse (or write) the collected signals here")
    parser.add_argument(
        "--embedding-cache",
        default=str(Path(tempfile.gettempdir()) / "agentcache-locomo-embeddings.npz"),
        help="vectors by text, reused across runs ('' for none)",
    )
    parser.add_argument("--fake-embedder", action="store_true", help="a hashed bag of words instead of the model")
    args = parser.parse_args()
    if args.features is not None and args.features.is_file():
        rows = json.loads(args.features.read_text())
    else:
        if not args.data.is_file():
            sys.exit(f"LoCoMo data not found at {args.data} (pass the path to locomo_dev.json)")
        inner: Embedder = HashedWordsEmbedder() if args.fake_embedder else SentenceTransformerEmbedder()
        cache = None if args.fake_embedder or not args.embedding_cache else Path(args.embedding_cache)
        embedder = CachedEmbedder(inner, cache)
        try:
            rows = collect(args.data, embedder, args.limit_conversations)
        finally:
            embedder.save()
        if args.features is not None:
            args.features.write_text(json.dumps(rows))
    print(report(rows))


if __name__ == "__main__":
    main()
