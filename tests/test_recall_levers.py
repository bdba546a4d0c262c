"""The recall levers of issue 13, each off by default unless bench/locomo.py's cross-validation kept it:
time awareness, the length prior, the dense query text, vector-side pseudo-relevance feedback."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agentcache_mcp.memory.fusion import (
    FusionParams,
    add_length_prior,
    asks_about_time,
    boost_time_mentions,
    dense_query_text,
    length_prior,
    mentions_time,
)
from agentcache_mcp.memory.recall import unembedded_cosines
from agentcache_mcp.memory.service import MemoryService


@pytest.mark.parametrize(
    "question",
    ["When did Alice move to Berlin?", "what year was the wedding", "How long ago did we meet?", "In what month..."],
)
def test_questions_about_time_are_recognised(question: str) -> None:
    assert asks_about_time(question)


@pytest.mark.parametrize("question", ["What does Alice drink?", "Where is the deploy key?", "whenever"])
def test_other_questions_are_not_about_time(question: str) -> None:
    assert not asks_about_time(question)


@pytest.mark.parametrize(
    "text",
    [
        "I went there yesterday",
        "back in 2019",
        "last week was busy",
        "on 3/14",
        "see you on Friday",
        "two days ago",
        "since May",
    ],
)
def test_time_expressions_are_found(text: str) -> None:
    assert mentions_time(text)


@pytest.mark.parametrize(
    "text", ["I like pottery", "the deploy key is in the vault", "Mayhem at the office", "I may join you"]
)
def test_texts_without_a_time_are_not_marked(text: str) -> None:
    assert not mentions_time(text)


def test_the_boost_multiplies_only_memories_that_mention_a_time() -> None:
    scores = {1: 1.0, 2: 0.9, 3: 0.5}
    texts = {1: "we went hiking", 2: "we went hiking last weekend", 3: "in March"}
    assert boost_time_mentions(scores, texts, 0.5) == {1: 1.0, 2: pytest.approx(1.35), 3: pytest.approx(0.75)}


def test_dense_query_text_keeps_the_question_unless_asked_for_terms() -> None:
    assert dense_query_text("When did Alice go?", FusionParams()) == "When did Alice go?"
    terms = FusionParams(dense_query="terms")
    assert dense_query_text("When did Alice go?", terms) == "Alice go"
    assert dense_query_text("when did", terms) == "when did"  # nothing left: the question as written


def test_a_when_question_ranks_the_dated_memory_first_with_the_time_lever(engine: MemoryService) -> None:
    undated = engine.remember("Alice painted the fence blue", namespace="ns").id
    dated = engine.remember("Alice painted the fence last Saturday", namespace="ns").id
    engine.embed_pending()
    off = dataclasses.replace(FusionParams(), neighbour_weights=(), temporal_weight=0.0)
    on = dataclasses.replace(off, temporal_weight=0.5)
    assert engine.recall("When did Alice paint the fence blue?", namespace="ns", fusion=off)[0].id == undated
    assert engine.recall("When did Alice paint the fence blue?", namespace="ns", fusion=on)[0].id == dated
    # The same lever through neighbour re-scoring, and not for a question that is not about time.
    with_neighbours = dataclasses.replace(FusionParams(), temporal_weight=0.5)
    assert engine.recall("When did Alice paint the fence blue?", namespace="ns", fusion=with_neighbours)[0].id == dated
    assert engine.recall("Did Alice paint the fence blue?", namespace="ns", fusion=on)[0].id == undated


def test_feedback_moves_the_query_toward_the_best_memories(engine: MemoryService) -> None:
    # "zebra" alone matches one memory; feedback from it pulls in the memory that shares its other words.
    engine.remember("zebra stripes savanna grassland", namespace="ns")
    related = engine.remember("savanna grassland herds migrate", namespace="ns").id
    engine.remember("office printer toner", namespace="ns")
    engine.embed_pending()
    plain = FusionParams(method="vector", neighbour_weights=())
    fused_plain = dataclasses.replace(FusionParams(), neighbour_weights=())
    with_feedback = dataclasses.replace(fused_plain, feedback_docs=1, feedback_weight=1.0)
    before = {h.id: h.score for h in engine.recall("zebra", namespace="ns", fusion=fused_plain)}
    after = {h.id: h.score for h in engine.recall("zebra", namespace="ns", fusion=with_feedback)}
    assert related in after and after[related] > before.get(related, 0.0)
    assert engine.recall("zebra", namespace="ns", fusion=plain)  # the vector-only path is untouched


def test_the_length_prior_grows_with_the_log_of_the_words_and_stops_at_99() -> None:
    assert length_prior("") == 0.0
    assert length_prior("one two three four five") == pytest.approx(math.log(6) / math.log(100))
    assert length_prior(" ".join(["w"] * 99)) == pytest.approx(1.0)
    assert length_prior(" ".join(["w"] * 5000)) == 1.0
    # Chinese or Japanese script: one word per 1.5 characters, not one per sentence.
    assert length_prior("记" * 60) == pytest.approx(math.log(41) / math.log(100))
    assert length_prior("今日は" * 10 + " ok") == pytest.approx(math.log(1 + 20 + 1) / math.log(100))
    # Whitespace counts nothing; one long token (a hash, a URL) is one word.
    assert length_prior("\n" * 700) == 0.0
    assert length_prior("x" * 700) == pytest.approx(math.log(2) / math.log(100))
    assert length_prior("https://example.com/" + "a" * 300) == pytest.approx(math.log(2) / math.log(100))
    assert add_length_prior({1: 0.5, 2: 0.5}, {1: "a b c d e"}, 0.2) == pytest.approx(
        {1: 0.5 + 0.2 * math.log(6) / math.log(100), 2: 0.5}
    )


@pytest.mark.parametrize("neighbours", [(), (0.3, 0.2, 0.1)])
def test_the_length_prior_lifts_the_memory_with_more_to_say(
    engine: MemoryService, neighbours: tuple[float, ...]
) -> None:
    short = engine.remember("apple", namespace="ns").id
    long = engine.remember(
        "apple pie: butter, flour, sugar, cinnamon and six sliced apples, baked for an hour at 180 degrees "
        "until the crust is golden and the filling bubbles",
        namespace="ns",
    ).id
    engine.embed_pending()
    off = dataclasses.replace(FusionParams(), neighbour_weights=neighbours, length_weight=0.0)
    on = dataclasses.replace(off, length_weight=2.0)
    assert [h.id for h in engine.recall("apple", namespace="ns", fusion=off)] == [short, long]
    assert [h.id for h in engine.recall("apple", namespace="ns", fusion=on)] == [long, short]


@pytest.mark.parametrize("method", ["rrf", "keyword", "vector"])
def test_the_length_prior_is_for_the_weighted_fusion_only(engine: MemoryService, method: str) -> None:
    engine.remember("who is my dentist: Dr Alvarez on Main Street", namespace="ns")
    for i in range(5):
        engine.remember(f"log dump {i} " + " ".join(f"line{j} dentist status ok" for j in range(30)), namespace="ns")
    engine.embed_pending()
    plain = FusionParams(method=method, length_weight=0.0)  # type: ignore[arg-type]
    with_prior = dataclasses.replace(plain, length_weight=0.2)
    got = [(h.id, h.score) for h in engine.recall("who is my dentist", namespace="ns", fusion=with_prior)]
    assert got == [(h.id, h.score) for h in engine.recall("who is my dentist", namespace="ns", fusion=plain)]


# --- keyword candidates with no vector yet --------------------------------------------------------------


def test_a_candidate_embedded_in_the_recall_gets_its_exact_cosine() -> None:
    query = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    fresh = {3: np.array([0.6, 0.8, 0.0], dtype=np.float32)}
    keyword = {3: 9.0, 1: 4.0}
    assert unembedded_cosines(query, keyword, {1: 0.2}, fresh) == {3: pytest.approx(0.6)}


def test_the_stand_in_cosine_never_passes_the_best_known_one() -> None:
    # Passing it would change the best cosine, and so every other candidate's scaled score.
    query = np.array([1.0, 0.0], dtype=np.float32)
    keyword = {1: 10.0, 2: 5.0, 3: 1.0, 4: 0.5}
    stand_in = unembedded_cosines(query, keyword, {3: 0.4, 4: 0.1}, {})
    assert set(stand_in) == {1, 2}
    assert all(0.0 < s <= 0.4 for s in stand_in.values())


def test_where_every_candidate_has_a_vector_nothing_is_added() -> None:
    query = np.array([1.0, 0.0], dtype=np.float32)
    assert unembedded_cosines(query, {1: 3.0, 2: 1.0}, {1: 0.5, 2: 0.1, 7: 0.9}, {}) == {}
    assert unembedded_cosines(query, {}, {7: 0.9}, {}) == {}
