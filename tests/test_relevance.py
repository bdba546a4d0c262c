"""Recall's absolute signal: each hit's `relevance` and the recall's `match` (bench/relevance.py fits them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import SentenceTransformerEmbedder
from agentcache_mcp.memory.fusion import FusionParams, content_stems, relevance_of, term_coverage
from agentcache_mcp.memory.model import MemoryFilter
from agentcache_mcp.memory.recall import RecallRequest
from agentcache_mcp.memory.recall import recall as run_recall
from agentcache_mcp.memory.service import MemoryService

FACTS = [
    "Alice uses Neovim with the gruvbox theme",
    "The staging database listens on port 5433",
    "Bob is allergic to peanuts, so the team lunch skips Thai food",
    "Our cat Miso was adopted from the shelter in March",
    "The quarterly budget review moved to the large meeting room",
]


def test_term_coverage_counts_the_query_words_a_text_holds_in_any_simple_form() -> None:
    stems = content_stems("Which cats did they adopt?")  # stop-words dropped: cats, adopt
    assert term_coverage(stems, "Our cat Miso was adopted from the shelter") == 1.0
    assert term_coverage(stems, "The cat sleeps all day") == 0.5
    assert term_coverage(stems, "The staging database listens on port 5433") == 0.0
    assert term_coverage(frozenset(), "anything") == 0.0


def test_relevance_is_between_0_and_1_and_grows_with_cosine_and_coverage() -> None:
    for cosine in (None, -1.0, 0.0, 0.3, 0.6, 1.0):
        for coverage in (0.0, 0.5, 1.0):
            value, _ = relevance_of(cosine, coverage)
            assert 0.0 <= value <= 1.0
    assert relevance_of(0.6, 0.5)[0] > relevance_of(0.3, 0.5)[0] > relevance_of(0.3, 0.0)[0]
    assert relevance_of(None, 1.0)[0] > relevance_of(None, 0.5)[0] > relevance_of(None, 0.0)[0]
    assert relevance_of(0.05, 0.0)[1] == "none" and relevance_of(0.7, 1.0)[1] == "good"
    assert relevance_of(None, 0.0)[1] == "none" and relevance_of(None, 1.0)[1] == "good"


def test_a_recall_without_a_matching_memory_says_match_none_though_it_returns_hits(engine: MemoryService) -> None:
    """The fused score is relative (the best candidate scores about 1 whatever it is); relevance is not."""
    for text in FACTS:
        engine.remember(text, namespace="n")
    engine.embed_pending()
    answered = engine.recall_outcome("Which editor theme does Alice use?", namespace="n")
    unanswered = engine.recall_outcome("What is the boiling point of mercury?", namespace="n")
    assert answered.match == "good" and answered.hits[0].text == FACTS[0]
    assert answered.hits[0].relevance >= 0.9
    assert unanswered.hits, "vector search returns the nearest memories even when none is near"
    assert unanswered.match == "none"
    assert max(h.relevance for h in unanswered.hits) < 0.2
    assert engine.recall_outcome("anything at all", namespace="empty").match == "none"


def test_relevance_leaves_the_order_of_hits_as_the_ranking_made_it(engine: MemoryService) -> None:
    for i in range(40):
        engine.remember(f"note {i}: {FACTS[i % len(FACTS)]} (seen {i} times)", namespace="n")
    engine.embed_pending()
    for query in ("Alice gruvbox", "peanut allergy lunch", "what port does staging use", "mercury"):
        outcome = engine.recall_outcome(query, namespace="n", limit=20, touch=False)
        request = RecallRequest(query, MemoryFilter(namespace="n", live_at=time.time()), 20)
        vector = engine.embedder.embed([query])[0]
        ranked = run_recall(engine.backend, request, vector, FusionParams())
        assert [h.id for h in outcome.hits] == [m.id for m, _ in ranked]
        assert [h.score for h in outcome.hits] == [round(float(s), 6) for _, s in ranked]


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemoryService]:
    path: Path = tmp_path_factory.mktemp("relevance") / "memory.db"
    model = SentenceTransformerEmbedder()
    model.load()
    eng = open_memory(Settings(db_path=path), embedder=model)
    for text in FACTS:
        eng.remember(text, namespace="n")
    eng.embed_pending()
    yield eng
    eng.close()


@pytest.mark.model
def test_with_the_bundled_model_a_paraphrase_matches_and_an_unrelated_question_does_not(
    real_engine: MemoryService,
) -> None:
    paraphrase = real_engine.recall_outcome("Which food can't Bob eat?", namespace="n")
    assert paraphrase.retrieval == "hybrid" and paraphrase.hits[0].text == FACTS[2]
    assert paraphrase.match == "good"
    for question in ("What is the boiling point of mercury?", "Who won the 1998 football world cup?"):
        unrelated = real_engine.recall_outcome(question, namespace="n")
        assert unrelated.retrieval == "hybrid" and unrelated.hits
        assert unrelated.match == "none", [(h.text, h.relevance) for h in unrelated.hits]


def test_a_query_of_stop_words_only_covers_nothing() -> None:
    assert content_stems("the") == frozenset() and content_stems("what is it?") == frozenset()
    assert term_coverage(content_stems("the"), "the budget review moved to the large room") == 0.0
