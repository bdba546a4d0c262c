"""A psycopg 3 connection pool over one PostgreSQL database: transactions, retries, errors a person can act on.

Every replica has its own pool (AGENTCACHE_PG_POOL_SIZE connections at most). A write is one transaction,
retried as a whole when PostgreSQL aborts it for a deadlock or a serialization failure. Durability is the
server's: a commit returns after the WAL is flushed (synchronous_commit=on, the default), so an acknowledged
memory survives a crash of the server or of any replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import psycopg.errors
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool, PoolTimeout

from ...config import mask_secrets, mask_url
from ...memory.ports import StoreError, StoreFullError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = psycopg.Connection[tuple]

CONNECT_TIMEOUT_S = 5
RETRIES = 5
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


class Database:
    def __init__(self, url: str, *, pool_size: int):
        self.url = url
        self.location = mask_url(url)
        self.pool: ConnectionPool[Connection] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            configure=register_vector,
            name="agentcache",
        )
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
        except PoolTimeout as exc:
            self.pool.close(timeout=0)
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL database {self.location}: {mask_secrets(str(exc), url)}"
            ) from None

    def _failed(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.errors.DiskFull):
            return StoreFullError(f"the PostgreSQL database {self.location} is out of disk; nothing was written")
        return StoreError(f"the PostgreSQL database {self.location} failed: {mask_secrets(first_line(exc), self.url)}")

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in one transaction, retried as a whole after a deadlock or serialization failure."""
        for attempt in range(RETRIES):
            try:
                with self.pool.connection() as conn, conn.transaction():
                    return fn(conn)
            except _RETRYABLE:
                if attempt == RETRIES - 1:
                    raise
                time.sleep(0.01 * 2**attempt)
            except psycopg.OperationalError as exc:
                raise self._failed(exc) from None
        raise AssertionError("unreachable")

    read = write
    """A read is a transaction too (its SET LOCALs end with it); it never takes a lock a writer waits for."""

    @contextmanager
    def session(self) -> Iterator[Connection]:
        """A pooled connection in autocommit mode, for statements outside a transaction (VACUUM) and for
        session-level advisory locks; it is handed back to the pool in autocommit=False."""
        with self.pool.connection() as conn:
            conn.autocommit = True
            try:
                yield conn
            finally:
                conn.autocommit = False

    def close(self, timeout: float = 0.5) -> None:
        self.pool.close(timeout=timeout)
