"""The keyword index: SQLite FTS5 (`porter unicode61`), written by triggers in the row's transaction.

Each memory's FTS5 row holds its own text, the text of the memory written just before it in its namespace
("context", weighted lower), and one token naming the namespace, so a search is confined to its namespace
inside FTS5 and ranked there before any join.

What stays global: FTS5's BM25 takes its IDF (document counts) and average row length over the whole table,
every namespace together; a namespace's size therefore shifts the weights of terms in another namespace's
ranking (never which memories match). The common-term filter below counts per namespace and by own text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ...memory.model import MemoryFilter
from .connection import Connection, Database, DatabaseError
from .repository import SqliteMemories, filter_sql

log = logging.getLogger(__name__)

PRUNE_TERMS_FROM_ROWS = 1000
"""Namespaces smaller than this keep every query term: there a memory matching only a common word may be the
only keyword match there is."""

KEYWORD_ROW_BUDGET = 20_000
"""How many rows (summed over its terms) an OR query may match before its commoner terms are left out; see
informative_terms. A trade of ranking for speed, measured in bench/RESULTS.md: at 100k memories keyword search
takes ~69 ms with no budget, ~16 ms at 20,000 rows, ~8 ms at 5,000; the BM25 top 10 keeps 91% of its unbudgeted
members at 20,000 but 67% at 5,000, and on LoCoMo (simulated) 5% of a namespace cost 0.057 R@10 where 20% cost
0.011. 20,000 keeps the ranking; 5,000 would buy ~8 ms more."""


def namespace_token(namespace: str) -> str:
    """The single FTS5 token that stands for a namespace (same as the trigger's 'ns' || lower(hex(...)))."""
    return "ns" + namespace.encode("utf-8").hex()


def match_expression(terms: list[str]) -> str | None:
    """Quoted terms OR-ed; the terms come from query_terms (word characters only, so quoting is safe).

    User text never reaches MATCH raw: quoting turns AND/OR/NOT/NEAR, '*', '^', ':' and braces into plain
    words.
    """
    if not terms:
        return None
    return " OR ".join(f'"{t}"' for t in terms)


def bounded_count_sql(db: Connection, select: str, parameter: str, limit: int) -> int:
    """How many rows `select` yields, counting no further than limit."""
    return int(db.execute(f"SELECT count(*) FROM ({select} LIMIT ?)", (parameter, limit)).fetchone()[0])


COUNT_CACHE_SIZE = 4096


class Fts5Keywords:
    def __init__(self, database: Database, memories: SqliteMemories):
        self.db = database
        self.memories = memories
        self._counts: dict[tuple[str, str], int] = {}
        self._stamp: tuple[object, ...] = ()

    def _counted(self, key: tuple[str, str], count: Callable[[], int]) -> int:
        """A count for the term rules, reused until the store changes: counting a common term walks up to
        the budget's rows (at 100k, most of the rules' cost), and between writes the answer is the same."""
        cached = self._counts.get(key)
        if cached is not None:
            return cached
        if len(self._counts) >= COUNT_CACHE_SIZE:
            self._counts.clear()
        n = self._counts[key] = count()
        return n

    def _check_stamp(self, db: Connection) -> None:
        """Drop the cached counts if any memory was written or deleted since they were taken (the newest key
        and the change log's newest entry, which every delete appends to; two index lookups)."""
        newest = db.execute("SELECT (SELECT max(pk) FROM memories), (SELECT max(seq) FROM changes)").fetchone()
        stamp = (*newest, KEYWORD_ROW_BUDGET, PRUNE_TERMS_FROM_ROWS)
        if stamp != self._stamp:
            self._counts.clear()
            self._stamp = stamp

    def informative_terms(self, namespace: str, terms: list[str]) -> list[str]:
        """The terms worth an OR query, in namespaces of PRUNE_TERMS_FROM_ROWS memories or more.

        1. Drop terms found in more than half of the namespace's memories (own text), unless all would go:
           FTS5's BM25 gives them an IDF of ~0, yet they make the OR query match and score most of the
           namespace (at 10k memories the common words of a query matched 63% of rows).
        2. A row budget: take the terms rarest first and stop before one would take the rows the query
           matches past KEYWORD_ROW_BUDGET (the rarest term is always kept). FTS5 computes BM25 for every
           row an OR query matches; at 100k memories a query's common words matched ~50,000 rows
           (keyword search 54 ms); the rare terms, which carry the IDF, match few.
        Counts stop just past the budget (a term past it is never needed exactly), so checking costs at most
        budget rows per term.
        """
        if not terms:
            return terms
        ns = namespace_token(namespace)
        budget = KEYWORD_ROW_BUDGET
        match_rows = "SELECT 1 FROM memories_fts WHERE memories_fts MATCH ?"

        def q(db: Connection) -> list[str]:
            # Bounded too: past 2 x budget every term the half rule would drop is left out by the budget.
            self._check_stamp(db)
            total = self._counted(
                ("", namespace),
                lambda: bounded_count_sql(
                    db,
                    "SELECT 1 FROM memories WHERE namespace = ?",
                    namespace,
                    max(PRUNE_TERMS_FROM_ROWS, 2 * budget + 2),
                ),
            )
            if total < PRUNE_TERMS_FROM_ROWS:
                return terms

            def count(term: str) -> int:
                # The count over every namespace bounds this namespace's and is cheap for a rare term (the
                # count confined to the namespace walks the namespace's token too): only a term that common
                # overall needs the confined count.
                n = bounded_count_sql(db, match_rows, f'text : "{term}"', budget + 1)
                if n > budget or n * 2 > total:
                    n = bounded_count_sql(db, match_rows, f'ns : "{ns}" AND text : "{term}"', budget + 1)
                return n

            counts = {term: self._counted((term, namespace), lambda term=term: count(term)) for term in terms}  # type: ignore[misc]
            kept = [t for t in terms if counts[t] * 2 <= total] or terms
            chosen: set[str] = set()
            rows = 0
            for term in sorted(kept, key=lambda t: counts[t]):
                if chosen and rows + counts[term] > budget:
                    break
                chosen.add(term)
                rows += counts[term]
            return [t for t in terms if t in chosen]

        return self.db.read(q)

    def search(
        self, namespace: str, terms: list[str], limit: int, where: MemoryFilter, context_weight: float
    ) -> list[tuple[int, float]]:
        """FTS5 BM25 within a namespace; (key, score) with higher scores better.

        context_weight is the BM25 column weight of the preceding memory's text (the memory's own is 1); 0
        searches the memory's own words only (plain BM25).
        """
        expression = match_expression(terms)
        if expression is None:
            return []
        scope = f"text : ({expression})" if context_weight == 0 else f"({expression})"
        confined = f'ns : "{namespace_token(namespace)}" AND {scope}'
        weights = (1.0, float(context_weight), 0.0)

        def match(db: Connection) -> str:
            # The namespace token is left out where the namespace holds every memory in the store (one user,
            # one namespace): it matches every row there, and intersecting with it cost FTS5 a third of the
            # search at 100k memories. Same rows, same scores: its column weighs 0 in the BM25. The check and
            # the search run in one read transaction (read_snapshot), so a memory another process writes to
            # another namespace in between cannot be matched.
            return scope if self._only_namespace(db, namespace) else confined

        if not where.narrows_recall:
            # Rank inside FTS5 alone, then drop the rare superseded or expired rows; only if that left the
            # page short while more matches may exist, fall back to filtering every match.
            ranked = self.db.read_snapshot(
                lambda db: db.execute(
                    "SELECT rowid, bm25(memories_fts, ?, ?, ?) AS score FROM memories_fts "
                    "WHERE memories_fts MATCH ? ORDER BY score LIMIT ?",
                    [*weights, match(db), limit],
                ).fetchall()
            )
            live = self.memories.live_keys(namespace, [pk for pk, _ in ranked], where)
            if len(live) == len(ranked) or len(ranked) < limit:
                return [(pk, -score) for pk, score in ranked if pk in live]
        sql, params = filter_sql(where)
        return self.db.read_snapshot(
            lambda db: [
                (pk, -score)
                for pk, score in db.execute(
                    "SELECT m.pk, bm25(memories_fts, ?, ?, ?) AS score FROM memories_fts "
                    f"JOIN memories m ON m.pk = memories_fts.rowid WHERE memories_fts MATCH ? AND {sql} "
                    "ORDER BY score LIMIT ?",
                    [*weights, match(db), *params, limit],
                )
            ]
        )

    @staticmethod
    def _only_namespace(db: Connection, namespace: str) -> bool:
        """No memory of another namespace exists (two seeks on the namespace index)."""
        row = db.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM memories WHERE namespace < ?1) "
            "AND NOT EXISTS (SELECT 1 FROM memories WHERE namespace > ?1)",
            (namespace,),
        ).fetchone()
        return bool(row[0])

    def check(self) -> bool:
        """The index is internally sound and holds exactly the stored memories."""

        def q(db: Connection) -> bool:
            db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('integrity-check')")
            missing = db.execute(
                "SELECT count(*) FROM memories m WHERE NOT EXISTS (SELECT 1 FROM memories_fts f WHERE f.rowid = m.pk)"
            ).fetchone()[0]
            extra = db.execute(
                "SELECT count(*) FROM memories_fts f WHERE NOT EXISTS (SELECT 1 FROM memories m WHERE m.pk = f.rowid)"
            ).fetchone()[0]
            return missing == 0 and extra == 0

        try:
            return self.db.write(q)  # FTS5's integrity-check is an INSERT: the read connection is query-only
        except DatabaseError as exc:
            log.warning("keyword index check failed: %s", exc)
            return False

    def rebuild(self) -> None:
        """Rebuild the keyword index from the memories table (the source of truth)."""

        def txn(db: Connection) -> None:
            db.execute("DELETE FROM memories_fts")
            db.execute(
                "INSERT INTO memories_fts(rowid, text, context, ns) SELECT pk, text, "
                "coalesce(lag(text) OVER (PARTITION BY namespace ORDER BY pk), ''), "
                "'ns' || lower(hex(namespace)) FROM memories"
            )

        self.db.write(txn)
