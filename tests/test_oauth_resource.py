"""The HTTP transports as an OAuth protected resource (agentcache_mcp/auth/resource.py and its wiring in
serving.http_server / transports.guard): the challenge, the metadata, audience and scope, the static token
beside OAuth, CORS under the Host/Origin guard, and JwtVerifier against keys and a JWKS the tests make.

The app under test is the one `serve` runs (serving.http_server over an MCPServer with one tool), driven with
starlette's TestClient (which runs the lifespan the streamable HTTP transport needs); the JWKS is served by a
real local HTTP server, as PyJWT fetches it with urllib.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import MCPServer
from starlette.testclient import TestClient

from agentcache_mcp import serving
from agentcache_mcp.auth.resource import (
    CORS_ALLOWED_HEADERS,
    CORS_EXPOSED_HEADERS,
    JwtVerifier,
    ResourceConfig,
    ResourceSide,
    metadata_routes,
)
from agentcache_mcp.config import Settings
from agentcache_mcp.transports import bind_refusal, guard

BASE = "http://127.0.0.1:8765"
RESOURCE = BASE + "/mcp"
METADATA = BASE + "/.well-known/oauth-protected-resource/mcp"
ISSUER = "https://idp.example/"
STATIC = "static-token-for-scripts-0123456789"
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}


# --- keys and a JWKS served over HTTP -----------------------------------------------------------------------


class Keys:
    """An RSA and an EC P-256 key with their JWKS, served at `url`; `served` can be replaced (key rotation)."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        self.served: dict[str, Any] = {
            "keys": [{**rsa_jwk, "kid": "rsa-1", "use": "sig"}, {**ec_jwk, "kid": "ec-1", "use": "sig"}]
        }
        self.fetches = 0
        self.url = ""

    def token(self, claims: dict[str, Any] | None = None, *, alg: str = "RS256", kid: str = "rsa-1", key: Any = None,
              drop: tuple[str, ...] = ()) -> str:
        now = int(time.time())
        body = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "azp": "team-app", "scope": "memory openid",
                "iat": now, "exp": now + 600, **(claims or {})}
        for name in drop:
            body.pop(name, None)
        signing = key if key is not None else (self.ec if alg.startswith("ES") else self.rsa)
        return jwt.encode(body, signing, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    made = Keys()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            made.fetches += 1
            data = json.dumps(made.served).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    made.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()


def mcp_server() -> MCPServer:
    server = MCPServer("t")

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


def jwt_settings(keys: Keys, tmp_path: Path, **more: Any) -> Settings:
    return Settings(
        db_path=tmp_path / "m.db", oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url=keys.url, auth_token=STATIC, **more
    )


@pytest.fixture
def client(keys: Keys, tmp_path: Path) -> Iterator[TestClient]:
    asgi = serving.http_server(mcp_server(), jwt_settings(keys, tmp_path), "streamable-http").config.app
    with TestClient(asgi, base_url=BASE) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {**ACCEPT, "Authorization": f"Bearer {token}"}


def challenge_fields(value: str) -> dict[str, str]:
    assert value.startswith("Bearer ")
    pairs = re.findall(r'(\w+)="([^"\\]*)"(?:, |$)', value[len("Bearer ") :])
    assert ", ".join(f'{k}="{v}"' for k, v in pairs) == value[len("Bearer ") :], value  # nothing else in it
    return dict(pairs)


# --- the challenge ------------------------------------------------------------------------------------------


def test_a_request_without_a_token_gets_401_with_the_resource_metadata_and_scope_and_no_error(client: TestClient):
    answer = client.post("/mcp", json=INIT, headers=ACCEPT)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA}", scope="memory"'
    assert answer.headers["cache-control"] == "no-store"


def test_a_bad_token_gets_401_with_error_invalid_token(client: TestClient):
    answer = client.post("/mcp", json=INIT, headers=bearer("not-a-token"))
    assert answer.status_code == 401
    fields = challenge_fields(answer.headers["www-authenticate"])
    assert fields["error"] == "invalid_token"
    assert (fields["resource_metadata"], fields["scope"]) == (METADATA, "memory")
    assert answer.json()["error"] == "invalid_token"


def test_another_auth_scheme_gets_the_challenge_without_an_error(client: TestClient):
    answer = client.post("/mcp", json=INIT, headers={**ACCEPT, "Authorization": "Basic dXNlcjpwYXNz"})
    assert answer.status_code == 401
    assert "error" not in challenge_fields(answer.headers["www-authenticate"])


def test_two_authorization_headers_are_a_bad_request(client: TestClient, keys: Keys):
    headers = [("authorization", f"Bearer {keys.token()}"), ("authorization", f"Bearer {STATIC}")]
    answer = client.post("/mcp", json=INIT, headers=[*ACCEPT.items(), *headers])
    assert answer.status_code == 400


def test_every_method_and_the_sse_path_need_the_token(keys: Keys, tmp_path: Path):
    asgi = serving.http_server(mcp_server(), jwt_settings(keys, tmp_path), "sse").config.app
    with TestClient(asgi, base_url=BASE) as test_client:
        for method, path in [("GET", "/sse"), ("POST", "/messages/?session_id=0"), ("DELETE", "/sse")]:
            answer = test_client.request(method, path)
            assert answer.status_code == 401, (method, path)
            assert challenge_fields(answer.headers["www-authenticate"])["resource_metadata"] == (
                BASE + "/.well-known/oauth-protected-resource/sse"
            )


# --- tokens -------------------------------------------------------------------------------------------------


def test_a_good_jwt_calls_a_tool_rs256_and_es256(client: TestClient, keys: Keys):
    for token in (keys.token(), keys.token(alg="ES256", kid="ec-1")):
        assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200
        answer = client.post("/mcp", json=CALL, headers=bearer(token))
        assert answer.status_code == 200 and '"hi"' in answer.text


def test_the_scope_may_come_as_a_scp_list(client: TestClient, keys: Keys):
    token = keys.token({"scp": ["memory"]}, drop=("scope",))
    assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200


def test_a_token_lacking_the_scope_gets_403_insufficient_scope(client: TestClient, keys: Keys):
    answer = client.post("/mcp", json=INIT, headers=bearer(keys.token({"scope": "openid profile"})))
    assert answer.status_code == 403
    fields = challenge_fields(answer.headers["www-authenticate"])
    assert (fields["error"], fields["scope"], fields["resource_metadata"]) == ("insufficient_scope", "memory", METADATA)


def test_a_jwt_for_another_audience_is_refused(client: TestClient, keys: Keys):
    for audience in ("https://other.example/mcp", BASE, BASE + "/mcp/other", ["https://other.example/mcp"]):
        answer = client.post("/mcp", json=INIT, headers=bearer(keys.token({"aud": audience})))
        assert answer.status_code == 401, audience
        assert challenge_fields(answer.headers["www-authenticate"])["error"] == "invalid_token"


def test_a_jwt_whose_audience_list_holds_this_resource_is_accepted(client: TestClient, keys: Keys):
    token = keys.token({"aud": ["https://other.example/api", RESOURCE]})
    assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200


def test_a_jwt_from_another_issuer_is_refused(client: TestClient, keys: Keys):
    for issuer in ("https://evil.example/", "https://idp.example", None):
        token = keys.token({"iss": issuer}) if issuer else keys.token(drop=("iss",))
        assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401, issuer


def test_an_expired_jwt_is_refused_beyond_the_leeway_and_one_without_exp_too(client: TestClient, keys: Keys):
    now = int(time.time())
    assert client.post("/mcp", json=INIT, headers=bearer(keys.token({"exp": now - 120}))).status_code == 401
    assert client.post("/mcp", json=INIT, headers=bearer(keys.token({"exp": now - 5}))).status_code == 200  # skew
    assert client.post("/mcp", json=INIT, headers=bearer(keys.token(drop=("exp",)))).status_code == 401


def test_a_jwt_not_yet_valid_is_refused(client: TestClient, keys: Keys):
    token = keys.token({"nbf": int(time.time()) + 600})
    assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401


def test_a_jwt_signed_by_an_unknown_key_is_refused(client: TestClient, keys: Keys):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for kid in ("rsa-1", "rsa-unknown"):  # the known key id, and one the JWKS does not have
        answer = client.post("/mcp", json=INIT, headers=bearer(keys.token(kid=kid, key=stranger)))
        assert answer.status_code == 401, kid


def test_alg_none_is_refused(client: TestClient, keys: Keys):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "a", "scope": "memory", "exp": now + 600}

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    for alg in ("none", "None", "NONE"):
        unsigned = f"{b64({'alg': alg, 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(claims)}."
        assert client.post("/mcp", json=INIT, headers=bearer(unsigned)).status_code == 401, alg


def test_hs256_signed_with_the_public_key_is_refused(client: TestClient, keys: Keys):
    public_pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "a", "scope": "memory", "exp": now + 600}
    # PyJWT refuses to sign HS256 with a PEM key, so the token is made by hand, as an attacker would.
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()) + "." + b64(json.dumps(claims).encode())
    forged = head + "." + b64(hmac.new(public_pem, head.encode(), hashlib.sha256).digest())
    assert client.post("/mcp", json=INIT, headers=bearer(forged)).status_code == 401


def test_an_ec_header_naming_the_rsa_key_is_refused(client: TestClient, keys: Keys):
    token = keys.token(alg="ES256", kid="rsa-1")  # signed with the EC key, but naming the RSA one
    assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401


def test_the_static_token_still_works_beside_oauth(client: TestClient):
    assert client.post("/mcp", json=INIT, headers=bearer(STATIC)).status_code == 200
    answer = client.post("/mcp", json=CALL, headers={**bearer(STATIC), "Authorization": f"bearer {STATIC}"})
    assert answer.status_code == 200 and '"hi"' in answer.text
    assert client.post("/mcp", json=INIT, headers=bearer(STATIC + "x")).status_code == 401


def test_the_jwks_is_fetched_once_and_cached(keys: Keys, tmp_path: Path):
    verifier = JwtVerifier(ISSUER, keys.url, RESOURCE, RESOURCE)
    before = keys.fetches
    for _ in range(5):
        assert anyio.run(verifier.verify_token, keys.token()) is not None
    assert keys.fetches - before == 1


def test_an_unreachable_jwks_refuses_the_token_within_the_timeout(keys: Keys):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    try:
        verifier = JwtVerifier(ISSUER, f"http://127.0.0.1:{silent.getsockname()[1]}/jwks", RESOURCE, RESOURCE, timeout_s=0.5)
        started = time.monotonic()
        assert anyio.run(verifier.verify_token, keys.token()) is None
        assert time.monotonic() - started < 10

        async def many() -> list[AccessToken | None]:
            found: list[AccessToken | None] = []
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(lambda: _append(found, verifier.verify_token(keys.token())))
            return found

        started = time.monotonic()
        assert anyio.run(many) == [None] * 20
        assert time.monotonic() - started < 0.5 * 3  # refused at once, not twenty fetches of 0.5 s one after another
    finally:
        silent.close()


async def _append(found: list[Any], pending: Any) -> None:
    found.append(await pending)


def test_a_custom_audience_is_checked_and_the_token_bound_to_this_resource(keys: Keys):
    verifier = JwtVerifier(ISSUER, keys.url, "api://agentcache", RESOURCE)
    assert anyio.run(verifier.verify_token, keys.token()) is None  # aud is the URL, not the audience set
    access = anyio.run(verifier.verify_token, keys.token({"aud": "api://agentcache"}))
    assert access is not None
    assert (access.resource, access.client_id, access.subject) == (RESOURCE, "team-app", "alice")
    assert access.scopes == ["memory", "openid"]


# --- a verifier of the test's own: the audience check is the guard's, whatever the verifier --------------------


class FixedVerifier:
    """A TokenVerifier that knows a few tokens, each with its resource and scopes."""

    def __init__(self, tokens: dict[str, tuple[str | None, list[str]]]):
        self.tokens = tokens

    async def verify_token(self, token: str) -> AccessToken | None:
        if token not in self.tokens:
            return None
        resource, scopes = self.tokens[token]
        return AccessToken(token=token, client_id="c", scopes=scopes, expires_at=int(time.time()) + 60, resource=resource)


def test_a_token_for_another_resource_is_refused_whatever_the_verifier(tmp_path: Path):
    settings = Settings(db_path=tmp_path / "m.db", oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url="https://idp.example/jwks")
    config = ResourceConfig.from_settings(settings, "streamable-http", 8765)
    verifier = FixedVerifier(
        {
            "good": (RESOURCE, ["memory"]),
            "good-spelling": ("HTTP://127.0.0.1:8765/mcp/", ["memory"]),
            "other-server": ("https://other.example/mcp", ["memory"]),
            "other-path": (BASE + "/sse", ["memory"]),
            "parent": (BASE, ["memory"]),
            "unbound": (None, ["memory"]),
            "no-scope": (RESOURCE, ["read"]),
        }
    )
    side = ResourceSide(config, verifier, metadata_routes(config))  # type: ignore[arg-type]
    sdk_app = mcp_server().streamable_http_app(stateless_http=True)
    sdk_app.router.routes[:0] = side.routes
    with TestClient(guard(sdk_app, settings, resource=side), base_url=BASE) as test_client:
        expected = {"good": 200, "good-spelling": 200, "other-server": 401, "other-path": 401, "parent": 401,
                    "unbound": 401, "no-scope": 403}
        for token, status in expected.items():
            answer = test_client.post("/mcp", json=INIT, headers=bearer(token))
            assert answer.status_code == status, token


# --- metadata -----------------------------------------------------------------------------------------------


def test_the_metadata_documents_are_exact_at_the_path_form_and_the_root(client: TestClient):
    expected = {
        "resource": RESOURCE,
        "authorization_servers": [ISSUER],
        "scopes_supported": ["memory"],
        "bearer_methods_supported": ["header"],
        "resource_name": "agentcache-mcp",
    }
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        answer = client.get(path)  # no token
        assert answer.status_code == 200 and answer.json() == expected, path
    assert client.get("/.well-known/oauth-protected-resource/sse").status_code == 401  # not this transport's


def test_the_metadata_names_the_public_url_and_the_sse_endpoint(keys: Keys, tmp_path: Path):
    settings = jwt_settings(keys, tmp_path, public_url="https://mem.example.com", host="0.0.0.0", jwt_scope="mem.rw")
    asgi = serving.http_server(mcp_server(), settings, "sse").config.app
    with TestClient(asgi, base_url="https://mem.example.com") as test_client:
        document = test_client.get("/.well-known/oauth-protected-resource/sse").json()
        assert document["resource"] == "https://mem.example.com/sse"
        assert document["scopes_supported"] == ["mem.rw"]
        assert test_client.get("/.well-known/oauth-protected-resource").json() == document
        answer = test_client.get("/sse")
        assert answer.headers["www-authenticate"] == (
            'Bearer resource_metadata="https://mem.example.com/.well-known/oauth-protected-resource/sse", scope="mem.rw"'
        )


def test_the_metadata_is_the_sdk_clients_resource(client: TestClient):
    """The SDK's OAuth client accepts the document for the URL it was given and asks for exactly RESOURCE."""
    from mcp.client.auth.oauth2 import OAuthContext
    from mcp.shared.auth import OAuthClientMetadata, ProtectedResourceMetadata

    prm = ProtectedResourceMetadata.model_validate(client.get("/.well-known/oauth-protected-resource").json())
    context = OAuthContext(
        server_url=RESOURCE,
        client_metadata=OAuthClientMetadata(redirect_uris=["http://127.0.0.1:1/cb"]),  # type: ignore[list-item]
        storage=None,  # type: ignore[arg-type]
        redirect_handler=None,
        callback_handler=None,
    )
    context.protected_resource_metadata = prm
    assert context.get_resource_url() == RESOURCE


# --- CORS and the Origin guard ------------------------------------------------------------------------------


def preflight(client: TestClient, origin: str, headers: str = "authorization, content-type, mcp-protocol-version",
              path: str = "/mcp", method: str = "POST") -> Any:
    return client.options(
        path, headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
    )


def test_a_preflight_is_answered_without_auth(client: TestClient):
    answer = preflight(client, "http://localhost:6274")  # the MCP inspector
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "http://localhost:6274"
    assert answer.headers["access-control-allow-methods"] == "GET, POST, DELETE"
    assert answer.headers["access-control-allow-headers"] == ", ".join(CORS_ALLOWED_HEADERS)
    assert "access-control-allow-credentials" not in answer.headers
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        assert preflight(client, "http://localhost:6274", "mcp-protocol-version", path, "GET").status_code == 204


def test_a_preflight_asking_for_other_headers_or_methods_is_refused(client: TestClient):
    for headers in ("authorization, x-api-key", "cookie"):
        answer = preflight(client, "http://localhost:6274", headers)
        assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers
    answer = preflight(client, "http://localhost:6274", "authorization", method="PUT")
    assert answer.status_code == 403


def test_cors_headers_are_limited_to_the_origin_and_the_exposed_headers(client: TestClient, keys: Keys):
    origin = {"Origin": "http://127.0.0.1:6274"}
    answer = client.post("/mcp", json=INIT, headers={**ACCEPT, **origin})
    assert answer.status_code == 401
    assert answer.headers["access-control-allow-origin"] == "http://127.0.0.1:6274"
    exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert exposed == set(CORS_EXPOSED_HEADERS) and {"www-authenticate", "mcp-session-id"} <= exposed
    assert "access-control-allow-credentials" not in answer.headers
    ok = client.post("/mcp", json=INIT, headers={**bearer(keys.token()), **origin})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://127.0.0.1:6274"
    assert "access-control-allow-origin" not in client.post("/mcp", json=INIT, headers=bearer(keys.token())).headers


def test_a_foreign_origin_is_refused_by_the_guard_preflight_or_not(client: TestClient, keys: Keys):
    for origin in ("https://claude.ai", "https://evil.example", "null"):
        assert preflight(client, origin).status_code == 403
        answer = client.post("/mcp", json=INIT, headers={**bearer(keys.token()), "Origin": origin})
        assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers


def test_an_allowed_origin_may_call_but_is_never_a_host(keys: Keys, tmp_path: Path):
    settings = jwt_settings(keys, tmp_path, allowed_origins=("https://claude.ai",))
    asgi = serving.http_server(mcp_server(), settings, "streamable-http").config.app
    with TestClient(asgi, base_url=BASE) as test_client:
        assert preflight(test_client, "https://claude.ai").headers["access-control-allow-origin"] == "https://claude.ai"
        answer = test_client.post("/mcp", json=INIT, headers={**bearer(keys.token()), "Origin": "https://claude.ai"})
        assert answer.status_code == 200
        assert preflight(test_client, "https://claude.ai:8443").status_code == 403
        assert preflight(test_client, "http://claude.ai").status_code == 403
    asgi = serving.http_server(mcp_server(), settings, "streamable-http").config.app
    with TestClient(asgi, base_url="https://claude.ai") as as_host:
        assert as_host.post("/mcp", json=INIT, headers=bearer(keys.token())).status_code == 403


def test_the_public_urls_host_is_admitted_and_others_are_not(keys: Keys, tmp_path: Path):
    settings = jwt_settings(keys, tmp_path, public_url="https://mem.example.com", host="0.0.0.0")
    asgi = serving.http_server(mcp_server(), settings, "streamable-http").config.app
    with TestClient(asgi, base_url="https://mem.example.com") as test_client:
        token = keys.token({"aud": "https://mem.example.com/mcp"})
        assert test_client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200
        origin = {"Origin": "https://mem.example.com"}
        assert test_client.post("/mcp", json=INIT, headers={**bearer(token), **origin}).status_code == 200
    asgi = serving.http_server(mcp_server(), settings, "streamable-http").config.app
    with TestClient(asgi, base_url="https://evil.example") as rebound:
        assert rebound.post("/mcp", json=INIT, headers=bearer(keys.token())).status_code == 403


def test_without_a_token_or_oauth_there_is_still_no_cors(tmp_path: Path):
    asgi = serving.http_server(mcp_server(), Settings(db_path=tmp_path / "m.db"), "streamable-http").config.app
    with TestClient(asgi, base_url=BASE) as test_client:
        answer = preflight(test_client, "http://localhost:3000")
        assert "access-control-allow-origin" not in answer.headers
        answer = test_client.post("/mcp", json=INIT, headers={**ACCEPT, "Origin": "http://localhost:3000"})
        assert "access-control-allow-origin" not in answer.headers


# --- binds and the UI ---------------------------------------------------------------------------------------


def test_oauth_allows_a_non_loopback_bind_without_a_token_but_not_the_ui_command():
    settings = Settings(
        oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url="https://idp.example/jwks", public_url="https://mem.example.com",
        host="0.0.0.0",
    )
    assert bind_refusal(settings) is None
    refusal = bind_refusal(settings, ui_only=True)
    assert refusal is not None and "AGENTCACHE_AUTH_TOKEN" in refusal
    assert bind_refusal(Settings(host="0.0.0.0")) is not None  # no OAuth, no token: refused as before


def _with_store(settings: Settings) -> Iterator[tuple[Any, Any]]:
    """The composed server over a real store (the UI needs one): (the ASGI app, the App)."""
    from agentcache_mcp.app import open_memory
    from agentcache_mcp.server import build_server
    from agentcache_mcp.workers import App

    from conftest import HashEmbedder

    memory = open_memory(settings, embedder=HashEmbedder())
    app = App(settings, memory)
    try:
        yield serving.http_server(build_server(settings, app=app), settings, "streamable-http", app=app).config.app, app
    finally:
        memory.close()


def test_the_ui_login_still_works_with_oauth_on_and_does_not_open_mcp(keys: Keys, tmp_path: Path):
    for asgi, _ in _with_store(jwt_settings(keys, tmp_path)):
        with TestClient(asgi, base_url=BASE) as test_client:
            assert test_client.get("/ui/", follow_redirects=False).headers["location"].startswith("/ui/login")
            page = test_client.get("/ui/login")
            csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
            assert page.status_code == 200 and csrf
            answer = test_client.post(
                "/ui/login",
                data={"csrf": csrf.group(1), "token": STATIC, "next": "/ui/"},
                headers={"Origin": BASE},
                follow_redirects=False,
            )
            assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
            assert test_client.get("/ui/").status_code == 200  # logged in by the cookie
            assert test_client.post("/mcp", json=INIT, headers=ACCEPT).status_code == 401  # the cookie is no token
            assert "access-control-allow-origin" not in test_client.get("/ui/", headers={"Origin": BASE}).headers


def test_off_loopback_without_a_token_oauth_serves_no_ui(keys: Keys, tmp_path: Path):
    settings = Settings(
        db_path=tmp_path / "m.db", oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url=keys.url,
        public_url="https://mem.example.com", host="0.0.0.0",
    )
    token = keys.token({"aud": "https://mem.example.com/mcp"})
    for asgi, _ in _with_store(settings):
        with TestClient(asgi, base_url="https://mem.example.com") as test_client:
            assert test_client.get("/ui/").status_code == 401  # not left open: the bearer check covers it
            assert test_client.get("/ui/", headers=bearer(token)).status_code == 404  # and it is not there
            assert test_client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200


def test_the_default_public_url_is_the_loopback_bind_as_clients_write_it():
    from agentcache_mcp.auth.resource import default_public_url

    assert default_public_url(Settings(host="127.0.0.1"), 8765) == "http://127.0.0.1:8765"
    assert default_public_url(Settings(host="0:0:0:0:0:0:0:1"), 8765) == "http://[::1]:8765"
    assert default_public_url(Settings(host="localhost"), 9000) == "http://localhost:9000"
    assert default_public_url(Settings(public_url="https://mem.example.com"), 9000) == "https://mem.example.com"


def test_an_inner_wildcard_cors_header_never_reaches_an_origin_not_admitted():
    from agentcache_mcp.auth.resource import Cors

    async def generous(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"access-control-allow-origin", b"*"), (b"vary", b"Accept-Encoding")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    app = Cors(generous, lambda origin: origin == "http://localhost:6274")
    test_client = TestClient(app, base_url=BASE)  # not entered: this app has no lifespan
    foreign = test_client.get("/.well-known/oauth-authorization-server", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in foreign.headers
    admitted = test_client.get("/.well-known/oauth-authorization-server", headers={"Origin": "http://localhost:6274"})
    assert admitted.headers["access-control-allow-origin"] == "http://localhost:6274"
    assert admitted.headers["vary"] == "Accept-Encoding, Origin"


def test_a_stateful_session_answers_only_the_principal_that_opened_it(keys: Keys, tmp_path: Path):
    settings = jwt_settings(keys, tmp_path, stateful_http=True)
    asgi = serving.http_server(mcp_server(), settings, "streamable-http").config.app
    with TestClient(asgi, base_url=BASE) as test_client:
        opened = test_client.post("/mcp", json=INIT, headers=bearer(keys.token({"sub": "alice"})))
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"], "Mcp-Protocol-Version": "2025-06-18"}
        listed = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
        alice = test_client.post("/mcp", json=listed, headers={**bearer(keys.token({"sub": "alice"})), **session})
        assert alice.status_code == 200
        bob = test_client.post("/mcp", json=listed, headers={**bearer(keys.token({"sub": "bob"})), **session})
        assert bob.status_code == 404  # as if the session did not exist


def test_a_jwt_without_kid_is_refused(client: TestClient, keys: Keys):
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "a", "scope": "memory", "exp": now + 600}
    token = jwt.encode(claims, keys.rsa, algorithm="RS256")  # no kid in the header
    assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401


def test_a_symmetric_key_in_the_key_set_signs_nothing(keys: Keys, tmp_path: Path):
    secret = b"k" * 32
    oct_jwk = {"kty": "oct", "kid": "oct-1", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "use": "sig"}
    saved = keys.served
    keys.served = {"keys": [*saved["keys"], oct_jwk]}
    try:
        verifier = JwtVerifier(ISSUER, keys.url, RESOURCE, RESOURCE)
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "a", "scope": "memory", "exp": now + 600}
        token = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "oct-1"})
        assert anyio.run(verifier.verify_token, token) is None
        assert anyio.run(verifier.verify_token, keys.token()) is not None  # the same key set's RSA key still signs
    finally:
        keys.served = saved


def test_a_jwt_typed_as_something_other_than_an_access_token_is_refused(client: TestClient, keys: Keys):
    # RFC 9068 §4 / RFC 8725 §3.11: the `typ` header tells JWT kinds apart. A DPoP proof, a logout token or a
    # security event signed by the same issuer, with our audience, is not an access token. `JWT` (what most
    # identity providers put on access tokens) and `at+jwt` are accepted; no `typ` at all too.
    for typ in ("dpop+jwt", "logout+jwt", "secevent+jwt", "application/secevent+jwt", "id_token+jwt", 7):
        token = jwt.encode(jwt.decode(keys.token(), options={"verify_signature": False}), keys.rsa, algorithm="RS256",
                           headers={"kid": "rsa-1", "typ": typ})
        assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 401, typ
    for typ in ("at+jwt", "application/at+jwt", "JWT", "jwt"):
        token = jwt.encode(jwt.decode(keys.token(), options={"verify_signature": False}), keys.rsa, algorithm="RS256",
                           headers={"kid": "rsa-1", "typ": typ})
        assert client.post("/mcp", json=INIT, headers=bearer(token)).status_code == 200, typ


def test_on_loopback_behind_a_tunnel_without_a_token_oauth_serves_no_ui(keys: Keys, tmp_path: Path):
    # The usual way to reach a server on a laptop from claude.ai: bind 127.0.0.1 and tunnel a public name to it
    # (AGENTCACHE_PUBLIC_URL). OAuth guards /mcp then, but the web UI has no login without AGENTCACHE_AUTH_TOKEN:
    # it must not be served to whoever has the public URL (it reads and deletes every memory).
    for extra in ({"public_url": "https://mem.example.com"}, {"allowed_hosts": ["mem.example.com"]}):
        settings = Settings(
            db_path=tmp_path / "m.db", oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url=keys.url, host="127.0.0.1",
            jwt_audience="https://mem.example.com/mcp", **extra,
        )
        token = keys.token({"aud": "https://mem.example.com/mcp"})
        for asgi, _ in _with_store(settings):
            with TestClient(asgi, base_url="https://mem.example.com") as test_client:
                assert test_client.get("/ui/").status_code == 401, extra  # the bearer check covers it
                assert test_client.get("/ui/", headers=bearer(token)).status_code == 404, extra  # not served
    # on loopback with nothing but loopback admitted, the UI stays as it was (no token, no login)
    local = Settings(db_path=tmp_path / "l.db", oauth="jwt", jwt_issuer=ISSUER, jwt_jwks_url=keys.url, host="127.0.0.1")
    for asgi, _ in _with_store(local):
        with TestClient(asgi, base_url="http://127.0.0.1:8000") as test_client:
            assert test_client.get("/ui/").status_code == 200
