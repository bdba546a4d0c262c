"""End to end, as a connector that speaks only OAuth: the MCP SDK's own OAuth client (OAuthClientProvider)
against the real server (`serve`'s app: serving.http_server over build_server and a real store, on a real
uvicorn socket) with AGENTCACHE_OAUTH=builtin: a 401 starts discovery (protected-resource metadata, then the
authorization server's), the client registers (RFC 7591), the owner approves on the consent page with the
passphrase (the test plays the browser), the code is exchanged with PKCE, and the client initializes and
calls the tools. Then what the resource side must refuse, with tokens that flow really issued.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.auth.oauth2 import OAuthClientProvider
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata
from oauth_support import MemoryStorage as Storage

from agentcache_mcp.config import Settings

from conftest import HashEmbedder
from ui_support import UiServer

PASSPHRASE = "correct horse battery staple"
STATIC = "static-token-for-scripts-0123456789"
REDIRECT = "http://127.0.0.1:33418/callback"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}  # a loopback redirect: allowed on any port


class Forms(HTMLParser):
    """The forms of a page: action, method, inputs (name -> value, type) and submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get").lower(), "inputs": [],
                               "buttons": []})
        elif self.forms and tag == "input":
            if a.get("type", "text").lower() == "submit":
                self.forms[-1]["buttons"].append((a.get("name", ""), a.get("value", "")))
            else:
                self.forms[-1]["inputs"].append((a.get("name", ""), a.get("value", ""), a.get("type", "text").lower()))
        elif self.forms and tag == "button":
            self.forms[-1]["buttons"].append((a.get("name", ""), a.get("value", "")))


class Owner:
    """The owner's browser: opens the authorization URL, approves on the consent page with the passphrase and
    hands the redirect's code back to the client, as a connector's callback page would."""

    def __init__(self, base: str, passphrase: str = PASSPHRASE):
        self.base = base
        self.passphrase = passphrase
        self.authorization_url: str | None = None
        self.consent_pages = 0
        self.refused: int | None = None  # the consent post's status when it did not redirect with a code

    async def redirect(self, url: str) -> None:
        self.authorization_url = url

    async def callback(self) -> AuthorizationCodeResult:
        assert self.authorization_url is not None
        origin = {"Origin": self.base}
        async with httpx2.AsyncClient(follow_redirects=False, timeout=30) as browser:
            page = await browser.get(self.authorization_url)
            url = self.authorization_url
            while page.status_code in (302, 303, 307) and not page.headers["location"].startswith(REDIRECT):
                url = urljoin(url, page.headers["location"])
                page = await browser.get(url)
            assert page.status_code == 200, (page.status_code, page.text[:300])
            self.consent_pages += 1
            parser = Forms()
            parser.feed(page.text)
            form = next(f for f in parser.forms if f["method"] == "post")
            data = {name: value for name, value, kind in form["inputs"] if name and kind not in ("checkbox", "radio")}
            for name, _, kind in form["inputs"]:
                if kind == "password":
                    data[name] = self.passphrase
            approve = [b for b in form["buttons"] if b[0] and any(w in b[1].lower() for w in ("approve", "allow", "accept"))]
            if approve:
                data[approve[0][0]] = approve[0][1]
            answer = await browser.post(urljoin(url, form["action"] or url), data=data, headers=origin)
        if answer.status_code not in (302, 303):
            self.refused = answer.status_code
            raise Refused(answer.text[:300])
        location = answer.headers["location"]
        assert location.startswith(REDIRECT), location
        query = parse_qs(urlsplit(location).query)
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0],
                                       iss=query.get("iss", [None])[0])


class Refused(Exception):
    """The consent page did not approve."""


class Server(UiServer):
    """`serve` with the OAuth settings under test, over a store of the hashed stand-in embedder."""

    def __init__(self, settings: Settings, transport: str = "streamable-http"):
        super().__init__(settings, HashEmbedder(), transport)


def builtin(tmp_path: Path) -> Settings:
    return Settings(
        db_path=tmp_path / "memory.db", oauth="builtin", oauth_passphrase=PASSPHRASE, auth_token=STATIC,
        auto_forget_enabled=False,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with Server(builtin(tmp_path)) as running:
        yield running


def provider(server: Server, owner: Owner, storage: Storage) -> OAuthClientProvider:
    return OAuthClientProvider(
        server_url=server.base + server.endpoint,
        client_metadata=OAuthClientMetadata(
            client_name="Test connector",
            redirect_uris=[REDIRECT],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            scope="memory",
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=owner.redirect,
        callback_handler=owner.callback,
    )


async def _use_tools(server: Server, auth: OAuthClientProvider) -> list[str]:
    async with contextlib.AsyncExitStack() as stack:
        if server.transport == "sse":
            client = await stack.enter_async_context(Client(sse_client(server.base + "/sse", auth=auth, timeout=30)))
        else:
            http = await stack.enter_async_context(httpx2.AsyncClient(auth=auth, timeout=30))
            client = await stack.enter_async_context(Client(streamable_http_client(server.base + "/mcp", http_client=http)))
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        await client.call_tool("remember", {"text": "The deploy window is Tuesday 14:00 UTC"})
        found = await client.call_tool("recall", {"query": "deploy window"})
        assert "Tuesday 14:00" in str(found.content), found
        return tools


def test_the_sdks_oauth_client_discovers_registers_is_approved_and_calls_the_tools(server: Server):
    owner, storage = Owner(server.base), Storage()
    tools = anyio.run(_use_tools, server, provider(server, owner, storage))
    assert {"recall", "remember"} <= set(tools)
    assert owner.consent_pages == 1 and storage.tokens is not None and storage.client is not None
    # the token the flow issued is bound to this resource, with the scope
    access = anyio.run(_verify, server, storage.tokens.access_token)
    assert access is not None and access.resource == server.base + "/mcp" and "memory" in access.scopes


def test_over_sse_the_token_is_bound_to_the_sse_endpoint(tmp_path: Path):
    with Server(builtin(tmp_path), "sse") as server:
        owner, storage = Owner(server.base), Storage()
        anyio.run(_use_tools, server, provider(server, owner, storage))
        assert storage.tokens is not None
        access = anyio.run(_verify, server, storage.tokens.access_token)
        assert access is not None and access.resource == server.base + "/sse"


async def _verify(server: Server, token: str) -> Any:
    from agentcache_mcp.auth.resource import build_resource_side

    side = build_resource_side(server.settings, server.transport, server.port, lambda: server.app.memory.backend.auth_state)
    assert side is not None
    return await side.verifier.verify_token(token)


def test_a_wrong_passphrase_on_the_consent_page_gets_no_code_and_no_tool_is_called(server: Server):
    owner, storage = Owner(server.base, passphrase="not the passphrase at all"), Storage()
    with pytest.raises(BaseExceptionGroup) as raised:
        anyio.run(_use_tools, server, provider(server, owner, storage))
    assert raised.group_contains(Refused)
    assert owner.refused == 403 and storage.tokens is None
    assert server.app.memory.backend.memories.counts_by_namespace() == {}  # remember never ran


def test_a_revoked_token_is_refused_with_invalid_token(server: Server):
    owner, storage = Owner(server.base), Storage()
    anyio.run(_use_tools, server, provider(server, owner, storage))
    assert storage.tokens is not None and storage.client is not None
    access = storage.tokens.access_token

    async def run() -> None:
        headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {access}"}
        async with httpx2.AsyncClient(timeout=30) as http:
            before = await http.post(server.base + "/mcp", json=INIT, headers=headers)
            assert before.status_code == 200
            revoked = await http.post(
                server.base + "/revoke", data={"token": access, "client_id": storage.client.client_id}  # type: ignore[union-attr]
            )
            assert revoked.status_code == 200
            after = await http.post(server.base + "/mcp", json=INIT, headers=headers)
            assert after.status_code == 401
            assert 'error="invalid_token"' in after.headers["www-authenticate"]
            assert f'resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp"' in (
                after.headers["www-authenticate"]
            )

    anyio.run(run)


def test_the_static_token_works_beside_the_built_in_server(server: Server):
    async def run() -> None:
        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {STATIC}"}, timeout=30) as http,
            Client(streamable_http_client(server.base + "/mcp", http_client=http)) as client,
        ):
            assert (await client.list_tools()).tools

    anyio.run(run)


def test_the_well_known_documents_agree_with_each_other(server: Server):
    async def run() -> None:
        async with httpx2.AsyncClient(timeout=30) as http:
            challenge = await http.post(server.base + "/mcp", json={})
            assert challenge.status_code == 401
            resource = (await http.get(server.base + "/.well-known/oauth-protected-resource/mcp")).json()
            assert resource["resource"] == server.base + "/mcp"
            assert resource["authorization_servers"] == [server.base]
            authorization = (await http.get(server.base + "/.well-known/oauth-authorization-server")).json()
            assert authorization["issuer"] == server.base
            assert authorization["code_challenge_methods_supported"] == ["S256"]

    anyio.run(run)


def test_a_consent_page_shown_by_one_replica_is_approved_through_another(tmp_path: Path) -> None:
    """Replicas behind one URL share the consent page's signing key (the store's secret): the owner's approval
    may reach another replica than the one that showed the page, and the code it gives works at either."""
    import base64
    import hashlib
    import re
    import secrets

    with Server(builtin(tmp_path)) as first:
        public = first.base
        with Server(builtin(tmp_path).model_copy(update={"public_url": public})) as second:

            async def flow() -> None:
                # b is the second replica as a load balancer reaches it: the public URL's Host header passed on
                host = urlsplit(public).netloc
                async with (
                    httpx2.AsyncClient(base_url=first.base) as a,
                    httpx2.AsyncClient(base_url=second.base, headers={"Host": host}) as b,
                ):
                    registered = await a.post("/register", json={"client_name": "Replicated", "redirect_uris": [REDIRECT]})
                    assert registered.status_code == 201, registered.text
                    client_id = registered.json()["client_id"]
                    verifier = secrets.token_urlsafe(48)
                    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
                    asked = await a.get("/authorize", params={
                        "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
                        "code_challenge": challenge, "code_challenge_method": "S256", "state": "s1",
                        "resource": public + "/mcp",
                    })
                    assert asked.status_code == 302, asked.text
                    page = await a.get(urljoin(public, asked.headers["location"]))
                    assert page.status_code == 200, page.text
                    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
                    b.cookies.update(a.cookies)  # one browser, one cookie jar: the host is the same
                    approved = await b.post(
                        "/consent", data={**fields, "passphrase": PASSPHRASE, "decision": "approve"},
                        headers={"Origin": public},
                    )
                    assert approved.status_code == 303, approved.text
                    query = parse_qs(urlsplit(approved.headers["location"]).query)
                    assert query["state"] == ["s1"] and query["iss"] == [public]
                    token = await b.post("/token", data={
                        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT,
                        "client_id": client_id, "code_verifier": verifier, "resource": public + "/mcp",
                    })
                    assert token.status_code == 200, token.text

            anyio.run(flow)


def test_the_sdks_oauth_client_completes_the_flow_on_a_postgresql_store(tmp_path: Path, postgres_url: str) -> None:
    """The built-in server's clients, grants, codes and tokens live in the store: the same flow on PostgreSQL."""
    settings = builtin(tmp_path).model_copy(update={"database_url": postgres_url})
    with Server(settings) as server:
        owner, storage = Owner(server.base), Storage()
        tools = anyio.run(_use_tools, server, provider(server, owner, storage))
        assert {"recall", "remember"} <= set(tools) and owner.consent_pages == 1
        assert storage.tokens is not None and type(server.app.memory.backend).__name__ == "PostgresBackend"
        grants = server.app.memory.backend.auth_state.list_grants()
        assert len(grants) == 1 and grants[0].resource == server.base + "/mcp"
