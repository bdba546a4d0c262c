"""For the built-in authorization server's tests: a real store's AuthStateStore, the authorization server's routes
mounted beside a bearer-checked MCP endpoint (the SDK's RequireAuthMiddleware / BearerAuthBackend with our
verifier; the resource side's own wiring is auth/resource.py's), and the browser's part of the flow (the consent
page read and posted as a browser would) done over HTTP."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
from mcp.server.auth.handlers.metadata import ProtectedResourceMetadataHandler
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken, ProtectedResourceMetadata
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from agentcache_mcp.app import open_memory
from agentcache_mcp.auth.server import AuthorizationServer
from agentcache_mcp.auth.state import AuthStateStore
from agentcache_mcp.config import Settings

from conftest import HashEmbedder

ISSUER = "http://127.0.0.1:8000"
RESOURCE = ISSUER + "/mcp"
PASSPHRASE = "correct horse battery staple"
CALLBACK = "http://127.0.0.1:33418/callback"
PRM_PATH = "/.well-known/oauth-protected-resource/mcp"


@contextmanager
def auth_state(path: Path) -> Iterator[AuthStateStore]:
    """The OAuth state of a real SQLite store at `path`."""
    memory = open_memory(Settings(db_path=path), embedder=HashEmbedder())
    try:
        yield memory.backend.auth_state
    finally:
        memory.close()


def protected_app(
    server: AuthorizationServer, mcp_app: ASGIApp | None = None, *, issuer: str = ISSUER, resource: str = RESOURCE
) -> Starlette:
    """The authorization server's routes, RFC 9728 metadata, and `mcp_app` (or a plain echo at /mcp) behind the
    SDK's bearer check with `server.verifier`, audience-checked against `resource`; a page at /callback."""
    prm = ProtectedResourceMetadata.model_validate(
        {"resource": resource, "authorization_servers": [issuer], "scopes_supported": ["memory"]}
    )

    async def whoami(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.user.display_name}")

    async def callback(request: Request) -> Response:
        return PlainTextResponse("you may close this window")

    inner = mcp_app or Starlette(routes=[Route("/mcp", whoami, methods=["GET", "POST"])])
    routes: list[BaseRoute] = [
        *server.routes,
        Route(PRM_PATH, ProtectedResourceMetadataHandler(prm).handle, methods=["GET"]),
        Route("/callback", callback, methods=["GET"]),
        Mount("", app=RequireAuthMiddleware(inner, ["memory"], AnyHttpUrl(issuer + PRM_PATH))),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                AuthenticationMiddleware,
                backend=BearerAuthBackend(server.verifier, resource_server_url=AnyHttpUrl(resource)),
            ),
            Middleware(AuthContextMiddleware),
        ],
    )


def http_client(app: ASGIApp, **kwargs: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url=ISSUER, **kwargs)


def pkce() -> tuple[str, str]:
    """A (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


async def register(http: httpx2.AsyncClient, *redirect_uris: str, name: str = "Test client") -> OAuthClientInformationFull:
    response = await http.post(
        "/register", json={"client_name": name, "redirect_uris": list(redirect_uris or (CALLBACK,))}
    )
    assert response.status_code == 201, response.text
    return OAuthClientInformationFull.model_validate_json(response.content)


def authorize_url(client_id: str, challenge: str, *, redirect_uri: str = CALLBACK, **extra: str) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st-" + secrets.token_hex(4),
        "resource": RESOURCE,
        **extra,
    }
    return f"{ISSUER}/authorize?{urlencode({k: v for k, v in params.items() if v is not None})}"


def form_fields(page: str) -> dict[str, str]:
    """The hidden inputs of the consent form, as a browser would post them."""
    return {
        html.unescape(name): html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    }


async def open_consent(http: httpx2.AsyncClient, url: str) -> httpx2.Response:
    """Follow the authorization request to the consent page (what the browser shows the owner)."""
    response = await http.get(url)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(ISSUER + "/consent?"), location
    page = await http.get(location)
    assert page.status_code == 200, page.text
    return page


async def consent(
    http: httpx2.AsyncClient, url: str, passphrase: str = PASSPHRASE, decision: str = "approve"
) -> httpx2.Response:
    """Open the consent page and post it as the owner would: the response is the 303 back to the client."""
    page = await open_consent(http, url)
    fields = form_fields(page.text)
    return await http.post(
        "/consent", data={**fields, "passphrase": passphrase, "decision": decision}, headers={"Origin": ISSUER}
    )


def redirect_params(response: httpx2.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), (response.status_code, response.text)
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["location"]).query).items()}


async def code_for(http: httpx2.AsyncClient, client_id: str, challenge: str, **extra: str) -> str:
    response = await consent(http, authorize_url(client_id, challenge, **extra))
    return redirect_params(response)["code"]


async def exchange(
    http: httpx2.AsyncClient, client_id: str, code: str, verifier: str, *, redirect_uri: str = CALLBACK, **extra: str
) -> httpx2.Response:
    return await http.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": RESOURCE,
            **extra,
        },
    )


async def tokens(http: httpx2.AsyncClient, client_id: str) -> OAuthToken:
    """A full authorization for `client_id` (registered with CALLBACK): its tokens."""
    verifier, challenge = pkce()
    code = await code_for(http, client_id, challenge)
    response = await exchange(http, client_id, code, verifier)
    assert response.status_code == 200, response.text
    return OAuthToken.model_validate_json(response.content)


async def refresh(http: httpx2.AsyncClient, client_id: str, refresh_token: str, **extra: str) -> httpx2.Response:
    return await http.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, **extra},
    )


async def call_mcp(http: httpx2.AsyncClient, access_token: str) -> httpx2.Response:
    return await http.get("/mcp", headers={"Authorization": f"Bearer {access_token}"})


class MemoryStorage:
    """The SDK OAuth client's token storage, in memory (a test's connector keeps nothing between runs)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
