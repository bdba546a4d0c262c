"""The promises of the OAuth state (agentcache_mcp/auth/state.py), one test each, on every backend.

They speak to `backend.auth_state` only, never to SQL. Concurrency is tested with two stores opened on the same
database (two connections, or two connection pools), as two processes or replicas would hold them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import pytest

from agentcache_mcp.auth.state import (
    IDLE_GRANT_S,
    LAST_USED_RESOLUTION_S,
    AuthStateStore,
    Grant,
    StoredClient,
    StoredCode,
    StoredToken,
    TokenKind,
    UnknownClient,
    UnknownGrant,
    token_hash,
)
from agentcache_mcp.memory.ports import StoreBusy
from agentcache_mcp.memory.service import MemoryService

from .harness import Harness

T = TypeVar("T")
NOW = 1_800_000_000.0
RESOURCE = "https://memory.example/mcp"


@pytest.fixture
def opened(harness: Harness) -> Iterator[Callable[[], MemoryService]]:
    """Open services over the harness's store (each its own connections); all closed at the end."""
    services: list[MemoryService] = []

    def open_one() -> MemoryService:
        services.append(harness.open())
        return services[-1]

    yield open_one
    for service in services:
        service.close()


@pytest.fixture
def state(opened: Callable[[], MemoryService]) -> AuthStateStore:
    return opened().backend.auth_state


def client(state: AuthStateStore, client_id: str = "client-a", name: str = "Claude") -> StoredClient:
    stored = StoredClient(
        client_id,
        {"client_name": name, "redirect_uris": ["https://claude.ai/api/mcp/auth_callback"], "scope": "memory"},
        NOW - 100,
    )
    state.put_client(stored)
    return stored


def grant(state: AuthStateStore, client_id: str = "client-a", grant_id: str | None = None) -> Grant:
    made = Grant(grant_id or "grant-" + secrets.token_hex(4), client_id, ("memory",), RESOURCE, NOW - 50, None)
    state.create_grant(made)
    return made


def code(state: AuthStateStore, of: Grant, *, expires_at: float = NOW + 60) -> tuple[str, StoredCode]:
    """A new code of the grant: (the secret, as the client gets it; what the store keeps)."""
    secret = secrets.token_urlsafe(32)
    stored = StoredCode(
        token_hash(secret),
        of.grant_id,
        of.client_id,
        "https://claude.ai/api/mcp/auth_callback",
        True,
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        of.scopes,
        of.resource,
        expires_at,
    )
    state.put_code(stored)
    return secret, stored


def token_of(of: Grant, kind: TokenKind, *, expires_at: float | None = NOW + 3600) -> tuple[str, StoredToken]:
    secret = secrets.token_urlsafe(32)
    return secret, StoredToken(token_hash(secret), kind, of.grant_id, of.client_id, of.scopes, of.resource, expires_at)


def issue(state: AuthStateStore, of: Grant, kind: TokenKind, *, expires_at: float | None = NOW + 3600) -> str:
    secret, stored = token_of(of, kind, expires_at=expires_at)
    state.put_token(stored)
    return secret


def live(state: AuthStateStore, secret: str, kind: TokenKind, now: float = NOW) -> bool:
    return state.get_token(token_hash(secret), kind, now) is not None


def at_once(calls: list[Callable[[], T]]) -> list[T]:
    """Run the calls in threads released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T:
        barrier.wait(timeout=30)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


# --- clients and grants -------------------------------------------------------------------------------


def test_a_client_is_stored_replaced_listed_and_deleted(state: AuthStateStore) -> None:
    first = client(state, "client-a", "Claude")
    client(state, "client-b", "ChatGPT")
    assert state.get_client("client-a") == first
    state.put_client(StoredClient("client-a", {"client_name": "Claude Desktop"}, NOW))
    replaced = state.get_client("client-a")
    assert replaced is not None and replaced.metadata == {"client_name": "Claude Desktop"}
    assert replaced.created_at == first.created_at  # the first registration's time is kept
    assert [c.client_id for c in state.list_clients()] == ["client-a", "client-b"]
    assert state.delete_client("client-a") is True
    assert state.delete_client("client-a") is False
    assert state.get_client("client-a") is None
    assert [c.client_id for c in state.list_clients()] == ["client-b"]


def test_a_grant_needs_a_registered_client_and_an_unused_id(state: AuthStateStore) -> None:
    with pytest.raises(UnknownClient):
        grant(state, "nobody")
    client(state)
    made = grant(state, grant_id="grant-1")
    with pytest.raises(ValueError, match="exists already"):
        grant(state, grant_id="grant-1")
    assert state.list_grants() == [made]
    assert state.list_grants("client-a") == [made]
    assert state.list_grants("client-b") == []


# --- only digests ---------------------------------------------------------------------------------------


def test_the_store_refuses_a_secret_where_a_digest_belongs(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    secret, stored = token_of(g, "access")
    for bad in (secret, secret[:64], token_hash(secret).upper()):
        with pytest.raises(ValueError, match="never the secret"):
            state.put_token(StoredToken(bad, "access", g.grant_id, g.client_id, g.scopes, g.resource, None))
        with pytest.raises(ValueError, match="never the secret"):
            state.put_code(StoredCode(bad, g.grant_id, g.client_id, "https://x/cb", True, "c", g.scopes, None, NOW + 60))
    state.put_token(stored)
    assert state.get_token(secret, "access", NOW) is None  # looked up by the secret itself: nothing
    assert state.get_token(token_hash(secret), "access", NOW) == stored


def test_the_store_refuses_a_client_secret_in_the_clear(state: AuthStateStore) -> None:
    with pytest.raises(ValueError, match="no client secret"):
        state.put_client(StoredClient("c", {"client_name": "x", "client_secret": "s3cret"}, NOW))
    assert state.get_client("c") is None
    state.put_client(StoredClient("c", {"client_name": "x", "client_secret": None}, NOW))  # a public client's dump


def test_no_file_of_the_store_holds_a_code_or_token_in_the_clear(harness: Harness) -> None:
    memory = harness.open()
    state = memory.backend.auth_state
    client(state)
    g = grant(state)
    code_secret, _ = code(state, g)
    tokens = [issue(state, g, "access"), issue(state, g, "refresh")]
    assert state.take_code(token_hash(code_secret), NOW) is not None
    memory.backend.checkpoint()
    memory.close()
    if not harness.can_read_files:
        pytest.skip("this PostgreSQL server's files cannot be read from here: the byte check needs the bundled one")
    stored = harness.stored_bytes()
    assert token_hash(tokens[0]).encode() in stored  # the check can see the table: the digest is there
    for secret in (code_secret, *tokens):
        assert secret.encode() not in stored


# --- codes ----------------------------------------------------------------------------------------------


def test_a_code_is_taken_once_and_a_replay_revokes_its_grant(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    other = grant(state)
    other_access = issue(state, other, "access")
    secret, stored = code(state, g)
    assert state.take_code(token_hash(secret), NOW) == stored
    access, refresh = issue(state, g, "access"), issue(state, g, "refresh")  # issued from the code
    assert state.take_code(token_hash(secret), NOW + 1) is None  # replayed
    assert not live(state, access, "access") and not live(state, refresh, "refresh")
    assert [x.grant_id for x in state.list_grants()] == [other.grant_id]
    assert live(state, other_access, "access")  # another grant of the client is untouched
    with pytest.raises(UnknownGrant):
        issue(state, g, "access")  # nothing more is issued for the revoked grant
    assert state.take_code(token_hash(secret), NOW + 2) is None


def test_an_expired_code_is_never_returned_and_revokes_nothing(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    access = issue(state, g, "access")
    secret, _ = code(state, g, expires_at=NOW + 60)
    assert state.take_code(token_hash(secret), NOW + 60) is None  # expired at its expiry
    assert state.take_code(token_hash("never issued"), NOW) is None
    assert state.take_code("not a digest", NOW) is None
    assert state.list_grants() == [g] and live(state, access, "access")


def test_of_two_concurrent_takers_of_a_code_exactly_one_gets_it(opened: Callable[[], MemoryService]) -> None:
    """Two stores on one database (two processes, two replicas) race for each of 10 codes."""
    first, second = opened().backend.auth_state, opened().backend.auth_state
    client(first)
    for _ in range(10):
        g = grant(first)
        secret, stored = code(first, g)
        taken = at_once([partial(s.take_code, token_hash(secret), NOW) for s in (first, second)])
        assert sorted(taken, key=lambda x: x is None) == [stored, None]
        assert g not in first.list_grants()  # the loser's call was a replay: the grant is revoked


def test_a_code_is_only_stored_for_an_existing_grant_of_its_client(state: AuthStateStore) -> None:
    client(state, "client-a")
    client(state, "client-b")
    g = grant(state, "client-a")
    _, stored = code(state, g)
    with pytest.raises(ValueError, match="stored already"):
        state.put_code(stored)
    with pytest.raises(ValueError, match="not a grant of client"):
        code(state, Grant(g.grant_id, "client-b", g.scopes, g.resource, g.created_at, None))
    state.revoke_grant(g.grant_id)
    with pytest.raises(UnknownGrant):
        code(state, g)


# --- tokens ---------------------------------------------------------------------------------------------


def test_get_token_returns_only_a_live_token_of_the_kind_asked(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    secret, stored = token_of(g, "access", expires_at=NOW + 10)
    state.put_token(stored)
    forever = issue(state, g, "refresh", expires_at=None)
    assert state.get_token(token_hash(secret), "access", NOW) == stored
    assert state.get_token(token_hash(secret), "refresh", NOW) is None  # an access token is no refresh token
    assert state.get_token(token_hash(secret), "access", NOW + 10) is None  # expired at its expiry
    assert state.get_token(token_hash("unknown"), "access", NOW) is None
    assert live(state, forever, "refresh", NOW + 10 * 365 * 86400)
    with pytest.raises(ValueError, match="stored already"):
        state.put_token(stored)
    with pytest.raises(ValueError, match="kind"):
        state.put_token(StoredToken(token_hash("x"), "id", g.grant_id, g.client_id, (), None, None))  # type: ignore[arg-type]


def test_get_token_marks_the_grant_used_at_most_once_a_minute(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    access = issue(state, g, "access")

    def last_used() -> float | None:
        return next(x.last_used_at for x in state.list_grants() if x.grant_id == g.grant_id)

    assert last_used() is None
    assert live(state, access, "access", NOW)
    assert last_used() == NOW
    assert live(state, access, "access", NOW + LAST_USED_RESOLUTION_S - 1)
    assert last_used() == NOW
    assert live(state, access, "access", NOW + LAST_USED_RESOLUTION_S + 1)
    assert last_used() == NOW + LAST_USED_RESOLUTION_S + 1


def test_rotate_refresh_consumes_the_old_token_and_stores_both_new_ones(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    old = issue(state, g, "refresh")
    new_refresh, stored_refresh = token_of(g, "refresh")
    new_access, stored_access = token_of(g, "access")
    assert state.rotate_refresh(token_hash(old), stored_refresh, stored_access, NOW) is True
    assert not live(state, old, "refresh")
    assert state.get_token(token_hash(new_refresh), "refresh", NOW) == stored_refresh
    assert state.get_token(token_hash(new_access), "access", NOW) == stored_access


def test_a_reused_refresh_token_revokes_the_whole_grant(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    old = issue(state, g, "refresh")
    first_access = issue(state, g, "access")
    _, refresh_1 = token_of(g, "refresh")
    _, access_1 = token_of(g, "access")
    assert state.rotate_refresh(token_hash(old), refresh_1, access_1, NOW)
    _, refresh_2 = token_of(g, "refresh")
    _, access_2 = token_of(g, "access")
    assert state.rotate_refresh(token_hash(old), refresh_2, access_2, NOW + 1) is False  # the stolen copy
    assert state.list_grants() == []
    for stored in (refresh_1, access_1, refresh_2, access_2):
        assert state.get_token(stored.token_hash, stored.kind, NOW + 1) is None
    assert not live(state, first_access, "access")
    _, refresh_3 = token_of(g, "refresh")
    _, access_3 = token_of(g, "access")
    assert state.rotate_refresh(refresh_1.token_hash, refresh_3, access_3, NOW + 2) is False  # the legitimate one


def test_an_expired_unknown_or_access_token_does_not_rotate_and_revokes_nothing(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    expired = issue(state, g, "refresh", expires_at=NOW)
    access = issue(state, g, "access")
    for presented in (expired, access, "unknown"):
        _, new_refresh = token_of(g, "refresh")
        _, new_access = token_of(g, "access")
        assert state.rotate_refresh(token_hash(presented), new_refresh, new_access, NOW) is False
        assert state.get_token(new_refresh.token_hash, "refresh", NOW) is None
    assert state.list_grants() == [g] and live(state, access, "access")


def test_rotate_refresh_refuses_new_tokens_of_another_grant_and_keeps_the_old_one(state: AuthStateStore) -> None:
    client(state)
    g, other = grant(state), grant(state)
    old = issue(state, g, "refresh")
    _, foreign_refresh = token_of(other, "refresh")
    _, new_access = token_of(g, "access")
    with pytest.raises(ValueError, match="grant and client"):
        state.rotate_refresh(token_hash(old), foreign_refresh, new_access, NOW)
    with pytest.raises(ValueError, match="kind"):
        state.rotate_refresh(token_hash(old), new_access, new_access, NOW)
    assert live(state, old, "refresh")  # nothing was consumed
    assert state.get_token(foreign_refresh.token_hash, "refresh", NOW) is None


def test_of_two_concurrent_rotations_of_a_refresh_token_one_wins_and_the_reuse_revokes_the_grant(
    opened: Callable[[], MemoryService],
) -> None:
    first, second = opened().backend.auth_state, opened().backend.auth_state
    client(first)
    for _ in range(10):
        g = grant(first)
        old = issue(first, g, "refresh")
        new = [(token_of(g, "refresh")[1], token_of(g, "access")[1]) for _ in range(2)]
        results = at_once(
            [partial(s.rotate_refresh, token_hash(old), r, a, NOW) for s, (r, a) in zip((first, second), new, strict=True)]
        )
        assert sorted(results) == [False, True]
        assert g not in first.list_grants()
        for refresh, access in new:  # the winner's new tokens went with the grant
            assert first.get_token(refresh.token_hash, "refresh", NOW) is None
            assert first.get_token(access.token_hash, "access", NOW) is None


def test_within_the_reuse_grace_a_consumed_refresh_token_rotates_once_more_and_after_it_revokes(
    state: AuthStateStore,
) -> None:
    """A host that lost the answer to its refresh, or two of its processes refreshing at once, send the same
    refresh token twice within seconds: with a grace, both get working tokens; later, a reuse still revokes."""
    client(state)
    g = grant(state)
    old = issue(state, g, "refresh")
    successors = []
    for at in (NOW, NOW + 29):
        _, refresh = token_of(g, "refresh")
        _, access = token_of(g, "access")
        assert state.rotate_refresh(token_hash(old), refresh, access, at, reuse_grace_s=30) is True
        successors += [refresh, access]
    assert all(state.get_token(t.token_hash, t.kind, NOW + 29) == t for t in successors)
    _, refresh = token_of(g, "refresh")
    _, access = token_of(g, "access")
    assert state.rotate_refresh(token_hash(old), refresh, access, NOW + 30, reuse_grace_s=30) is False
    assert state.list_grants() == []
    assert all(state.get_token(t.token_hash, t.kind, NOW + 30) is None for t in successors)


def test_within_the_reuse_grace_a_consumed_refresh_token_rotates_only_once_more_then_a_reuse_revokes(
    state: AuthStateStore,
) -> None:
    """The grace is for one retry or one concurrent refresh, not a window in which whoever holds a copy of the
    token (a thief who read it as it was used) mints as many token pairs as it likes: a third presentation, even
    within the window, is a reuse and ends the grant."""
    client(state)
    g = grant(state)
    old = issue(state, g, "refresh")
    successors = []
    for at in (NOW, NOW + 1):
        _, refresh = token_of(g, "refresh")
        _, access = token_of(g, "access")
        assert state.rotate_refresh(token_hash(old), refresh, access, at, reuse_grace_s=30) is True
        successors += [refresh, access]
    _, refresh = token_of(g, "refresh")
    _, access = token_of(g, "access")
    assert state.rotate_refresh(token_hash(old), refresh, access, NOW + 2, reuse_grace_s=30) is False
    assert state.list_grants() == []
    assert all(state.get_token(t.token_hash, t.kind, NOW + 2) is None for t in successors)


def test_with_a_reuse_grace_two_concurrent_refreshes_both_succeed(opened: Callable[[], MemoryService]) -> None:
    first, second = opened().backend.auth_state, opened().backend.auth_state
    client(first)
    for _ in range(5):
        g = grant(first)
        old = issue(first, g, "refresh")
        new = [(token_of(g, "refresh")[1], token_of(g, "access")[1]) for _ in range(2)]
        results = at_once(
            [
                partial(s.rotate_refresh, token_hash(old), r, a, NOW, reuse_grace_s=30)
                for s, (r, a) in zip((first, second), new, strict=True)
            ]
        )
        assert results == [True, True]
        assert all(first.get_token(r.token_hash, "refresh", NOW) == r for r, _ in new)


# --- revocation -----------------------------------------------------------------------------------------


def test_a_token_issued_while_its_grant_is_revoked_is_refused_or_revoked_with_it(
    opened: Callable[[], MemoryService],
) -> None:
    """The race of a token endpoint issuing tokens and a replay, a reuse or the owner revoking the grant."""
    first, second = opened().backend.auth_state, opened().backend.auth_state
    client(first)

    def put(token: StoredToken) -> bool:
        try:
            first.put_token(token)
        except UnknownGrant:
            return False
        return True

    for _ in range(20):
        g = grant(first)
        secret, stored = token_of(g, "access")
        at_once([partial(put, stored), partial(second.revoke_grant, g.grant_id)])
        first.create_grant(g)  # the same id again: a token that outlived the revoke would be live now
        assert not live(first, secret, "access")


def test_revoking_either_token_of_a_grant_revokes_the_grant(state: AuthStateStore) -> None:
    client(state)
    for kind in ("access", "refresh"):
        g = grant(state)
        tokens = {"access": issue(state, g, "access"), "refresh": issue(state, g, "refresh")}
        assert state.revoke_token(token_hash(tokens[kind])) is True
        assert not live(state, tokens["access"], "access") and not live(state, tokens["refresh"], "refresh")
        assert g not in state.list_grants()
        assert state.revoke_token(token_hash(tokens[kind])) is False
    assert state.revoke_token(token_hash("unknown")) is False
    assert state.revoke_token("not a digest") is False


def test_revoke_grant_removes_every_code_and_token_of_it_and_nothing_else(state: AuthStateStore) -> None:
    client(state)
    g, kept = grant(state), grant(state)
    code_secret, _ = code(state, g)
    access, refresh = issue(state, g, "access"), issue(state, g, "refresh")
    kept_access = issue(state, kept, "access")
    kept_code, kept_stored = code(state, kept)
    assert state.revoke_grant(g.grant_id) is True
    assert state.revoke_grant(g.grant_id) is False
    assert state.take_code(token_hash(code_secret), NOW) is None
    assert not live(state, access, "access") and not live(state, refresh, "refresh")
    assert state.list_grants() == [kept] and live(state, kept_access, "access")
    assert state.take_code(token_hash(kept_code), NOW) == kept_stored
    state.create_grant(g)  # a grant of the same id again: nothing of the revoked one comes back with it
    assert state.take_code(token_hash(code_secret), NOW) is None
    assert not live(state, access, "access") and not live(state, refresh, "refresh")


def test_delete_client_removes_every_grant_code_and_token_of_it(state: AuthStateStore) -> None:
    client(state, "client-a")
    client(state, "client-b")
    doomed = [grant(state, "client-a") for _ in range(2)]
    codes = [code(state, g)[0] for g in doomed]
    tokens = [(issue(state, g, "access"), issue(state, g, "refresh")) for g in doomed]
    kept = grant(state, "client-b")
    kept_access = issue(state, kept, "access")
    assert state.delete_client("client-a") is True
    assert state.list_grants() == [kept]
    assert all(state.take_code(token_hash(c), NOW) is None for c in codes)
    assert not any(live(state, a, "access") or live(state, r, "refresh") for a, r in tokens)
    assert live(state, kept_access, "access")
    with pytest.raises(UnknownClient):
        grant(state, "client-a")
    client(state, "client-a")  # registered again, with grants of the same ids: nothing of the old ones comes back
    for g in doomed:
        state.create_grant(g)
    assert all(state.take_code(token_hash(c), NOW) is None for c in codes)
    assert not any(live(state, a, "access") or live(state, r, "refresh") for a, r in tokens)


# --- expiry ---------------------------------------------------------------------------------------------


def test_purge_expired_keeps_a_used_code_tombstone_until_the_code_expires(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    secret, _ = code(state, g, expires_at=NOW + 60)
    assert state.take_code(token_hash(secret), NOW) is not None
    access = issue(state, g, "access", expires_at=NOW + 3600)
    assert state.purge_expired(NOW + 59) == 0  # the tombstone stays
    assert state.take_code(token_hash(secret), NOW + 59) is None  # so a replay is still recognised
    assert not live(state, access, "access") and state.list_grants() == []

    g = grant(state)
    secret, _ = code(state, g, expires_at=NOW + 60)
    assert state.take_code(token_hash(secret), NOW) is not None
    access = issue(state, g, "access", expires_at=NOW + 3600)
    assert state.purge_expired(NOW + 60) == 1  # once expired, the tombstone goes
    assert live(state, access, "access", NOW + 60)


def test_purge_expired_deletes_expired_tokens_and_grants_left_idle(state: AuthStateStore) -> None:
    client(state)
    g = grant(state)
    issue(state, g, "access", expires_at=NOW + 10)
    issue(state, g, "refresh", expires_at=NOW + 20)
    forever = grant(state)
    everlasting = issue(state, forever, "refresh", expires_at=None)
    assert state.purge_expired(NOW + 15) == 1
    assert len(state.list_grants()) == 2
    assert state.purge_expired(NOW + 20) == 1  # the refresh token; the grant is young yet
    later = g.created_at + IDLE_GRANT_S
    assert state.purge_expired(later) == 1  # now the grant left with nothing goes too
    assert state.list_grants() == [forever] and live(state, everlasting, "refresh", later)


def test_the_state_is_shared_by_every_store_opened_on_the_database(opened: Callable[[], MemoryService]) -> None:
    first, second = opened().backend.auth_state, opened().backend.auth_state
    client(first)
    g = grant(first)
    access = issue(first, g, "access")
    assert second.list_grants() == [g] and live(second, access, "access")
    assert second.revoke_grant(g.grant_id)
    assert not live(first, access, "access")


def test_the_stores_maintenance_purges_what_expired(opened: Callable[[], MemoryService]) -> None:
    """maintenance() runs after each auto-forget sweep (one process of the store at a time)."""
    backend = opened().backend
    state = backend.auth_state
    client(state)
    g = grant(state)
    now = time.time()
    code(state, g, expires_at=now - 1)
    issue(state, g, "access", expires_at=now - 1)
    kept = issue(state, g, "refresh", expires_at=now + 3600)
    backend.maintenance()
    assert state.purge_expired(now) == 0  # nothing left to purge
    assert live(state, kept, "refresh", now)


def test_a_failing_purge_is_logged_and_the_maintenance_goes_on(
    opened: Callable[[], MemoryService], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    backend = opened().backend
    state = backend.auth_state

    def busy(now: float) -> int:
        raise StoreBusy("the store is busy; nothing was written")

    monkeypatch.setattr(state, "purge_expired", busy)
    backend.maintenance()
    assert "purging expired OAuth codes and tokens failed" in caplog.text
