"""bench/relevance.py, so it never rots: its AUC, its cross-validation, and a small run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"


def relevance_bench():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__("relevance")
    finally:
        sys.path.pop(0)


def test_auc_counts_ties_as_half() -> None:
    bench = relevance_bench()
    assert bench.auc([2.0, 3.0], [0.0, 1.0]) == 1.0
    assert bench.auc([0.0, 1.0], [2.0, 3.0]) == 0.0
    assert bench.auc([1.0], [1.0]) == 0.5
    assert bench.auc([1.0, 2.0], [1.0, 0.0]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_cross_validation_scores_each_recall_once_with_a_fit_made_without_its_conversation() -> None:
    bench = relevance_bench()

    def row(kind: str, conversation: str, cosine: float, coverage: float, gold: bool) -> dict[str, Any]:
        return {"kind": kind, "conversation": conversation, "category": 1, "top_score": 1.0,
                "hits": [[cosine, coverage, gold]]}  # fmt: skip

    rows = []
    for conversation in ("a", "b", "c"):
        for i in range(20):
            rows.append(row("answerable", conversation, 0.5 + i / 100, 0.8, True))
            rows.append(row("foreign", conversation, 0.05 + i / 200, 0.0, False))
    out = bench.cross_validate(rows, use_cosine=True)
    assert sorted(id(r) for r, _, _ in out["held"]) == sorted(id(r) for r in rows)
    assert set(out["folds"]) == {"a", "b", "c"}
    summary = bench.summary(out["held"])
    assert summary["foreign"]["auc"] == 1.0 and summary["foreign"]["none"] == 1.0
    assert summary["answerable"]["none"] <= 0.1


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_file(), reason="LoCoMo dev split not present")
def test_relevance_bench_runs_on_two_conversations_with_the_fake_embedder() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "relevance.py"), str(DATA), "--fake-embedder", "--limit-conversations", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    assert "| relevance (cosine + coverage), cross-validated |" in out
    assert "Fitted on every conversation (the shipped constants):" in out
