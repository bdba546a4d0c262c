"""`agentcache-mcp auth`: the OAuth clients and grants for people (list, revoke, remove), tables and --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_commands import cli_environment, one_error_line, run  # noqa: F401 (an autouse fixture)

from agentcache_mcp.app import open_memory
from agentcache_mcp.auth.state import Grant, StoredClient, StoredToken, token_hash
from agentcache_mcp.config import Settings

from conftest import HashEmbedder

CREATED = 1_780_000_000.0  # 2026-05-28 20:26 UTC
CLAUDE = "https://claude.ai/api/mcp/auth_callback"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """Two clients: Claude with two grants (one used), the inspector with none; an access token per grant."""
    db = tmp_path / "memory.db"
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    state = memory.backend.auth_state
    try:
        state.put_client(
            StoredClient("claude-id", {"client_name": "Claude", "redirect_uris": [CLAUDE], "scope": "memory"}, CREATED)
        )
        state.put_client(
            StoredClient("inspector-id", {"client_name": "MCP Inspector", "redirect_uris": ["http://127.0.0.1:6274/oauth/callback"]}, CREATED + 60)
        )
        for n, grant_id in enumerate(("grant-one", "grant-two")):
            state.create_grant(Grant(grant_id, "claude-id", ("memory",), "http://127.0.0.1:8765/mcp", CREATED + n, None))
            state.put_token(StoredToken(token_hash(grant_id), "access", grant_id, "claude-id", ("memory",), None, None))
        state.get_token(token_hash("grant-two"), "access", CREATED + 3600)  # marks grant-two used
    finally:
        memory.close()
    return db


def live(db: Path, secret: str) -> bool:
    memory = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    try:
        return memory.backend.auth_state.get_token(token_hash(secret), "access", CREATED + 7200) is not None
    finally:
        memory.close()


def test_auth_clients_shows_each_client_with_its_redirects_scopes_and_last_use(
    capsys: pytest.CaptureFixture[str], store: Path
) -> None:
    code, out, err = run(capsys, "--db", store, "auth", "clients")
    assert code == 0 and err == ""
    claude = next(line for line in out.splitlines() if "claude-id" in line)
    assert "Claude" in claude and "memory" in claude and CLAUDE in claude
    assert "2026-05-28 20:26" in claude and "2026-05-28 21:26" in claude  # created, last used
    inspector = next(line for line in out.splitlines() if "inspector-id" in line)
    assert "MCP Inspector" in inspector and " - " in inspector  # never used

    code, out, err = run(capsys, "auth", "clients", "--json", "--db", store)
    assert code == 0 and err == ""
    clients = json.loads(out)["clients"]
    assert [c["client_id"] for c in clients] == ["claude-id", "inspector-id"]
    assert clients[0]["redirect_uris"] == [CLAUDE] and clients[0]["grants"] == 2
    assert clients[0]["last_used_at"] == "2026-05-28T21:26:40.000Z" and clients[1]["last_used_at"] is None


def test_auth_grants_lists_every_grant_or_one_clients(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    code, out, err = run(capsys, "--db", store, "auth", "grants")
    assert code == 0 and err == ""
    rows = [line for line in out.splitlines() if "grant-" in line]
    assert len(rows) == 2 and all("Claude" in row and "claude-id" in row for row in rows)
    code, out, _ = run(capsys, "--db", store, "auth", "grants", "--client", "claude-id", "--json")
    grants = json.loads(out)["grants"]
    assert code == 0 and [g["grant_id"] for g in grants] == ["grant-one", "grant-two"]
    assert grants[1]["last_used_at"] is not None and grants[0]["scopes"] == ["memory"]
    code, out, _ = run(capsys, "--db", store, "auth", "grants", "--client", "inspector-id")
    assert code == 0 and "no grants of client 'inspector-id'" in out


def test_auth_revoke_ends_the_grants_tokens_now(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    code, out, err = run(capsys, "--db", store, "auth", "revoke", "grant-one")
    assert code == 0 and err == ""
    assert "revoked grant grant-one of Claude (claude-id)" in out
    assert not live(store, "grant-one") and live(store, "grant-two")
    code, out, err = run(capsys, "--db", store, "auth", "revoke", "grant-one", "--json")
    assert code == 1 and out == ""
    assert "no grant has the id 'grant-one'" in one_error_line(err)
    code, out, _ = run(capsys, "--db", store, "auth", "revoke", "grant-two", "--json")
    assert code == 0 and json.loads(out) == {"revoked": "grant-two", "client_id": "claude-id"}


def test_auth_remove_client_removes_it_with_every_grant(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    code, out, err = run(capsys, "--db", store, "auth", "remove-client", "claude-id", "--json")
    assert code == 0 and err == ""
    assert json.loads(out) == {"removed": "claude-id", "grants_revoked": ["grant-one", "grant-two"]}
    assert not live(store, "grant-one") and not live(store, "grant-two")
    code, out, _ = run(capsys, "--db", store, "auth", "clients", "--json")
    assert [c["client_id"] for c in json.loads(out)["clients"]] == ["inspector-id"]
    code, out, err = run(capsys, "--db", store, "auth", "remove-client", "claude-id")
    assert code == 1 and out == ""
    assert "no client has the id 'claude-id'" in one_error_line(err)
    code, out, _ = run(capsys, "--db", store, "auth", "remove-client", "inspector-id")
    assert code == 0 and "removed client MCP Inspector (inspector-id) and 0 grants" in out


def test_a_client_name_registered_by_anyone_cannot_drive_the_terminal_or_forge_a_line(
    capsys: pytest.CaptureFixture[str], store: Path
) -> None:
    """Dynamic registration is open: the name and redirect URIs are the registrant's words."""
    memory = open_memory(Settings(db_path=store), embedder=HashEmbedder())
    try:
        memory.backend.auth_state.put_client(
            StoredClient("evil-id", {"client_name": "\x1b[2JClaude\nclaude-id  Claude", "redirect_uris": ["x\x07"]}, CREATED)
        )
    finally:
        memory.close()
    code, out, err = run(capsys, "--db", store, "auth", "clients")
    assert code == 0 and err == ""
    assert "\x1b" not in out and "\x07" not in out
    evil = [line for line in out.splitlines() if "evil-id" in line]
    assert len(evil) == 1 and "\\x1b[2JClaude" in evil[0]  # escaped, and on the client's own row


def test_auth_on_a_store_without_clients_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "memory.db"
    open_memory(Settings(db_path=db), embedder=HashEmbedder()).close()
    code, out, err = run(capsys, "--db", db, "auth", "clients")
    assert code == 0 and err == "" and "no OAuth client has registered" in out
    code, out, _ = run(capsys, "--db", db, "auth", "grants", "--json")
    assert code == 0 and json.loads(out) == {"grants": []}


def test_auth_needs_an_existing_store_and_an_action(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    code, out, err = run(capsys, "--db", db, "auth", "clients")
    assert code == 1 and out == ""
    assert f"no memory database at {db}" in one_error_line(err)
    assert not db.exists()
    code, out, err = run(capsys, "auth")
    assert code == 2 and out == ""
    assert "ACTION" in one_error_line(err)


def test_auth_works_on_a_postgres_store_and_a_revoke_reaches_every_replica(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    replica = open_memory(Settings(database_url=postgres_url), embedder=HashEmbedder())
    try:
        state = replica.backend.auth_state
        state.put_client(StoredClient("claude-id", {"client_name": "Claude", "redirect_uris": [CLAUDE]}, CREATED))
        state.create_grant(Grant("grant-one", "claude-id", ("memory",), None, CREATED, None))
        state.put_token(StoredToken(token_hash("t"), "access", "grant-one", "claude-id", ("memory",), None, None))
        code, out, err = run(capsys, "--db", postgres_url, "auth", "grants", "--json")
        assert code == 0 and err == "" and [g["grant_id"] for g in json.loads(out)["grants"]] == ["grant-one"]
        code, out, err = run(capsys, "--db", postgres_url, "auth", "revoke", "grant-one")
        assert code == 0 and err == "" and "revoked grant grant-one of Claude" in out
        assert state.get_token(token_hash("t"), "access", CREATED) is None  # the running replica sees it at once
    finally:
        replica.close()


def test_revoking_or_removing_a_client_whose_name_holds_a_newline_prints_one_line(
    capsys: pytest.CaptureFixture[str], store: Path
) -> None:
    """The confirmation quotes the registrant's name too: a newline in it must not forge a second line."""
    memory = open_memory(Settings(db_path=store), embedder=HashEmbedder())
    try:
        state = memory.backend.auth_state
        state.put_client(StoredClient("evil-id", {"client_name": "Evil\nremoved client Claude", "redirect_uris": [CLAUDE]}, CREATED))
        state.create_grant(Grant("grant-evil", "evil-id", ("memory",), None, CREATED, None))
    finally:
        memory.close()
    for args in (("auth", "revoke", "grant-evil"), ("auth", "remove-client", "evil-id")):
        code, out, err = run(capsys, "--db", store, *args)
        assert code == 0 and err == "" and len(out.strip().splitlines()) == 1, out
