"""The HTTP transports as an OAuth 2.1 resource server (MCP authorization, 2025-06-18 and 2025-11-25).

- `ResourceConfig.from_settings`: what this server is to its clients: the resource URL tokens must be bound to
  (AGENTCACHE_PUBLIC_URL + `/mcp`, or `/sse` for the SSE transport), its metadata URL, the authorization
  server, the scope.
- `metadata_routes`: RFC 9728 protected-resource metadata, at the path form
  (`/.well-known/oauth-protected-resource/mcp`, `.../sse`) and the root (`/.well-known/oauth-protected-resource`),
  the same document at both. RFC 9728 §3.3 would have the root describe the origin; MCP clients fall back to the
  root with the endpoint's URL in hand and accept a resource that is it or a parent of it (the SDK's
  `check_resource_allowed`), so the root names the endpoint too: then whichever form a client read, the
  `resource` it asks the authorization server for is the one tokens are checked against.
- `ResourceGuard`: every request but the metadata, the authorization server's own routes and the web UI (which
  logs in itself) needs `Authorization: Bearer ...`: the static AGENTCACHE_AUTH_TOKEN (hosts that send headers:
  Claude Code, Cursor, scripts), or an access token the verifier accepts, issued for this resource (RFC 8707:
  a token whose `resource` is another server's is 401) with the scope. No token: 401 with
  `WWW-Authenticate: Bearer resource_metadata="...", scope="memory"`, which starts a client's discovery; a
  token that is not good: the same with `error="invalid_token"`; a good one without the scope: 403
  `insufficient_scope`.
- `Cors`: browser clients (the inspector, a web app) may call the MCP endpoint and the metadata: a preflight is
  answered here, without auth, for an Origin the Host/Origin guard admits; answers carry
  `Access-Control-Allow-Origin` for that origin only (never `*`, never credentials: a bearer header is not a
  cookie), and only the headers MCP needs are allowed or exposed.
- `JwtVerifier`: AGENTCACHE_OAUTH=jwt, access tokens that are JWTs from a team's identity provider, checked
  against its JWKS: signature (asymmetric algorithms only), `iss`, `aud`, `exp`/`nbf`, and the scope.

Why not the SDK's own wiring (`MCPServer(auth=..., token_verifier=...)`): its RequireAuthMiddleware sends no
`scope` in the challenge and `error="invalid_token"` even when no token was sent (RFC 6750 §3.1: no error
then), takes no static token beside OAuth, and would guard the web UI, whose browser cannot send a header. The
SDK's `BearerAuthBackend` audience check is the model for ours (compare as URLs, trailing slash aside).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.shared.auth_utils import resource_url_from_server_url

from ..transports import _header_values, same_token, token_digest

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from ..config import Settings

log = logging.getLogger("agentcache_mcp")

METADATA_PATH = "/.well-known/oauth-protected-resource"
ENDPOINT_PATHS = {"streamable-http": "/mcp", "sse": "/sse"}
"""Each HTTP transport's MCP endpoint: the path of the resource URL."""
SSE_MESSAGES_PATH = "/messages/"

CORS_ALLOWED_HEADERS = ("authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id")
"""What a browser client may send: the bearer token, JSON, the session and protocol version, SSE resumption."""
CORS_EXPOSED_HEADERS = ("mcp-session-id", "mcp-protocol-version", "www-authenticate")
"""What a browser client may read of an answer: the session it was given, the protocol version, and the
challenge that starts its OAuth discovery."""
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_MAX_AGE_S = 600

JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""What a JWT access token may be signed with: asymmetric algorithms only. `none` would need no key; HS* would
take the issuer's public key, which anyone can read at the JWKS URL, as the shared secret."""
_KEY_TYPE_ALGORITHMS = {"RSA": ("RS", "PS"), "EC": ("ES",), "OKP": ("EdDSA",)}
JWT_LEEWAY_S = 30
"""Clock skew allowed on `exp`, `nbf` and `iat` between the issuer and this server."""
JWKS_TIMEOUT_S = 5.0
JWKS_RETRY_S = 10.0
"""After a failed key-set fetch, JWTs are refused at once for this long instead of each waiting for a fetch of
its own (one at a time, JWKS_TIMEOUT_S each, while the issuer is down)."""
JWKS_CACHE_S = 300.0
"""The key set is fetched at most this often; an unknown `kid` fetches it again, at most every 30 s (PyJWT's
cooldown), so tokens with made-up key ids cannot make this server hammer the issuer."""
MAX_TOKEN_CHARS = 8192


def default_public_url(settings: Settings, port: int) -> str:
    """AGENTCACHE_PUBLIC_URL, or on a loopback bind (where config allows it to be unset) `http://HOST:PORT` of
    the bind: the URL a local client uses. A client that names the server otherwise (`localhost` for a
    `127.0.0.1` bind) needs AGENTCACHE_PUBLIC_URL set to what it uses, as tokens are bound to one URL."""
    if settings.public_url:
        return settings.public_url
    host = settings.host.lower()
    with contextlib.suppress(ValueError):  # localhost stays as it is
        host = ipaddress.ip_address(host).compressed  # 0:0:0:0:0:0:0:1 is [::1], as clients write it
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _same_resource(given: str | None, expected: str) -> bool:
    """Whether a token's `resource` is this server's: compared as URLs (scheme and host case-insensitive), a
    trailing slash aside; a token bound to nothing, to a parent path or to another path is not."""
    if not given:
        return False
    try:
        canonical = resource_url_from_server_url(given)
    except ValueError:
        return False
    return canonical.removesuffix("/") == expected.removesuffix("/")


@dataclass(frozen=True)
class ResourceConfig:
    """This server as an OAuth protected resource."""

    public_url: str
    """The origin clients use, e.g. `https://mem.example.com` (no trailing slash)."""
    endpoint_path: str
    """`/mcp` or `/sse`."""
    authorization_server: str
    """The issuer clients get tokens from: public_url for the built-in server, AGENTCACHE_JWT_ISSUER for jwt."""
    scope: str = "memory"
    static_token: str | None = field(default=None, repr=False)
    """AGENTCACHE_AUTH_TOKEN, still accepted beside OAuth."""

    @property
    def resource_url(self) -> str:
        return self.public_url + self.endpoint_path

    @property
    def metadata_url(self) -> str:
        return self.public_url + METADATA_PATH + self.endpoint_path

    @classmethod
    def from_settings(cls, settings: Settings, transport: str, port: int) -> ResourceConfig:
        public_url = default_public_url(settings, port)
        return cls(
            public_url=public_url,
            endpoint_path=ENDPOINT_PATHS[transport],
            authorization_server=settings.jwt_issuer if settings.oauth == "jwt" and settings.jwt_issuer else public_url,
            scope=settings.jwt_scope if settings.oauth == "jwt" else "memory",
            static_token=settings.auth_token,
        )

    def metadata(self) -> dict[str, Any]:
        """The RFC 9728 document."""
        return {
            "resource": self.resource_url,
            "authorization_servers": [self.authorization_server],
            "scopes_supported": [self.scope],
            "bearer_methods_supported": ["header"],
            "resource_name": "agentcache-mcp",
        }

    def challenge(self, error: str | None = None, description: str | None = None) -> str:
        """The WWW-Authenticate value (RFC 6750 §3, RFC 9728 §5.1): no error when no token was sent."""
        parts = [f'resource_metadata="{self.metadata_url}"', f'scope="{self.scope}"']
        if error:
            parts.append(f'error="{error}"')
        if description:
            parts.append(f'error_description="{description}"')
        return "Bearer " + ", ".join(parts)


def metadata_routes(config: ResourceConfig) -> list[BaseRoute]:
    """The protected-resource metadata at its path form and at the root (GET and HEAD; the preflight is Cors's)."""
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    document = config.metadata()

    async def metadata(_: Request) -> JSONResponse:
        return JSONResponse(document, headers={"Cache-Control": "public, max-age=300"})

    return [
        Route(METADATA_PATH + config.endpoint_path, metadata, methods=["GET", "HEAD"]),
        Route(METADATA_PATH, metadata, methods=["GET", "HEAD"]),
    ]


def route_paths(routes: Iterable[BaseRoute]) -> tuple[set[str], tuple[str, ...]]:
    """(exact paths, mount prefixes) of `routes`: what ResourceGuard leaves open (the authorization server's
    endpoints and the metadata are how a client without a token gets one)."""
    from starlette.routing import Mount, Route

    exact: set[str] = set()
    prefixes: list[str] = []
    for route in routes:
        if isinstance(route, Mount):
            prefixes.append(route.path.rstrip("/") + "/")
        elif isinstance(route, Route):
            exact.add(route.path)
        else:  # a route kind with no path we can read: refuse to guess what it opens
            raise TypeError(f"cannot tell which paths {route!r} serves")
    return exact, tuple(prefixes)


async def _answer(send: Any, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class ResourceGuard:
    """ASGI middleware: the bearer check of an OAuth protected resource (see the module docstring).

    `open_paths` / `open_prefixes`: the metadata and the authorization server's routes, served to anyone.
    `logs_in_itself(path)`: the web UI, left to its own login. Everything else, on every method and WebSocket,
    needs a token. A good OAuth token becomes the request's `user` (the SDK binds a stateful session to it, and
    `get_access_token()` sees it); the static token does not (as before OAuth).
    """

    def __init__(
        self,
        app: Any,
        config: ResourceConfig,
        verifier: TokenVerifier,
        *,
        open_paths: Iterable[str] = (),
        open_prefixes: Iterable[str] = (),
        logs_in_itself: Callable[[str], bool] | None = None,
    ):
        self.app = app
        self.config = config
        self.verifier = verifier
        self.open_paths = frozenset(open_paths)
        self.open_prefixes = tuple(open_prefixes)
        self._logs_in_itself = logs_in_itself
        self._static_digest = token_digest(config.static_token) if config.static_token else None

    def is_open(self, path: str) -> bool:
        return (
            path in self.open_paths
            or path.startswith(self.open_prefixes)
            or (self._logs_in_itself is not None and self._logs_in_itself(path))
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        values = _header_values(scope, b"authorization")
        if len(values) > 1:
            await self._refuse(scope, send, 400, "invalid_request", "send one Authorization header")
            return
        scheme, _, credentials = (values[0] if values else b"").strip().partition(b" ")
        token_bytes = credentials.strip(b" ")
        if scheme.lower() != b"bearer" or not token_bytes:
            await self._refuse(scope, send, 401, None, "this server needs a bearer token (OAuth or AGENTCACHE_AUTH_TOKEN)")
            return
        if self._static_digest is not None and same_token(token_bytes, self._static_digest):
            await self.app(scope, receive, send)
            return
        access = await self._verify(token_bytes)
        if access is None:
            await self._refuse(scope, send, 401, "invalid_token", "the token is invalid, expired or revoked")
            return
        if not _same_resource(access.resource, self.config.resource_url):
            log.warning("refused a token issued for %r, not %s", access.resource, self.config.resource_url)
            await self._refuse(scope, send, 401, "invalid_token", "the token was issued for another resource")
            return
        if self.config.scope not in access.scopes:
            await self._refuse(scope, send, 403, "insufficient_scope", f"the token lacks the scope {self.config.scope}")
            return
        user = AuthenticatedUser(access)
        from starlette.authentication import AuthCredentials

        scope = {**scope, "user": user, "auth": AuthCredentials(access.scopes)}
        reset = auth_context_var.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    async def _verify(self, token_bytes: bytes) -> AccessToken | None:
        if len(token_bytes) > MAX_TOKEN_CHARS:
            return None
        try:
            token = token_bytes.decode("ascii")
        except UnicodeDecodeError:
            return None
        try:
            access = await self.verifier.verify_token(token)
        except Exception:  # a verifier's bug or its store being down must not be a 500 that hides the challenge
            log.exception("the token verifier failed; answering 401")
            return None
        if access is not None and access.expires_at is not None and access.expires_at < time.time():
            return None
        return access

    async def _refuse(self, scope: dict[str, Any], send: Any, status: int, error: str | None, description: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        challenge = self.config.challenge(error if status != 400 else None, description if error else None)
        await _answer(
            send,
            status,
            {"error": error or "unauthorized", "error_description": description},
            [(b"www-authenticate", challenge.encode())],
        )


class Cors:
    """ASGI middleware: CORS for browser clients of the MCP endpoint, the metadata and the authorization server.

    Only requests whose Origin `admits_origin` accepts get CORS headers (the same rule as the Host/Origin guard:
    loopback origins, the public URL's, --allowed-host names, AGENTCACHE_ALLOWED_ORIGINS); the guard has already
    refused any other. A preflight (OPTIONS with Access-Control-Request-Method) is answered here, before any
    auth, allowing `CORS_METHODS` and `CORS_ALLOWED_HEADERS`; one asking for anything else gets 403 without
    CORS headers, so the browser does not send the request. Inner answers lose any `access-control-*` headers
    they set (the SDK's authorization routes allow `*`), for every Origin, so one policy holds. Paths for which `skip(path)` is
    true (the web UI: same-origin only) get nothing.
    """

    def __init__(self, app: Any, admits_origin: Callable[[str], bool], *, skip: Callable[[str], bool] | None = None):
        self.app = app
        self.admits_origin = admits_origin
        self.skip = skip

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        origins = _header_values(scope, b"origin") if scope["type"] == "http" else []
        if len(origins) != 1 or (self.skip is not None and self.skip(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        origin = origins[0].decode("latin-1")
        if not self.admits_origin(origin):
            await self.app(scope, receive, _without_cors(send))  # an inner `*` must not let it read the answer
            return
        requested = _header_values(scope, b"access-control-request-method")
        if scope.get("method") == "OPTIONS" and requested:
            await self._preflight(scope, send, origin, requested[0].decode("latin-1"))
            return
        cors_headers = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", ", ".join(CORS_EXPOSED_HEADERS).encode()),
        ]

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                vary = [v for k, v in headers if k.lower() == b"vary"]
                kept = [(k, v) for k, v in headers if not k.lower().startswith(b"access-control-") and k.lower() != b"vary"]
                vary_value = b", ".join([*vary, b"Origin"]) if b"origin" not in b",".join(vary).lower() else b", ".join(vary)
                message = {**message, "headers": [*kept, *cors_headers, (b"vary", vary_value)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(self, scope: dict[str, Any], send: Any, origin: str, method: str) -> None:
        asked = b",".join(_header_values(scope, b"access-control-request-headers")).decode("latin-1")
        headers = {h.strip().lower() for h in asked.split(",") if h.strip()}
        if method.upper() not in (*CORS_METHODS, "OPTIONS") or not headers <= set(CORS_ALLOWED_HEADERS):
            await _answer(send, 403, {"error": "forbidden: CORS preflight asks for a method or header not allowed"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 204,
                "headers": [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", ", ".join(CORS_METHODS).encode()),
                    (b"access-control-allow-headers", ", ".join(CORS_ALLOWED_HEADERS).encode()),
                    (b"access-control-max-age", str(CORS_MAX_AGE_S).encode()),
                    (b"vary", b"Origin"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})


def _without_cors(send: Any) -> Any:
    async def stripped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if not k.lower().startswith(b"access-control-")]
            message = {**message, "headers": headers}
        await send(message)

    return stripped


class JwtVerifier(TokenVerifier):
    """AGENTCACHE_OAUTH=jwt: access tokens that are JWTs signed by an external issuer, checked by its JWKS.

    A token is accepted when its header names an asymmetric algorithm (JWT_ALGORITHMS) that fits the key its
    `kid` names in the issuer's key set, its `typ` (if any) is an access token's (JWT_ACCESS_TOKEN_TYPES), the
    signature verifies, `iss` is the issuer exactly, `aud` is (or lists) the audience, and `exp` (required), `nbf` and `iat` hold with JWT_LEEWAY_S of skew. Its scopes come
    from `scope` (space-separated, RFC 9068 / RFC 8693) or `scp` (a list or a string, as Entra and Okta send);
    ResourceGuard then requires the configured one (403 without it). The AccessToken's `resource` is the
    resource URL (the audience stood for it), `client_id` is `client_id` or `azp` (or `sub`), `subject` `sub`,
`expires_at` `exp` plus the leeway.

    The key set is fetched with PyJWT's PyJWKClient (urllib, in a worker thread: JWKS_TIMEOUT_S, no redirects,
    cached JWKS_CACHE_S); a fetch that fails is logged and the token refused (401): this server holds no key it
    could fall back to. A token without `kid` is refused (every mainstream issuer sets one).
    """

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        audience: str,
        resource_url: str,
        *,
        timeout_s: float = JWKS_TIMEOUT_S,
        cache_s: float = JWKS_CACHE_S,
    ):
        from jwt import PyJWKClient

        self.issuer = issuer
        self.audience = audience
        self.resource_url = resource_url
        self.jwks = PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=cache_s, timeout=timeout_s)
        self._last_fetch_warning = 0.0
        self._fetch_failed_at: float | None = None
        # One worker thread for key lookups: PyJWKClient serialises them under its lock anyway, and requests
        # waiting for a slow issuer then wait here, not in threads the store's calls need.
        self._lookups = anyio.CapacityLimiter(1)

    async def verify_token(self, token: str) -> AccessToken | None:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in JWT_ALGORITHMS or not isinstance(kid, str) or not kid:
            return None
        if not _access_token_type(header.get("typ", "JWT")):
            return None
        try:
            key = await self._signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            self._fetch_failed_at = time.monotonic()
            self._warn_fetch(exc)
            return None
        except jwt.PyJWTError:  # no such key (after one refresh), or a key set without signing keys
            return None
        if not algorithm.startswith(_KEY_TYPE_ALGORITHMS.get(key.key_type or "", ())):
            return None  # an RSA key named by an ES256 header, or the like
        jwk_algorithm = key._jwk_data.get("alg")
        if jwk_algorithm is not None and jwk_algorithm != algorithm:
            return None  # the key set pins the key to another algorithm
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp", "iss", "aud"], "verify_signature": True},
            )
        except (jwt.PyJWTError, ValueError, TypeError):
            return None
        scopes = _scopes(claims)
        client_id = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "jwt"
        return AccessToken(
            token=token,
            client_id=str(client_id),
            scopes=scopes,
            expires_at=int(claims["exp"]) + JWT_LEEWAY_S,  # when it stops being accepted: ResourceGuard checks it
            resource=self.resource_url,
            subject=str(claims["sub"]) if claims.get("sub") is not None else None,
            claims=claims,
        )

    async def _signing_key(self, kid: str) -> Any:
        import jwt

        async with self._lookups:
            cached = self.jwks.jwk_set_cache is not None and self.jwks.jwk_set_cache.get() is not None
            failed = self._fetch_failed_at
            if not cached and failed is not None and time.monotonic() - failed < JWKS_RETRY_S:
                raise jwt.PyJWKClientConnectionError("the last fetch of the key set failed moments ago")
            key = await anyio.to_thread.run_sync(self.jwks.get_signing_key, kid)
            self._fetch_failed_at = None
            return key

    def _warn_fetch(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._last_fetch_warning >= 60:
            self._last_fetch_warning = now
            log.warning("cannot fetch the JWT issuer's keys (%s); JWT tokens are refused meanwhile", exc)


JWT_ACCESS_TOKEN_TYPES = frozenset({"jwt", "at+jwt"})
"""The `typ` headers a JWT access token may carry: RFC 9068's `at+jwt`, and the generic `JWT` most identity
providers (Entra, Auth0's default profile, Okta) put on theirs, so RFC 9068 §4's strict `at+jwt` would refuse
them. Any other type the same issuer signs (a DPoP proof, a logout token, a security event: RFC 8725 §3.11) is
not an access token. An OpenID Connect ID token is typed `JWT` too; it is kept out by the scope, which ID
tokens do not carry, and by the audience (its `aud` is a client id)."""


def _access_token_type(typ: object) -> bool:
    return isinstance(typ, str) and typ.lower().removeprefix("application/") in JWT_ACCESS_TOKEN_TYPES


def _scopes(claims: dict[str, Any]) -> list[str]:
    found: list[str] = []
    scope = claims.get("scope")
    if isinstance(scope, str):
        found += scope.split()
    scp = claims.get("scp")
    if isinstance(scp, str):
        found += scp.split()
    elif isinstance(scp, list):
        found += [s for s in scp if isinstance(s, str)]
    return list(dict.fromkeys(found))


@dataclass
class ResourceSide:
    """What serving wires in for AGENTCACHE_OAUTH=builtin or jwt: the routes to add (metadata, and the
    built-in authorization server's) and the verifier ResourceGuard uses."""

    config: ResourceConfig
    verifier: TokenVerifier
    routes: list[BaseRoute]

    def guard(self, app: Any, *, logs_in_itself: Callable[[str], bool] | None = None) -> ResourceGuard:
        exact, prefixes = route_paths(self.routes)
        return ResourceGuard(
            app, self.config, self.verifier, open_paths=exact, open_prefixes=prefixes, logs_in_itself=logs_in_itself
        )


def build_resource_side(
    settings: Settings,
    transport: str,
    port: int,
    state: Callable[[], Any] | None = None,
    signing_secret: str | None = None,
) -> ResourceSide | None:
    """The resource side for these settings, or None when AGENTCACHE_OAUTH=off. `state` returns the running
    store's AuthStateStore (the built-in server's grants and tokens); `port` is the bound port (the default
    public URL's on loopback); `signing_secret` signs the consent page's requests (the store's shared secret,
    so replicas behind one URL take each other's consent posts)."""
    if settings.oauth == "off":
        return None
    config = ResourceConfig.from_settings(settings, transport, port)
    routes: list[BaseRoute] = metadata_routes(config)
    verifier: TokenVerifier
    if settings.oauth == "jwt":
        assert settings.jwt_issuer and settings.jwt_jwks_url  # config refuses jwt without them
        verifier = JwtVerifier(
            settings.jwt_issuer, settings.jwt_jwks_url, settings.jwt_audience or config.resource_url, config.resource_url
        )
    else:
        from .server import AuthServerConfig, build_authorization_server

        if state is None:
            raise ValueError("AGENTCACHE_OAUTH=builtin needs the store (its grants and tokens live there)")
        passphrase = settings.oauth_passphrase or settings.auth_token
        assert passphrase  # config refuses builtin without either
        authorization_server = build_authorization_server(
            AuthServerConfig(
                issuer_url=config.public_url,
                resource_url=config.resource_url,
                passphrase=passphrase,
                extra_redirect_uris=settings.oauth_redirect_uris,
                access_ttl_s=settings.oauth_access_ttl_s,
                refresh_ttl_s=settings.oauth_refresh_ttl_s,
                signing_secret=signing_secret,
            ),
            state,
        )
        routes += authorization_server.routes
        verifier = authorization_server.verifier
    return ResourceSide(config, verifier, routes)
