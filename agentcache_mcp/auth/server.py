"""The built-in OAuth 2.1 authorization server, for the one-owner case: a person running their own memory lets a
connector (claude.ai, ChatGPT, an IDE, the MCP inspector) in by typing a passphrase on a consent page.

It is the SDK's `OAuthAuthorizationServerProvider` over the store's `AuthStateStore` (auth/state.py: clients,
grants, and codes and tokens kept only as SHA-256 digests, shared by every replica), served by the SDK's own
authorization and token handlers, with these additions where the SDK falls short:

- RFC 8414 metadata also says `client_id_metadata_document_supported` and
  `authorization_response_iss_parameter_supported`, and lists only `none` as the client authentication: every
  client here is public (it proves itself with PKCE, never with a secret: a registration asking for a secret is
  registered as public, as RFC 7591 §3.2.1 allows; the SDK's registration handler would mint and keep one).
- Client ID Metadata Documents (a client_id that is an https URL): the SDK only looks clients up; /authorize here
  fetches the document first (auth/client_metadata.py: SSRF-checked, size- and time-capped) and caches it in the
  store.
- Redirect URIs: the SDK compares them exactly; here each must be on the allowlist (auth/redirects.py) and a
  loopback one matches whatever its port (RFC 8252 §7.3).
- RFC 9207: `iss` is added to every redirect back to the client (the code, a denial and the SDK handler's error
  redirects alike).
- RFC 8707: the `resource` of the authorization request (this server's resource URL, the only one it serves;
  refused otherwise, and this URL when absent) is bound into the code, the grant and every token, and
  `verifier` returns it as `AccessToken.resource`. The SDK's token handler does not compare a token request's
  `resource` with the code's; the token endpoint here passes it to the provider, which refuses a different one
  (and revokes the grant of the code it consumed).
- Single use: a code is taken from the store atomically when the token handler loads it; a second use of it
  revokes the grant and every token issued from it (OAuth 2.1 §4.1.3). A refresh token rotates on every use; a
  used one presented again revokes the whole grant (reuse detection, OAuth 2.1 §4.3.1, RFC 9700 §4.14.2),
  except within `refresh_reuse_grace_s` of its first use (a retried or concurrent refresh), when it rotates
  once more.
- Revocation (RFC 7009) by the client's own token: the SDK's handler requires a `client_secret` form field that
  public clients do not send, so the endpoint here is its own; revoking either token of a grant revokes both.
- PKCE S256 only and always (the SDK handler refuses `plain` and a missing challenge); the challenge must be a
  SHA-256 (43 base64url characters).

The consent page and its POST are auth/consent.py's. Blocking store calls run in worker threads.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import unicodedata
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit

import anyio.to_thread
from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.handlers.token import TokenHandler
from mcp.server.auth.json_response import PydanticJSONResponse
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    OAuthAuthorizationServerProvider,
    RefreshToken,
    RegistrationError,
    TokenError,
    TokenVerifier,
    construct_redirect_uri,
)
from mcp.server.auth.routes import validate_issuer_url
from mcp.server.transport_security import RequestBodyLimitMiddleware
from mcp.shared.auth import (
    InvalidRedirectUriError,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    OAuthToken,
)
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER
from pydantic import AnyHttpUrl, AnyUrl, PrivateAttr, ValidationError
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route, request_response
from starlette.types import ASGIApp

from . import consent
from .client_metadata import CACHE_S, ClientMetadataError, ClientMetadataFetcher, is_client_metadata_url
from .redirects import is_loopback_redirect, redirect_allowed, redirect_host, redirect_uri_matches
from .state import AuthStateStore, Grant, StoredClient, StoredCode, StoredToken, UnknownClient, UnknownGrant, token_hash

log = logging.getLogger("agentcache_mcp")
T = TypeVar("T")

AUTHORIZE_PATH = "/authorize"
CONSENT_PATH = "/consent"
TOKEN_PATH = "/token"
REGISTER_PATH = "/register"
REVOKE_PATH = "/revoke"
METADATA_PATH = "/.well-known/oauth-authorization-server"
MAX_FORM_BYTES = 16 * 1024
"""The largest body /register, /token, /revoke and the consent POST take (a client's metadata is a few hundred
bytes); larger is refused with 413 before it is read."""
MAX_CLIENT_NAME = 100
"""A client's name is cut to this many characters on the consent page."""
FETCHED_AT = "agentcache_fetched_at"
"""The key, in a cached Client ID Metadata Document's stored metadata, of when it was fetched."""
PKCE_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")
"""An S256 code_challenge: the unpadded base64url of a SHA-256 (RFC 7636 §4.2)."""
CODE_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
"""A PKCE code_verifier (RFC 7636 §4.1). The SDK's token handler takes any string: a short verifier's S256
challenge, sent in the front channel, can be reversed by trying them all, and PKCE would protect nothing."""
PURGE_EVERY_S = 3600.0
"""Expired codes and tokens are purged from the store at most this often per process."""
SECRET_BYTES = 32
"""Codes and tokens carry 256 random bits (the SDK asks for at least 128, RFC 6749 §10.10)."""


@dataclass(frozen=True)
class AuthServerConfig:
    issuer_url: str
    """This server's issuer: the public base URL clients use (https, or http on loopback)."""
    resource_url: str
    """The MCP endpoint the tokens are for (issuer + /mcp); the only RFC 8707 resource this server issues for."""
    passphrase: str
    """What the owner types on the consent page (AGENTCACHE_OAUTH_PASSPHRASE, else AGENTCACHE_AUTH_TOKEN)."""
    extra_redirect_uris: tuple[str, ...] = ()
    """Redirect URIs allowed beside the built-in ones (AGENTCACHE_OAUTH_REDIRECT_URIS), compared exactly."""
    access_ttl_s: int = 3600
    refresh_ttl_s: int = 30 * 86400
    """A refresh token lasts this long from its issue; each refresh issues a new one (so an unused grant ends)."""
    code_ttl_s: int = 60
    scopes: tuple[str, ...] = ("memory",)
    refresh_reuse_grace_s: float = 30.0
    """A used refresh token presented again within this long of its first use rotates once more (once only)
    instead of revoking the grant: a host that lost the answer to a refresh and retries, or two processes of one host
    refreshing at once, keep their connection (strict servers made Claude Code, Codex and Copilot log in again:
    https://github.com/exceptionless/Exceptionless/pull/2404, https://github.com/FlowFuse/flowfuse/issues/8270).
    A further reuse, or one after the window, revokes the grant. 0: strict."""
    signing_secret: str | None = None
    """Signs the consent page's pending requests and CSRF tokens (labelled `oauth-...`, so the UI's secret may be
    reused). Replicas behind one URL must share it (the store's `MemoryService.ui_secret` is shared already), or
    an approval posted to another replica than the one that showed the page is refused as out of date; None: a
    random secret of this process."""
    failed_passphrase_pause_s: float = consent.FAILED_PASSPHRASE_PAUSE_S
    max_clients: int = 1000
    """Registration is open to anyone, so the number of clients is capped: at the cap a new one replaces the
    oldest client holding no grant (`agentcache-mcp auth remove-client` frees room otherwise)."""


class StoreCode(AuthorizationCode):
    grant_id: str


class StoreRefreshToken(RefreshToken):
    grant_id: str


class RegisteredClient(OAuthClientInformationFull):
    """A client as the SDK's handlers see it, whose redirect URIs are checked against the allowlist and matched
    with RFC 8252 §7.3's any-port rule for loopback (the SDK's model compares exactly)."""

    _extra_redirects: tuple[str, ...] = PrivateAttr(default=())

    def validate_scope(self, requested_scope: str | None) -> list[str] | None:
        # `offline_access` (OpenID Connect's way to ask for a refresh token) is granted implicitly: every grant
        # here has one. Dropped rather than refused, so clients that always add it are not turned away.
        if requested_scope is not None:
            kept = [scope for scope in requested_scope.split() if scope != "offline_access"]
            requested_scope = " ".join(kept) if kept else None
        return super().validate_scope(requested_scope)

    def validate_redirect_uri(self, redirect_uri: AnyUrl | None) -> AnyUrl:
        registered = [str(uri) for uri in self.redirect_uris or []]
        if redirect_uri is None:
            if len(registered) == 1 and redirect_allowed(registered[0], self._extra_redirects):
                return AnyUrl(registered[0])
            raise InvalidRedirectUriError("redirect_uri is required unless the client registered exactly one")
        wanted = str(redirect_uri)
        if not redirect_allowed(wanted, self._extra_redirects):
            raise InvalidRedirectUriError(
                f"redirect_uri {wanted} is not allowed by this server (loopback, the hosted connectors' callbacks, "
                "the IDE schemes, or AGENTCACHE_OAUTH_REDIRECT_URIS)"
            )
        if not redirect_uri_matches(wanted, registered):
            raise InvalidRedirectUriError(f"redirect_uri {wanted} is not registered for this client")
        return redirect_uri


_requested_resource: ContextVar[str | None] = ContextVar("agentcache_requested_resource", default=None)
"""The `resource` of the token request being handled (the SDK's token handler does not pass it on)."""


def same_resource(a: str, b: str) -> bool:
    """Are two resource URLs the same (as URLs: case of the host and a trailing slash aside)?"""
    try:
        return str(AnyHttpUrl(a)).removesuffix("/") == str(AnyHttpUrl(b)).removesuffix("/")
    except ValidationError:
        return False


def clean_name(name: str | None) -> str | None:
    """A client's self-chosen name fit to show and log: control, format (bidi overrides, zero-width) and other
    non-printing characters dropped, whitespace folded, cut to MAX_CLIENT_NAME; None if nothing is left. A
    right-to-left override would make the consent page show another name than the one registered."""
    if name is None:
        return None
    kept = "".join(
        " " if ch.isspace() else ch for ch in name if ch.isspace() or not unicodedata.category(ch).startswith("C")
    )
    folded = " ".join(kept.split())[:MAX_CLIENT_NAME]
    return folded or None


def _secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def _grant_of(refresh_token: str) -> str | None:
    """The grant id a refresh token of this server names, or None."""
    prefix, dot, _ = refresh_token.partition(".")
    try:
        return str(uuid.UUID(prefix)) if dot else None
    except ValueError:
        return None


class StoreAuthorizationProvider(OAuthAuthorizationServerProvider[StoreCode, StoreRefreshToken, AccessToken]):
    """The SDK's OAuthAuthorizationServerProvider over an AuthStateStore (see the module docstring). The SEP-990
    identity-assertion grant keeps the protocol's default: refused."""

    def __init__(
        self,
        config: AuthServerConfig,
        state: Callable[[], AuthStateStore],
        signer: consent.Signer,
        fetcher: ClientMetadataFetcher,
        issuer: str,
    ):
        self.config = config
        self.state = state
        self.signer = signer
        self.fetcher = fetcher
        self.issuer = issuer
        self.consent_url = issuer.rstrip("/") + CONSENT_PATH
        self._purge_after = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args))

    # -- clients

    def _client(self, client_id: str, metadata: dict[str, Any]) -> RegisteredClient:
        data = {key: value for key, value in metadata.items() if key != FETCHED_AT}
        data.update(
            client_id=client_id,
            client_secret=None,
            client_secret_expires_at=None,
            token_endpoint_auth_method="none",
            scope=" ".join(self.config.scopes),
        )
        client = RegisteredClient.model_validate(data)
        client._extra_redirects = self.config.extra_redirect_uris
        return client

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        stored = await self._run(self.state().get_client, client_id)
        if stored is None:
            return None
        try:
            return self._client(stored.client_id, stored.metadata)
        except ValidationError:
            log.warning("oauth: the stored metadata of client %r is not valid client metadata; ignored", client_id)
            return None

    async def _room_for(self, client_id: str) -> None:
        """Make room for one more client if the store holds max_clients already: the oldest client that holds no
        grant goes (a registration nobody approved, e.g. one of a flood); if every client holds a grant, the
        registration is refused (RegistrationError)."""

        def make_room(db: AuthStateStore) -> bool:
            clients = db.list_clients()
            if len(clients) < self.config.max_clients or any(c.client_id == client_id for c in clients):
                return True
            granted = {grant.client_id for grant in db.list_grants()}
            idle = [c for c in clients if c.client_id not in granted]  # list_clients is oldest first
            if not idle:
                return False
            db.delete_client(idle[0].client_id)
            log.info("oauth: %d clients registered; removed the oldest unapproved one, %r", len(clients), idle[0].client_id)
            return True

        if not await self._run(make_room, self.state()):
            raise RegistrationError(
                "invalid_client_metadata",
                f"this server holds {self.config.max_clients} approved clients already; the owner can remove some "
                "with `agentcache-mcp auth remove-client`",
            )

    async def purge_now_and_then(self) -> None:
        """Delete expired codes, tokens and their tombstones, at most once per PURGE_EVERY_S in this process (an
        approval or a registration triggers it: nothing else has to run for the tables to stay small)."""
        now = time.time()
        if now < self._purge_after:
            return
        self._purge_after = now + PURGE_EVERY_S
        removed = await self._run(self.state().purge_expired, now)
        if removed:
            log.info("oauth: purged %d expired codes, tokens and idle grants", removed)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        refused = [str(u) for u in client_info.redirect_uris or [] if not redirect_allowed(str(u), self.config.extra_redirect_uris)]
        if refused or not client_info.redirect_uris:
            raise RegistrationError("invalid_redirect_uri", f"redirect URIs not allowed here: {', '.join(refused)}")
        await self.purge_now_and_then()
        await self._room_for(client_info.client_id)
        metadata = client_info.model_dump(mode="json", exclude_none=True)
        await self._run(self.state().put_client, StoredClient(client_info.client_id, metadata, time.time()))

    async def load_metadata_document(self, client_id: str) -> None:
        """Fetch the Client ID Metadata Document at `client_id` into the store, unless a fresh copy is cached;
        ClientMetadataError (a one-line reason) if it cannot be used."""
        now = time.time()
        stored = await self._run(self.state().get_client, client_id)
        if stored is not None and now - float(stored.metadata.get(FETCHED_AT, 0)) < CACHE_S:
            return
        document = await self.fetcher.fetch(client_id)
        metadata = {**document, FETCHED_AT: now}
        try:
            client = self._client(client_id, metadata)
        except ValidationError as exc:
            raise ClientMetadataError("the client metadata document is not valid client metadata") from exc
        if not any(redirect_allowed(str(u), self.config.extra_redirect_uris) for u in client.redirect_uris or []):
            raise ClientMetadataError("none of the client metadata document's redirect_uris is allowed here")
        try:
            await self._room_for(client_id)
        except RegistrationError as exc:
            raise ClientMetadataError(exc.error_description or exc.error) from exc
        await self._run(self.state().put_client, StoredClient(client_id, metadata, now))

    # -- authorization

    async def authorize(self, client: OAuthClientInformationFull, params: AuthorizationParams) -> str:
        resource = params.resource if params.resource is not None else self.config.resource_url
        if not same_resource(resource, self.config.resource_url):
            raise AuthorizeError("invalid_target", f"this server issues tokens only for {self.config.resource_url}")
        scopes = tuple(params.scopes) if params.scopes else self.config.scopes
        unknown = sorted(set(scopes) - set(self.config.scopes))
        if unknown:
            raise AuthorizeError("invalid_scope", f"unknown scope {', '.join(unknown)}")
        if not PKCE_CHALLENGE.fullmatch(params.code_challenge):
            raise AuthorizeError(
                "invalid_request", "code_challenge must be an S256 challenge (43 base64url characters)"
            )
        pending = consent.PendingAuthorization(
            client_id=client.client_id,
            redirect_uri=str(params.redirect_uri),
            redirect_uri_provided_explicitly=params.redirect_uri_provided_explicitly,
            state=params.state,
            code_challenge=params.code_challenge,
            scopes=scopes,
            resource=self.config.resource_url,
            expires_at=time.time() + consent.TICKET_LIFETIME_S,
        )
        return f"{self.consent_url}?{urlencode({'request': self.signer.ticket(pending)})}"

    async def approve(self, pending: consent.PendingAuthorization) -> str:
        """The owner approved on the consent page: a new grant and its code (the code is returned, only its
        digest is stored)."""
        now = time.time()
        grant = Grant(
            grant_id=str(uuid.uuid4()),
            client_id=pending.client_id,
            scopes=pending.scopes,
            resource=pending.resource,
            created_at=now,
            last_used_at=None,
        )
        code = _secret()
        stored = StoredCode(
            code_hash=token_hash(code),
            grant_id=grant.grant_id,
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            redirect_uri_provided_explicitly=pending.redirect_uri_provided_explicitly,
            code_challenge=pending.code_challenge,
            scopes=pending.scopes,
            resource=pending.resource,
            expires_at=now + self.config.code_ttl_s,
        )

        def store(db: AuthStateStore) -> None:
            db.create_grant(grant)
            db.put_code(stored)

        await self._run(store, self.state())
        await self.purge_now_and_then()
        log.info("oauth: the owner approved client %r (grant %s)", pending.client_id, grant.grant_id)
        return code

    # -- codes and tokens

    async def load_authorization_code(self, client: OAuthClientInformationFull, authorization_code: str) -> StoreCode | None:
        stored = await self._run(self.state().take_code, token_hash(authorization_code), time.time())
        if stored is None:
            return None
        return StoreCode(
            code=authorization_code,
            scopes=list(stored.scopes),
            expires_at=stored.expires_at,
            client_id=stored.client_id,
            code_challenge=stored.code_challenge,
            redirect_uri=AnyUrl(stored.redirect_uri),
            redirect_uri_provided_explicitly=stored.redirect_uri_provided_explicitly,
            resource=stored.resource,
            grant_id=stored.grant_id,
        )

    async def exchange_authorization_code(self, client: OAuthClientInformationFull, authorization_code: StoreCode) -> OAuthToken:
        bound = authorization_code.resource or self.config.resource_url
        requested = _requested_resource.get()
        if requested is not None and not same_resource(requested, bound):
            await self._run(self.state().revoke_grant, authorization_code.grant_id)
            raise TokenError("invalid_target", f"resource {requested} is not the one authorized ({bound})")
        return await self._issue(authorization_code.grant_id, client.client_id, tuple(authorization_code.scopes), bound)

    def _new_tokens(
        self, grant_id: str, client_id: str, scopes: tuple[str, ...], resource: str | None
    ) -> tuple[str, StoredToken, str, StoredToken]:
        now = time.time()
        # A refresh token names its grant (not a secret: the grant's id), so a used one can still be offered to
        # rotate_refresh, which needs the successors' grant up front; only the digest of the whole is stored.
        access, refresh = _secret(), f"{grant_id}.{_secret()}"
        return (
            access,
            StoredToken(token_hash(access), "access", grant_id, client_id, scopes, resource, now + self.config.access_ttl_s),
            refresh,
            StoredToken(token_hash(refresh), "refresh", grant_id, client_id, scopes, resource, now + self.config.refresh_ttl_s),
        )

    async def _issue(self, grant_id: str, client_id: str, scopes: tuple[str, ...], resource: str) -> OAuthToken:
        access, stored_access, refresh, stored_refresh = self._new_tokens(grant_id, client_id, scopes, resource)

        def store(db: AuthStateStore) -> None:
            db.put_token(stored_refresh)
            db.put_token(stored_access)

        try:
            await self._run(store, self.state())
        except (UnknownGrant, UnknownClient) as exc:
            raise TokenError("invalid_grant", "the grant was revoked") from exc
        return OAuthToken(
            access_token=access,
            expires_in=self.config.access_ttl_s,
            scope=" ".join(scopes),
            refresh_token=refresh,
        )

    async def load_refresh_token(self, client: OAuthClientInformationFull, refresh_token: str) -> StoreRefreshToken | None:
        """The refresh token if it is live; or, if it is not (used, revoked, expired) but names a grant of this
        client, that grant, so that exchange_refresh_token offers it to rotate_refresh, which decides in one
        transaction: a reuse revokes the grant, a retry within refresh_reuse_grace_s rotates once more."""
        now = time.time()
        stored = await self._run(self.state().get_token, token_hash(refresh_token), "refresh", now)
        if stored is not None:
            return StoreRefreshToken(
                token=refresh_token,
                client_id=stored.client_id,
                scopes=list(stored.scopes),
                expires_at=None if stored.expires_at is None else int(stored.expires_at),
                resource=stored.resource,
                grant_id=stored.grant_id,
            )
        grant_id = _grant_of(refresh_token)
        if grant_id is None:
            return None
        grant = next((g for g in await self._run(self.state().list_grants, client.client_id) if g.grant_id == grant_id), None)
        if grant is None:
            return None
        return StoreRefreshToken(
            token=refresh_token,
            client_id=grant.client_id,
            scopes=list(grant.scopes),
            resource=grant.resource,
            grant_id=grant.grant_id,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: StoreRefreshToken, scopes: list[str]
    ) -> OAuthToken:
        bound = refresh_token.resource or self.config.resource_url
        requested = _requested_resource.get()
        if requested is not None and not same_resource(requested, bound):
            raise TokenError("invalid_target", f"resource {requested} is not the one authorized ({bound})")
        access, stored_access, refresh, stored_refresh = self._new_tokens(
            refresh_token.grant_id, client.client_id, tuple(refresh_token.scopes), bound
        )
        stored_access = StoredToken(
            stored_access.token_hash, "access", refresh_token.grant_id, client.client_id, tuple(scopes), bound,
            stored_access.expires_at,
        )
        try:
            rotated = await self._run(
                partial(
                    self.state().rotate_refresh,
                    token_hash(refresh_token.token),
                    stored_refresh,
                    stored_access,
                    time.time(),
                    reuse_grace_s=self.config.refresh_reuse_grace_s,
                )
            )
        except (UnknownGrant, UnknownClient) as exc:
            raise TokenError("invalid_grant", "the grant was revoked") from exc
        if not rotated:
            log.warning("oauth: a used refresh token of client %r was presented again; its grant is revoked", client.client_id)
            raise TokenError("invalid_grant", "the refresh token was used already; the grant is revoked, authorize again")
        return OAuthToken(
            access_token=access, expires_in=self.config.access_ttl_s, scope=" ".join(scopes), refresh_token=refresh
        )

    async def load_access_token(self, token: str) -> AccessToken | None:
        stored = await self._run(self.state().get_token, token_hash(token), "access", time.time())
        if stored is None:
            return None
        return AccessToken(
            token=token,
            client_id=stored.client_id,
            scopes=list(stored.scopes),
            expires_at=None if stored.expires_at is None else int(stored.expires_at),
            resource=stored.resource,
            claims={"iss": self.issuer, "grant_id": stored.grant_id},
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        await self._run(self.state().revoke_token, token_hash(token.token))


@dataclass
class StoreTokenVerifier(TokenVerifier):
    """The resource side's view: a live access token of this server, with its RFC 8707 resource."""

    provider: StoreAuthorizationProvider

    async def verify_token(self, token: str) -> AccessToken | None:
        return await self.provider.load_access_token(token)


@dataclass
class AuthorizationServer:
    routes: list[BaseRoute]
    verifier: TokenVerifier
    provider: StoreAuthorizationProvider
    metadata: OAuthMetadata
    fetcher: ClientMetadataFetcher = field(repr=False)
    passphrase_gate: consent.PassphraseGate = field(repr=False)


def _cors(app: ASGIApp, methods: list[str]) -> ASGIApp:
    # Browser clients (the MCP inspector) call these from another origin; no cookies are involved.
    return CORSMiddleware(app, allow_origins="*", allow_methods=methods, allow_headers=[MCP_PROTOCOL_VERSION_HEADER])


def _limited(app: ASGIApp) -> ASGIApp:
    return RequestBodyLimitMiddleware(app, MAX_FORM_BYTES)


def _json_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def build_metadata(config: AuthServerConfig) -> OAuthMetadata:
    base = config.issuer_url.rstrip("/")
    return OAuthMetadata.model_validate(
        {
            "issuer": config.issuer_url,
            "authorization_endpoint": base + AUTHORIZE_PATH,
            "token_endpoint": base + TOKEN_PATH,
            "registration_endpoint": base + REGISTER_PATH,
            "revocation_endpoint": base + REVOKE_PATH,
            "scopes_supported": list(config.scopes),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none"],
            "revocation_endpoint_auth_methods_supported": ["none"],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
        }
    )


def build_authorization_server(
    config: AuthServerConfig,
    state: Callable[[], AuthStateStore],
    *,
    fetcher: ClientMetadataFetcher | None = None,
) -> AuthorizationServer:
    """The routes of the built-in authorization server and the verifier of its tokens. `state` is called per
    request (the store may open after the routes are built); `fetcher` is for tests (see ClientMetadataFetcher)."""
    validate_issuer_url(AnyHttpUrl(config.issuer_url))
    if not config.scopes:
        raise ValueError("the authorization server needs at least one scope")
    metadata = build_metadata(config)
    issuer = str(metadata.issuer)
    secret = config.signing_secret.encode() if config.signing_secret else secrets.token_bytes(32)
    signer = consent.Signer(secret)
    gate = consent.PassphraseGate(config.passphrase, config.failed_passphrase_pause_s)
    fetcher = fetcher or ClientMetadataFetcher()
    provider = StoreAuthorizationProvider(config, state, signer, fetcher, issuer)
    authenticator = ClientAuthenticator(provider)
    authorization_handler = AuthorizationHandler(provider)
    token_handler = TokenHandler(provider, authenticator)
    consent_path = urlsplit(provider.consent_url).path

    def with_issuer(response: Response) -> Response:
        """RFC 9207: `iss` on every redirect to the client (the SDK handler's error redirects lack it)."""
        location = response.headers.get("location")
        if response.status_code not in (302, 303) or not location or location.startswith(provider.consent_url):
            return response
        return RedirectResponse(
            construct_redirect_uri(location, iss=issuer), status_code=response.status_code,
            headers={"Cache-Control": "no-store"},
        )

    async def authorize(request: Request) -> Response:
        params = request.query_params if request.method == "GET" else await request.form()
        client_id = params.get("client_id")
        if isinstance(client_id, str) and is_client_metadata_url(client_id):
            try:
                await provider.load_metadata_document(client_id)
            except ClientMetadataError as exc:
                log.warning("oauth: refused client metadata document %r: %s", client_id, exc)
                return _json_error(400, "invalid_client", str(exc))
        return with_issuer(await authorization_handler.handle(request))

    async def token(request: Request) -> Response:
        form = await request.form()  # cached on the request: the SDK handler reads the same form
        resource = form.get("resource")
        verifier = form.get("code_verifier")
        if form.get("grant_type") == "authorization_code" and not (
            isinstance(verifier, str) and CODE_VERIFIER.fullmatch(verifier)
        ):
            return _json_error(400, "invalid_request", "code_verifier must be 43 to 128 characters of A-Z a-z 0-9 - . _ ~")
        reset = _requested_resource.set(resource if isinstance(resource, str) else None)
        try:
            return await token_handler.handle(request)
        finally:
            _requested_resource.reset(reset)

    async def register(request: Request) -> Response:
        try:
            requested = OAuthClientMetadata.model_validate_json(await request.body())
        except ValidationError as exc:
            return _json_error(400, "invalid_client_metadata", f"not valid client metadata ({exc.error_count()} errors)")
        if "authorization_code" not in requested.grant_types or set(requested.grant_types) - {
            "authorization_code",
            "refresh_token",
        }:
            return _json_error(400, "invalid_client_metadata", "grant_types must be authorization_code [and refresh_token]")
        if requested.response_types != ["code"]:
            return _json_error(400, "invalid_client_metadata", "response_types must be [\"code\"]")
        if requested.scope is not None and set(requested.scope.split()) - set(config.scopes):
            return _json_error(400, "invalid_client_metadata", f"scope must be within {' '.join(config.scopes)}")
        allowed = [u for u in requested.redirect_uris or [] if redirect_allowed(str(u), config.extra_redirect_uris)]
        if not allowed:
            return _json_error(
                400,
                "invalid_redirect_uri",
                "none of the redirect_uris is allowed by this server (loopback, the hosted connectors' callbacks, "
                "the IDE schemes, or AGENTCACHE_OAUTH_REDIRECT_URIS)",
            )
        info = OAuthClientInformationFull.model_validate(
            {
                **requested.model_dump(mode="json", exclude_none=True),
                # RFC 7591 §3.2.1: the server may replace requested values. Every client here is public.
                "redirect_uris": [str(u) for u in allowed],
                "token_endpoint_auth_method": "none",
                "scope": " ".join(config.scopes),
                "client_id": str(uuid.uuid4()),
                "client_id_issued_at": int(time.time()),
            }
        )
        info.client_name = clean_name(info.client_name)
        try:
            await provider.register_client(info)
        except RegistrationError as exc:
            return _json_error(400, exc.error, exc.error_description or exc.error)
        log.info("oauth: registered client %r (%r)", info.client_id, info.client_name)
        return PydanticJSONResponse(content=info, status_code=201, headers={"Cache-Control": "no-store"})

    async def revoke(request: Request) -> Response:
        try:
            client = await authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            return _json_error(401, "invalid_client", exc.message)
        form = await request.form()
        given = form.get("token")
        if not isinstance(given, str) or not given:
            return _json_error(400, "invalid_request", "token is required")
        for loaded in (await provider.load_access_token(given), await _live_refresh(given)):
            if loaded is not None and loaded.client_id == client.client_id:
                await provider.revoke_token(loaded)
                log.info("oauth: client %r revoked a grant", client.client_id)
                break
        # RFC 7009 §2.2: 200 whether or not the token was known
        return Response(status_code=200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    async def _live_refresh(given: str) -> RefreshToken | None:
        stored = await provider._run(provider.state().get_token, token_hash(given), "refresh", time.time())
        if stored is None:
            return None
        return RefreshToken(token=given, client_id=stored.client_id, scopes=list(stored.scopes))

    def page(status: int, redirect_uri: str | None = None, **values: Any) -> HTMLResponse:
        headers = {**consent.SECURITY_HEADERS, "Content-Security-Policy": consent.csp(_origin(redirect_uri))}
        return HTMLResponse(consent.render(action=provider.consent_url, **values), status_code=status, headers=headers)

    def refused(request: Request) -> str | None:
        if request.headers.get("sec-fetch-dest", "").lower() in consent.FRAME_DESTINATIONS:
            return "This page is never shown inside another page. Open it directly."
        if request.method == "GET":
            return None
        origin = request.headers.get("origin")
        if origin is not None:
            scheme, _, authority = origin.partition("://")
            if scheme.lower() not in ("http", "https") or authority.lower() != request.headers.get("host", "").lower():
                return "Refused: the form was sent from another site."
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "Refused: the form was sent from another site."
        return None

    async def describe(pending: consent.PendingAuthorization) -> dict[str, Any] | None:
        client = await provider.get_client(pending.client_id)
        if client is None:
            return None
        name = clean_name(client.client_name) or "An unnamed client"
        return {
            "client_name": name,
            "client_id": client.client_id,
            "redirect_host": redirect_host(pending.redirect_uri),
            "scope": " ".join(pending.scopes),
            "resource": pending.resource,
            "loopback": is_loopback_redirect(pending.redirect_uri),
        }

    async def consent_page(request: Request) -> Response:
        if (problem := refused(request)) is not None:
            return page(403, error=problem)
        ticket = request.query_params.get("request", "")
        pending = signer.open_ticket(ticket, time.time()) if ticket else None
        shown = await describe(pending) if pending is not None else None
        if pending is None or shown is None:
            return page(400, error="This authorization request is out of date or not valid. Start again from the app.")
        nonce = request.cookies.get(consent.NONCE_COOKIE)
        fresh = nonce is None or len(nonce) != 43
        if fresh:
            nonce = secrets.token_urlsafe(32)
        assert nonce is not None
        response = page(200, pending.redirect_uri, ticket=ticket, csrf=signer.csrf(ticket, nonce), **shown)
        if fresh:
            response.set_cookie(
                consent.NONCE_COOKIE,
                nonce,
                path=consent_path,
                httponly=True,
                samesite="strict",
                secure=issuer.startswith("https:"),  # the public scheme: behind a TLS proxy the request is http
            )
        return response

    async def consent_post(request: Request) -> Response:
        if (problem := refused(request)) is not None:
            log.warning("oauth: refused a consent post: %s", problem)
            return page(403, error=problem)
        form = await request.form()
        ticket = form.get("ticket")
        if not isinstance(ticket, str) or not signer.csrf_ok(
            form.get("csrf"), ticket, request.cookies.get(consent.NONCE_COOKIE)
        ):
            log.warning("oauth: refused a consent post without a valid CSRF token")
            return page(403, error="Refused: the form is out of date or came from another site (CSRF check). "
                        "Start again from the app.")
        pending = signer.open_ticket(ticket, time.time())
        shown = await describe(pending) if pending is not None else None
        if pending is None or shown is None:
            return page(400, error="This authorization request is out of date or not valid. Start again from the app.")
        back = partial(construct_redirect_uri, pending.redirect_uri, state=pending.state, iss=issuer)
        decision = form.get("decision")
        if decision == "deny":
            log.info("oauth: the owner denied client %r", pending.client_id)
            return RedirectResponse(back(error="access_denied"), status_code=303, headers={"Cache-Control": "no-store"})
        if decision != "approve":
            return page(400, error="Choose Approve or Deny.")
        if gate.busy:
            # A wrong passphrase is being paused for: no other is even compared meanwhile (so parallel guesses
            # gain nothing), and none waits in line holding a connection (so a flood cannot fill the server).
            log.warning("oauth: a consent post during the pause after a wrong passphrase; refused unchecked")
            return page(
                429,
                pending.redirect_uri,
                error="Too many wrong passphrases just now: wait a few seconds, then try again.",
                ticket=ticket,
                csrf=form["csrf"],
                **shown,
            )
        if not gate.matches(form.get("passphrase")):
            log.warning("oauth: a wrong passphrase on the consent page for client %r", pending.client_id)
            await gate.failed()
            return page(
                403, pending.redirect_uri, error="Wrong passphrase.", ticket=ticket, csrf=form["csrf"], **shown
            )
        try:
            code = await provider.approve(pending)
        except UnknownClient:
            return page(400, error="This client was removed meanwhile. Start again from the app.")
        return RedirectResponse(back(code=code), status_code=303, headers={"Cache-Control": "no-store"})

    routes: list[BaseRoute] = [
        Route(
            METADATA_PATH,
            endpoint=_cors(request_response(MetadataHandler(metadata).handle), ["GET", "OPTIONS"]),
            methods=["GET", "OPTIONS"],
        ),
        Route(AUTHORIZE_PATH, endpoint=_limited(request_response(authorize)), methods=["GET", "POST"]),
        Route(CONSENT_PATH, endpoint=consent_page, methods=["GET"]),
        Route(CONSENT_PATH, endpoint=_limited(request_response(consent_post)), methods=["POST"]),
        Route(TOKEN_PATH, endpoint=_cors(_limited(request_response(token)), ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"]),
        Route(
            REGISTER_PATH,
            endpoint=_cors(_limited(request_response(register)), ["POST", "OPTIONS"]),
            methods=["POST", "OPTIONS"],
        ),
        Route(REVOKE_PATH, endpoint=_cors(_limited(request_response(revoke)), ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"]),
    ]
    issuer_path = urlsplit(issuer).path.rstrip("/")
    if issuer_path:  # RFC 8414 §3.1: the well-known path is inserted before the issuer's own path
        routes.append(
            Route(
                METADATA_PATH + issuer_path,
                endpoint=_cors(request_response(MetadataHandler(metadata).handle), ["GET", "OPTIONS"]),
                methods=["GET", "OPTIONS"],
            )
        )
    return AuthorizationServer(routes, StoreTokenVerifier(provider), provider, metadata, fetcher, gate)


def _origin(uri: str | None) -> str | None:
    """The CSP source of a redirect URI: scheme://host[:port], or `scheme:` for an app's URI."""
    if uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"{parts.scheme}://{parts.netloc}"
    return f"{parts.scheme}:"
