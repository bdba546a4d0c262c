"""The recall pipeline: terms -> candidates from both retrievers -> fuse -> neighbours -> hydrate.

Backend-neutral: it speaks only to the ports, and everything it asks for is confined to one namespace.
"""

from __future__ import annotations

from dataclasses import dataclass

from .fusion import FusionParams, fuse, query_terms, ranked, smooth_with_neighbours
from .model import Memory, MemoryFilter
from .ports import StorageBackend, Vector


@dataclass(slots=True, frozen=True)
class RecallRequest:
    text: str
    where: MemoryFilter
    """namespace set, live_at set; tags and time window optional."""
    limit: int


def recall(
    backend: StorageBackend, request: RecallRequest, query_vector: Vector | None, fusion: FusionParams
) -> list[tuple[Memory, float]]:
    """The best `limit` memories with their scores. Without a query vector (no model yet) keyword only."""
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
    if query_vector is not None and fusion.method != "keyword":
        vector = dict(backend.vectors.search(namespace, query_vector, depth, where))
        if fusion.method != "vector":  # every keyword candidate also gets its exact cosine
            vector.update(backend.vectors.scores_for(namespace, query_vector, [k for k in keyword if k not in vector]))

    scores = fuse(keyword, vector, fusion)
    width = len(fusion.neighbour_weights)
    if width and scores:
        top = dict(ranked(scores)[: max(fusion.rerank_depth, request.limit)])
        neighbours = backend.memories.neighbours(namespace, list(top), width)
        adjacent = {
            k for pairs in neighbours.values() for pair in pairs for k in pair if k is not None and k not in top
        }
        live = backend.memories.live_keys(namespace, list(adjacent), where)
        if query_vector is not None and live and fusion.method != "keyword":
            extra = backend.vectors.scores_for(namespace, query_vector, list(live))
            vector.update({k: s for k, s in extra.items() if k not in scores})
            scores = fuse(keyword, vector, fusion)
        neighbours.update(backend.memories.neighbours(namespace, list(live), width))
        scores = smooth_with_neighbours(scores, neighbours, fusion.neighbour_weights)
    ranking = ranked(scores)[: request.limit]
    found = backend.memories.get_by_keys(namespace, [k for k, _ in ranking])
    return [(found[k], score) for k, score in ranking if k in found]
