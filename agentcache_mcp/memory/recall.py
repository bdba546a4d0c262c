"""The recall pipeline: terms -> candidates from both retrievers -> fuse -> neighbours -> hydrate.

Backend-neutral: it speaks only to the ports, and everything it asks for is confined to one namespace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .fusion import (
    LENGTH_PRIOR_CHARS,
    FusionParams,
    add_length_prior,
    asks_about_time,
    boost_time_mentions,
    content_stems,
    fuse,
    query_terms,
    ranked,
    smooth_with_neighbours,
    stand_in_cosines,
    term_coverage,
)
from .model import Memory, MemoryFilter
from .ports import StorageBackend, Vector


@dataclass(slots=True, frozen=True)
class RecallRequest:
    text: str
    where: MemoryFilter
    """namespace set, live_at set; tags and time window optional."""
    limit: int


EmbedUnembedded = Callable[[str, list[int]], dict[int, Vector]]
"""(namespace, keys of memories with no stored vector, the most promising first) -> unit vectors computed now
for as many of them as the caller's bound allows."""


def recall(
    backend: StorageBackend,
    request: RecallRequest,
    query_vector: Vector | None,
    fusion: FusionParams,
    embed_unembedded: EmbedUnembedded | None = None,
) -> list[tuple[Memory, float]]:
    """The best `limit` memories with their scores. Without a query vector (no model yet) keyword only.

    A keyword candidate with no stored vector yet (just written, imported without vectors, or claimed by a
    process that died) gets its cosine from a vector `embed_unembedded` computes now, or, past that bound, the
    median cosine of the other candidates: never 0. Where every candidate has a vector nothing changes."""
    where = request.where
    namespace = where.namespace
    assert namespace is not None, "a recall names exactly one namespace"
    depth = max(fusion.candidates, request.limit)

    keyword: dict[int, float] = {}
    terms = query_terms(request.text) if fusion.method != "vector" else []
    if terms and fusion.context_weight > 0:
        terms = backend.keywords.informative_terms(namespace, terms)
    if terms:
        keyword = dict(backend.keywords.search(namespace, terms, depth, where, fusion.context_weight))
    vector: dict[int, float] = {}
    fresh: dict[int, Vector] = {}
    if query_vector is not None and fusion.method != "keyword":
        vector = dict(backend.vectors.search(namespace, query_vector, depth, where))
        if fusion.method != "vector":  # every keyword candidate also gets its exact cosine
            vector.update(backend.vectors.scores_for(namespace, query_vector, [k for k in keyword if k not in vector]))
            unembedded = [k for k in keyword if k not in vector]  # best BM25 first
            if unembedded and embed_unembedded is not None:
                fresh = embed_unembedded(namespace, unembedded)
            vector.update(unembedded_cosines(query_vector, keyword, vector, fresh))

    scores = fuse(keyword, vector, fusion)
    if fusion.feedback_docs > 0 and query_vector is not None and vector and fusion.method == "weighted":
        query_vector = _with_feedback(backend, namespace, query_vector, scores, fusion, fresh)
        vector = backend.vectors.scores_for(namespace, query_vector, list(vector))
        vector.update(unembedded_cosines(query_vector, keyword, vector, fresh))
        scores = fuse(keyword, vector, fusion)
    about_time = fusion.temporal_weight > 0 and asks_about_time(request.text)
    by_length = fusion.length_weight > 0 and fusion.method == "weighted"
    # The texts of the memories ranked past this point (for time and length), read once; whole for a time
    # expression anywhere in them, else only as far as the length prior looks.
    prefix = None if about_time else LENGTH_PRIOR_CHARS
    texts: dict[int, str] = {}
    if (about_time or by_length) and not fusion.neighbour_weights and scores:
        top_keys = [k for k, _ in ranked(scores)[: max(fusion.rerank_depth, request.limit)]]
        texts = backend.memories.texts(namespace, top_keys, prefix)
        scores = {k: scores[k] for k in top_keys}
        if about_time:
            scores = boost_time_mentions(scores, texts, fusion.temporal_weight)
    width = len(fusion.neighbour_weights)
    if width and scores:
        top = dict(ranked(scores)[: max(fusion.rerank_depth, request.limit)])
        # Twice the width around each top memory holds the neighbours of every memory within the width of
        # it as well: one round trip instead of a second one for the adjacent memories' own neighbours.
        neighbours = neighbours_within(backend.memories.neighbours(namespace, list(top), 2 * width), width)
        adjacent = {k for k in neighbours if k not in top}
        live = backend.memories.live_keys(namespace, list(adjacent), where)
        if query_vector is not None and live and fusion.method != "keyword":
            extra = backend.vectors.scores_for(namespace, query_vector, list(live))
            vector.update({k: s for k, s in extra.items() if k not in scores})
            scores = fuse(keyword, vector, fusion)
        neighbours = {k: pairs for k, pairs in neighbours.items() if k in top or k in live}
        if about_time or by_length:
            texts = backend.memories.texts(namespace, list(neighbours), prefix)
        if about_time:
            scores = boost_time_mentions(scores, texts, fusion.temporal_weight)
        scores = smooth_with_neighbours(scores, neighbours, fusion.neighbour_weights)
    if by_length and texts:
        scores = add_length_prior(scores, texts, fusion.length_weight)
    ranking = ranked(scores)[: request.limit]
    found = backend.memories.get_by_keys(namespace, [k for k, _ in ranking])
    return [(found[k], score) for k, score in ranking if k in found]


def unembedded_cosines(
    query: Vector, keyword: dict[int, float], vector: dict[int, float], fresh: dict[int, Vector]
) -> dict[int, float]:
    """The cosines of the keyword candidates missing from `vector` (no stored vector): exact for those with a
    vector in `fresh`, and for the rest the median cosine of the keyword candidates that have one (of every
    candidate, if none has)."""
    missing = [k for k in keyword if k not in vector]
    if not missing:
        return {}
    q = _unit(query)
    exact = {k: float(_unit(fresh[k]) @ q) for k in missing if k in fresh}
    known = [s for k, s in vector.items() if k in keyword] + list(exact.values())
    rest = [k for k in missing if k not in exact]
    return {**exact, **stand_in_cosines(known or list(vector.values()), rest)}


def _unit(v: Vector) -> Vector:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _with_feedback(
    backend: StorageBackend,
    namespace: str,
    query: Vector,
    scores: dict[int, float],
    fusion: FusionParams,
    fresh: dict[int, Vector] | None = None,
) -> Vector:
    """The query vector moved toward the mean of the best fused memories' vectors (Rocchio feedback); `fresh`:
    vectors computed in the recall for memories with none stored yet."""
    best = [k for k, _ in ranked(scores)[: fusion.feedback_docs]]
    found = {k: fresh[k] for k in best if fresh and k in fresh}
    found.update(backend.embeddings.vectors_of(backend.vectors.model_id, [k for k in best if k not in found]))
    if not found:
        return query
    centroid = np.mean([v / max(float(np.linalg.norm(v)), 1e-12) for v in found.values()], axis=0)
    moved = np.asarray(query, dtype=np.float32) + fusion.feedback_weight * centroid.astype(np.float32)
    return (moved / max(float(np.linalg.norm(moved)), 1e-12)).astype(np.float32)


def neighbours_within(
    wide: dict[int, list[tuple[int | None, int | None]]], width: int
) -> dict[int, list[tuple[int | None, int | None]]]:
    """From each key's (before, after) pairs at distances 1..2 x width, the pairs at distances 1..width of
    the key and of every memory within width of it (read off the same stretch of the namespace's order)."""
    out: dict[int, list[tuple[int | None, int | None]]] = {}
    for key, pairs in wide.items():
        before = [b for b, _ in pairs]
        after = [a for _, a in pairs]
        # The stretch around key, oldest first: before[-1] ... before[0], key, after[0] ... after[-1].
        line: list[int | None] = [*reversed(before), key, *after]
        centre = len(before)
        for offset in range(-width, width + 1):
            at = centre + offset
            member = line[at]
            if member is not None and member not in out:
                out[member] = [(line[at - d], line[at + d]) for d in range(1, width + 1)]
    return out


def match_signals(
    backend: StorageBackend, request: RecallRequest, query_vector: Vector | None, found: list[tuple[Memory, float]]
) -> list[tuple[float | None, float]]:
    """Per hit, what its relevance is made of: (its cosine with the query, None without a query vector or a
    vector of its own; the share of the query's content words its text holds). Absolute, unlike the score."""
    namespace = request.where.namespace
    assert namespace is not None, "a recall names exactly one namespace"
    cosines: dict[int, float] = {}
    if query_vector is not None and found:
        cosines = backend.vectors.scores_for(namespace, query_vector, [m.key for m, _ in found])
    stems = content_stems(request.text)
    return [(cosines.get(m.key), term_coverage(stems, m.text)) for m, _ in found]
