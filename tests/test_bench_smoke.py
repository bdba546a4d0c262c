"""A tiny run of the LoCoMo harness, so it never rots (the full run is `python bench/locomo.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"

HARNESS_TIMEOUT_S = 900
"""Generous: on the shared 2-core machine under load the small scale run took 3.5 min (a minute quiet)."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(HARNESS_TIMEOUT_S + 60)]


def bench_module(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_gold_normalisation() -> None:
    normalise_gold = bench_module("locomo").normalise_gold
    valid = {"D8:6", "D9:17", "D11:26", "D30:5"}
    assert normalise_gold(["D8:6; D9:17"], valid) == {"D8:6", "D9:17"}
    assert normalise_gold(["D:11:26", "D30:05", "D", "D99:1"], valid) == {"D11:26", "D30:5"}


def test_cross_validation_scores_each_conversation_with_a_setting_chosen_without_it() -> None:
    locomo = bench_module("locomo")
    questions = [locomo.Question(ns, f"q{ns}{i}", 1, {"D1:1"}) for ns in ("a", "b", "c") for i in range(2)]

    def rows(r10: list[float]) -> list[dict[str, float]]:
        return [{"R@5": r, "R@10": r, "MRR": r, "nDCG@10": r, "hit@10": r} for r in r10]

    # "local" is perfect on conversation a only; "steady" is fair everywhere. Choosing on the other two
    # conversations never picks "local" for a, so a is scored by "steady": an honest held-out figure.
    scored = {"steady": rows([0.5] * 6), "local": rows([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])}
    out = locomo.cross_validate(questions, scored, ["steady", "local"])
    assert out["chosen"] == {"a": "steady", "b": "steady", "c": "steady"}
    assert out["headline"]["R@10"] == pytest.approx(0.5)
    # Better on a and b, worse on c: chosen for c too (by a and b), and c is scored with it as it is there.
    scored["local"] = rows([1.0, 1.0, 1.0, 1.0, 0.2, 0.2])
    out = locomo.cross_validate(questions, scored, ["steady", "local"])
    assert out["chosen"] == {"a": "local", "b": "local", "c": "local"}
    assert out["headline"]["R@10"] == pytest.approx((1 + 1 + 1 + 1 + 0.2 + 0.2) / 6)


def test_grid_specs_expand_to_every_combination() -> None:
    locomo = bench_module("locomo")
    grid = locomo.parse_grid("keyword_weight=0.4/0.6;neighbour_weights=0.3,0.1/0.2")
    assert grid == [
        {"keyword_weight": 0.4, "neighbour_weights": (0.3, 0.1)},
        {"keyword_weight": 0.4, "neighbour_weights": (0.2,)},
        {"keyword_weight": 0.6, "neighbour_weights": (0.3, 0.1)},
        {"keyword_weight": 0.6, "neighbour_weights": (0.2,)},
    ]


def synthetic_fusion_rows(tmp_path: Path, conversations: tuple[str, ...], per_question: int = 6) -> Path:
    """A rows file shaped like bench/fusion_features.py's: 3 questions per conversation, gold = best "kw"."""
    features = bench_module("fusion_features").FEATURES
    rng = np.random.default_rng(7)
    namespaces = [c for c in conversations for _ in range(3)]
    rows = rng.random((len(namespaces) * per_question, len(features)))
    question = np.repeat(np.arange(len(namespaces)), per_question)
    gold = np.zeros(len(rows), dtype=bool)
    for i in range(len(namespaces)):
        block = np.flatnonzero(question == i)
        gold[block[np.argmax(rows[block, features.index("kw")])]] = True
    path = tmp_path / "rows.npz"
    np.savez(
        path,
        rows=rows,
        gold=gold,
        question=question,
        dia=np.array([""] * len(rows)),
        namespace=np.array(namespaces),
        category=np.array([1] * len(namespaces)),
        n_gold=np.ones(len(namespaces), dtype=int),
        features=np.array(features),
    )
    return path


def test_learned_fusion_cv_never_fits_on_the_conversation_it_scores(tmp_path: Path) -> None:
    fusion_features = bench_module("fusion_features")
    conversations = ("a", "b", "c")
    data = fusion_features.Dataset(synthetic_fusion_rows(tmp_path, conversations))
    cols = data.columns(["kw", "cos"])
    fitted_on: list[set[str]] = []

    def fit(data, qs, cols, value):  # type: ignore[no-untyped-def]
        fitted_on.append({str(data.namespace[i]) for i in qs})
        return np.array([1.0, value])

    grid = (0.0, 0.5)
    rows, chosen = fusion_features.nested_cv(data, cols, fit, grid)
    assert len(rows) == 9 and all(r is not None for r in rows)
    per_fold = len(grid) * (len(conversations) - 1) + 1  # the inner fits, then one on all the others
    assert len(fitted_on) == per_fold * len(conversations)
    for fold, held_out in enumerate(conversations):
        for trained in fitted_on[fold * per_fold : (fold + 1) * per_fold]:
            assert held_out not in trained and trained
    assert set(chosen) == set(conversations)


def test_listwise_fusion_finds_the_feature_that_marks_the_gold(tmp_path: Path) -> None:
    fusion_features = bench_module("fusion_features")
    data = fusion_features.Dataset(synthetic_fusion_rows(tmp_path, ("a", "b", "c", "d"), per_question=20))
    cols = data.columns(["cos", "kw"])
    # The pull toward the shipped weights (0.5 each) is weak: the fit moves the weight onto kw.
    w = fusion_features.fit_listwise(data, list(range(len(data.namespace))), cols, 0.001)
    assert w[1] > 3 * abs(w[0])
    rows = data.score_questions(list(range(len(data.namespace))), data.rows[:, cols] @ w)
    assert all(r["MRR"] == 1.0 for r in rows)
    # A strong pull keeps them.
    w = fusion_features.fit_listwise(data, list(range(len(data.namespace))), cols, 1000.0)
    assert w == pytest.approx([0.5, 0.5], abs=0.01)


@pytest.mark.skipif(not DATA.is_file(), reason="needs ../shared/bench/locomo/locomo_dev.json beside the repo")
def test_locomo_cross_validation_runs_with_the_fake_embedder() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "locomo.py"),
            str(DATA),
            "--limit-conversations",
            "2",
            "--fake-embedder",
            "--retrievers",
            "hybrid",
            "--cv",
            "small=keyword_weight=0.4/0.6;temporal_weight=0/0.3",
        ],
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=True,
    )
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| small ")}
    cells = rows["small"].split("|")
    assert int(cells[2]) == 4 and 0.0 < float(cells[4]) <= 1.0  # 4 settings; CV R@10
    assert "small: conv-" in out.stdout  # the setting chosen for each held-out conversation


@pytest.mark.model
@pytest.mark.skipif(not DATA.is_file(), reason="needs ../shared/bench/locomo/locomo_dev.json beside the repo")
def test_locomo_harness_runs_on_a_slice() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "locomo.py"),
            str(DATA),
            "--limit-conversations",
            "1",
            "--questions",
            "30",
            "--embedding-cache",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=True,
    )
    headline = out.stdout.split("Per category")[0]
    rows = {line.split("|")[1].strip(): line for line in headline.splitlines() if line.startswith("| ")}
    assert {"bm25", "dense", "hybrid"} <= set(rows)
    r10 = float(rows["hybrid"].split("|")[3])
    assert 0.0 < r10 <= 1.0


@pytest.mark.model
def test_scale_harness_runs_small() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "300", "--quick"],
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=True,
    )
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert "recall p50 / floor" in rows and "peak RSS (MiB)" in rows
    ratio = float(rows["recall p50 / floor"].split("|")[2].strip().rstrip("x"))
    assert ratio > 0


@pytest.mark.model
def test_load_harness_runs_briefly() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--clients", "2", "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "errors 0" in out.stdout, out.stdout


@pytest.mark.model
def test_embedding_pipeline_harness_runs_small() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "embed_pipeline.py"), "--memories", "40"],
        capture_output=True,
        text=True,
        timeout=HARNESS_TIMEOUT_S,
        check=True,
    )
    [row] = [line for line in out.stdout.splitlines() if line.startswith("| 1 ")]
    ratio = float(row.split("|")[6])
    assert ratio > 0


def test_scale_harness_runs_small_on_postgres() -> None:
    """`--backend postgres` on the bundled server: the SQLite build moved across with its vectors, ANN recall."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--backend", "postgres", "--sizes", "300", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert "import into PostgreSQL (s; memories/s)" in rows and "peak RSS (MiB)" in rows
    recall = float(rows["ANN recall@10 vs exact, k=10 (p50 ms)"].split("|")[2].split()[0])
    assert recall == 1.0, out.stdout  # 300 vectors in one namespace: searched exactly


def test_load_harness_runs_replicas_on_postgres() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            *("--postgres", "--replicas", "2", "--clients", "2", "--seconds", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "2 server(s)" in out.stdout and "errors 0" in out.stdout, out.stdout
    assert "replica exit codes after SIGTERM: [0, 0]" in out.stdout, out.stdout
