"""Recall's relevance signals on every backend: each hit's cosine with the query and the query's words it holds."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agentcache_mcp.config import DEFAULT_MODEL
from agentcache_mcp.memory.fusion import FusionParams, relevance_of
from agentcache_mcp.memory.model import MemoryFilter
from agentcache_mcp.memory.recall import RecallRequest, match_signals
from agentcache_mcp.memory.recall import recall as run_recall

from .harness import Harness
from conftest import HashEmbedder

FACTS = [
    "The staging database listens on port 5433",
    "Alice uses Neovim with the gruvbox theme",
    "Our cat Miso was adopted from the shelter in March",
]


class BundledLookalike(HashEmbedder):
    """The hash embedder under the bundled model's id: recall reads its cosines for relevance."""

    model_id = f"{DEFAULT_MODEL}@lookalike"


def test_each_hit_gets_its_cosine_with_the_query_and_the_share_of_query_words_it_holds(harness: Harness) -> None:
    memory = harness.open(namespace="home")
    try:
        for text in FACTS:
            memory.remember(text)
        memory.embed_pending()
        query = "staging database port"
        request = RecallRequest(query, MemoryFilter(namespace="home", live_at=time.time()), 3)
        vector = memory.embedder.embed([query])[0]
        found = run_recall(memory.backend, request, vector, FusionParams())
        signals = match_signals(memory.backend, request, vector, found)
        assert found[0][0].text == FACTS[0] and len(signals) == len(found)
        for (m, _), (cosine, coverage) in zip(found, signals, strict=True):
            assert cosine == pytest.approx(float(np.dot(vector, memory.embedder.embed([m.text])[0])), abs=2e-3)
            assert coverage == (1.0 if m.text == FACTS[0] else 0.0)
        assert [c for c, _ in match_signals(memory.backend, request, None, found)] == [None] * len(found)
    finally:
        memory.close()


def test_recall_reports_relevance_from_the_bundled_models_cosines_and_match(harness: Harness) -> None:
    memory = harness.open(embedder=BundledLookalike(), namespace="home")
    try:
        for text in FACTS:
            memory.remember(text)
        memory.embed_pending()
        outcome = memory.recall_outcome("staging database port")
        assert outcome.match == "good" and outcome.hits[0].text == FACTS[0]
        vector = memory.embedder.embed(["staging database port"])[0]
        cosine = float(np.dot(vector, memory.embedder.embed([FACTS[0]])[0]))
        assert outcome.hits[0].relevance == pytest.approx(relevance_of(cosine, 1.0)[0], abs=0.01)
        unrelated = memory.recall_outcome("boiling point of mercury")
        assert unrelated.hits and unrelated.match == "none"
    finally:
        memory.close()
