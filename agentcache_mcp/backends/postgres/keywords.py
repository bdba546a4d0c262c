"""The keyword index: a `tsvector` per memory (GIN), written by triggers in the row's transaction.

Each memory's document holds its own words at weight A and the words of the memory written just before it in
its namespace at weight B ("context"), as the SQLite backend's FTS5 row does with its two columns. A search is
confined to its namespace by the query's `namespace = ...` condition, and the words come from the same
`query_terms` as on SQLite; each term is turned into lexemes by `plainto_tsquery('english', ...)` (never
parsed as tsquery syntax) and the terms are OR-ed.

Ranking, normalised to feed the same fusion (which divides each retriever's scores by its best): BM25-like,
summed over the query's terms, score = sum(idf(term) * ts_rank({0, 0, context_weight, 1}, terms, term, 1)),
idf(term) = ln(1 + (N - df + 0.5) / (df + 0.5)) with N and df counted in the namespace. Deviations from the
SQLite path, measured by nothing finer than the contract suite:
- ts_rank is not BM25's saturation: term frequency enters as ts_rank's log-scaled proximity-free weight,
  and length normalisation is ts_rank's option 1 (1 + log(document length)), not BM25's b / avgdl;
- IDF is counted per namespace (FTS5's is table-wide), so here another namespace's size never shifts weights;
- stemming is PostgreSQL's english snowball (FTS5 uses porter) and its parser splits words that contain
  punctuation (e.g. `foo_bar` -> foo, bar) where unicode61 keeps some together; stop-words are dropped by our
  query_terms first and by the english configuration on both sides.
"""

from __future__ import annotations

import logging
from typing import Any

from ...memory.model import MemoryFilter
from .connection import Connection, Database
from .repository import filter_sql

log = logging.getLogger(__name__)

PRUNE_TERMS_FROM_ROWS = 1000
"""Namespaces smaller than this keep every query term (as on SQLite)."""


def _term_query(count: int) -> str:
    return " || ".join(["plainto_tsquery('english', %s)"] * count)


class TsvectorKeywords:
    def __init__(self, database: Database):
        self.db = database

    def informative_terms(self, namespace: str, terms: list[str]) -> list[str]:
        """Drop terms found in more than half of the namespace's memories by their own text (weight A), unless
        all would go; namespaces under PRUNE_TERMS_FROM_ROWS keep every term."""
        if not terms:
            return terms

        def q(db: Connection) -> list[str]:
            row = db.execute("SELECT count(*) FROM memories WHERE namespace = %s", (namespace,)).fetchone()
            total = int(row[0]) if row else 0
            if total < PRUNE_TERMS_FROM_ROWS:
                return terms
            kept = []
            for term in terms:
                # ts_filter keeps the weight-A lexemes: the memory's own words, not its context's.
                found = db.execute(
                    "SELECT count(*) FROM memories WHERE namespace = %(ns)s AND terms @@ plainto_tsquery('english', "
                    "%(t)s) AND ts_filter(terms, '{a}') @@ plainto_tsquery('english', %(t)s)",
                    {"ns": namespace, "t": term},
                ).fetchone()
                if found is not None and found[0] * 2 > total:
                    continue
                kept.append(term)
            return kept or terms

        return self.db.read(q)

    def search(
        self, namespace: str, terms: list[str], limit: int, where: MemoryFilter, context_weight: float
    ) -> list[tuple[int, float]]:
        """(key, score) best first, higher is better; context_weight 0 searches the memories' own words only."""
        if not terms:
            return []
        clause, params = filter_sql(where)
        weights = [0.0, 0.0, float(context_weight), 1.0]  # D, C, B (context), A (own text)
        own_only = "AND ts_filter(m.terms, '{a}') @@ q.query" if context_weight == 0 else ""
        # Per term: its lexemes and its idf in the namespace. The count uses the GIN index. MATERIALIZED: used once,
        # inside the per-row score subquery, the CTE would be inlined and every count re-run for every matching row.
        per_term = (
            "SELECT t.query, ln(1 + (n.total - t.df + 0.5) / (t.df + 0.5)) AS idf FROM ("
            "SELECT plainto_tsquery('english', term) AS query, (SELECT count(*) FROM memories d WHERE "
            "d.namespace = %s AND d.terms @@ plainto_tsquery('english', term)) AS df FROM unnest(%s::text[]) AS term"
            ") t, (SELECT count(*)::float8 AS total FROM memories WHERE namespace = %s) n WHERE t.query <> ''::tsquery"
        )
        statement = (
            f"WITH per_term AS MATERIALIZED ({per_term}), "
            "q AS (SELECT " + _term_query(len(terms)) + " AS query) "
            "SELECT m.pk, (SELECT sum(p.idf * ts_rank(%s::float4[], m.terms, p.query, 1)) FROM per_term p) AS score "
            f"FROM memories m, q WHERE m.terms @@ q.query {own_only} AND {clause} "
            "ORDER BY score DESC, m.pk DESC LIMIT %s"
        )
        args: list[Any] = [namespace, list(terms), namespace, *terms, weights, *params, limit]

        def run(db: Connection) -> list[tuple[int, float]]:
            return [
                (int(pk), float(score)) for pk, score in db.execute(statement, args) if score is not None and score > 0
            ]

        return self.db.read(run)

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
