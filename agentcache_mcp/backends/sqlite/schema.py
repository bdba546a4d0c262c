"""The SQLite schema as numbered migrations, recorded in `schema_migrations`.

Indexes are written by triggers in the same transaction as the row they index, so no index can disagree
with a committed memory; every one of them can be rebuilt from the `memories` table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ...memory.ports import StoreError
from .connection import Connection, Database, sqlite3

log = logging.getLogger(__name__)


_SCHEMA_1 = [
    """
    CREATE TABLE memories (
        pk INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        namespace TEXT NOT NULL,
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        importance REAL NOT NULL DEFAULT 0.5,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_accessed_at REAL,
        access_count INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,
        superseded_by TEXT,
        embedding BLOB,
        embedding_model TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE UNIQUE INDEX memories_namespace_hash ON memories(namespace, content_hash)",
    "CREATE INDEX memories_namespace_created ON memories(namespace, created_at)",
    "CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX memories_embedding_model ON memories(embedding_model)",
    "CREATE INDEX memories_namespace ON memories(namespace)",
    """
    CREATE INDEX memories_maybe_hidden ON memories(namespace)
    WHERE superseded_by IS NOT NULL OR expires_at IS NOT NULL
    """,
    "CREATE VIRTUAL TABLE memories_fts USING fts5(text, context, ns, tokenize='porter unicode61')",
    """
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        pk INTEGER NOT NULL,
        op TEXT NOT NULL,
        namespace TEXT NOT NULL
    )
    """,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text, context, ns) VALUES (
            new.pk,
            new.text,
            coalesce(
                (SELECT text FROM memories WHERE namespace = new.namespace AND pk < new.pk ORDER BY pk DESC LIMIT 1),
                ''
            ),
            'ns' || lower(hex(new.namespace))
        );
    END
    """,
    """
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        DELETE FROM memories_fts WHERE rowid = old.pk;
        INSERT INTO changes(pk, op, namespace) VALUES (old.pk, 'delete', old.namespace);
    END
    """,
    """
    CREATE TRIGGER memories_au_text AFTER UPDATE OF text ON memories BEGIN
        UPDATE memories_fts SET text = new.text WHERE rowid = new.pk;
    END
    """,
    """
    CREATE TRIGGER memories_au_embedding AFTER UPDATE OF embedding, embedding_model ON memories
    WHEN new.embedding IS NOT old.embedding OR new.embedding_model IS NOT old.embedding_model BEGIN
        INSERT INTO changes(pk, op, namespace) VALUES (new.pk, 'embed', new.namespace);
    END
    """,
]

# Migration 2: the promises of the memory core.
# - Row keys are never reused (AUTOINCREMENT; the sequence starts above every key the change log has seen).
# - Vectors live in their own table keyed by (memory, model), so two processes with different models can
#   share a file without re-embedding each other's rows forever.
# - Deleting a memory erases it from every index: its FTS5 row (with FTS5 `secure-delete`, so its tokens
#   leave the index segments at once), its vectors, and the context copy its text left in the FTS5 row of
#   the memory written after it, which is re-indexed with the text of the memory before the deleted one.
# - Deleting a memory revives the memories it superseded.
_SCHEMA_2 = [
    "DROP TRIGGER memories_ai",
    "DROP TRIGGER memories_ad",
    "DROP TRIGGER memories_au_text",
    "DROP TRIGGER memories_au_embedding",
    "DROP TABLE memories_fts",
    """
    CREATE TABLE memories_v2 (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        namespace TEXT NOT NULL,
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        importance REAL NOT NULL DEFAULT 0.5,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_accessed_at REAL,
        access_count INTEGER NOT NULL DEFAULT 0,
        expires_at REAL,
        superseded_by TEXT
    )
    """,
    """
    INSERT INTO memories_v2 (pk, id, namespace, text, content_hash, tags, importance, metadata, created_at,
        updated_at, last_accessed_at, access_count, expires_at, superseded_by)
    SELECT pk, id, namespace, text, content_hash, tags, importance, metadata, created_at, updated_at,
        last_accessed_at, access_count, expires_at, superseded_by FROM memories
    """,
    """
    -- A vector per (memory, model). content_hash says which text it was computed from. A rowid table: a
    -- 1.5 KB vector in a WITHOUT ROWID table's b-tree doubled the database's size (measured at 10k).
    CREATE TABLE embeddings (
        rowid INTEGER PRIMARY KEY,
        memory_pk INTEGER NOT NULL,
        model TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        vector BLOB NOT NULL,
        UNIQUE (memory_pk, model)
    )
    """,
    """
    INSERT INTO embeddings (memory_pk, model, content_hash, vector)
    SELECT pk, embedding_model, content_hash, embedding FROM memories
    WHERE embedding IS NOT NULL AND embedding_model != ''
    """,
    "CREATE INDEX embeddings_model ON embeddings(model, memory_pk)",
    "DROP TABLE memories",
    "ALTER TABLE memories_v2 RENAME TO memories",
    # sqlite_sequence has no unique name: make sure there is exactly one row for memories, then raise it
    # above every key the change log has seen (schema 1 reused the keys of deleted rows).
    """
    INSERT INTO sqlite_sequence(name, seq) SELECT 'memories', 0
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'memories')
    """,
    """
    UPDATE sqlite_sequence SET seq = max(seq, (SELECT coalesce(max(pk), 0) FROM memories),
        (SELECT coalesce(max(pk), 0) FROM changes))
    WHERE name = 'memories'
    """,
    "CREATE UNIQUE INDEX memories_namespace_hash ON memories(namespace, content_hash)",
    "CREATE INDEX memories_namespace_created ON memories(namespace, created_at)",
    "CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX memories_namespace ON memories(namespace)",
    """
    CREATE INDEX memories_maybe_hidden ON memories(namespace)
    WHERE superseded_by IS NOT NULL OR expires_at IS NOT NULL
    """,
    "CREATE INDEX memories_superseded_by ON memories(superseded_by) WHERE superseded_by IS NOT NULL",
    """
    -- A memory is indexed with the memory written just before it in its namespace ("context", weighted
    -- lower at query time): agents write in streams, and the words that make a memory findable are often
    -- in the one before it (LoCoMo keyword recall@10 0.62 -> 0.70, bench/RESULTS.md). `ns` holds one token
    -- naming the namespace ('ns' + hex of its UTF-8), so a search is confined to its namespace inside FTS5.
    CREATE VIRTUAL TABLE memories_fts USING fts5(text, context, ns, tokenize='porter unicode61')
    """,
    "INSERT INTO memories_fts(memories_fts, rank) VALUES ('secure-delete', 1)",
    """
    INSERT INTO memories_fts(rowid, text, context, ns)
    SELECT pk, text, coalesce(lag(text) OVER (PARTITION BY namespace ORDER BY pk), ''),
        'ns' || lower(hex(namespace)) FROM memories
    """,
    """
    CREATE TRIGGER memories_ai AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts(rowid, text, context, ns) VALUES (
            new.pk,
            new.text,
            coalesce(
                (SELECT text FROM memories WHERE namespace = new.namespace AND pk < new.pk ORDER BY pk DESC LIMIT 1),
                ''
            ),
            'ns' || lower(hex(new.namespace))
        );
    END
    """,
    """
    CREATE TRIGGER memories_ad AFTER DELETE ON memories BEGIN
        DELETE FROM memories_fts WHERE rowid = old.pk;
        UPDATE memories_fts SET context = coalesce(
            (SELECT text FROM memories WHERE namespace = old.namespace AND pk < old.pk ORDER BY pk DESC LIMIT 1),
            ''
        )
        WHERE rowid = (SELECT pk FROM memories WHERE namespace = old.namespace AND pk > old.pk ORDER BY pk LIMIT 1);
        DELETE FROM embeddings WHERE memory_pk = old.pk;
        UPDATE memories SET superseded_by = NULL WHERE superseded_by = old.id;
        INSERT INTO changes(pk, op, namespace) VALUES (old.pk, 'delete', old.namespace);
    END
    """,
    """
    CREATE TRIGGER memories_au_text AFTER UPDATE OF text ON memories BEGIN
        UPDATE memories_fts SET text = new.text WHERE rowid = new.pk;
        UPDATE memories_fts SET context = new.text
        WHERE rowid = (SELECT pk FROM memories WHERE namespace = new.namespace AND pk > new.pk ORDER BY pk LIMIT 1);
        DELETE FROM embeddings WHERE memory_pk = new.pk;
        INSERT INTO changes(pk, op, namespace) VALUES (new.pk, 'delete', new.namespace);
    END
    """,
    """
    -- Every process replays this log before it serves a recall, so vectors written or deleted by another
    -- process reach its in-memory index without a restart.
    CREATE TRIGGER embeddings_ai AFTER INSERT ON embeddings BEGIN
        INSERT INTO changes(pk, op, namespace) SELECT new.memory_pk, 'embed', namespace FROM memories
        WHERE pk = new.memory_pk;
    END
    """,
    """
    CREATE TRIGGER embeddings_au AFTER UPDATE ON embeddings BEGIN
        INSERT INTO changes(pk, op, namespace) SELECT new.memory_pk, 'embed', namespace FROM memories
        WHERE pk = new.memory_pk;
    END
    """,
]


# Migration 3: the OAuth state (agentcache_mcp/auth/state.py). Codes and tokens by their SHA-256 hex digest only
# (the CHECKs refuse anything of another length); used codes and consumed refresh tokens stay as tombstones
# (used_at, consumed_at) until they expire, so a replay is recognised. No memory text lives here.
_OAUTH = [
    """
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        metadata TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE oauth_grants (
        grant_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        created_at REAL NOT NULL,
        last_used_at REAL
    )
    """,
    "CREATE INDEX oauth_grants_client ON oauth_grants(client_id)",
    """
    CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY CHECK (length(code_hash) = 64),
        grant_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        redirect_uri_provided_explicitly INTEGER NOT NULL,
        code_challenge TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        expires_at REAL NOT NULL,
        used_at REAL
    )
    """,
    "CREATE INDEX oauth_codes_grant ON oauth_codes(grant_id)",
    "CREATE INDEX oauth_codes_expires ON oauth_codes(expires_at)",
    """
    CREATE TABLE oauth_tokens (
        token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        grant_id TEXT NOT NULL,
        client_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        expires_at REAL,
        consumed_at REAL
    )
    """,
    "CREATE INDEX oauth_tokens_grant ON oauth_tokens(grant_id)",
    "CREATE INDEX oauth_tokens_expires ON oauth_tokens(expires_at) WHERE expires_at IS NOT NULL",
]


def purge_deleted_terms(db: Connection) -> None:
    """After deletes, inside their transaction: rewrite the keyword index so no deleted token survives.

    FTS5 `secure-delete` removes a deleted row's tokens from the leaf pages, but a segment larger than one
    page also keeps a separator term per page (`memories_fts_idx`, the shortest prefix that tells the page
    from the one before), and for near-sequential tokens such as card numbers that is the whole token.
    `optimize` rewrites the index into one segment built from the remaining rows only (and secure_delete
    zeroes the pages it frees). Measured with 100k memories: 0.22 s. Skipped while no segment has more
    than one page (small stores), where there are no separators.
    """
    if db.execute("SELECT 1 FROM memories_fts_idx LIMIT 1").fetchone() is not None:
        db.execute("INSERT INTO memories_fts(memories_fts) VALUES ('optimize')")


def _statements(statements: list[str]) -> Callable[[Connection], None]:
    def apply(db: Connection) -> None:
        # One statement at a time: executescript() would COMMIT the migration transaction half-way.
        for statement in statements:
            db.execute(statement)

    return apply


MIGRATIONS: list[Callable[[Connection], None]] = [_statements(_SCHEMA_1), _statements(_SCHEMA_2), _statements(_OAUTH)]
SCHEMA_VERSION = len(MIGRATIONS)


def _newer_schema_error(path: object, newest: int) -> StoreError:
    return StoreError(
        f"the memory database {path} was written by a newer agentcache-mcp (schema {newest}; this version knows "
        f"up to {SCHEMA_VERSION}). Upgrade agentcache-mcp; the file was not changed."
    )


def refuse_newer_schema(path: Path) -> None:
    """Before the file is opened for writing (which switches it to WAL): refuse a newer schema untouched."""
    if str(path) == ":memory:" or not path.is_file():
        return
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return  # the regular open reports what is wrong
    try:
        newest = db.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
    except sqlite3.Error:
        return  # no schema yet, or not a database: the regular open decides
    finally:
        db.close()
    if newest is not None and newest > SCHEMA_VERSION:
        raise _newer_schema_error(path, newest)


def migrate(database: Database) -> int:
    """Bring the schema up to SCHEMA_VERSION; refuse a database written by a newer version."""
    applied: list[int] = []

    def run(db: Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
        done = {v for (v,) in db.execute("SELECT version FROM schema_migrations")}
        newest = max(done, default=0)
        if newest > SCHEMA_VERSION:
            raise _newer_schema_error(database.path, newest)
        for version, migration in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            migration(db)
            db.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, time.time()))
            applied.append(version)

    database.write(run)
    for version in applied:
        log.info("applied schema migration %d to %s", version, database.path)
    if not applied or str(database.path) == ":memory:":
        return SCHEMA_VERSION
    upgraded = 1 not in applied
    if 2 in applied and upgraded:
        # Pages freed before secure_delete was on (schema 1) may still hold deleted memories' bytes.
        database.execute_outside_transaction("VACUUM")
    database.checkpoint()  # leave the migration's pages in the main file, not in a large WAL
    return SCHEMA_VERSION
