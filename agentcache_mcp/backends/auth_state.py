"""The OAuth state (auth/state.py's AuthStateStore) over SQL, written once for both backends.

Each backend supplies its Database (`write(fn)` runs fn in one transaction, retried as a whole when busy;
`read(fn)` sees what is committed), its parameter mark, a row lock for the grant a code or token is added to
(PostgreSQL's `FOR KEY SHARE`; SQLite needs none, its writes take the file's one write lock) and how its driver
reports a constraint violation. The tables are the `oauth_` ones of each backend's schema.

How single use holds across processes: taking a code and consuming a refresh token are one conditional UPDATE
(`... WHERE used_at IS NULL RETURNING ...`). Of two concurrent takers the second waits for the first's row
lock (PostgreSQL) or write lock (SQLite), then finds the row used: it gets nothing and, seeing the tombstone in
the same transaction, revokes the grant. A revoke deletes the grant row first, then its codes and tokens, and
a code or token is only inserted while its grant row is held (PostgreSQL: KEY SHARE, plus the foreign key), so
a token being issued while its grant is revoked is either refused (UnknownGrant) or deleted by the revoke.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar

from ..auth.state import (
    IDLE_GRANT_S,
    LAST_USED_RESOLUTION_S,
    TOKEN_KINDS,
    Grant,
    StoredClient,
    StoredCode,
    StoredToken,
    TokenKind,
    UnknownClient,
    UnknownGrant,
    is_digest,
    require_digest,
)
from ..memory.ports import StoreError
from .sql import Connection

T = TypeVar("T")
log = logging.getLogger(__name__)

Conflict = Literal["unique", "foreign"] | None

CODE_COLUMNS = (
    "code_hash, grant_id, client_id, redirect_uri, redirect_uri_provided_explicitly, code_challenge, scopes, "
    "resource, expires_at"
)
TOKEN_COLUMNS = "token_hash, kind, grant_id, client_id, scopes, resource, expires_at"
GRANT_COLUMNS = "grant_id, client_id, scopes, resource, created_at, last_used_at"


class Transactions(Protocol):
    """What this module uses of a backend's Database."""

    def write(self, fn: Callable[[Any], T]) -> T: ...

    def read(self, fn: Callable[[Any], T]) -> T: ...


def _scopes(stored: str) -> tuple[str, ...]:
    return tuple(json.loads(stored))


def _client(row: Any) -> StoredClient:
    return StoredClient(client_id=row[0], metadata=json.loads(row[1]), created_at=row[2])


def _grant(row: Any) -> Grant:
    return Grant(
        grant_id=row[0],
        client_id=row[1],
        scopes=_scopes(row[2]),
        resource=row[3],
        created_at=row[4],
        last_used_at=row[5],
    )


def _code(row: Any) -> StoredCode:
    return StoredCode(
        code_hash=row[0],
        grant_id=row[1],
        client_id=row[2],
        redirect_uri=row[3],
        redirect_uri_provided_explicitly=bool(row[4]),
        code_challenge=row[5],
        scopes=_scopes(row[6]),
        resource=row[7],
        expires_at=row[8],
    )


def _token(row: Any) -> StoredToken:
    return StoredToken(
        token_hash=row[0],
        kind=row[1],
        grant_id=row[2],
        client_id=row[3],
        scopes=_scopes(row[4]),
        resource=row[5],
        expires_at=row[6],
    )


class SqlAuthState:
    """AuthStateStore over one backend's Database. Subclasses set `mark`, `lock_row` and `conflict`."""

    mark = "?"
    lock_row = ""
    """Appended to the SELECT of the client a grant, or the grant a code or token, is added to: holds that row
    until the transaction ends, so a concurrent delete of it waits (PostgreSQL)."""

    def __init__(self, db: Transactions):
        self.db = db

    def conflict(self, exc: Exception) -> Conflict:
        """Which constraint `exc` (raised by the driver) violated, if it is a constraint violation."""
        raise NotImplementedError

    def _q(self, statement: str) -> str:
        return statement if self.mark == "?" else statement.replace("?", self.mark)

    def _write(self, fn: Callable[[Connection], T], *, duplicate: str, missing: Exception) -> T:
        """db.write(fn), with a constraint violation as the error a caller understands: `duplicate` (a
        ValueError's message) for a unique key, `missing` for a foreign key (a concurrent delete)."""
        try:
            return self.db.write(fn)
        except Exception as exc:
            kind = self.conflict(exc)
            if kind == "unique":
                raise ValueError(duplicate) from None
            if kind == "foreign":
                raise missing from None
            raise

    # -- clients

    def put_client(self, client: StoredClient) -> None:
        if client.metadata.get("client_secret"):
            raise ValueError("the store keeps no client secret in the clear (clients here are public; keep a digest)")
        metadata = json.dumps(client.metadata)
        self.db.write(
            lambda db: db.execute(
                self._q(
                    "INSERT INTO oauth_clients (client_id, metadata, created_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (client_id) DO UPDATE SET metadata = excluded.metadata"
                ),
                (client.client_id, metadata, client.created_at),
            )
        )

    def get_client(self, client_id: str) -> StoredClient | None:
        row = self.db.read(
            lambda db: db.execute(
                self._q("SELECT client_id, metadata, created_at FROM oauth_clients WHERE client_id = ?"), (client_id,)
            ).fetchone()
        )
        return _client(row) if row is not None else None

    def list_clients(self) -> list[StoredClient]:
        rows = self.db.read(
            lambda db: db.execute(
                "SELECT client_id, metadata, created_at FROM oauth_clients ORDER BY created_at, client_id"
            ).fetchall()
        )
        return [_client(row) for row in rows]

    def delete_client(self, client_id: str) -> bool:
        def run(db: Connection) -> bool:
            grants = db.execute(
                self._q("DELETE FROM oauth_grants WHERE client_id = ? RETURNING grant_id"), (client_id,)
            ).fetchall()
            for (grant_id,) in grants:
                self._delete_grant_rows(db, grant_id)
            # Rows naming the client under another's grant: never written (put_code/put_token refuse them).
            db.execute(self._q("DELETE FROM oauth_codes WHERE client_id = ?"), (client_id,))
            db.execute(self._q("DELETE FROM oauth_tokens WHERE client_id = ?"), (client_id,))
            existed = db.execute(self._q("DELETE FROM oauth_clients WHERE client_id = ? RETURNING client_id"), (client_id,))
            return existed.fetchone() is not None or bool(grants)

        return self.db.write(run)

    # -- grants

    def create_grant(self, grant: Grant) -> None:
        def run(db: Connection) -> None:
            client = db.execute(
                self._q(f"SELECT 1 FROM oauth_clients WHERE client_id = ?{self.lock_row}"), (grant.client_id,)
            ).fetchone()
            if client is None:
                raise UnknownClient(grant.client_id)
            db.execute(
                self._q(f"INSERT INTO oauth_grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"),
                (
                    grant.grant_id,
                    grant.client_id,
                    json.dumps(list(grant.scopes)),
                    grant.resource,
                    grant.created_at,
                    grant.last_used_at,
                ),
            )

        self._write(run, duplicate=f"grant {grant.grant_id} exists already", missing=UnknownClient(grant.client_id))

    def list_grants(self, client_id: str | None = None) -> list[Grant]:
        where = "" if client_id is None else "WHERE client_id = ? "
        params = () if client_id is None else (client_id,)
        rows = self.db.read(
            lambda db: db.execute(
                self._q(f"SELECT {GRANT_COLUMNS} FROM oauth_grants {where}ORDER BY created_at, grant_id"), params
            ).fetchall()
        )
        return [_grant(row) for row in rows]

    def _delete_grant_rows(self, db: Connection, grant_id: str) -> None:
        db.execute(self._q("DELETE FROM oauth_codes WHERE grant_id = ?"), (grant_id,))
        db.execute(self._q("DELETE FROM oauth_tokens WHERE grant_id = ?"), (grant_id,))

    def _revoke(self, db: Connection, grant_id: str) -> bool:
        """Delete the grant row first (so no code or token can be added to it from here on), then its rows."""
        gone = db.execute(self._q("DELETE FROM oauth_grants WHERE grant_id = ? RETURNING grant_id"), (grant_id,))
        found = gone.fetchone() is not None
        self._delete_grant_rows(db, grant_id)
        return found

    def revoke_grant(self, grant_id: str) -> bool:
        return self.db.write(lambda db: self._revoke(db, grant_id))

    def _held_grant(self, db: Connection, grant_id: str, client_id: str) -> None:
        """The grant exists (held until the transaction ends) and belongs to client_id; else raise."""
        row = db.execute(
            self._q(f"SELECT client_id FROM oauth_grants WHERE grant_id = ?{self.lock_row}"), (grant_id,)
        ).fetchone()
        if row is None:
            raise UnknownGrant(grant_id)
        if row[0] != client_id:
            raise ValueError(f"grant {grant_id} is not a grant of client {client_id}")

    # -- codes

    def put_code(self, code: StoredCode) -> None:
        require_digest(code.code_hash, "code_hash")

        def run(db: Connection) -> None:
            self._held_grant(db, code.grant_id, code.client_id)
            db.execute(
                self._q(f"INSERT INTO oauth_codes ({CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                (
                    code.code_hash,
                    code.grant_id,
                    code.client_id,
                    code.redirect_uri,
                    code.redirect_uri_provided_explicitly,
                    code.code_challenge,
                    json.dumps(list(code.scopes)),
                    code.resource,
                    code.expires_at,
                ),
            )

        self._write(run, duplicate="this code is stored already", missing=UnknownGrant(code.grant_id))

    def take_code(self, code_hash: str, now: float) -> StoredCode | None:
        if not is_digest(code_hash):
            return None

        def run(db: Connection) -> StoredCode | None:
            row = db.execute(
                self._q(
                    "UPDATE oauth_codes SET used_at = ? WHERE code_hash = ? AND used_at IS NULL AND expires_at > ? "
                    f"RETURNING {CODE_COLUMNS}"
                ),
                (now, code_hash, now),
            ).fetchone()
            if row is not None:
                return _code(row)
            used = db.execute(
                self._q("SELECT grant_id FROM oauth_codes WHERE code_hash = ? AND used_at IS NOT NULL"), (code_hash,)
            ).fetchone()
            if used is not None:
                self._revoke(db, used[0])  # a replayed code: the tokens issued from it are revoked
            return None

        return self.db.write(run)

    # -- tokens

    def _insert_token(self, db: Connection, token: StoredToken) -> None:
        db.execute(
            self._q(f"INSERT INTO oauth_tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"),
            (
                token.token_hash,
                token.kind,
                token.grant_id,
                token.client_id,
                json.dumps(list(token.scopes)),
                token.resource,
                token.expires_at,
            ),
        )

    @staticmethod
    def _check_token(token: StoredToken, kind: TokenKind | None = None) -> None:
        require_digest(token.token_hash, "token_hash")
        if token.kind not in TOKEN_KINDS or (kind is not None and token.kind != kind):
            raise ValueError(f"a token of kind {kind or ' or '.join(TOKEN_KINDS)} was expected, not {token.kind!r}")

    def put_token(self, token: StoredToken) -> None:
        self._check_token(token)

        def run(db: Connection) -> None:
            self._held_grant(db, token.grant_id, token.client_id)
            self._insert_token(db, token)

        self._write(run, duplicate="this token is stored already", missing=UnknownGrant(token.grant_id))

    def get_token(self, token_hash: str, kind: TokenKind, now: float) -> StoredToken | None:
        if not is_digest(token_hash):
            return None
        row = self.db.read(
            lambda db: db.execute(
                self._q(
                    f"SELECT {', '.join('t.' + c for c in TOKEN_COLUMNS.split(', '))}, g.last_used_at "
                    "FROM oauth_tokens t JOIN oauth_grants g ON g.grant_id = t.grant_id "
                    "WHERE t.token_hash = ? AND t.kind = ? AND t.consumed_at IS NULL "
                    "AND (t.expires_at IS NULL OR t.expires_at > ?)"
                ),
                (token_hash, kind, now),
            ).fetchone()
        )
        if row is None:
            return None
        token = _token(row)
        last_used = row[7]
        if last_used is None or last_used < now - LAST_USED_RESOLUTION_S:
            self.db.write(
                lambda db: db.execute(
                    self._q(
                        "UPDATE oauth_grants SET last_used_at = ? WHERE grant_id = ? "
                        "AND (last_used_at IS NULL OR last_used_at < ?)"
                    ),
                    (now, token.grant_id, now - LAST_USED_RESOLUTION_S),
                )
            )
        return token

    def rotate_refresh(
        self,
        old_hash: str,
        new_refresh: StoredToken,
        new_access: StoredToken,
        now: float,
        *,
        reuse_grace_s: float = 0.0,
    ) -> bool:
        self._check_token(new_refresh, "refresh")
        self._check_token(new_access, "access")
        if not is_digest(old_hash):
            return False

        def run(db: Connection) -> bool:
            row = db.execute(
                self._q(
                    "UPDATE oauth_tokens SET consumed_at = ? WHERE token_hash = ? AND kind = 'refresh' "
                    "AND consumed_at IS NULL AND (expires_at IS NULL OR expires_at > ?) RETURNING grant_id, client_id"
                ),
                (now, old_hash, now),
            ).fetchone()
            if row is None:
                consumed = db.execute(
                    self._q(
                        "SELECT grant_id, client_id, consumed_at, expires_at FROM oauth_tokens "
                        "WHERE token_hash = ? AND kind = 'refresh' AND consumed_at IS NOT NULL"
                    ),
                    (old_hash,),
                ).fetchone()
                if consumed is None:
                    return False
                grant_id, client_id, consumed_at, expires_at = consumed
                in_grace = now - consumed_at < reuse_grace_s and (expires_at is None or expires_at > now)
                # The grace is spent once: consumed_at moves back out of the window (compare-and-set, so of two
                # presentations at once only one gets it), and any further presentation is a reuse.
                if in_grace:
                    in_grace = (
                        db.execute(
                            self._q(
                                "UPDATE oauth_tokens SET consumed_at = ? WHERE token_hash = ? AND kind = 'refresh' "
                                "AND consumed_at = ? RETURNING 1"
                            ),
                            (consumed_at - reuse_grace_s, old_hash, consumed_at),
                        ).fetchone()
                        is not None
                    )
                if not in_grace:
                    self._revoke(db, grant_id)  # a reused refresh token: the whole grant ends
                    return False
                row = (grant_id, client_id)  # a concurrent or retried refresh: one more successor
            grant_id, client_id = row
            for token in (new_refresh, new_access):
                if (token.grant_id, token.client_id) != (grant_id, client_id):
                    raise ValueError("the new tokens must belong to the old refresh token's grant and client")
            self._held_grant(db, grant_id, client_id)
            self._insert_token(db, new_refresh)
            self._insert_token(db, new_access)
            return True

        return self._write(run, duplicate="a new token is stored already", missing=UnknownGrant(new_refresh.grant_id))

    def revoke_token(self, token_hash: str) -> bool:
        if not is_digest(token_hash):
            return False

        def run(db: Connection) -> bool:
            row = db.execute(self._q("SELECT grant_id FROM oauth_tokens WHERE token_hash = ?"), (token_hash,)).fetchone()
            return row is not None and self._revoke(db, row[0])

        return self.db.write(run)

    def purge_expired(self, now: float) -> int:
        def run(db: Connection) -> int:
            deleted = 0
            for statement in (
                "DELETE FROM oauth_codes WHERE expires_at <= ?",
                "DELETE FROM oauth_tokens WHERE expires_at IS NOT NULL AND expires_at <= ?",
            ):
                deleted += len(db.execute(self._q(statement + " RETURNING 1"), (now,)).fetchall())
            idle = db.execute(
                self._q(
                    "DELETE FROM oauth_grants WHERE created_at <= ? "
                    "AND NOT EXISTS (SELECT 1 FROM oauth_codes c WHERE c.grant_id = oauth_grants.grant_id) "
                    "AND NOT EXISTS (SELECT 1 FROM oauth_tokens t WHERE t.grant_id = oauth_grants.grant_id) "
                    "RETURNING 1"
                ),
                (now - IDLE_GRANT_S,),
            ).fetchall()
            return deleted + len(idle)

        return self.db.write(run)

    def housekeeping(self) -> None:
        """purge_expired now, for a backend's maintenance (after each auto-forget sweep, or on its schedule with
        auto-forget off): a store that is busy or failing is logged and left to the next run, so the sweep's
        other work is not lost."""
        try:
            purged = self.purge_expired(time.time())
        except StoreError as exc:
            log.warning("purging expired OAuth codes and tokens failed (the next sweep tries again): %s", exc)
            return
        if purged:
            log.info("purged %d expired OAuth codes, tokens and idle grants", purged)
