"""What `agentcache-mcp hook session-start` prints: a project's most useful memories, read straight from the store.

Claude Code adds a SessionStart hook's stdout (exit 0) to the model's context (hooks reference,
https://code.claude.com/docs/en/hooks#sessionstart; the stdin JSON carries session_id, transcript_path, cwd,
hook_event_name and source: startup, resume, clear or compact). So the output is small and bounded
(DEFAULT_MAX_CHARS), and the hook must be fast: it reads the stored rows and never loads or waits for the
embedding model (there is no query to embed: the ranking needs none).

Ranking, per memory (transparent on purpose: a user can predict what is shown):

    score = 0.5 * importance                              (0..1, as remembered)
          + 0.3 * 0.5 ** (days since updated / 60)        (recency: half after 60 days)
          + 0.2 * recalls / (recalls + 3)                 (recalled often: half at 3 recalls)

Ties: higher importance, then more recently updated, then the id. Only live memories count (the store's
rule: not expired, not superseded by a live memory); forgotten ones are deleted rows. The injection is not a
recall: it reads only, and never adds to a memory's access count (a memory shown at every session start
would otherwise count as recalled at every start, and stay on top because it was shown).

SQLite is opened read-only (`mode=ro`: a missing store is never created; SQLite may create the empty -wal and
-shm companions of a WAL database, as any reader does). PostgreSQL is read in a read-only transaction with a
short connect and statement timeout.
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .location import StoreLocation

DEFAULT_MAX_CHARS = 2000
"""The whole block's size bound (tags included): about 500 tokens at every session start."""
MIN_MAX_CHARS = 400
"""Room for the tags, the namespace line and a memory or two."""
MAX_LINE_CHARS = 300
"""One memory's line at most: a long memory is cut, so it cannot take the whole budget."""
MAX_LINES = 50

WEIGHT_IMPORTANCE = 0.5
WEIGHT_RECENCY = 0.3
WEIGHT_RECALLED = 0.2
RECENCY_HALF_LIFE_DAYS = 60.0
RECALLS_FOR_HALF = 3.0
DAY = 86400.0

SQLITE_BUSY_TIMEOUT_S = 0.2
"""A WAL reader waits only while another process recovers the WAL: never long."""
PG_CONNECT_TIMEOUT_S = 2
PG_STATEMENT_TIMEOUT_MS = 2000

TAG = "agentcache-memory"
_TAG_IN_TEXT = re.compile(rf"<(/?\s*){TAG}", re.IGNORECASE)
_BLANKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")

# The store's liveness rule (backends/sql.py, MemoryFilter.live_at; not imported: it pulls in numpy): not
# expired, and not superseded by a memory that is still there and unexpired. `{p}` is the driver's mark.
_CANDIDATES = (
    "SELECT pk, id, importance, updated_at, access_count FROM memories m WHERE namespace = {p} "
    "AND (m.expires_at IS NULL OR m.expires_at > {p}) AND (m.superseded_by IS NULL OR NOT coalesce(("
    "SELECT s.expires_at IS NULL OR s.expires_at > {p} FROM memories s WHERE s.id = m.superseded_by), FALSE))"
)


@dataclass(frozen=True)
class Candidate:
    key: int
    id: str
    importance: float
    updated_at: float
    access_count: int


@dataclass(frozen=True)
class Shown:
    """A memory chosen for the block."""

    id: str
    text: str
    created_at: float
    score: float


def score(importance: float, updated_at: float, access_count: int, now: float) -> float:
    """The ranking of the module docstring."""
    age_days = max(0.0, now - updated_at) / DAY
    recalls = max(0, access_count)
    return (
        WEIGHT_IMPORTANCE * importance
        + WEIGHT_RECENCY * 0.5 ** (age_days / RECENCY_HALF_LIFE_DAYS)
        + WEIGHT_RECALLED * recalls / (recalls + RECALLS_FOR_HALF)
    )


def best(candidates: Iterable[Candidate], now: float, limit: int) -> list[tuple[float, Candidate]]:
    """The `limit` best candidates, best first, in a deterministic order."""

    def key(c: Candidate) -> tuple[float, float, float, str]:
        return (-score(c.importance, c.updated_at, c.access_count, now), -c.importance, -c.updated_at, c.id)

    chosen = heapq.nsmallest(limit, candidates, key=key)
    return [(-key(c)[0], c) for c in chosen]


def read_memories(location: StoreLocation, namespace: str, now: float, limit: int = MAX_LINES) -> list[Shown]:
    """The namespace's `limit` best live memories, best first; [] if the SQLite store does not exist."""
    if location.url is not None:
        return _read_postgres(location.url, namespace, now, limit)
    assert location.path is not None
    return _read_sqlite(location.path, namespace, now, limit)


def _read_sqlite(path: Path, namespace: str, now: float, limit: int) -> list[Shown]:
    if not path.is_file():
        return []  # no store yet: nothing to show, and nothing is created
    import sqlean as sqlite3  # type: ignore[import-untyped]  # the product's SQLite (3.50); 4 ms to import

    uri = "file:" + quote(str(path)) + "?mode=ro"
    db = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None)
    try:
        db.execute("PRAGMA query_only = ON")
        db.execute("BEGIN")  # one snapshot for both queries
        rows = db.execute(_CANDIDATES.format(p="?"), (namespace, now, now)).fetchall()
        chosen = best((Candidate(*row) for row in rows), now, limit)
        if not chosen:
            return []
        keys = [c.key for _, c in chosen]
        marks = ",".join("?" * len(keys))
        texts = {k: (t, c) for k, t, c in db.execute(f"SELECT pk, text, created_at FROM memories WHERE pk IN ({marks})", keys)}
        db.execute("COMMIT")
    finally:
        db.close()
    return _shown(chosen, texts)


def _read_postgres(url: str, namespace: str, now: float, limit: int) -> list[Shown]:
    import psycopg  # only for a PostgreSQL store (~100 ms to import)

    with psycopg.connect(url, connect_timeout=PG_CONNECT_TIMEOUT_S) as db:
        db.read_only = True
        with db.transaction():
            db.execute(f"SET LOCAL statement_timeout = {PG_STATEMENT_TIMEOUT_MS}")
            rows = db.execute(_CANDIDATES.format(p="%s"), (namespace, now, now)).fetchall()
            chosen = best((Candidate(*row) for row in rows), now, limit)
            if not chosen:
                return []
            keys = [c.key for _, c in chosen]
            texts: dict[int, tuple[str, float]] = {
                k: (t, c)
                for k, t, c in db.execute("SELECT pk, text, created_at FROM memories WHERE pk = ANY(%s)", (keys,))
            }
    return _shown(chosen, texts)


def _shown(chosen: Sequence[tuple[float, Candidate]], texts: dict[Any, tuple[str, float]]) -> list[Shown]:
    return [Shown(c.id, texts[c.key][0], texts[c.key][1], s) for s, c in chosen if c.key in texts]


def render(namespace: str, memories: Sequence[Shown], max_chars: int = DEFAULT_MAX_CHARS) -> str:
    """The block: an opening tag naming the namespace, one line saying which namespace to pass to the tools,
    one line per memory (best first, as many as fit, the last one cut to fit), the closing tag. "" if no
    memory fits."""
    head = (
        f'<{TAG} namespace="{namespace}">\n'
        f'Project memories from agentcache, most useful first; pass namespace="{namespace}" to recall and remember.\n'
    )
    tail = f"</{TAG}>\n"
    room = max_chars - len(head) - len(tail)
    lines: list[str] = []
    for memory in memories[:MAX_LINES]:
        date = time.strftime("%Y-%m-%d", time.gmtime(memory.created_at))
        line = _fit(f"- [{date}] {_one_line(memory.text)}", min(MAX_LINE_CHARS, room - 1))
        if line is None:
            break
        lines.append(line + "\n")
        room -= len(line) + 1
    if not lines:
        return ""
    return head + "".join(lines) + tail


def _one_line(text: str) -> str:
    """The text on one line, and unable to open or close the block (`<agentcache-memory` loses its '<')."""
    return _TAG_IN_TEXT.sub(lambda m: "‹" + m.group(1) + TAG, _BLANKS.sub(" ", text).strip())


MIN_CUT_LINE = 60
"""A memory cut shorter than this is left out rather than shown as a stub."""


def _fit(line: str, room: int) -> str | None:
    if len(line) <= room:
        return line
    if room < MIN_CUT_LINE:
        return None
    return line[: room - 1].rstrip() + "…"
