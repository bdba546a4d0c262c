"""The PostgreSQL schema as numbered migrations, recorded in `schema_migrations`.

Migrations run in one transaction under a transaction-level advisory lock, so N replicas starting at once
apply each migration exactly once (the others wait, then find it recorded). As in the SQLite backend the
keyword terms are written by triggers in the row's transaction; vectors and claims hang off the memory by
foreign keys with ON DELETE CASCADE, so deleting a memory deletes them in the same statement.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time

import psycopg
import psycopg.errors
from psycopg import sql

from ...memory.ports import StoreError, StoreUnavailable
from .connection import Connection, first_line, lock_key

log = logging.getLogger(__name__)

TERMS_INDEX = "memories_terms"
TERMS_INDEX_SQL = f"CREATE INDEX {TERMS_INDEX} ON memories USING gin(terms) WITH (fastupdate = off)"
"""The one definition of the keyword index (schema 1 creates it; a backend's start recreates it if missing)."""

_SCHEMA_1 = [
    """
    CREATE TABLE memories (
        -- An identity column: keys increase and are never reused (a sequence never goes back).
        pk BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        namespace TEXT NOT NULL,
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        tags JSONB NOT NULL DEFAULT '[]',
        importance DOUBLE PRECISION NOT NULL DEFAULT 0.5,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        last_accessed_at DOUBLE PRECISION,
        access_count BIGINT NOT NULL DEFAULT 0,
        expires_at DOUBLE PRECISION,
        superseded_by TEXT,
        -- The keyword index's document: the memory's own words (weight A) and those of the memory written
        -- just before it in its namespace (weight B, "context"), kept by the triggers below.
        terms TSVECTOR NOT NULL DEFAULT ''
    )
    """,
    # ANALYZE would copy sample values (and a tsvector's most common lexemes) into pg_statistic, a catalog a
    # forget never reaches: no statistics on the columns that hold the user's words.
    "ALTER TABLE memories ALTER COLUMN text SET STATISTICS 0, ALTER COLUMN terms SET STATISTICS 0, "
    "ALTER COLUMN tags SET STATISTICS 0, ALTER COLUMN metadata SET STATISTICS 0",
    "CREATE UNIQUE INDEX memories_namespace_hash ON memories(namespace, content_hash)",
    "CREATE INDEX memories_namespace_pk ON memories(namespace, pk)",
    "CREATE INDEX memories_namespace_created ON memories(namespace, created_at)",
    "CREATE INDEX memories_expires ON memories(expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX memories_superseded_by ON memories(superseded_by) WHERE superseded_by IS NOT NULL",
    # fastupdate off: no pending list, so a memory's terms are in the index's tree when its row commits.
    TERMS_INDEX_SQL,
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO meta(key, value) VALUES ('erase_generation', '0'), ('erased_generation', '0')",
    """
    -- One table of vectors per model (vector(dim) sized from the model's output), registered here.
    CREATE TABLE vector_models (
        model TEXT PRIMARY KEY,
        table_name TEXT NOT NULL UNIQUE,
        dim INTEGER NOT NULL
    )
    """,
    """
    -- The shared embedding backlog: a replica claims a batch until claimed_until; one that died with a claim
    -- leaves the rows to the others after that.
    CREATE TABLE embedding_claims (
        memory_pk BIGINT NOT NULL REFERENCES memories(pk) ON DELETE CASCADE,
        model TEXT NOT NULL,
        claimed_until TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (memory_pk, model)
    )
    """,
    """
    CREATE FUNCTION agentcache_terms(own TEXT, context TEXT) RETURNS TSVECTOR
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
        SELECT setweight(to_tsvector('english'::regconfig, own), 'A')
            || setweight(to_tsvector('english'::regconfig, coalesce(context, '')), 'B')
    $$
    """,
    """
    CREATE FUNCTION agentcache_memories_bi() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.terms := agentcache_terms(NEW.text, (
            SELECT p.text FROM memories p WHERE p.namespace = NEW.namespace AND p.pk < NEW.pk
            ORDER BY p.pk DESC LIMIT 1));
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER memories_bi BEFORE INSERT ON memories FOR EACH ROW EXECUTE FUNCTION agentcache_memories_bi()",
    """
    -- After the whole DELETE statement (row triggers fire at its end, seeing every row gone): re-index the
    -- next memory's context with the text of the memory before the deleted one, and revive what it superseded.
    CREATE FUNCTION agentcache_memories_ad() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE memories n SET terms = agentcache_terms(n.text, (
            SELECT p.text FROM memories p WHERE p.namespace = OLD.namespace AND p.pk < OLD.pk
            ORDER BY p.pk DESC LIMIT 1))
        WHERE n.pk = (SELECT x.pk FROM memories x WHERE x.namespace = OLD.namespace AND x.pk > OLD.pk
            ORDER BY x.pk LIMIT 1);
        UPDATE memories SET superseded_by = NULL WHERE superseded_by = OLD.id;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER memories_ad AFTER DELETE ON memories FOR EACH ROW EXECUTE FUNCTION agentcache_memories_ad()",
    """
    -- Every delete statement raises the erase generation: the next erase (checkpoint / maintenance) rewrites
    -- the table so the deleted rows' bytes leave the data files.
    CREATE FUNCTION agentcache_memories_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM gone) THEN
            UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'erase_generation';
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER memories_deleted AFTER DELETE ON memories REFERENCING OLD TABLE AS gone "
    "FOR EACH STATEMENT EXECUTE FUNCTION agentcache_memories_deleted()",
]

_ERASE_STATUS = [
    # What a forget leaves in the files until the erase, for stats: how many memories were deleted since the
    # last erase and when the first of them was (epoch seconds; '' when nothing waits), and the last erase.
    # A store upgraded with an erase pending does not know its count nor since when ('' for both): stats say
    # "unknown" until the erase, and the daily schedule takes it as overdue.
    """
    INSERT INTO meta(key, value) SELECT 'erase_pending_count',
        CASE WHEN g.value::bigint > e.value::bigint THEN '' ELSE '0' END
        FROM meta g, meta e WHERE g.key = 'erase_generation' AND e.key = 'erased_generation'
    """,
    """
    INSERT INTO meta(key, value) VALUES ('erase_pending_since', ''), ('last_erase_at', ''),
        ('last_erase_locked_s', '')
    """,
    """
    CREATE OR REPLACE FUNCTION agentcache_memories_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        deleted BIGINT;
    BEGIN
        SELECT count(*) INTO deleted FROM gone;
        IF deleted > 0 THEN
            UPDATE meta SET value = CASE key
                WHEN 'erase_generation' THEN (value::bigint + 1)::text
                WHEN 'erase_pending_count' THEN CASE WHEN value = '' THEN '' ELSE (value::bigint + deleted)::text END
                ELSE CASE WHEN (SELECT c.value FROM meta c WHERE c.key = 'erase_pending_count') = '' THEN value
                    ELSE coalesce(nullif(value, ''), extract(epoch FROM now())::text) END END
            WHERE key IN ('erase_generation', 'erase_pending_count', 'erase_pending_since');
        END IF;
        RETURN NULL;
    END $$
    """,
]

_REMEMBER_IN_ONE_STATEMENT = [
    """
    -- remember's common case (new text, nothing superseded) as one statement, so one round trip whose
    -- transaction is the statement's own: take the namespace's write lock (its key computed by the caller),
    -- then, seeing what committed before the lock was granted, return the memory that already has this text
    -- (the caller merges into it in a second call) or insert the new one and return it.
    CREATE FUNCTION agentcache_remember(
        namespace_lock BIGINT, new_id TEXT, new_namespace TEXT, new_text TEXT, new_hash TEXT, new_tags JSONB,
        new_importance DOUBLE PRECISION, new_metadata TEXT, new_created_at DOUBLE PRECISION,
        new_expires_at DOUBLE PRECISION
    ) RETURNS SETOF memories LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(namespace_lock);
        RETURN QUERY SELECT * FROM memories m WHERE m.namespace = new_namespace AND m.content_hash = new_hash;
        IF NOT FOUND THEN
            RETURN QUERY INSERT INTO memories AS m (id, namespace, text, content_hash, tags, importance, metadata,
                created_at, updated_at, expires_at)
            VALUES (new_id, new_namespace, new_text, new_hash, new_tags, new_importance, new_metadata,
                new_created_at, new_created_at, new_expires_at)
            RETURNING m.*;
        END IF;
    END $$
    """,
]

_OAUTH = [
    # The OAuth state (agentcache_mcp/auth/state.py). Codes and tokens by their SHA-256 hex digest only (the
    # CHECKs refuse anything of another length); used codes and consumed refresh tokens stay as tombstones
    # (used_at, consumed_at) until they expire, so a replay is recognised. The foreign keys make a code or token
    # of a grant being revoked fail (or go with it), however the transactions interleave. No memory text here.
    """
    CREATE TABLE oauth_clients (
        client_id TEXT PRIMARY KEY,
        metadata TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
    """
    CREATE TABLE oauth_grants (
        grant_id TEXT PRIMARY KEY,
        client_id TEXT NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
        scopes TEXT NOT NULL,
        resource TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        last_used_at DOUBLE PRECISION
    )
    """,
    "CREATE INDEX oauth_grants_client ON oauth_grants(client_id)",
    """
    CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY CHECK (length(code_hash) = 64),
        grant_id TEXT NOT NULL REFERENCES oauth_grants(grant_id) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        redirect_uri TEXT NOT NULL,
        redirect_uri_provided_explicitly BOOLEAN NOT NULL,
        code_challenge TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    )
    """,
    "CREATE INDEX oauth_codes_grant ON oauth_codes(grant_id)",
    "CREATE INDEX oauth_codes_expires ON oauth_codes(expires_at)",
    """
    CREATE TABLE oauth_tokens (
        token_hash TEXT PRIMARY KEY CHECK (length(token_hash) = 64),
        kind TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
        grant_id TEXT NOT NULL REFERENCES oauth_grants(grant_id) ON DELETE CASCADE,
        client_id TEXT NOT NULL,
        scopes TEXT NOT NULL,
        resource TEXT,
        expires_at DOUBLE PRECISION,
        consumed_at DOUBLE PRECISION
    )
    """,
    "CREATE INDEX oauth_tokens_grant ON oauth_tokens(grant_id)",
    "CREATE INDEX oauth_tokens_expires ON oauth_tokens(expires_at) WHERE expires_at IS NOT NULL",
]

_VECTOR_CHANGES = [
    # The vector tables' change log, which a replica that keeps the vectors in memory (backends/postgres/
    # matrix.py) reads before a search. Written by statement triggers in the writing transaction: a row per
    # vector inserted, updated or deleted (a memory's delete cascades to its vector), with the writing
    # transaction's id. A reader remembers the snapshot it last read in and next reads the rows of the
    # transactions that snapshot did not see: sequence order is not commit order, transaction visibility is.
    # Only keys: no text, no vector.
    """
    CREATE TABLE vector_changes (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        xid XID8 NOT NULL DEFAULT pg_current_xact_id(),
        table_name TEXT NOT NULL,
        memory_pk BIGINT NOT NULL
    )
    """,
    "CREATE INDEX vector_changes_xid ON vector_changes(xid)",
    # Every row of a transaction older than this was pruned: a reader whose last snapshot's xmin is below it
    # may have missed some, and loads the vectors again.
    "INSERT INTO meta(key, value) VALUES ('vector_changes_pruned_below', '0')",
    """
    CREATE FUNCTION agentcache_vectors_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO vector_changes(table_name, memory_pk) SELECT TG_TABLE_NAME, c.memory_pk FROM changed c;
        RETURN NULL;
    END $$
    """,
    """
    -- The log's triggers on one vector table (a transition table can serve one event only: three triggers);
    -- those it has already are left alone, so every start can run it for every table (a replica of an earlier
    -- version may have created a table without them).
    CREATE FUNCTION agentcache_log_vector_changes(vector_table TEXT) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        event TEXT;
    BEGIN
        FOREACH event IN ARRAY ARRAY['INSERT', 'UPDATE', 'DELETE'] LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = quote_ident(vector_table)::regclass
                AND tgname = vector_table || '_' || lower(event));
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s TABLE AS changed '
                'FOR EACH STATEMENT EXECUTE FUNCTION agentcache_vectors_changed()',
                vector_table || '_' || lower(event), event, vector_table,
                CASE WHEN event = 'DELETE' THEN 'OLD' ELSE 'NEW' END);
        END LOOP;
    END $$
    """,
    "SELECT agentcache_log_vector_changes(table_name) FROM vector_models",
]

MIGRATIONS: list[list[str]] = [_SCHEMA_1, _ERASE_STATUS, _REMEMBER_IN_ONE_STATEMENT, _OAUTH, _VECTOR_CHANGES]
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = "'schema'"
LOG_TRIGGERS_LOCK_TIMEOUT = "2s"
"""How long a start waits for a vector table's lock to add the change log's triggers (migrate)."""


PGVECTOR_MINIMUM = (0, 8)
"""Iterative index scans (hnsw.iterative_scan), which a filtered search in a large table needs, came in 0.8."""


def check_pgvector_version(installed: str, location: str) -> None:
    """StoreUnavailable naming the fix if the database's pgvector is older than PGVECTOR_MINIMUM: found at
    start rather than as a failed recall once a namespace outgrows exact search."""
    parts = []
    for part in installed.split("."):
        digits = re.match(r"\d+", part)  # the leading digits only: "7rc1" is 7
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(part):  # a suffix ends the version: "0.7rc1.5" is 0.7
            break
    if tuple(parts) >= PGVECTOR_MINIMUM:
        return
    need = ".".join(map(str, PGVECTOR_MINIMUM))
    raise StoreUnavailable(
        f"the PostgreSQL database {location} has pgvector {installed}; agentcache-mcp needs {need} or newer "
        f"(iterative index scans). Install pgvector {need}+ on the server, then run ALTER EXTENSION vector UPDATE "
        "in this database"
    )


def migrate(conn: Connection, location: str) -> int:
    """Create the extension and bring the schema up to SCHEMA_VERSION, under an advisory lock; refuse a
    database written by a newer version. StoreUnavailable if pgvector is not installed on the server."""
    with conn.transaction():
        conn.execute(f"SELECT pg_advisory_xact_lock({lock_key(MIGRATION_LOCK)})")
        try:
            with conn.transaction():
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"the PostgreSQL database {location} cannot use pgvector: CREATE EXTENSION IF NOT EXISTS vector "
                f"failed ({first_line(exc)}). Install pgvector on the server (0.8 or newer), or have its owner run "
                "CREATE EXTENSION vector in this database"
            ) from None
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        check_pgvector_version(str(row[0]) if row else "(none)", location)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION)"
        )
        done = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
        newest = max(done, default=0)
        if newest > SCHEMA_VERSION:
            raise StoreError(
                f"the memory database {location} was written by a newer agentcache-mcp (schema {newest}; this "
                f"version knows up to {SCHEMA_VERSION}). Upgrade agentcache-mcp; the database was not changed."
            )
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version in done:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (%s, %s)", (version, time.time()))
            log.info("applied schema migration %d to %s", version, location)
        # A replica of a version before the change log that created a vector table (a new model's) created it
        # without the log's triggers: add them (a replica searching in memory would miss its changes).
        # Each CREATE TRIGGER takes the table's SHARE ROW EXCLUSIVE lock, here under the migration lock: not
        # waited for longer than a moment (a bulk import's index build may hold the table for minutes, and every
        # replica's start and every new model's table would wait behind this one), nor required (a user who may
        # not create triggers): without the log a replica searches the index (matrix.py), a later start adds it.
        if conn.execute("SELECT to_regprocedure('agentcache_log_vector_changes(text)') IS NOT NULL").fetchone() == (True,):
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = '{LOG_TRIGGERS_LOCK_TIMEOUT}'")
                    conn.execute("SELECT agentcache_log_vector_changes(table_name) FROM vector_models")
                    conn.execute("SET LOCAL lock_timeout = DEFAULT")
            except (
                psycopg.errors.LockNotAvailable,
                psycopg.errors.DeadlockDetected,
                psycopg.errors.InsufficientPrivilege,
            ) as exc:
                log.warning(
                    "could not add the vector change log's triggers to a vector table of %s (%s): replicas search "
                    "its HNSW index; a later start tries again",
                    location,
                    first_line(exc),
                )
    return SCHEMA_VERSION


HNSW_M = 24
"""Graph links per node (pgvector's default is 16). With 16 links and ef_construction 64 the search as served
found 0.9605 of the exact top 10 at 1M clustered vectors at pgvector's largest ef_search (1,000); with 24 and 128,
0.9865 (0.9815 at ef_search 700), for 1.9x the build time (bench/RESULTS.md, issue 20). An index built with
other parameters keeps them until it is rebuilt (README: Team deployment)."""
HNSW_EF_CONSTRUCTION = 128
"""Candidates kept while inserting a node (pgvector's default is 64)."""


def hnsw_index_sql(table: str, *, m: int = HNSW_M, ef_construction: int = HNSW_EF_CONSTRUCTION) -> sql.Composed:
    """The one definition of a vector table's HNSW cosine index (`<table>_hnsw`): every creation and rebuild
    (a bulk import that builds it after loading, a migration that changes its parameters) runs this."""
    return sql.SQL("CREATE INDEX {} ON {} USING hnsw (vector vector_cosine_ops) WITH (m = {}, ef_construction = {})").format(
        sql.Identifier(table + "_hnsw"), sql.Identifier(table), sql.Literal(m), sql.Literal(ef_construction)
    )


def vector_table_name(model_id: str) -> str:
    """The table of one model's vectors: a name derived from the model id alone, so every replica agrees."""
    return "vectors_" + hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:16]


def ensure_vector_table(conn: Connection, model_id: str, dim: int, *, with_index: bool = True) -> str:
    """Create the model's vector table (vector(dim), HNSW cosine index) if it is not there yet; inside the
    caller's transaction, under the schema lock so two replicas' first writes do not race. with_index False (a
    bulk load, which builds the index once it has loaded): the table without its HNSW index."""
    table = vector_table_name(model_id)
    row = conn.execute("SELECT dim FROM vector_models WHERE model = %s", (model_id,)).fetchone()
    if row is not None:
        if row[0] != dim:
            raise StoreError(f"model {model_id!r} made {dim}-dimensional vectors; the store holds {row[0]} for it")
        return table
    conn.execute(f"SELECT pg_advisory_xact_lock({lock_key(MIGRATION_LOCK)})")
    if conn.execute("SELECT 1 FROM vector_models WHERE model = %s", (model_id,)).fetchone() is None:
        name = sql.Identifier(table)
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (memory_pk BIGINT PRIMARY KEY REFERENCES memories(pk) ON DELETE CASCADE, "
                "namespace TEXT NOT NULL, content_hash TEXT NOT NULL, vector vector({}) NOT NULL)"
            ).format(name, sql.Literal(dim))
        )
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (namespace)").format(sql.Identifier(table + "_ns"), name))
        if with_index:
            conn.execute(hnsw_index_sql(table))
        conn.execute("SELECT agentcache_log_vector_changes(%s::text)", (table,))
        conn.execute("INSERT INTO vector_models(model, table_name, dim) VALUES (%s, %s, %s)", (model_id, table, dim))
    return table


def vector_tables(conn: Connection) -> list[str]:
    """Every registered model's vector table."""
    return [str(name) for (name,) in conn.execute("SELECT table_name FROM vector_models ORDER BY table_name")]


def missing_indexes(conn: Connection) -> list[tuple[str, sql.SQL | sql.Composed]]:
    """(name, CREATE INDEX) of the derived indexes that are not there (or left invalid): the keyword index and
    each vector table's HNSW index. A bulk load drops an HNSW index and builds it at its end; one killed
    meanwhile leaves it out."""
    # The keyword index CONCURRENTLY: a plain build would hold up every replica's remember (and a recall's
    # access stats) until it ends; the HNSW index plainly: it holds up only the vector table's writes (the
    # background embedding writer), and builds in about half the time.
    concurrently = TERMS_INDEX_SQL.replace("CREATE INDEX ", "CREATE INDEX CONCURRENTLY ", 1)
    wanted: list[tuple[str, sql.SQL | sql.Composed]] = [(TERMS_INDEX, sql.SQL(concurrently))]
    wanted += [(table + "_hnsw", hnsw_index_sql(table)) for table in vector_tables(conn)]
    present = {
        str(name)
        for (name,) in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
            "WHERE c.relname = ANY(%s) AND c.relnamespace = current_schema()::regnamespace AND i.indisvalid",
            ([name for name, _ in wanted],),
        )
    }
    return [(name, statement) for name, statement in wanted if name not in present]


def build_missing_indexes(conn: Connection, location: str, why: str, *, level: int = logging.WARNING) -> list[str]:
    """Create every index missing_indexes finds, then ANALYZE; on an autocommit connection, each build its own
    transaction. Reads go on meanwhile (exact scans where the index is missing). An invalid leftover of the same
    name (a CONCURRENTLY build that was stopped) is dropped first. Returns the names built."""
    built = []
    for name, statement in missing_indexes(conn):
        log.log(level, "building the missing index %s in %s (%s); searches use exact scans until it is built", name, location, why)
        started = time.monotonic()
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(statement)
        built.append(name)
        log.info("built index %s in %s in %.1f s", name, location, time.monotonic() - started)
    if built:
        conn.execute("ANALYZE memories")
        for table in vector_tables(conn):
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return built
