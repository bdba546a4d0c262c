"""A psycopg 3 connection pool over one PostgreSQL database: transactions, retries, errors a person can act on.

Every replica has its own pool (AGENTCACHE_PG_POOL_SIZE connections at most). A write is one transaction,
retried as a whole when PostgreSQL aborts it for a deadlock or a serialization failure. Durability is the
server's: a commit returns after the WAL is flushed (synchronous_commit=on, the default), so an acknowledged
memory survives a crash of the server or of any replica.

No call waits without bound. Every session runs with `statement_timeout` (STATEMENT_TIMEOUT) and `lock_timeout`
(LOCK_TIMEOUT), so a statement stuck behind another session's lock, or running away, is cancelled by the server;
a call waits at most POOL_WAIT_S for a connection (the server down, or every connection busy). Those end with
StoreBusy, nothing written. A frozen server (or a network that drops packets) enforces nothing: a statement sent
to it waits until the server answers, so the server's shutdown abandons such a call (workers.App.run) rather
than wait for it; `give_up_waits` ends the waits for a connection at once.

A restart of the server closes every pooled connection. The first call to meet one drops the pool's other
closed ones and runs once more on a new connection (its transaction had not committed: the commit was never
sent); calls while the server is down end with StoreBusy or StoreError, nothing written; the pool tries to
reconnect every few seconds (RECONNECT_S), so a replica answers again within seconds of the server's return.

Behind a connection pooler (PgBouncer, detected at start: see `behind_a_pooler`) a session's state is not ours:
in transaction mode the pooler hands the server connection to another client after each transaction. So the
timeouts are set in each transaction (TRANSACTION_TIMEOUTS) rather than as startup options (which PgBouncer
refuses), psycopg does not prepare statements (PgBouncer < 1.21 cannot carry them), and `exclusive` holds a
transaction-level advisory lock in a transaction kept open for the block. `session()` (autocommit, for VACUUM)
is the exception: through a transaction-mode pooler its statements may each run on another server connection.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from ...config import mask_secrets, mask_url
from ...memory.ports import StoreBusy, StoreError, StoreFullError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple]

CONNECT_TIMEOUT_S = 5
RETRIES = 5
STATEMENT_TIMEOUT = "60s"
"""The longest any statement of a call may run (the erase's VACUUM FULL is exempt)."""
LOCK_TIMEOUT = "10s"
"""The longest a statement waits for a lock another session holds (another replica's erase, a person's LOCK)."""
TRANSACTION_TIMEOUTS = (
    f"SELECT set_config('statement_timeout', '{STATEMENT_TIMEOUT}', true), "
    f"set_config('lock_timeout', '{LOCK_TIMEOUT}', true)"
)
"""The timeouts as settings of one transaction: behind a pooler, where a session's settings are not ours."""
POOL_WAIT_S = 10.0
"""The longest a call waits for a pooled connection: the server is down, or every connection is busy."""
RECONNECT_S = 5.0
"""How long the pool keeps trying to open one connection (1 s, 2 s apart...) before it drops the try; a call
waiting for a connection starts a new one. psycopg_pool's default, 5 min, doubles the pause up to minutes: after
an outage of a minute a replica would wait another half minute for the server that is back."""
POOL_SLICE_S = 0.25
"""A wait for a connection looks this often whether the server is stopping."""
_RETRYABLE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


def lock_key(name: str) -> str:
    """The SQL for an advisory-lock key named `name` (a parameter): one 64-bit hash per name."""
    return "hashtextextended('agentcache:' || " + name + ", 0)"


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def connect(url: str) -> Connection:
    """One plain connection (migrations, the erase's VACUUM); StoreUnavailable if the server is unreachable."""
    try:
        return psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        # libpq quotes parts of the URL in its errors (a bad percent-escape, a host cut out of a password)
        raise StoreUnavailable(
            f"cannot connect to the PostgreSQL database {mask_url(url)}: {mask_secrets(first_line(exc), url)}"
        ) from None


def session_options(url: str) -> str:
    """The libpq `options` for the pool's sessions: the URL's own, then the statement and lock timeouts (as
    session defaults, so a RESET returns to them)."""
    given = str(conninfo_to_dict(url).get("options") or "")
    ours = f"-c statement_timeout={STATEMENT_TIMEOUT} -c lock_timeout={LOCK_TIMEOUT}"
    return f"{given} {ours}".strip()


def behind_a_pooler(conn: Connection) -> bool:
    """Is a connection pooler (PgBouncer) between `conn` and the server? A pooler answers the client's startup
    with a cancel key of its own, so the backend pid the connection was given is not the server process's."""
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    return row is not None and row[0] != conn.info.backend_pid


class Database:
    def __init__(self, url: str, *, pool_size: int):
        self.url = url
        self.location = mask_url(url)
        self._give_up_at: float | None = None
        """monotonic time from which a wait for a connection ends at once (the server is stopping)."""
        probe = connect(url)
        try:
            self.pooled = behind_a_pooler(probe)
            """A pooler between us and the server (see the module docstring): no session state is ours."""
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the PostgreSQL database {self.location} failed: {first_line(exc)}") from None
        finally:
            probe.close()
        if self.pooled:
            log.info(
                "%s: a connection pooler is in front of the server: statement and lock timeouts are set in each "
                "transaction, statements are not prepared",
                self.location,
            )
            # No `options` (PgBouncer refuses the startup parameter); psycopg's prepared statements would be
            # looked for on whichever server connection the pooler gives the next transaction.
            kwargs: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S, "prepare_threshold": None}
        else:
            kwargs = {"connect_timeout": CONNECT_TIMEOUT_S, "options": session_options(url)}
        self.pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs=kwargs,
            configure=register_vector,
            name="agentcache",
            reconnect_timeout=RECONNECT_S,
        )
        self._in_use = 0
        """Connections handed out right now (the pool also counts those it is still trying to open)."""
        self._in_use_lock = threading.Lock()
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except PoolTimeout as exc:
            self.pool.close(timeout=0)
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL database {self.location}: {mask_secrets(str(exc), url)}"
            ) from None

    def _failed(self, exc: psycopg.Error, *, committing: bool = False) -> StoreError:
        if isinstance(exc, psycopg.errors.DiskFull):
            return StoreFullError(f"the PostgreSQL database {self.location} is out of disk; nothing was written")
        if isinstance(exc, psycopg.errors.LockNotAvailable):
            return StoreBusy(
                f"the PostgreSQL database {self.location} is busy: another session held a lock this call needs "
                f"for more than {LOCK_TIMEOUT}; nothing was written"
            )
        if isinstance(exc, psycopg.errors.QueryCanceled):
            return StoreBusy(
                f"the PostgreSQL database {self.location} is busy: a statement of this call was cancelled "
                f"({mask_secrets(first_line(exc), self.url)}); nothing was written"
            )
        reason = mask_secrets(first_line(exc), self.url)
        if committing:
            return StoreError(
                f"the PostgreSQL database {self.location} failed while committing ({reason}): this call's write "
                "may or may not have been stored"
            )
        return StoreError(f"the PostgreSQL database {self.location} failed: {reason}; nothing was written")

    def give_up_waits(self, after_s: float) -> None:
        """From `after_s` seconds on, a wait for a connection ends at once with StoreBusy (thread-safe)."""
        give_up_at = time.monotonic() + after_s
        self._give_up_at = give_up_at if self._give_up_at is None else min(self._give_up_at, give_up_at)

    def _no_connection(self, waited_s: float, stopping: bool) -> str:
        """Why a wait for a connection ended: every connection of the pool in use (a pool too small for the
        calls this process runs at once), or fewer open than it may have (the server refuses or does not answer)."""
        if self._in_use >= self.pool.max_size:
            why = (
                f"is busy: no free connection within {waited_s:.1f} s, every one of this process's "
                f"{self.pool.max_size} connections is in use; nothing was written; try again, or raise "
                "AGENTCACHE_PG_POOL_SIZE (within the server's max_connections)"
            )
        else:
            why = (
                f"is unreachable: no connection within {waited_s:.1f} s (the server is down or not answering); "
                "nothing was written"
            )
        return f"the PostgreSQL database {self.location} {why}" + ("; the server is shutting down" if stopping else "")

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A pooled connection, as `pool.connection()` gives one (committed or rolled back when the block ends),
        waited for in slices: at most POOL_WAIT_S, or until the server gives up waiting; then StoreBusy."""
        started = time.monotonic()
        while True:
            try:
                conn = self.pool.getconn(timeout=POOL_SLICE_S)
                break
            except PoolTimeout:
                now = time.monotonic()
                stopping = self._give_up_at is not None and now >= self._give_up_at
                if stopping or now - started >= POOL_WAIT_S:
                    raise StoreBusy(self._no_connection(now - started, stopping)) from None
        with self._in_use_lock:
            self._in_use += 1
        try:
            with conn:
                yield conn
        finally:
            with self._in_use_lock:
                self._in_use -= 1
            self.pool.putconn(conn)

    def write(self, fn: Callable[[Connection], T], *, autocommit: bool = False) -> T:
        """Run fn in one transaction, retried as a whole after a deadlock or serialization failure, and once on a
        fresh connection when the server had closed the pooled one before the commit was sent (a restart, an
        idle timeout): that transaction cannot have committed. A connection lost during the commit is not
        retried (the commit may have happened; the error says so).

        autocommit: fn is one statement, its own transaction, committed before the server answers (no BEGIN and
        COMMIT round trips). Only for a statement that may run twice (remember's: a second run finds the memory
        the first stored and returns it), since a connection lost while it ran is retried like one lost before
        a commit. Behind a transaction-mode pooler it runs in a transaction, which carries the timeouts."""
        reconnected = False
        attempt = 0
        one_statement = autocommit and not self.pooled
        while True:
            committing = False
            conn: Connection | None = None
            try:
                with self.connection() as conn:
                    if one_statement:
                        conn.autocommit = True
                        try:
                            return fn(conn)
                        finally:
                            if not conn.closed:
                                conn.autocommit = False
                    with conn.transaction():
                        if self.pooled:
                            conn.execute(TRANSACTION_TIMEOUTS)
                        result = fn(conn)
                        committing = True
                    return result
            except _RETRYABLE:
                attempt += 1
                if attempt == RETRIES:
                    raise
                time.sleep(0.01 * 2 ** (attempt - 1))
            except psycopg.OperationalError as exc:
                if conn is not None and conn.closed and not committing and not reconnected:
                    # The server closed it while it sat in the pool, and so probably every other idle one:
                    # drop those now (one round trip each, only after such a failure) rather than fail on each.
                    reconnected = True
                    self.pool.check()
                    continue
                raise self._failed(exc, committing=committing) from None

    read = write
    """A read is a transaction too (its SET LOCALs end with it); it never takes a lock a writer waits for."""

    def query(self, fn: Callable[[Connection], T]) -> T:
        """A read whose statements need no common snapshot nor SET LOCAL, in autocommit: no BEGIN and COMMIT
        round trips (three became one for each of a recall's lookups). Retried as `write` retries."""
        return self.write(fn, autocommit=True)

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """An advisory lock called `name`, held for the block if no other session holds it: yields whether it
        is. A transaction-level lock in a transaction left open for the block on one pooled connection, so that
        a transaction-mode pooler keeps that server connection ours (a session-level lock would stay on a server
        connection the pooler hands to others); if the process dies, the server ends the transaction and the
        lock is free. Holding no snapshot or transaction id, the open transaction holds back no VACUUM."""
        with self.connection() as conn:
            # The server's timeouts for an idle or a long transaction would end it, and free the lock while the
            # block still runs (transaction_timeout came in PostgreSQL 17; an unknown setting is an error before).
            timeouts = ", set_config('transaction_timeout', '0', true)" if conn.info.server_version >= 170000 else ""
            row = conn.execute(
                f"SELECT pg_try_advisory_xact_lock({lock_key('%s')}), "
                f"set_config('idle_in_transaction_session_timeout', '0', true){timeouts}",
                (name,),
            ).fetchone()
            yield bool(row and row[0])

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A pooled connection in autocommit mode, for statements outside a transaction (VACUUM) and for
        session-level advisory locks; it is handed back to the pool in autocommit=False."""
        with self.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    def close(self, timeout: float = 0.1) -> None:
        """Close the pool's connections. Its worker threads get `timeout` to stop: one still connecting to a
        server that does not answer is left behind (there is nothing of ours in it to lose)."""
        self.pool.close(timeout=timeout)
