"""The consent page: where the owner approves a client, with the passphrase, every time.

- Never auto-approves: every authorization request shows the page, whatever was approved before.
- The pending request travels as a ticket (the validated authorization parameters and an expiry, with an HMAC
  under the server's signing secret), so a POST cannot approve anything the page did not show, and any process
  holding the same secret can take the POST (see AuthServerConfig.signing_secret).
- CSRF: the form carries an HMAC of the ticket and of a random nonce kept in an HttpOnly, SameSite=Strict cookie
  scoped to the consent path; a POST without both, or whose Origin / Sec-Fetch-Site says another site sent it,
  is refused (403). Another site cannot read the page (no CORS) and cannot set the cookie.
- Clickjacking: `frame-ancestors 'none'` and `X-Frame-Options: DENY`, and a request to load the page into a frame
  (`Sec-Fetch-Dest: iframe`) is refused outright; the page runs no script at all (CSP `script-src 'none'`).
- The passphrase is compared in constant time (by digest); a wrong one is answered after a pause taken one
  failure at a time across all connections of this process, growing with the recent failures, so guessing runs
  at under one try per second (per process) and slows down further.
- After the POST the browser is sent on with 303 See Other, so it follows with a GET and the form (with the
  passphrase) is never re-posted to the client (RFC 9700 §4.11).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import anyio
from jinja2 import Environment, StrictUndefined

CSP = (
    "default-src 'none'; script-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
"""The consent page's Content-Security-Policy. CSP 3 applies `form-action` to the redirects that follow a form
post too (the headless Chromium of the browser test lets the redirect through either way; a stricter browser
would not), so a page showing a request adds the origin of that request's redirect URI (see `csp`)."""
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TICKET_LIFETIME_S = 600.0
"""How long the owner has to approve after the authorization request (the page then says to start again)."""
FAILED_PASSPHRASE_PAUSE_S = 1.0
"""A wrong passphrase is answered after this pause times (1 + the failures of the last FAILURE_WINDOW_S), at most
MAX_FAILED_PAUSE_S, taken one failure at a time across every connection of the process."""
FAILURE_WINDOW_S = 900.0
MAX_FAILED_PAUSE_S = 30.0
FRAME_DESTINATIONS = frozenset({"iframe", "frame", "embed", "object", "fencedframe"})
NONCE_COOKIE = "agentcache_consent"

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Allow access to your memory? · agentcache</title>
<style>
body{font:16px/1.5 system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#222}
dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem}dt{color:#666}dd{margin:0;word-break:break-all}
.error{color:#a00;font-weight:600}input[type=password]{width:100%;padding:.4rem;font-size:1rem}
button{padding:.5rem 1.2rem;font-size:1rem;margin-right:.6rem}.warn{color:#8a5300}
</style></head><body>
<main>
<h1>Allow access to your memory?</h1>
{% if error %}<p class="error" role="alert" id="error">{{ error }}</p>{% endif %}
{% if ticket %}
<p><strong id="client-name">{{ client_name }}</strong> asks to use this agentcache memory server.</p>
<dl>
<dt>Client</dt><dd id="client-id">{{ client_id }}</dd>
<dt>Sends you back to</dt><dd id="redirect-host">{{ redirect_host }}</dd>
<dt>Access</dt><dd id="scope">{{ scope }}: read, add and forget memories</dd>
<dt>Server</dt><dd id="resource">{{ resource }}</dd>
</dl>
{% if loopback %}<p class="warn">The answer goes to a program on this computer ({{ redirect_host }}).
Approve only if you started this connection yourself just now.</p>{% endif %}
<form method="post" action="{{ action }}">
<input type="hidden" name="ticket" value="{{ ticket }}">
<input type="hidden" name="csrf" value="{{ csrf }}">
<p><label for="passphrase">Passphrase</label><br>
<input type="password" id="passphrase" name="passphrase" autocomplete="current-password" autofocus></p>
<p><button type="submit" name="decision" value="approve" id="approve">Approve</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button></p>
</form>
{% endif %}
</main></body></html>
"""

_ENV = Environment(autoescape=True, undefined=StrictUndefined)
_TEMPLATE = _ENV.from_string(PAGE)


def render(**values: Any) -> str:
    """The consent page (autoescaped: the client's name and URLs are chosen by whoever registered it)."""
    defaults: dict[str, Any] = {
        "error": None,
        "ticket": None,
        "csrf": "",
        "client_name": "",
        "client_id": "",
        "redirect_host": "",
        "scope": "",
        "resource": "",
        "loopback": False,
        "action": "",
    }
    return _TEMPLATE.render(**{**defaults, **values})


def csp(redirect_origin: str | None = None) -> str:
    """The page's CSP; `redirect_origin` (scheme://host[:port], or `scheme:` for an app's URI) is where an
    approval or a denial sends the browser after the post."""
    return f"{CSP} {redirect_origin}" if redirect_origin else CSP


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PendingAuthorization:
    """An authorization request the consent page is showing: validated, not yet approved."""

    client_id: str
    redirect_uri: str
    redirect_uri_provided_explicitly: bool
    state: str | None
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str
    expires_at: float


class Signer:
    """HMACs of tickets and CSRF tokens under one secret (AuthServerConfig.signing_secret)."""

    def __init__(self, secret: bytes):
        self._secret = secret

    def _mac(self, purpose: str, *parts: str) -> str:
        return hmac.new(self._secret, "\x00".join((purpose, *parts)).encode(), hashlib.sha256).hexdigest()

    def ticket(self, pending: PendingAuthorization) -> str:
        body = _b64(json.dumps(pending.__dict__, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac('ticket', body)}"

    def open_ticket(self, ticket: str, now: float) -> PendingAuthorization | None:
        """The pending authorization in a ticket this server signed and that has not expired; else None."""
        body, _, mac = ticket.partition(".")
        if not body or not hmac.compare_digest(mac.encode(), self._mac("ticket", body).encode()):
            return None
        try:
            fields = json.loads(_unb64(body))
            pending = PendingAuthorization(**{**fields, "scopes": tuple(fields["scopes"])})
        except (ValueError, TypeError, KeyError):
            return None
        return pending if pending.expires_at > now else None

    def csrf(self, ticket: str, nonce: str) -> str:
        return self._mac("csrf", ticket, nonce)

    def csrf_ok(self, given: object, ticket: str, nonce: str | None) -> bool:
        if not isinstance(given, str) or not nonce:
            return False
        return hmac.compare_digest(given.encode(), self.csrf(ticket, nonce).encode())


class PassphraseGate:
    """The owner's passphrase, compared by digest in constant time, with the pause after a wrong one."""

    def __init__(self, passphrase: str, pause_s: float = FAILED_PASSPHRASE_PAUSE_S):
        if not passphrase:
            raise ValueError("the consent page needs a passphrase (AGENTCACHE_OAUTH_PASSPHRASE or AGENTCACHE_AUTH_TOKEN)")
        self._digest = hashlib.sha256(passphrase.encode()).digest()
        self.pause_s = pause_s
        self._failures: list[float] = []
        self._lock: anyio.Lock | None = None

    def matches(self, given: object) -> bool:
        if not isinstance(given, str):
            return False
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest)

    def recent_failures(self, now: float) -> int:
        self._failures = [t for t in self._failures if t > now - FAILURE_WINDOW_S]
        return len(self._failures)

    async def failed(self) -> None:
        """Record a wrong passphrase and take its pause, one at a time across every connection."""
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            now = time.monotonic()
            pause = min(self.pause_s * (1 + self.recent_failures(now)), MAX_FAILED_PAUSE_S)
            self._failures.append(now)
            await anyio.sleep(pause)
