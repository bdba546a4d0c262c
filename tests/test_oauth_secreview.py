"""Findings of the security review of the OAuth 2.1 work (issue 22), one test each: each failed on the code as
merged and passes with its fix."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx2
import pytest
from oauth_support import (
    ISSUER,
    PASSPHRASE,
    RESOURCE,
    auth_state,
    authorize_url,
    code_for,
    exchange,
    http_client,
    open_consent,
    protected_app,
    register,
)

from agentcache_mcp.auth.server import AuthServerConfig, build_authorization_server
from agentcache_mcp.auth.state import AuthStateStore

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AuthStateStore]:
    with auth_state(tmp_path / "oauth.db") as store:
        yield store


@pytest.fixture
async def http(state: AuthStateStore) -> AsyncIterator[httpx2.AsyncClient]:
    config = AuthServerConfig(issuer_url=ISSUER, resource_url=RESOURCE, passphrase=PASSPHRASE, failed_passphrase_pause_s=0.05)
    async with http_client(protected_app(build_authorization_server(config, lambda: state))) as client:
        yield client


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


async def test_a_code_verifier_shorter_than_43_characters_or_outside_the_pkce_alphabet_is_refused(
    http: httpx2.AsyncClient,
) -> None:
    # RFC 7636 §4.1: 43 to 128 characters of [A-Za-z0-9-._~]. A one-character verifier's S256 challenge, which
    # travels in the front channel, can be reversed by trying every character: PKCE would protect nothing.
    client = await register(http)
    for weak in ("a", "x" * 42, "é" * 43, "a b" * 20, "x" * 129):
        code = await code_for(http, client.client_id, s256(weak))
        response = await exchange(http, client.client_id, code, weak)
        assert response.status_code == 400, (weak, response.text)
        assert response.json()["error"] == "invalid_request"
        assert "code_verifier" in response.json()["error_description"]
    good = "Az09-._~" * 6
    code = await code_for(http, client.client_id, s256(good))
    assert (await exchange(http, client.client_id, code, good)).status_code == 200


async def test_a_client_name_with_control_or_bidi_characters_is_cleaned_at_registration_and_on_the_consent_page(
    http: httpx2.AsyncClient, state: AuthStateStore
) -> None:
    # U+202E RIGHT-TO-LEFT OVERRIDE makes the consent page show "Claude" spelled backwards as something else; a
    # newline or an escape in a name forges lines in the server's log and the `auth` tables.
    client = await register(http, name="Evil\u202eedualC\u2066\n\x1b\x00 app")
    assert client.client_name == "EviledualC app"
    page = await open_consent(http, authorize_url(client.client_id, s256("v" * 43)))
    assert "EviledualC app" in page.text
    for bad in ("\u202e", "\u2066", "\x1b", "\x00"):
        assert bad not in page.text


async def test_log_lines_quote_what_a_stranger_chose_so_it_cannot_forge_lines(
    http: httpx2.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentcache_mcp")
    await http.post("/register", json={"client_name": "x\n2026-12-04 oauth: the owner approved client 'y'", "redirect_uris": [
        "http://127.0.0.1:1/cb"]})
    await http.get(authorize_url("https://127.0.0.1/x\nforged line", s256("v" * 43)))
    lines = [record.getMessage() for record in caplog.records if record.name == "agentcache_mcp"]
    assert lines and all("\n" not in line for line in lines), lines
