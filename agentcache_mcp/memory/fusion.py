"""Ranking maths: query terms, the fusion of keyword (BM25) and vector (cosine) scores, neighbour smoothing.

Pure functions over {key: score} maps, so the fusion can be measured and tested without a database.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Literal

from .model import MatchLevel

# A standard English stop-word list (the NLTK list minus a few words that carry meaning in memories,
# such as "not" and "no"). Dropping them keeps BM25 from rewarding turns that merely share "the" or "did".
STOP_WORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "aren't",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "couldn't",
        "did",
        "didn't",
        "do",
        "does",
        "doesn't",
        "doing",
        "don't",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "hadn't",
        "has",
        "hasn't",
        "have",
        "haven't",
        "having",
        "he",
        "he'd",
        "he'll",
        "he's",
        "her",
        "here",
        "here's",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "how's",
        "i",
        "i'd",
        "i'll",
        "i'm",
        "i've",
        "if",
        "in",
        "into",
        "is",
        "isn't",
        "it",
        "it's",
        "its",
        "itself",
        "let's",
        "me",
        "more",
        "most",
        "mustn't",
        "my",
        "myself",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "ought",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "shan't",
        "she",
        "she'd",
        "she'll",
        "she's",
        "should",
        "shouldn't",
        "so",
        "some",
        "such",
        "than",
        "that",
        "that's",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "there's",
        "these",
        "they",
        "they'd",
        "they'll",
        "they're",
        "they've",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "wasn't",
        "we",
        "we'd",
        "we'll",
        "we're",
        "we've",
        "were",
        "weren't",
        "what",
        "what's",
        "when",
        "when's",
        "where",
        "where's",
        "which",
        "while",
        "who",
        "who's",
        "whom",
        "why",
        "why's",
        "with",
        "won't",
        "would",
        "wouldn't",
        "you",
        "you'd",
        "you'll",
        "you're",
        "you've",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "s",
        "t",
        "d",
        "ll",
        "m",
        "re",
        "ve",
    ]
)

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def query_terms(query: str) -> list[str]:
    """Lower-cased word tokens of a query, stop-words dropped (kept if nothing else is left)."""
    tokens = [t.lower() for t in _TOKEN_RE.findall(query)]
    # \w matches "_" too; FTS5's unicode61 tokenizer splits on it, so split the same way.
    tokens = [part for t in tokens for part in t.split("_") if part]
    kept = [t for t in tokens if t not in STOP_WORDS]
    return list(dict.fromkeys(kept or tokens))


@dataclass(frozen=True, slots=True)
class FusionParams:
    """How keyword and vector scores become one ranking.

    The defaults were chosen on the LoCoMo dev split and then checked by leave-one-conversation-out
    cross-validation (bench/locomo.py --cv; bench/RESULTS.md): choosing keyword_weight (0.4-0.6),
    context_weight (0.2-0.6), neighbour_weights (four windows) and temporal_weight on four conversations picked
    these values for the fifth in 4 or 5 folds of 5.
    """

    method: Literal["weighted", "rrf", "keyword", "vector"] = "weighted"
    keyword_weight: float = 0.5
    """weighted: the keyword share of the fused score; the vector share is 1 - keyword_weight."""
    rrf_k: float = 60.0
    candidates: int = 100
    """How many candidates each retriever contributes; every candidate then gets its exact cosine."""
    rerank_depth: int = 50
    """How many of the best fused candidates (and their neighbours) are re-scored with neighbour context."""
    context_weight: float = 0.4
    """BM25 weight of the preceding memory's words (indexed with each memory) relative to its own."""
    neighbour_weights: tuple[float, ...] = (0.3, 0.2, 0.1)
    """Share of the best fused score k memories away (k = 1, 2, ...; written just before or after, in the
    namespace) added to a memory's own: an answer often sits next to the memory that matches the question's
    words. Empty: no neighbour re-scoring."""
    temporal_weight: float = 0.35
    """For a question about time ("when ...?", "what year ...?"): memories whose text holds a time expression
    (a date, a month or weekday, "yesterday", "last week", "ago") have their fused score multiplied by
    1 + temporal_weight before neighbour re-scoring. 0: off. 0.35 was chosen by leave-one-conversation-out
    cross-validation on the LoCoMo dev split among 0, 0.1, 0.2, 0.35, 0.5 and 0.75 (every fold chose it;
    temporal questions R@10 0.850 -> 0.869, the rest within 0.01; bench/RESULTS.md)."""
    feedback_docs: int = 0
    """Pseudo-relevance feedback on the vector side: the query vector is moved toward the mean vector of the
    best `feedback_docs` fused memories (Rocchio), and every candidate's cosine is taken again with it; no
    second search. 0: off."""
    feedback_weight: float = 0.5
    """Weight of that mean vector against the query's own (both unit length)."""
    dense_query: Literal["question", "terms"] = "question"
    """What the embedding model sees of the query: the question as written, or its content words only."""
    length_weight: float = 0.2
    """weighted only: a prior for longer memories. After neighbour re-scoring every ranked memory gains
    length_weight x length_prior(text) (0 to 1, logarithmic in words, full at 99 words): of two memories that
    match alike, the one with more to say is more often the answer. 0: off. Chosen by leave-one-conversation-out
    cross-validation on the LoCoMo dev split (bench/RESULTS.md). Not applied to rrf, keyword or vector, whose
    scores are on other scales (it would outweigh an RRF score) or are the raw retriever's."""


# "May" only capitalised: lower-case "may" is nearly always the verb.
_MONTHS = "january|february|march|april|(?-i:May)|june|july|august|september|october|november|december"
_WEEKDAYS = "monday|tuesday|wednesday|thursday|friday|saturday|sunday"
_TIME_EXPRESSION_RE = re.compile(
    rf"\b(?:{_MONTHS}|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|{_WEEKDAYS}|yesterday|today|tonight|"
    r"tomorrow|weekend|ago|recently|lately|"
    r"(?:last|next|this|past|coming|previous|few|couple of)\s+(?:\w+\s+)?(?:days?|nights?|weeks?|weekends?|"
    r"months?|years?|summer|winter|spring|fall|autumn|morning|evening|time)|"
    r"(?:19|20)\d\d|\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?|\d{1,2}(?:st|nd|rd|th))\b",
    re.IGNORECASE,
)
_TEMPORAL_QUESTION_RE = re.compile(
    r"\bwhen\b|\bhow long ago\b|\bwhat (?:date|day|year|month|time|week)\b|\bwhich (?:date|day|year|month|week)\b|"
    r"\bin what (?:year|month)\b|\bhow long (?:has|have|had|did|was|were)\b",
    re.IGNORECASE,
)


def asks_about_time(query: str) -> bool:
    """Whether a question asks when something happened (or how long ago)."""
    return _TEMPORAL_QUESTION_RE.search(query) is not None


def mentions_time(text: str) -> bool:
    """Whether a memory's text holds a time expression: a date, a month or weekday, "yesterday", "last week"."""
    return _TIME_EXPRESSION_RE.search(text) is not None


def boost_time_mentions(scores: dict[int, float], texts: dict[int, str], weight: float) -> dict[int, float]:
    """Multiply the score of each memory whose text mentions a time by 1 + weight."""
    return {k: s * (1.0 + weight) if k in texts and mentions_time(texts[k]) else s for k, s in scores.items()}


_LENGTH_FULL_WORDS = 99
LENGTH_PRIOR_CHARS = 1000
"""The length prior reads no further than this many characters of a memory: 99 words fit in it."""
# Scripts written without spaces between words: Chinese ideographs and Japanese kana (Korean uses spaces).
_UNSPACED = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CHARS_PER_UNSPACED_WORD = 1.5


def length_prior(text: str) -> float:
    """log(1 + words) / log(1 + 99), capped at 1: 0.39 for 5 words, 0.66 for 20, 1 from 99 words on (the cap keeps
    a long document from outranking a matching fact on length alone). Words: whitespace-separated runs, and in
    Chinese or Japanese script one per 1.5 characters; whitespace alone counts nothing and one long token
    (a hash, a URL) one word."""
    if text.isascii():  # no unspaced script: the same count, a fifth of the time (~200 texts per recall)
        words = float(len(text.split()))
    else:
        unspaced = len(_UNSPACED.findall(text))
        words = len(_UNSPACED.sub(" ", text).split()) + unspaced / _CHARS_PER_UNSPACED_WORD
    return min(1.0, math.log1p(words) / math.log1p(_LENGTH_FULL_WORDS))


def add_length_prior(scores: dict[int, float], texts: dict[int, str], weight: float) -> dict[int, float]:
    """Add weight x length_prior(text) to the score of each memory whose text is given."""
    return {k: s + weight * length_prior(texts[k]) if k in texts else s for k, s in scores.items()}


def _scaled(scores: dict[int, float]) -> dict[int, float]:
    """Divide by the best score, so each retriever's top hit scores 1 and the rest keep their ratio."""
    best = max(scores.values(), default=0.0)
    if best <= 0:
        return dict.fromkeys(scores, 0.0)
    return {pk: max(s, 0.0) / best for pk, s in scores.items()}


def fuse(keyword: dict[int, float], vector: dict[int, float], params: FusionParams) -> dict[int, float]:
    """One score per memory from keyword (BM25) and vector (cosine) scores; a missing score counts as none.

    weighted: keyword_weight x BM25/best BM25 + (1 - keyword_weight) x cosine/best cosine. Measured on
    LoCoMo against RRF, min-max and z-score normalisation (bench/RESULTS.md); RRF discards the score gaps
    that make BM25 strong here and scored below BM25 alone.
    """
    if params.method == "keyword":
        return dict(keyword)
    if params.method == "vector":
        return dict(vector)
    if not vector:
        return _scaled(keyword)
    if not keyword:
        return _scaled(vector)
    fused: dict[int, float] = {}
    if params.method == "rrf":
        for scores in (keyword, vector):
            ranking = sorted(scores, key=lambda pk: -scores[pk])
            for rank, pk in enumerate(ranking):
                fused[pk] = fused.get(pk, 0.0) + 1.0 / (params.rrf_k + rank + 1)
        return fused
    w = params.keyword_weight
    for pk, s in _scaled(keyword).items():
        fused[pk] = fused.get(pk, 0.0) + w * s
    for pk, s in _scaled(vector).items():
        fused[pk] = fused.get(pk, 0.0) + (1.0 - w) * s
    return fused


def stand_in_cosines(known: list[float], keys: list[int]) -> dict[int, float]:
    """A cosine for each of `keys`, memories with no vector yet whose own could not be computed in the recall:
    the median of the `known` cosines of the other candidates (nothing if none is known). Counted as 0, a
    missing vector lost such a memory to unrelated memories that had one; the median never exceeds the best
    known cosine, so the other candidates' scaled scores stay as they were."""
    if not known or not keys:
        return {}
    return dict.fromkeys(keys, float(statistics.median(known)))


def ranked(scores: dict[int, float]) -> list[tuple[int, float]]:
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def smooth_with_neighbours(
    scores: dict[int, float], neighbours: dict[int, list[tuple[int | None, int | None]]], weights: tuple[float, ...]
) -> dict[int, float]:
    """Add, for each distance k, weights[k-1] x the better score of the two memories k away.

    `neighbours` maps every memory to be ranked (candidates and their neighbours) to its (before, after)
    pair at distance 1, 2, ...
    """
    out: dict[int, float] = {}
    for pk, pairs in neighbours.items():
        score = scores.get(pk, 0.0)
        for weight, (before, after) in zip(weights, pairs, strict=False):
            score += weight * max(scores.get(before, 0.0) if before else 0.0, scores.get(after, 0.0) if after else 0.0)
        out[pk] = score
    return out


def dense_query_text(query: str, params: FusionParams) -> str:
    """The text the embedding model embeds for a query (see FusionParams.dense_query)."""
    if params.dense_query == "terms":
        words = [w for w in _TOKEN_RE.findall(query) if w.lower() not in STOP_WORDS]
        return " ".join(words) or query
    return query


# --- relevance: an absolute signal beside the fused score -------------------------------------------------
# The fused score is relative (each retriever's best candidate scores 1), so a query with nothing relevant
# stored still gets a top score like a real hit's. Relevance is built from signals that mean the same across
# queries: the query-memory cosine of the bundled model, and the share of the query's words the memory holds.


def _stem(word: str) -> str:
    """A light English suffix strip ("painting" -> "paint", "races" -> "rac", "race" -> "rac"), enough to
    match a question's word with the same word in a memory; never below three letters."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_stems(query: str) -> frozenset[str]:
    """The stems of a query's content words, for term_coverage: none for a query of stop-words only (which
    every memory would cover)."""
    return frozenset(_stem(t) for t in query_terms(query) if t not in STOP_WORDS)


def term_coverage(stems: frozenset[str], text: str) -> float:
    """The share of the stems found among the text's own words (0 to 1)."""
    if not stems:
        return 0.0
    # each distinct word stemmed once: a 32 KiB memory repeats its words, and recall scores up to 100 hits
    parts = {part for t in set(_TOKEN_RE.findall(text.lower())) for part in t.split("_") if part}
    return len(stems & {_stem(part) for part in parts}) / len(stems)


@dataclass(frozen=True, slots=True)
class RelevanceFit:
    """relevance = 1 / (1 + exp(-(intercept + cosine_weight x cosine + coverage_weight x coverage))), and the
    thresholds that turn a recall's relevances into its `match`."""

    intercept: float
    cosine_weight: float
    coverage_weight: float
    none_below: float
    """No hit reaches it: `match` is "none" (nothing matches well)."""
    good_from: float
    """A hit reaches it: `match` is "good"; between the two, "weak"."""

    def relevance(self, cosine: float, coverage: float) -> float:
        z = self.intercept + self.cosine_weight * cosine + self.coverage_weight * coverage
        return 1.0 / (1.0 + math.exp(-z))

    def level(self, relevance: float) -> MatchLevel:
        return "none" if relevance < self.none_below else "good" if relevance >= self.good_from else "weak"


# Fitted by bench/relevance.py on the LoCoMo dev split: a logistic regression of "this hit is an answer's
# evidence" (answerable questions' gold hits) against "this hit is from a conversation that cannot answer"
# (the questions asked in another conversation's namespace), classes weighted equally; the thresholds leave
# 5% of answerable recalls "none" and 5% of the foreign ones "good". With the model's cosine the two sets
# barely overlap, so the thresholds meet and "weak" does not occur. Cross-validated figures: bench/RESULTS.md.
RELEVANCE_WITH_VECTORS = RelevanceFit(-5.113, 8.301, 6.339, none_below=0.778, good_from=0.778)
"""For a hit with a cosine from the bundled model (all-MiniLM-L6-v2)."""
RELEVANCE_WITHOUT_VECTORS = RelevanceFit(-2.919, 0.0, 8.805, none_below=0.646, good_from=0.815)
"""For a hit without one: a keyword-only recall, a memory not embedded yet, or another embedding model (whose
cosines are on another scale)."""
_LEVELS: tuple[MatchLevel, ...] = ("none", "weak", "good")


def relevance_of(cosine: float | None, coverage: float) -> tuple[float, MatchLevel]:
    """A hit's relevance (0 to 1, comparable across queries) and the match level it alone would give."""
    fit = RELEVANCE_WITHOUT_VECTORS if cosine is None else RELEVANCE_WITH_VECTORS
    value = fit.relevance(0.0 if cosine is None else cosine, coverage)
    return value, fit.level(value)


def best_match(levels: list[MatchLevel]) -> MatchLevel:
    """A recall's match: the best of its hits' levels ("none" for no hits)."""
    return max(levels, key=_LEVELS.index, default="none")
