"""The keyword index: a `tsvector` per memory (GIN), written by triggers in the row's transaction.

Each memory's document holds its own words at weight A and the words of the memory written just before it in
its namespace at weight B ("context"), as the SQLite backend's FTS5 row does with its two columns. A search is
confined to its namespace by the query's `namespace = ...` condition, and the words come from the same
`query_terms` as on SQLite; each term is turned into lexemes by `plainto_tsquery('english', ...)` (never
parsed as tsquery syntax) and the terms are OR-ed.

Ranking, normalised to feed the same fusion (which divides each retriever's scores by its best): BM25-like,
summed over the query's terms, score = sum(idf(term) * ts_rank({0, 0, context_weight, 1}, terms, term, 1)),
idf(term) = ln(1 + (N - df + 0.5) / (df + 0.5)) with N and df counted in the namespace (df exactly up to the
row budget, past it estimated from the namespace's newest memories; both kept until the store changed by a
hundredth of the namespace, see _namespace_counts). Deviations from the SQLite path, measured by nothing finer
than the contract suite:
- ts_rank is not BM25's saturation: term frequency enters as ts_rank's log-scaled proximity-free weight,
  and length normalisation is ts_rank's option 1 (1 + log(document length)), not BM25's b / avgdl;
- IDF is counted per namespace (FTS5's is table-wide), so here another namespace's size never shifts weights;
- stemming is PostgreSQL's english snowball (FTS5 uses porter) and its parser splits words that contain
  punctuation (e.g. `foo_bar` -> foo, bar) where unicode61 keeps some together; stop-words are dropped by our
  query_terms first and by the english configuration on both sides.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ...memory.model import MemoryFilter
from .connection import Connection, Database
from .repository import filter_sql

log = logging.getLogger(__name__)

PRUNE_TERMS_FROM_ROWS = 1000
"""Namespaces smaller than this keep every query term (as on SQLite)."""

KEYWORD_ROW_BUDGET = 2_000
"""How many rows (summed over the terms that choose them) the keyword search reads as candidates; see search.
PostgreSQL pays per candidate a heap visit and a ts_rank per term (~1-3 us each, against FTS5's ~0.5 us per
row), so its budget is smaller than SQLite's 20,000; measured in bench/pg_recall.py."""

TOTAL_COUNT_LIMIT = 1_000_000
"""The namespace's size is counted this far (an index-only scan); past it the IDFs barely move (a logarithm)."""

SAMPLE_ROWS = 1_000
"""Terms in more rows than the budget get their share of the namespace from its newest this many memories."""

RECOUNT_SHARE = 100
"""Counts are kept until the namespace may have changed by 1/RECOUNT_SHARE: memories added (a new key each) and
deleted (anywhere in the store), in all."""

COUNT_CACHE_SIZE = 4096
"""Counts kept per namespace (and namespaces kept) before the cache starts afresh."""

_TERM_QUERY = "plainto_tsquery('english', %s)"

Counts = dict[tuple[str, str], int]


def idf(total: int, df: int) -> float:
    """BM25's IDF of a term found in df of total memories."""
    return math.log(1 + (total - df + 0.5) / (df + 0.5))


class TsvectorKeywords:
    def __init__(self, database: Database):
        self.db = database
        self._counts: dict[str, tuple[tuple[object, ...], Counts]] = {}
        """Per namespace: (newest key, erase generation, deletes since the last erase, erases, settings) when its
        counts were taken, and the counts:
        ("total", ""), ("rows", term), ("own", term), ("sampled", ""), ("sample rows", term), ("sample own", term)."""

    def _namespace_counts(self, db: Connection, namespace: str) -> Counts:
        """The namespace's cached counts; taken afresh once the store may have changed by a RECOUNT_SHARE-th
        of the namespace: its newest key rose (keys increase, one per insert or more) plus memories deleted
        anywhere in the store (the DELETE trigger's count since the last erase), by that much in all. Deletes
        are counted as growth is (a forget of one memory among 100k moves no IDF): a recount per delete put
        every concurrent recall's counting in the forgets' way (bench/pg_forget.py). After an erase, or where
        the deletes' count is unknown (a store upgraded with deletes pending), any delete recounts. One round
        trip of index lookups."""
        row = db.execute(
            "SELECT (SELECT max(pk) FROM memories WHERE namespace = %s), "
            "(SELECT value FROM meta WHERE key = 'erase_generation'), "
            "(SELECT value FROM meta WHERE key = 'erase_pending_count'), "
            "(SELECT value FROM meta WHERE key = 'erased_generation')",
            (namespace,),
        ).fetchone()
        newest, generation, pending, erased = (int(row[0] or 0), *row[1:]) if row else (0, None, None, None)
        settings = (KEYWORD_ROW_BUDGET, PRUNE_TERMS_FROM_ROWS, SAMPLE_ROWS, RECOUNT_SHARE)
        cached = self._counts.get(namespace)
        if cached is not None and len(cached[1]) < COUNT_CACHE_SIZE:
            (was_newest, was_generation, was_pending, was_erased, was_settings), counts = cached
            grown = newest - int(was_newest)  # type: ignore[call-overload]
            share = counts.get(("total", ""), 0) // RECOUNT_SHARE
            if was_settings == settings and 0 <= grown <= share:
                if was_generation == generation:
                    return counts
                if erased == was_erased and pending and was_pending:  # '' : the deletes' count is unknown
                    deleted = int(pending) - int(was_pending)  # type: ignore[call-overload]
                    if deleted >= 0 and grown + deleted <= share:
                        return counts
        if len(self._counts) >= COUNT_CACHE_SIZE:
            self._counts.clear()
        counts = {}
        self._counts[namespace] = ((newest, generation, pending, erased, settings), counts)
        return counts

    @staticmethod
    def _total(db: Connection, namespace: str, counts: Counts) -> int:
        """The namespace's memories, counted to TOTAL_COUNT_LIMIT (an index-only scan of (namespace, pk))."""
        key = ("total", "")
        if key not in counts:
            row = db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM memories WHERE namespace = %s LIMIT %s) n",
                (namespace, TOTAL_COUNT_LIMIT),
            ).fetchone()
            counts[key] = int(row[0]) if row else 0
        return counts[key]

    @staticmethod
    def _rows(db: Connection, namespace: str, terms: list[str], counts: Counts) -> dict[str, int]:
        """Per term, the rows it matches (its own words or its context's) counted no further than the budget + 1
        (GIN, then one heap visit per row); the uncounted terms in one statement. A term in no row is not kept
        (counted again at the next search, a GIN lookup that finds nothing): the search leaves such a term out,
        and a memory written with it since (by any replica) must be found."""
        missing = [t for t in dict.fromkeys(terms) if ("rows", t) not in counts]
        absent: set[str] = set()
        if missing:
            for term, n in db.execute(
                "SELECT t, (SELECT count(*) FROM (SELECT 1 FROM memories WHERE namespace = %s AND "
                "terms @@ plainto_tsquery('english', t) LIMIT %s) n) FROM unnest(%s::text[]) AS t",
                (namespace, KEYWORD_ROW_BUDGET + 1, missing),
            ):
                if n:
                    counts[("rows", term)] = int(n)
                else:
                    absent.add(term)
        return {t: 0 if t in absent else counts[("rows", t)] for t in terms}

    @staticmethod
    def _sampled(db: Connection, namespace: str, terms: list[str], counts: Counts) -> None:
        """For terms past the budget: how many of the namespace's newest SAMPLE_ROWS memories hold each (own
        words or context's; own words), in one pass over them."""
        missing = [t for t in dict.fromkeys(terms) if ("sample rows", t) not in counts]
        if not missing:
            return
        rows = db.execute(
            "WITH s AS MATERIALIZED (SELECT terms, ts_filter(terms, '{a}') AS own FROM memories WHERE namespace = %s "
            "ORDER BY pk DESC LIMIT %s) SELECT x.t, count(*) FILTER (WHERE s.terms @@ plainto_tsquery('english', x.t)), "
            "count(*) FILTER (WHERE s.own @@ plainto_tsquery('english', x.t)), (SELECT count(*) FROM s) "
            "FROM s CROSS JOIN unnest(%s::text[]) AS x(t) GROUP BY x.t",
            (namespace, SAMPLE_ROWS, missing),
        ).fetchall()
        for term, any_words, own_words, sampled in rows:
            counts[("sample rows", term)] = int(any_words)
            counts[("sample own", term)] = int(own_words)
            counts[("sampled", "")] = int(sampled)

    def _frequencies(
        self, db: Connection, namespace: str, terms: list[str]
    ) -> tuple[int, dict[str, int], dict[str, int], Counts]:
        """(memories in the namespace, rows each term matches counted to budget + 1, each term's document
        frequency for its IDF: exact up to the budget, past it estimated from the sample; the cached counts)."""
        counts = self._namespace_counts(db, namespace)
        total = self._total(db, namespace, counts)
        rows = self._rows(db, namespace, terms, counts)
        common = [t for t in terms if rows[t] > KEYWORD_ROW_BUDGET]
        df = dict(rows)
        if common:
            self._sampled(db, namespace, common, counts)
            sampled = max(counts.get(("sampled", ""), 0), 1)
            for t in common:
                df[t] = min(total, max(rows[t], round(counts[("sample rows", t)] * total / sampled)))
        return total, rows, df, counts

    def informative_terms(self, namespace: str, terms: list[str]) -> list[str]:
        """Drop terms found in more than half of the namespace's memories by their own text (weight A), unless
        all would go; namespaces under PRUNE_TERMS_FROM_ROWS keep every term (as on SQLite). Their IDF is ~0,
        yet each would be scored on every candidate. The row budget is the search's (below). A term in more rows
        than the budget is judged by its share of the namespace's newest SAMPLE_ROWS memories; the others by
        exact counts. Counts are kept until the store changed by a RECOUNT_SHARE-th of the namespace (most
        queries share their common words)."""
        if not terms:
            return terms

        def q(db: Connection) -> list[str]:
            total, rows, _, counts = self._frequencies(db, namespace, terms)
            if total < PRUNE_TERMS_FROM_ROWS:
                return terms
            kept = []
            for term in terms:
                if rows[term] > KEYWORD_ROW_BUDGET:
                    sampled = max(counts.get(("sampled", ""), 0), 1)
                    if counts[("sample own", term)] * 2 > sampled:
                        continue
                elif rows[term] * 2 > total:
                    # Own words are at most the rows matched: only a term in more than half of the rows needs its
                    # own count, and that only up to half the namespace (ts_filter copies each row's document).
                    key = ("own", term)
                    if key not in counts:
                        found = db.execute(
                            "SELECT count(*) FROM (SELECT 1 FROM memories WHERE namespace = %(ns)s AND terms @@ "
                            "plainto_tsquery('english', %(t)s) AND ts_filter(terms, '{a}') @@ "
                            "plainto_tsquery('english', %(t)s) LIMIT %(n)s) n",
                            {"ns": namespace, "t": term, "n": total // 2 + 1},
                        ).fetchone()
                        counts[key] = int(found[0]) if found else 0
                    if counts[key] * 2 > total:
                        continue
                kept.append(term)
            return kept or terms

        return self.db.query(q)

    def search(
        self, namespace: str, terms: list[str], limit: int, where: MemoryFilter, context_weight: float
    ) -> list[tuple[int, float]]:
        """(key, score) best first, higher is better; context_weight 0 searches the memories' own words only.

        A row budget bounds what is read and ranked: the candidates are the rows of the query's rarest terms,
        taken rarest first while their rows sum to at most KEYWORD_ROW_BUDGET (the rarest term always; if it
        alone is past the budget, its newest budget rows). Every term is still scored on every candidate, so a
        commoner term left out of the candidates still ranks the memories that hold it with a rarer one: on
        bench/scale.py's 10k corpus a budget of 1,000 rows kept 96.5% of the unbudgeted top 10 this way, 65% if
        the commoner terms were left out of the query as SQLite's budget does. What is lost: memories holding
        only commoner terms, which score lowest."""
        if not terms:
            return []
        clause, params = filter_sql(where)
        weights = [0.0, 0.0, float(context_weight), 1.0]  # D, C, B (context), A (own text)

        def run(db: Connection) -> list[tuple[int, float]]:
            total, rows, df, _ = self._frequencies(db, namespace, terms)
            found = [t for t in dict.fromkeys(terms) if rows[t] > 0]  # 0: in no row, or a stop-word (no lexeme)
            if not found:
                return []
            chosen: list[str] = []
            spent = 0
            for term in sorted(found, key=lambda t: rows[t]):
                if chosen and spent + rows[term] > KEYWORD_ROW_BUDGET:
                    break
                chosen.append(term)
                spent += rows[term]
            match = " || ".join([_TERM_QUERY] * len(chosen))
            own_only = f"AND ts_filter(m.terms, '{{a}}') @@ ({match}) " if context_weight == 0 else ""
            candidates = f"SELECT m.pk, m.terms FROM memories m WHERE m.terms @@ ({match}) {own_only}AND {clause}"
            args: list[Any] = [*chosen, *(chosen if own_only else []), *params]
            if spent > KEYWORD_ROW_BUDGET:  # the rarest term alone is past the budget
                candidates += " ORDER BY m.pk DESC LIMIT %s"
                args.append(KEYWORD_ROW_BUDGET)
            # MATERIALIZED: each term's tsquery made once, not once per candidate.
            statement = (
                "WITH p AS MATERIALIZED (SELECT plainto_tsquery('english', t) AS query, i AS idf "
                f"FROM unnest(%s::text[], %s::float8[]) AS x(t, i)), c AS ({candidates}) "
                "SELECT c.pk, (SELECT sum(p.idf * ts_rank(%s::float4[], c.terms, p.query, 1)) FROM p) AS score "
                "FROM c ORDER BY score DESC, c.pk DESC LIMIT %s"
            )
            idfs = [idf(max(total, df[t]), df[t]) for t in found]
            return [
                (int(pk), float(score))
                for pk, score in db.execute(statement, [found, idfs, *args, weights, limit])
                if score is not None and score > 0
            ]

        return self.db.query(run)

    def check(self) -> bool:
        """Every memory's terms are what the triggers would write: its own words and its predecessor's."""

        def q(db: Connection) -> bool:
            row = db.execute(
                "SELECT count(*) FROM (SELECT terms, agentcache_terms(text, lag(text) OVER "
                "(PARTITION BY namespace ORDER BY pk)) AS expected FROM memories) x WHERE terms <> expected"
            ).fetchone()
            return row is not None and row[0] == 0

        return self.db.read(q)

    def rebuild(self) -> None:
        """Recompute every memory's terms from the memories themselves (the source of truth)."""

        def txn(db: Connection) -> None:
            db.execute(
                "UPDATE memories m SET terms = x.expected FROM (SELECT pk, agentcache_terms(text, lag(text) OVER "
                "(PARTITION BY namespace ORDER BY pk)) AS expected FROM memories) x "
                "WHERE m.pk = x.pk AND m.terms <> x.expected"
            )

        self.db.write(txn)
        self._counts.clear()
