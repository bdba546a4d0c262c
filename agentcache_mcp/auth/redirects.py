"""Where the built-in authorization server may send an authorization code: the redirect allowlist, and how a
requested redirect URI matches a registered one.

A code is only as safe as the place it is sent to. Anyone may register a client (RFC 7591 registration is open,
and a Client ID Metadata Document is any https URL), so a client's own list of redirect URIs proves nothing;
every redirect URI must also be on this allowlist, at registration and again at each authorization:

- the hosted connectors' fixed callbacks (HOSTED_CALLBACKS; a code sent there reaches the connector of the
  person who is signed in to that service in the same browser, i.e. the owner, never a third party);
- loopback on any port and path (`http://127.0.0.1:*`, `http://localhost:*`, `http://[::1]:*`): a native client
  on the owner's machine (Claude Code, the MCP inspector, VS Code, the SDK's client);
- the desktop apps' private-use schemes (APP_SCHEMES, RFC 8252 §7.1), which the operating system delivers to
  the app on the owner's machine;
- what the owner adds (AGENTCACHE_OAUTH_REDIRECT_URIS), exactly.

Matching (RFC 6749 §3.1.2.3 asks for simple string comparison) is exact after URL normalisation, with one
exception that RFC 8252 §7.3 makes mandatory: a loopback IP redirect matches a registered one whatever its
port, because a native client listens on whatever port is free when it starts (VS Code registers
`http://127.0.0.1:33418/` and then uses another port when that one is taken:
https://github.com/microsoft/vscode/issues/278512). Host, path and query must still be the same. The SDK's
`OAuthClientInformationFull.validate_redirect_uri` compares exactly, hence `redirect_uri_matches` here.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from pydantic import AnyUrl, ValidationError

HOSTED_CALLBACKS: tuple[str, ...] = (
    # Claude (claude.ai and claude.com custom connectors; Anthropic asks servers to allow both:
    # https://sunpeak.ai/blogs/claude-connector-oauth-authentication, and the hosted callback named in
    # https://github.com/bytebase/bytebase/issues/20510)
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
    # ChatGPT connectors (the redirect_uri ChatGPT sends, quoted in
    # https://community.openai.com/t/oauth-missing-scopes-after-reconnect/1366784)
    "https://chatgpt.com/connector_platform_oauth_redirect",
    # Cursor's agents register this beside cursor:// and loopback
    # (https://github.com/bytebase/bytebase/issues/20510, https://github.com/erp-mafia/accounted/pull/2225)
    "https://www.cursor.com/agents/mcp/oauth/callback",
)
"""Vendor-hosted callbacks of the connectors people add this server to by URL."""

APP_SCHEMES: frozenset[str] = frozenset({"cursor", "vscode", "vscode-insiders", "claude"})
"""Private-use URI schemes of desktop apps (RFC 8252 §7.1). Cursor registers
`cursor://anysphere.cursor-mcp/oauth/callback` (https://github.com/makeplane/plane-mcp-server/issues/159)."""

LOOPBACK_HOSTS: frozenset[str] = frozenset({"127.0.0.1", "localhost", "::1"})
"""Loopback redirect hosts, any port (RFC 8252 §7.3; `localhost` is NOT RECOMMENDED there but is what the MCP
inspector and Claude Code use)."""


def normalise(uri: str) -> str | None:
    """The URI as pydantic's AnyUrl renders it (so `http://127.0.0.1:8/` and `http://127.0.0.1:8` are one),
    or None if it is not an absolute URI, has a fragment (RFC 6749 §3.1.2) or carries user information."""
    try:
        rendered = str(AnyUrl(uri))
    except ValidationError:
        return None
    parts = urlsplit(rendered)
    if not parts.scheme or parts.fragment or "#" in uri or parts.username is not None or parts.password is not None:
        return None
    return rendered


def _is_loopback(parts_scheme: str, host: str | None) -> bool:
    return parts_scheme == "http" and host is not None and host.lower() in LOOPBACK_HOSTS


def is_loopback_redirect(uri: str) -> bool:
    found = normalise(uri)
    if found is None:
        return False
    parts = urlsplit(found)
    return _is_loopback(parts.scheme, parts.hostname)


def redirect_allowed(uri: str, extra: Iterable[str] = ()) -> bool:
    """Is `uri` a place this server may ever send a code to (see the module docstring)?"""
    found = normalise(uri)
    if found is None:
        return False
    parts = urlsplit(found)
    if _is_loopback(parts.scheme, parts.hostname):
        return True
    if parts.scheme in APP_SCHEMES:
        return True
    allowed = {normalise(u) for u in (*HOSTED_CALLBACKS, *extra)}
    return found in allowed


def redirect_uri_matches(requested: str, registered: Iterable[str]) -> bool:
    """Does the requested redirect URI match one the client registered: exactly (after normalisation), or, for a
    loopback IP redirect, with only the port differing (RFC 8252 §7.3)?"""
    wanted = normalise(requested)
    if wanted is None:
        return False
    wanted_parts = urlsplit(wanted)
    for candidate in registered:
        known = normalise(candidate)
        if known is None:
            continue
        if known == wanted:
            return True
        known_parts = urlsplit(known)
        if (
            _is_loopback(wanted_parts.scheme, wanted_parts.hostname)
            and known_parts.scheme == wanted_parts.scheme
            and known_parts.hostname == wanted_parts.hostname
            and known_parts.path == wanted_parts.path
            and known_parts.query == wanted_parts.query
        ):
            return True
    return False


def redirect_host(uri: str) -> str:
    """What the consent page shows of a redirect URI: its host (and port), or the scheme of an app's URI."""
    parts = urlsplit(uri)
    if parts.scheme in APP_SCHEMES:
        return f"{parts.scheme}://{parts.netloc}"
    return parts.netloc or uri
