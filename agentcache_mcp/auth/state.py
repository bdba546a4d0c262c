"""The OAuth state every replica shares, kept in the store: registered clients, grants (one per approval on the
consent page), authorization codes and tokens.

Codes and tokens are stored only as SHA-256 hex digests (`token_hash`): the store refuses anything else, so a
stolen database file or backup yields no usable code or token. The tables hold no memory text, so they change
nothing about what a forget erases.

Single use is the store's job, decided in one transaction whatever the number of processes or replicas:
- `take_code` hands a code out once. The used code's digest stays as a tombstone until the code's expiry, and
  a second take of it revokes the grant (OAuth 2.1 §4.1.3: tokens issued from a replayed code are revoked).
- `rotate_refresh` consumes a refresh token and stores its successors in one transaction. The consumed
  token's digest stays as a tombstone until its expiry, and presenting it again revokes the grant
  (refresh-token reuse detection, OAuth 2.1 §4.3.1; RFC 9700 §4.14.2), unless the caller allows a short
  grace for a retried or concurrent refresh (`reuse_grace_s`).
- A code or token is only stored for a grant that exists; once the grant is revoked (by a replay, a reuse,
  RFC 7009 revocation or the `auth` command), `put_code` / `put_token` raise UnknownGrant, so no token
  outlives the revocation of its grant, however the calls interleave.

Plain dataclasses, no SDK types: the authorization server translates.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Literal, Protocol

TokenKind = Literal["access", "refresh"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("access", "refresh")

LAST_USED_RESOLUTION_S = 60.0
"""get_token writes a grant's last_used_at at most this often: a token check is a read, not a write."""
IDLE_GRANT_S = 3600.0
"""purge_expired removes a grant left with no code and no token once it is this old (a consent that never led
to a token, or one whose tokens all expired); a younger one may be waiting for its code."""

_DIGEST = re.compile(r"[0-9a-f]{64}")


def token_hash(secret: str) -> str:
    """The SHA-256 hex digest of a code or token: what the store keeps and looks up instead of the secret."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def is_digest(value: str) -> bool:
    """Is `value` shaped like token_hash's output (64 lower-case hex digits)?"""
    return _DIGEST.fullmatch(value) is not None


def require_digest(value: str, what: str) -> None:
    """ValueError unless `value` is a digest: the store never keeps a secret by mistake."""
    if not is_digest(value):
        raise ValueError(f"{what} must be token_hash(secret) (64 lower-case hex digits), never the secret itself")


class UnknownGrant(LookupError):
    """A code or token was offered for a grant that does not exist (any more: it was revoked meanwhile)."""


class UnknownClient(LookupError):
    """A grant was offered for a client that is not registered (any more)."""


@dataclass(frozen=True)
class StoredClient:
    client_id: str
    metadata: dict[str, Any]
    """The RFC 7591 client metadata JSON, as registered or as fetched from a Client ID Metadata Document."""
    created_at: float


@dataclass(frozen=True)
class Grant:
    """One approval on the consent page: what a client may do, until revoked."""

    grant_id: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str | None
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True)
class StoredCode:
    code_hash: str
    grant_id: str
    client_id: str
    redirect_uri: str
    redirect_uri_provided_explicitly: bool
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str | None
    expires_at: float


@dataclass(frozen=True)
class StoredToken:
    token_hash: str
    kind: TokenKind
    grant_id: str
    client_id: str
    scopes: tuple[str, ...]
    resource: str | None
    expires_at: float | None
    """None: never expires (it still ends with its grant)."""


class AuthStateStore(Protocol):
    """The OAuth state of one store (StorageBackend.auth_state). Every method is one transaction."""

    def put_client(self, client: StoredClient) -> None:
        """Insert or replace the client (its metadata; created_at is kept from the first registration).
        ValueError if the metadata holds a client_secret: the store keeps no secret in the clear."""
        ...

    def get_client(self, client_id: str) -> StoredClient | None: ...

    def list_clients(self) -> list[StoredClient]:
        """Every client, oldest first."""
        ...

    def delete_client(self, client_id: str) -> bool:
        """Delete the client and every grant, code and token of it; whether the client existed."""
        ...

    def create_grant(self, grant: Grant) -> None:
        """Store a new grant. UnknownClient if its client is not registered; ValueError if the id is taken."""
        ...

    def list_grants(self, client_id: str | None = None) -> list[Grant]:
        """Every grant (of the client, if given), oldest first."""
        ...

    def revoke_grant(self, grant_id: str) -> bool:
        """Delete the grant and all its codes and tokens (tombstones too); whether it existed."""
        ...

    def put_code(self, code: StoredCode) -> None:
        """Store a new code. ValueError if code_hash is not a digest, is already stored, or the client is not the
        grant's; UnknownGrant if the grant does not exist."""
        ...

    def take_code(self, code_hash: str, now: float) -> StoredCode | None:
        """The code, once: the first call before its expiry returns it and leaves a tombstone; any later call
        returns None and revokes the grant the code belonged to (a replay). None, and nothing revoked, for an
        unknown or expired unused code."""
        ...

    def put_token(self, token: StoredToken) -> None:
        """Store a new token. ValueError if token_hash is not a digest, is already stored, or the client is not
        the grant's; UnknownGrant if the grant does not exist."""
        ...

    def get_token(self, token_hash: str, kind: TokenKind, now: float) -> StoredToken | None:
        """The live token of this kind: None if unknown, of the other kind, expired, consumed or revoked. Sets
        the grant's last_used_at to `now` if it is older than LAST_USED_RESOLUTION_S."""
        ...

    def rotate_refresh(
        self,
        old_hash: str,
        new_refresh: StoredToken,
        new_access: StoredToken,
        now: float,
        *,
        reuse_grace_s: float = 0.0,
    ) -> bool:
        """Consume the live refresh token `old_hash` and store both new tokens (of its grant and client, else
        ValueError), in one transaction; True. False if it is unknown or expired; False AND the whole grant
        revoked if it was consumed already (a reused refresh token).

        reuse_grace_s (default 0: strict): a token consumed less than this long before `now` (and not expired)
        is rotated once more instead, True, the grant kept: the successors of a refresh whose answer the client
        lost, or of two refreshes at once by processes sharing one credential store (hosts do both; a strict
        server makes them log in again). The window is fixed from the first use and spent by one such rotation: a
        further use, within the window or after it, revokes."""
        ...

    def revoke_token(self, token_hash: str) -> bool:
        """RFC 7009: revoke the grant of this token (either kind; revoking one revokes both); whether one was."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete codes and tokens expired at `now` (tombstones included: they are kept until then, not longer)
        and grants left with nothing for IDLE_GRANT_S; the number of rows deleted."""
        ...
