"""The built-in authorization server (agentcache_mcp/auth/server.py) over a real SQLite store, in-process.

The end-to-end test drives the SDK's own OAuth client (mcp.client.auth.OAuthClientProvider): discovery,
registration, PKCE, the consent page posted as a browser would, the token exchange, then initialize and tool
calls on a bearer-checked MCP endpoint. The other tests are the attacks, one each, by name.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata, OAuthToken
from oauth_support import (
    CALLBACK,
    ISSUER,
    PASSPHRASE,
    RESOURCE,
    MemoryStorage,
    auth_state,
    authorize_url,
    call_mcp,
    code_for,
    consent,
    exchange,
    form_fields,
    http_client,
    open_consent,
    pkce,
    protected_app,
    redirect_params,
    refresh,
    register,
    tokens,
)
from pydantic import AnyUrl

from agentcache_mcp.auth import client_metadata
from agentcache_mcp.auth.client_metadata import ClientMetadataFetcher
from agentcache_mcp.auth.consent import PendingAuthorization, Signer
from agentcache_mcp.auth.redirects import redirect_allowed, redirect_uri_matches
from agentcache_mcp.auth.server import AuthorizationServer, AuthServerConfig, build_authorization_server
from agentcache_mcp.auth.state import AuthStateStore
from agentcache_mcp.config import Settings
from agentcache_mcp.server import build_server

from conftest import HashEmbedder

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[AuthStateStore]:
    with auth_state(tmp_path / "oauth.db") as store:
        yield store


def config(**overrides: Any) -> AuthServerConfig:
    values: dict[str, Any] = {
        "issuer_url": ISSUER,
        "resource_url": RESOURCE,
        "passphrase": PASSPHRASE,
        "failed_passphrase_pause_s": 0.05,
        **overrides,
    }
    return AuthServerConfig(**values)


def build(state: AuthStateStore, fetcher: ClientMetadataFetcher | None = None, **overrides: Any) -> AuthorizationServer:
    return build_authorization_server(config(**overrides), lambda: state, fetcher=fetcher)


@pytest.fixture
async def http(state: AuthStateStore) -> AsyncIterator[httpx2.AsyncClient]:
    async with http_client(protected_app(build(state))) as client:
        yield client


# -- the SDK's own client, end to end


def sdk_client(
    app: Any,
    storage: MemoryStorage,
    landed: list[httpx2.Response],
    browser: httpx2.AsyncClient,
    client_metadata_url: str | None = None,
) -> OAuthClientProvider:
    """The SDK's OAuth client; its browser step posts the consent form with the passphrase, as the owner would."""

    async def redirect_handler(url: str) -> None:
        landed.append(await consent(browser, url))

    async def callback_handler() -> AuthorizationCodeResult:
        params = redirect_params(landed[-1])
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    return OAuthClientProvider(
        server_url=RESOURCE,
        client_metadata=OAuthClientMetadata(
            client_name="SDK client", redirect_uris=[AnyUrl(CALLBACK)], grant_types=["authorization_code", "refresh_token"]
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
        client_metadata_url=client_metadata_url,
    )


def memory_mcp_app(tmp_path: Path) -> Any:
    mcp = build_server(Settings(db_path=tmp_path / "memory.db", auto_forget_enabled=False), embedder=HashEmbedder())
    return mcp.streamable_http_app(
        stateless_http=True, transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )


async def test_the_sdk_client_discovers_registers_authorizes_and_calls_a_tool(state: AuthStateStore, tmp_path: Path) -> None:
    mcp_app = memory_mcp_app(tmp_path)
    app = protected_app(build(state), mcp_app)
    landed: list[httpx2.Response] = []
    storage = MemoryStorage()
    browser = http_client(app)  # the owner's browser: its own cookies, no bearer token
    async with (
        browser,
        mcp_app.router.lifespan_context(mcp_app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), auth=sdk_client(app, storage, landed, browser), timeout=30
        ) as http,
        Client(streamable_http_client(RESOURCE, http_client=http)) as client,
    ):
        remembered = await client.call_tool("remember", {"text": "The owner's bike is green.", "namespace": "home"})
        assert not remembered.is_error, remembered
        recalled = await client.call_tool("recall", {"query": "bike colour", "namespace": "home"})
        assert "green" in str(recalled.structured_content or recalled.content)

    assert len(landed) == 1, "one consent, one authorization"
    params = redirect_params(landed[0])
    assert params["iss"] == ISSUER
    assert storage.tokens is not None and storage.tokens.refresh_token
    assert storage.client is not None and storage.client.token_endpoint_auth_method == "none"
    [grant] = state.list_grants()
    assert grant.client_id == storage.client.client_id and grant.resource == RESOURCE and grant.scopes == ("memory",)


async def test_the_sdk_client_refreshes_with_a_rotated_token_once_its_access_token_expired(
    state: AuthStateStore, tmp_path: Path
) -> None:
    mcp_app = memory_mcp_app(tmp_path)
    app = protected_app(build(state, access_ttl_s=1), mcp_app)
    landed: list[httpx2.Response] = []
    storage = MemoryStorage()
    browser = http_client(app)
    async with (
        browser,
        mcp_app.router.lifespan_context(mcp_app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), auth=sdk_client(app, storage, landed, browser), timeout=30
        ) as http,
        Client(streamable_http_client(RESOURCE, http_client=http)) as client,
    ):
        assert not (await client.call_tool("remember", {"text": "Tea, no sugar.", "namespace": "home"})).is_error
        first = storage.tokens
        await anyio.sleep(2.1)
        assert not (await client.call_tool("recall", {"query": "tea", "namespace": "home"})).is_error
        second = storage.tokens
    assert first is not None and second is not None
    assert second.access_token != first.access_token and second.refresh_token != first.refresh_token
    assert len(landed) == 1, "refreshed, not authorized again"
    assert len(state.list_grants()) == 1


async def test_the_verifier_returns_the_token_with_its_resource_client_and_scope(state: AuthStateStore) -> None:
    server = build(state)
    async with http_client(protected_app(server)) as http:
        client = await register(http)
        issued = await tokens(http, client.client_id)
        checked = await server.verifier.verify_token(issued.access_token)
        assert checked is not None
        assert (checked.resource, checked.client_id, checked.scopes) == (RESOURCE, client.client_id, ["memory"])
        assert checked.expires_at is not None and checked.expires_at > time.time() + 3000
        assert await server.verifier.verify_token(issued.refresh_token or "") is None, "a refresh token is no access token"
        assert (await call_mcp(http, issued.access_token)).text == f"hello {client.client_id}"


async def test_the_metadata_advertises_s256_client_id_metadata_documents_and_iss(http: httpx2.AsyncClient) -> None:
    metadata = (await http.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["issuer"] == ISSUER
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["client_id_metadata_document_supported"] is True
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["token_endpoint_auth_methods_supported"] == ["none"]
    assert metadata["registration_endpoint"] == ISSUER + "/register"
    assert metadata["revocation_endpoint"] == ISSUER + "/revoke"
    assert metadata["scopes_supported"] == ["memory"]


async def test_the_metadata_is_also_served_at_the_path_inserted_address_of_an_issuer_with_a_path(
    state: AuthStateStore,
) -> None:
    server = build(state, issuer_url=ISSUER + "/memory", resource_url=ISSUER + "/memory/mcp")
    async with http_client(protected_app(server)) as http:
        metadata = (await http.get("/.well-known/oauth-authorization-server/memory")).json()
    assert metadata["issuer"] == ISSUER + "/memory"
    assert metadata["authorization_endpoint"] == ISSUER + "/memory/authorize"


# -- PKCE and codes


async def test_a_wrong_pkce_verifier_is_refused(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    _, challenge = pkce()
    code = await code_for(http, client.client_id, challenge)
    other_verifier, _ = pkce()
    response = await exchange(http, client.client_id, code, other_verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_an_authorization_request_without_pkce_or_with_plain_pkce_is_refused(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    verifier, _ = pkce()
    for extra in ({"code_challenge_method": "plain", "code_challenge": verifier}, {"code_challenge": None}):
        response = await http.get(authorize_url(client.client_id, "x" * 43, **extra))  # type: ignore[arg-type]
        params = redirect_params(response)
        assert params["error"] == "invalid_request" and params["iss"] == ISSUER
        assert "code" not in params
    short = await http.get(authorize_url(client.client_id, "too-short"))
    assert redirect_params(short)["error"] == "invalid_request"


async def test_a_reused_code_is_refused_and_the_tokens_issued_from_it_are_revoked(
    http: httpx2.AsyncClient, state: AuthStateStore
) -> None:
    client = await register(http)
    verifier, challenge = pkce()
    code = await code_for(http, client.client_id, challenge)
    first = await exchange(http, client.client_id, code, verifier)
    assert first.status_code == 200
    issued = OAuthToken.model_validate_json(first.content)
    assert (await call_mcp(http, issued.access_token)).status_code == 200

    replay = await exchange(http, client.client_id, code, verifier)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert (await call_mcp(http, issued.access_token)).status_code == 401
    assert (await refresh(http, client.client_id, issued.refresh_token or "")).status_code == 400
    assert state.list_grants() == []


async def test_a_code_is_refused_to_another_client(http: httpx2.AsyncClient) -> None:
    owner, thief = await register(http), await register(http)
    verifier, challenge = pkce()
    code = await code_for(http, owner.client_id, challenge)
    response = await exchange(http, thief.client_id, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_an_expired_code_is_refused(state: AuthStateStore) -> None:
    async with http_client(protected_app(build(state, code_ttl_s=1))) as http:
        client = await register(http)
        verifier, challenge = pkce()
        code = await code_for(http, client.client_id, challenge)
        await anyio.sleep(2.1)
        response = await exchange(http, client.client_id, code, verifier)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# -- redirect URIs


async def test_a_foreign_redirect_uri_is_refused_at_registration_and_at_authorization(http: httpx2.AsyncClient) -> None:
    refused = await http.post("/register", json={"client_name": "Evil", "redirect_uris": ["https://evil.example/cb"]})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_redirect_uri"

    client = await register(http)
    _, challenge = pkce()
    for foreign in ("https://evil.example/cb", "https://claude.ai.evil.example/api/mcp/auth_callback"):
        response = await http.get(authorize_url(client.client_id, challenge, redirect_uri=foreign))
        assert response.status_code == 400, "never a redirect to an unchecked URI"
        assert "location" not in response.headers


async def test_a_registration_keeps_only_the_allowed_redirect_uris_and_no_secret(
    http: httpx2.AsyncClient, state: AuthStateStore
) -> None:
    client = await register(http, "cursor://anysphere.cursor-mcp/oauth/callback", "https://evil.example/cb", CALLBACK)
    assert [str(u) for u in client.redirect_uris or []] == ["cursor://anysphere.cursor-mcp/oauth/callback", CALLBACK]
    assert client.client_secret is None and client.token_endpoint_auth_method == "none"
    stored = state.get_client(client.client_id)
    assert stored is not None and "client_secret" not in stored.metadata


async def test_a_loopback_redirect_on_another_port_is_accepted_but_not_on_another_host(http: httpx2.AsyncClient) -> None:
    client = await register(http, "http://127.0.0.1:33418/callback")
    verifier, challenge = pkce()
    other_port = "http://127.0.0.1:59656/callback"
    code = await code_for(http, client.client_id, challenge, redirect_uri=other_port)
    response = await exchange(http, client.client_id, code, verifier, redirect_uri=other_port)
    assert response.status_code == 200, response.text

    for elsewhere in (
        "http://localhost:59656/callback",  # another host (a name, not the registered IP literal)
        "http://127.0.0.1:59656/other",  # another path
        "http://192.168.1.20:33418/callback",  # not loopback
        "https://127.0.0.1:33418/callback",  # another scheme
    ):
        refused = await http.get(authorize_url(client.client_id, challenge, redirect_uri=elsewhere))
        assert refused.status_code == 400, elsewhere
        assert "location" not in refused.headers


async def test_the_token_request_must_name_the_same_redirect_uri_port_as_the_authorization(
    http: httpx2.AsyncClient,
) -> None:
    client = await register(http)
    verifier, challenge = pkce()
    code = await code_for(http, client.client_id, challenge, redirect_uri="http://127.0.0.1:59656/callback")
    response = await exchange(http, client.client_id, code, verifier, redirect_uri="http://127.0.0.1:1234/callback")
    assert response.status_code == 400


def test_the_allowlist_admits_the_hosted_callbacks_loopback_and_the_ide_schemes_only() -> None:
    for allowed in (
        "https://claude.ai/api/mcp/auth_callback",
        "https://claude.com/api/mcp/auth_callback",
        "https://chatgpt.com/connector_platform_oauth_redirect",
        "http://127.0.0.1:6274/oauth/callback",
        "http://localhost:6274/oauth/callback/debug",
        "http://[::1]:8080/cb",
        "cursor://anysphere.cursor-mcp/oauth/callback",
        "vscode://vscode.github-authentication/did-authenticate",
        "claude://claude.ai/mcp/callback",
    ):
        assert redirect_allowed(allowed), allowed
    for refused in (
        "https://claude.ai/api/mcp/auth_callback/../../evil",
        "https://claude.ai.evil.example/api/mcp/auth_callback",
        "https://evil.example/cb",
        "http://127.0.0.1.evil.example/cb",
        "http://127.0.0.1:80@evil.example/cb",
        "https://127.0.0.1/cb",
        "http://127.0.0.1:8080/cb#fragment",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "data:text/html,hi",
    ):
        assert not redirect_allowed(refused), refused
    assert redirect_allowed("https://memory-app.example/cb", extra=("https://memory-app.example/cb",))
    assert redirect_uri_matches("http://127.0.0.1:59656/", ["http://127.0.0.1/"]), "VS Code's portless registration"
    assert not redirect_uri_matches("http://127.0.0.1:59656/", ["http://localhost/"])
    assert not redirect_uri_matches("https://claude.ai:8443/api/mcp/auth_callback", ["https://claude.ai/api/mcp/auth_callback"])


# -- tokens


async def test_an_expired_access_token_is_refused(state: AuthStateStore) -> None:
    server = build(state, access_ttl_s=1)
    async with http_client(protected_app(server)) as http:
        client = await register(http)
        issued = await tokens(http, client.client_id)
        assert issued.expires_in == 1
        assert (await call_mcp(http, issued.access_token)).status_code == 200
        await anyio.sleep(2.1)
        response = await call_mcp(http, issued.access_token)
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert await server.verifier.verify_token(issued.access_token) is None
        renewed = await refresh(http, client.client_id, issued.refresh_token or "")
        assert renewed.status_code == 200, "the refresh token outlives the access token"


async def test_a_revoked_token_is_refused_and_revoking_one_token_of_a_grant_revokes_both(
    http: httpx2.AsyncClient, state: AuthStateStore
) -> None:
    client = await register(http)
    issued = await tokens(http, client.client_id)
    other = await register(http)
    ignored = await http.post("/revoke", data={"token": issued.access_token, "client_id": other.client_id})
    assert ignored.status_code == 200, "RFC 7009: 200 even when nothing was revoked"
    assert (await call_mcp(http, issued.access_token)).status_code == 200, "another client cannot revoke it"

    response = await http.post("/revoke", data={"token": issued.access_token, "client_id": client.client_id})
    assert response.status_code == 200
    assert (await call_mcp(http, issued.access_token)).status_code == 401
    assert (await refresh(http, client.client_id, issued.refresh_token or "")).status_code == 400
    assert state.list_grants() == []
    again = await http.post("/revoke", data={"token": issued.access_token, "client_id": client.client_id})
    assert again.status_code == 200


async def test_a_refresh_rotates_both_tokens(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    issued = await tokens(http, client.client_id)
    response = await refresh(http, client.client_id, issued.refresh_token or "", resource=RESOURCE)
    assert response.status_code == 200, response.text
    renewed = OAuthToken.model_validate_json(response.content)
    assert renewed.refresh_token and renewed.refresh_token != issued.refresh_token
    assert renewed.access_token != issued.access_token
    assert (await call_mcp(http, renewed.access_token)).status_code == 200


async def test_a_reused_refresh_token_revokes_the_grant(state: AuthStateStore) -> None:
    async with http_client(protected_app(build(state, refresh_reuse_grace_s=0))) as http:
        client = await register(http)
        issued = await tokens(http, client.client_id)
        rotated = await refresh(http, client.client_id, issued.refresh_token or "")
        renewed = OAuthToken.model_validate_json(rotated.content)
        assert (await call_mcp(http, renewed.access_token)).status_code == 200

        stolen = await refresh(http, client.client_id, issued.refresh_token or "")  # the old one, presented again
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        assert (await call_mcp(http, renewed.access_token)).status_code == 401, "every token of the grant is revoked"
        assert (await refresh(http, client.client_id, renewed.refresh_token or "")).status_code == 400
        assert state.list_grants() == []


async def test_a_refresh_retried_within_the_grace_window_rotates_again_and_a_reuse_after_it_revokes_the_grant(
    state: AuthStateStore,
) -> None:
    async with http_client(protected_app(build(state, refresh_reuse_grace_s=1.0))) as http:
        client = await register(http)
        issued = await tokens(http, client.client_id)
        first = await refresh(http, client.client_id, issued.refresh_token or "")
        retried = await refresh(http, client.client_id, issued.refresh_token or "")  # the answer was lost: again
        assert first.status_code == retried.status_code == 200, retried.text
        kept = OAuthToken.model_validate_json(retried.content)
        assert (await call_mcp(http, kept.access_token)).status_code == 200
        await anyio.sleep(1.5)
        late = await refresh(http, client.client_id, issued.refresh_token or "")
        assert late.status_code == 400
        assert (await call_mcp(http, kept.access_token)).status_code == 401
        assert state.list_grants() == []


async def test_a_forged_refresh_token_naming_a_real_grant_is_refused_and_revokes_nothing(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    issued = await tokens(http, client.client_id)
    grant_id = (issued.refresh_token or "").partition(".")[0]
    forged = await refresh(http, client.client_id, f"{grant_id}.{'A' * 43}")
    assert forged.status_code == 400 and forged.json()["error"] == "invalid_grant"
    assert (await call_mcp(http, issued.access_token)).status_code == 200
    assert (await refresh(http, client.client_id, issued.refresh_token or "")).status_code == 200


async def test_a_refresh_token_of_another_client_is_refused_and_left_alone(http: httpx2.AsyncClient) -> None:
    owner, thief = await register(http), await register(http)
    issued = await tokens(http, owner.client_id)
    assert (await refresh(http, thief.client_id, issued.refresh_token or "")).status_code == 400
    assert (await refresh(http, owner.client_id, issued.refresh_token or "")).status_code == 200


# -- the resource (RFC 8707)


async def test_a_token_request_for_another_resource_is_refused(http: httpx2.AsyncClient, state: AuthStateStore) -> None:
    client = await register(http)
    verifier, challenge = pkce()
    code = await code_for(http, client.client_id, challenge)
    response = await exchange(http, client.client_id, code, verifier, resource="https://other.example/mcp")
    assert response.status_code == 400 and response.json()["error"] == "invalid_target"
    assert state.list_grants() == [], "the consumed code's grant is revoked"

    issued = await tokens(http, client.client_id)
    wrong = await refresh(http, client.client_id, issued.refresh_token or "", resource="https://other.example/mcp")
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_target"
    assert (await refresh(http, client.client_id, issued.refresh_token or "")).status_code == 200, "not consumed"


async def test_an_authorization_request_for_another_resource_is_refused(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    _, challenge = pkce()
    response = await http.get(authorize_url(client.client_id, challenge, resource="https://other.example/mcp"))
    params = redirect_params(response)
    assert params["error"] == "invalid_target" and params["iss"] == ISSUER and "code" not in params


async def test_a_token_for_another_resource_is_refused_by_the_bearer_check(state: AuthStateStore) -> None:
    other = build(state, issuer_url=ISSUER, resource_url="http://127.0.0.1:8000/other")
    async with http_client(protected_app(other)) as http:
        client = await register(http)
        verifier, challenge = pkce()
        code = await code_for(http, client.client_id, challenge, resource="http://127.0.0.1:8000/other")
        response = await exchange(http, client.client_id, code, verifier, resource="http://127.0.0.1:8000/other")
        issued = OAuthToken.model_validate_json(response.content)
        assert (await other.verifier.verify_token(issued.access_token)) is not None
        assert (await call_mcp(http, issued.access_token)).status_code == 401, "audience is RESOURCE, not /other"


# -- the consent page


async def test_a_consent_post_without_a_csrf_token_is_refused(http: httpx2.AsyncClient, state: AuthStateStore) -> None:
    client = await register(http)
    _, challenge = pkce()
    page = await open_consent(http, authorize_url(client.client_id, challenge))
    fields = form_fields(page.text)
    del fields["csrf"]
    response = await http.post("/consent", data={**fields, "passphrase": PASSPHRASE, "decision": "approve"})
    assert response.status_code == 403 and "CSRF" in response.text
    assert state.list_grants() == []


async def test_a_consent_post_with_a_wrong_csrf_token_is_refused(http: httpx2.AsyncClient, state: AuthStateStore) -> None:
    client = await register(http)
    _, challenge = pkce()
    page = await open_consent(http, authorize_url(client.client_id, challenge))
    fields = form_fields(page.text)
    fields["csrf"] = "0" * 64
    response = await http.post("/consent", data={**fields, "passphrase": PASSPHRASE, "decision": "approve"})
    assert response.status_code == 403

    # the right token without the browser's cookie (a form another site made the owner post) is refused too
    async with http_client(protected_app(build(state))) as stranger:
        real = form_fields(page.text)
        response = await stranger.post("/consent", data={**real, "passphrase": PASSPHRASE, "decision": "approve"})
        assert response.status_code == 403
    assert state.list_grants() == []


async def test_a_consent_post_from_another_site_is_refused(http: httpx2.AsyncClient, state: AuthStateStore) -> None:
    client = await register(http)
    _, challenge = pkce()
    page = await open_consent(http, authorize_url(client.client_id, challenge))
    data = {**form_fields(page.text), "passphrase": PASSPHRASE, "decision": "approve"}
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        response = await http.post("/consent", data=data, headers=headers)
        assert response.status_code == 403, headers
    assert state.list_grants() == []


async def test_a_wrong_passphrase_is_refused_and_each_failure_waits_longer(
    state: AuthStateStore,
) -> None:
    async with http_client(protected_app(build(state, failed_passphrase_pause_s=0.3))) as http:
        client = await register(http)
        _, challenge = pkce()
        page = await open_consent(http, authorize_url(client.client_id, challenge))
        data = {**form_fields(page.text), "decision": "approve"}
        started = time.monotonic()
        first = await http.post("/consent", data={**data, "passphrase": "guess"})
        after_first = time.monotonic()
        second = await http.post("/consent", data={**data, "passphrase": ""})
        after_second = time.monotonic()
        assert first.status_code == second.status_code == 403
        assert "Wrong passphrase" in first.text and "location" not in first.headers
        assert after_first - started >= 0.3 and after_second - after_first >= 0.6, "the pause grows"
        assert state.list_grants() == []
        # the page is shown again and the right passphrase then works
        retry = {**form_fields(first.text), "decision": "approve", "passphrase": PASSPHRASE}
        assert "code" in redirect_params(await http.post("/consent", data=retry))


async def test_parallel_passphrase_guesses_are_refused_unchecked_while_a_wrong_one_is_paused_for(
    state: AuthStateStore,
) -> None:
    server = build(state, failed_passphrase_pause_s=1.0)
    async with http_client(protected_app(server)) as http:
        client = await register(http)
        _, challenge = pkce()
        page = await open_consent(http, authorize_url(client.client_id, challenge))
        data = {**form_fields(page.text), "decision": "approve"}
        answers: list[httpx2.Response] = []

        async def guess() -> None:
            answers.append(await http.post("/consent", data={**data, "passphrase": "guess"}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(guess)
            with anyio.fail_after(30):
                while not server.passphrase_gate.busy:
                    await anyio.sleep(0.01)
            during = await http.post("/consent", data={**data, "passphrase": PASSPHRASE})
        assert during.status_code == 429 and "wait a few seconds" in during.text
        assert state.list_grants() == [], "the right passphrase posted during the pause was not even compared"
        assert [a.status_code for a in answers] == [403]
        retry = await http.post("/consent", data={**data, "passphrase": PASSPHRASE})
        assert "code" in redirect_params(retry), "after the pause it works"


async def test_the_consent_page_shows_the_client_the_redirect_host_and_the_scope_and_cannot_be_framed(
    http: httpx2.AsyncClient,
) -> None:
    client = await register(http, name='<script>alert("x")</script> Notes')
    _, challenge = pkce()
    page = await open_consent(http, authorize_url(client.client_id, challenge))
    assert "&lt;script&gt;" in page.text and "<script>" not in page.text
    assert "127.0.0.1:33418" in page.text and "memory" in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "same-origin", "no-referrer makes Chromium post with Origin: null"
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/consent" in cookie
    framed = await http.get(page.url, headers={"Sec-Fetch-Dest": "iframe"})
    assert framed.status_code == 403


async def test_an_unknown_scope_is_refused_but_offline_access_is_taken_as_granted(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    _, challenge = pkce()
    refused = redirect_params(await http.get(authorize_url(client.client_id, challenge, scope="memory admin")))
    assert refused["error"] == "invalid_scope" and refused["iss"] == ISSUER
    verifier, challenge = pkce()
    code = await code_for(http, client.client_id, challenge, scope="memory offline_access")
    issued = OAuthToken.model_validate_json((await exchange(http, client.client_id, code, verifier)).content)
    assert issued.scope == "memory" and issued.refresh_token


async def test_every_authorization_shows_the_consent_page_even_for_an_approved_client(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    await tokens(http, client.client_id)
    _, challenge = pkce()
    response = await http.get(authorize_url(client.client_id, challenge))
    assert response.status_code == 302 and response.headers["location"].startswith(ISSUER + "/consent?")


async def test_a_denial_redirects_with_access_denied_state_and_iss(http: httpx2.AsyncClient, state: AuthStateStore) -> None:
    client = await register(http)
    _, challenge = pkce()
    url = authorize_url(client.client_id, challenge, state="keep-me")
    params = redirect_params(await consent(http, url, passphrase="", decision="deny"))
    assert params == {"error": "access_denied", "state": "keep-me", "iss": ISSUER}
    assert state.list_grants() == []


async def test_an_approval_redirects_with_303_code_state_and_iss(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    _, challenge = pkce()
    response = await consent(http, authorize_url(client.client_id, challenge, state="s1"))
    assert response.status_code == 303, "a GET follows: the passphrase is never re-posted to the client"
    assert response.headers["location"].startswith(CALLBACK + "?")
    params = redirect_params(response)
    assert params["state"] == "s1" and params["iss"] == ISSUER and len(params["code"]) >= 43


async def test_registration_at_the_cap_replaces_the_oldest_unapproved_client_but_never_an_approved_one(
    state: AuthStateStore,
) -> None:
    async with http_client(protected_app(build(state, max_clients=2))) as http:
        approved = await register(http, name="approved")
        await tokens(http, approved.client_id)
        idle = await register(http, name="idle")
        newcomer = await register(http, name="newcomer")
        assert {c.client_id for c in state.list_clients()} == {approved.client_id, newcomer.client_id}
        assert idle.client_id != newcomer.client_id
        await tokens(http, newcomer.client_id)
        refused = await http.post("/register", json={"redirect_uris": [CALLBACK]})
        assert refused.status_code == 400 and "remove-client" in refused.json()["error_description"]


async def test_a_tampered_or_expired_consent_request_is_refused(http: httpx2.AsyncClient) -> None:
    client = await register(http)
    _, challenge = pkce()
    page = await open_consent(http, authorize_url(client.client_id, challenge))
    ticket = form_fields(page.text)["ticket"]
    body, _, mac = ticket.partition(".")
    forged = await http.get("/consent", params={"request": body[:-2] + "AA." + mac})
    assert forged.status_code == 400

    signer = Signer(b"k" * 32)
    stale = PendingAuthorization(client.client_id, CALLBACK, True, "s", challenge, ("memory",), RESOURCE, 100.0)
    assert signer.open_ticket(signer.ticket(stale), now=99.0) is not None
    assert signer.open_ticket(signer.ticket(stale), now=101.0) is None, "an expired request is refused"
    assert Signer(b"x" * 32).open_ticket(signer.ticket(stale), now=99.0) is None, "another key's ticket"


# -- Client ID Metadata Documents


CIMD_URL = "https://app.example.com/oauth/client.json"


def cimd_fetcher(document: dict[str, Any] | bytes, address: str = "93.184.216.34") -> ClientMetadataFetcher:
    """A fetcher whose network serves `document` and whose resolver answers `address`."""
    seen: list[httpx2.Request] = []

    def serve(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        body = document if isinstance(document, bytes) else httpx2.Response(200, json=document).content
        return httpx2.Response(200, content=body, headers={"Content-Type": "application/json"})

    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    fetcher = ClientMetadataFetcher(transport=httpx2.MockTransport(serve), resolve=resolve)
    fetcher.requests = seen  # type: ignore[attr-defined]
    return fetcher


async def test_a_client_id_metadata_document_client_completes_the_flow(state: AuthStateStore) -> None:
    fetcher = cimd_fetcher({"client_id": CIMD_URL, "client_name": "Example app", "redirect_uris": [CALLBACK]})
    async with http_client(protected_app(build(state, fetcher))) as http:
        issued = await tokens(http, CIMD_URL)
        assert (await call_mcp(http, issued.access_token)).status_code == 200
    [request] = fetcher.requests  # type: ignore[attr-defined]
    assert request.url.host == "93.184.216.34", "the connection goes to the address that was checked"
    assert request.headers["host"] == "app.example.com"
    assert request.extensions["sni_hostname"] == "app.example.com"
    stored = state.get_client(CIMD_URL)
    assert stored is not None and stored.metadata["client_name"] == "Example app"


async def test_the_sdk_client_with_a_client_id_metadata_document_registers_nothing_and_calls_a_tool(
    state: AuthStateStore, tmp_path: Path
) -> None:
    fetcher = cimd_fetcher({"client_id": CIMD_URL, "client_name": "Example app", "redirect_uris": [CALLBACK]})
    mcp_app = memory_mcp_app(tmp_path)
    app = protected_app(build(state, fetcher), mcp_app)
    landed: list[httpx2.Response] = []
    storage = MemoryStorage()
    browser = http_client(app)
    async with (
        browser,
        mcp_app.router.lifespan_context(mcp_app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app),
            auth=sdk_client(app, storage, landed, browser, client_metadata_url=CIMD_URL),
            timeout=30,
        ) as http,
        Client(streamable_http_client(RESOURCE, http_client=http)) as client,
    ):
        assert not (await client.call_tool("remember", {"text": "Plants need water on Sundays.", "namespace": "home"})).is_error
    assert [c.client_id for c in state.list_clients()] == [CIMD_URL], "no dynamic registration"
    assert [g.client_id for g in state.list_grants()] == [CIMD_URL]
    assert redirect_params(landed[0])["iss"] == ISSUER


async def test_a_client_id_metadata_document_whose_client_id_differs_is_refused(state: AuthStateStore) -> None:
    fetcher = cimd_fetcher({"client_id": "https://other.example/client.json", "redirect_uris": [CALLBACK]})
    async with http_client(protected_app(build(state, fetcher))) as http:
        _, challenge = pkce()
        response = await http.get(authorize_url(CIMD_URL, challenge))
    assert response.status_code == 400 and "location" not in response.headers
    assert "client_id is not its own URL" in response.json()["error_description"]
    assert state.get_client(CIMD_URL) is None


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("https://127.0.0.1/client.json", None),
        ("https://[::1]/client.json", None),
        ("https://169.254.169.254/latest/meta-data", None),
        ("https://internal.example/client.json", "10.0.0.7"),
        ("https://internal.example/client.json", "192.168.1.1"),
        ("https://internal.example/client.json", "::ffff:127.0.0.1"),
        ("https://internal.example/client.json", "100.64.0.1"),
        ("https://internal.example/client.json", "64:ff9b::7f00:1"),  # NAT64 to 127.0.0.1
        ("https://internal.example/client.json", "2002:a00:1::1"),  # 6to4 of 10.0.0.1
        ("https://internal.example/client.json", "::127.0.0.1"),  # IPv4-compatible
        ("https://internal.example/client.json", "fe80::1%eth0"),
    ],
)
async def test_a_client_id_metadata_document_url_on_a_private_address_is_refused(
    state: AuthStateStore, url: str, address: str | None
) -> None:
    fetcher = cimd_fetcher({"client_id": url, "redirect_uris": [CALLBACK]})
    if address is None:
        fetcher.resolve = client_metadata.system_resolve  # an IP literal: no DNS
    else:
        fetcher.resolve = cimd_fetcher({}, address).resolve
    async with http_client(protected_app(build(state, fetcher))) as http:
        _, challenge = pkce()
        response = await http.get(authorize_url(url, challenge))
    assert response.status_code == 400 and "non-public address" in response.json()["error_description"]
    assert fetcher.requests == [], "nothing was requested"  # type: ignore[attr-defined]
    assert state.get_client(url) is None


async def test_a_client_id_metadata_document_that_is_too_large_or_not_https_is_refused(state: AuthStateStore) -> None:
    big = b'{"client_id": "' + CIMD_URL.encode() + b'", "redirect_uris": ["' + CALLBACK.encode() + b'"], "pad": "' + b"x" * 10_000 + b'"}'
    async with http_client(protected_app(build(state, cimd_fetcher(big)))) as http:
        _, challenge = pkce()
        response = await http.get(authorize_url(CIMD_URL, challenge))
        assert response.status_code == 400 and "larger than" in response.json()["error_description"]
    for bad in ("https://app.example.com/", "https://user@app.example.com/c.json", "https://app.example.com/a/../c.json"):
        with pytest.raises(client_metadata.ClientMetadataError):
            client_metadata.check_url(bad)


async def test_a_client_id_metadata_document_asking_for_a_secret_is_refused() -> None:
    document = {"client_id": CIMD_URL, "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "client_secret_post"}
    with pytest.raises(client_metadata.ClientMetadataError, match="only 'none'"):
        client_metadata.check_document(CIMD_URL, httpx2.Response(200, json=document).content)
