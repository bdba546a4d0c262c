"""The in-memory vector index and the fusion functions: pure code, no database."""

from __future__ import annotations

import numpy as np
import pytest

from agentcache_mcp.backends.matrix import VectorMatrix
from agentcache_mcp.backends.sqlite.repository import to_blob
from agentcache_mcp.memory.fusion import FusionParams, fuse, ranked, smooth_with_neighbours


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_search_is_cosine_within_a_namespace_to_float16_precision() -> None:
    index = VectorMatrix(3)
    index.upsert(1, "a", unit(1, 0, 0))
    index.upsert(2, "a", unit(1, 1, 0))
    index.upsert(3, "a", unit(0, 0, 1))
    index.upsert(4, "b", unit(1, 0, 0))
    hits = index.search("a", unit(1, 0, 0), 2)
    assert [pk for pk, _ in hits] == [1, 2]
    assert hits[0][1] == pytest.approx(1.0, abs=1e-3) and hits[1][1] == pytest.approx(np.sqrt(0.5), abs=1e-3)
    assert [pk for pk, _ in index.search("b", unit(1, 0, 0), 10)] == [4]
    assert index.search("missing", unit(1, 0, 0), 10) == []
    assert [pk for pk, _ in index.search("a", unit(1, 0, 0), 10, allowed={3})] == [3]


def test_remove_moves_the_last_row_into_the_hole() -> None:
    index = VectorMatrix(2)
    for pk in range(1, 6):
        index.upsert(pk, "a", unit(1, pk))
    index.remove(2)
    index.remove(99)  # unknown: ignored
    assert len(index) == 4 and 2 not in index
    pks, matrix = index.vectors("a")
    assert sorted(pks.tolist()) == [1, 3, 4, 5]
    for pk, row in zip(pks.tolist(), matrix, strict=True):
        assert np.allclose(row, unit(1, pk), atol=1e-3)


def test_float16_cosines_stay_within_1e_3_of_float32() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(2000, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorMatrix(384)
    index.add_batch([(pk, "a", to_blob(v)) for pk, v in enumerate(vectors, start=1)])
    query = vectors[7] + 0.02 * rng.normal(size=384).astype(np.float32)
    exact = vectors @ (query / np.linalg.norm(query))
    hits = index.search("a", query, 2000)
    assert max(abs(s - exact[pk - 1]) for pk, s in hits) < 1e-3
    assert hits[0][0] == 8
    scored = index.scores_for("a", query, [1, 2, 3])
    assert all(abs(scored[pk] - exact[pk - 1]) < 1e-3 for pk in (1, 2, 3))


def test_bulk_load_matches_one_by_one() -> None:
    rng = np.random.default_rng(0)
    rows = [(pk, "ab"[pk % 2], to_blob(rng.normal(size=8).astype(np.float32))) for pk in range(1, 300)]
    bulk, single = VectorMatrix(8), VectorMatrix(8)
    bulk.add_batch(rows[:100])
    bulk.add_batch(rows[100:])
    for pk, ns, blob in rows:
        single.upsert(pk, ns, np.frombuffer(blob, dtype="<f4"))
    query = rng.normal(size=8).astype(np.float32)
    for ns in "ab":
        got, want = bulk.search(ns, query, 20), single.search(ns, query, 20)
        assert [pk for pk, _ in got] == [pk for pk, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-6)
    bulk.add_batch(rows[:3])  # reloading rows it holds already updates them in place
    assert len(bulk) == len(single)


def test_dimension_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        VectorMatrix(3).upsert(1, "a", unit(1, 0))


def test_weighted_fusion_scales_each_retriever_by_its_best() -> None:
    keyword = {1: 10.0, 2: 5.0}
    vector = {2: 0.8, 3: 0.4}
    fused = fuse(keyword, vector, FusionParams(keyword_weight=0.5))
    assert fused == pytest.approx({1: 0.5, 2: 0.25 + 0.5, 3: 0.25})
    assert [pk for pk, _ in ranked(fused)] == [2, 1, 3]


def test_rrf_and_single_retriever_modes() -> None:
    keyword = {1: 10.0, 2: 5.0}
    vector = {2: 0.8, 3: 0.4}
    rrf = fuse(keyword, vector, FusionParams(method="rrf", rrf_k=60))
    assert rrf[2] == pytest.approx(1 / 62 + 1 / 61)
    assert fuse(keyword, vector, FusionParams(method="keyword")) == keyword
    assert fuse(keyword, vector, FusionParams(method="vector")) == vector
    assert fuse(keyword, {}, FusionParams()) == {1: 1.0, 2: 0.5}  # no vectors yet: keyword alone


def test_neighbour_smoothing_adds_the_better_neighbour_at_each_distance() -> None:
    scores = {1: 1.0, 2: 0.0, 3: 0.5, 4: 0.0}
    neighbours = {
        1: [(None, 2), (None, 3)],
        2: [(1, 3), (None, 4)],
        3: [(2, 4), (1, None)],
        4: [(3, None), (2, None)],
    }
    out = smooth_with_neighbours(scores, neighbours, (0.2, 0.1))
    assert out == pytest.approx({1: 1.0 + 0.1 * 0.5, 2: 0.2, 3: 0.5 + 0.1, 4: 0.1})


@pytest.mark.parametrize("with_torch", [True, False])
def test_top_k_is_best_first_ties_in_position_order_with_or_without_torch(
    with_torch: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.backends import matrix

    if not with_torch:
        monkeypatch.setattr(matrix, "_torch", lambda: None)
    scores = np.array([0.1, 0.9, 0.5, 0.9, -np.inf, 0.5, 0.7], dtype=np.float32)
    assert matrix._top_k(scores, 3).tolist() == [1, 3, 6]
    assert matrix._top_k(scores, 5).tolist() == [1, 3, 6, 2, 5]
    assert matrix._top_k(scores, 4).tolist() in ([1, 3, 6, 2], [1, 3, 6, 5])  # a tie at the cut: either
    assert matrix._top_k(scores, 7).tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert matrix._top_k(scores, 10).tolist() == [1, 3, 6, 2, 5, 0, 4]
    assert matrix._top_k(np.array([0.5, np.nan, 0.9, 0.1], dtype=np.float32), 2).tolist() == [2, 0]  # NaN last
    rng = np.random.default_rng(3)
    many = rng.normal(size=5000).astype(np.float32)
    assert matrix._top_k(many, 100).tolist() == np.argsort(-many, kind="stable")[:100].tolist()
