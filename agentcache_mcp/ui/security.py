"""The web UI's own guard: sessions, CSRF, the token login and the security headers of every response.

It sits inside the `/ui` mount, behind `transports.guard` (the Host/Origin allow-list that protects `/mcp`
covers `/ui` too; the bearer check leaves `/ui` to this guard, since a browser cannot send a header).

- Every response carries a strict Content-Security-Policy (no script at all, `default-src 'self'`, no
  framing), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` and
  `Cache-Control: no-store` (pages hold memory text).
- Sessions are stateless, so that any process on the same store (replicas behind a load balancer, a
  restarted server) accepts any other's: the HttpOnly, SameSite=Strict cookie, scoped to the UI's path,
  holds a random session id, its expiry, whether it is logged in, and an HMAC of those under a secret kept
  in the store (MemoryService.ui_secret: created once, shared by every process on it). With a token
  configured the MAC also covers the token's digest, so changing the token logs everyone out. The cookie
  is named after the port in the Host header (what the browser sees: browsers share cookies between the
  ports of a host, so each site keeps its own name), not the port the process is bound to.
- A session's CSRF token is an HMAC of its id under the same secret; every form that changes something
  carries it in a hidden field and `checked_form` refuses a request without the right one (403).
- Logging out clears the cookie in the browser. As nothing is kept on the server, a copy of a logged-in
  cookie taken before the logout stays valid until its expiry (SESSION_LIFETIME_S); change the token to end
  every session at once.
- A request that is not GET or HEAD is refused (403) when its Origin names another host or port than its
  Host header (another port of the same host is another site; the scheme is not compared, as a TLS proxy
  turns https into http), or when `Sec-Fetch-Site` says it came from another site. A GET or HEAD that
  `Sec-Fetch-Site` says came from another site is refused too unless it is a top-level navigation
  (`Sec-Fetch-Mode: navigate`): a link to a search works, an `<img src=...>` on another site does not run one.
  A request to load a page into a frame (`Sec-Fetch-Dest` iframe, frame, embed, object, fencedframe) is
  refused whoever asks, before any page code runs: `frame-ancestors 'none'` only stops the browser from
  showing a framed page, after the server has run its search; the UI never frames itself. A navigation
  another site asked for ahead of a click (`Sec-Purpose: prefetch` or `prefetch;prerender`) is refused too.
- With a token configured, every page but the login form and the static files needs a logged-in session:
  a GET is sent to the login form, anything else refused. The login form compares the token in constant
  time (transports.same_token), answers a wrong one after a pause taken one failure at a time across all
  connections (a global limit on guesses), and on success starts a new session (a session id set before
  the login is never the logged-in one). The token never appears in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

import anyio
from markupsafe import escape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..transports import same_token, token_digest

log = logging.getLogger("agentcache_mcp")

CSP = (
    "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'; img-src 'self' data:; style-src 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make chromium send `Origin: null` on our own posts
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SESSION_LIFETIME_S = 12 * 3600.0
"""A login lasts this long (in any process on the store: the session is in the cookie, not in a process)."""
ANONYMOUS_LIFETIME_S = 7 * 24 * 3600.0
"""A session that is not logged in (it anchors the CSRF tokens of its forms) lasts this long."""
FAILED_LOGIN_PAUSE_S = 1.0
"""A wrong token is answered after this pause, taken one failure at a time across every connection."""
SECRET_REREAD_S = 5.0
"""A cookie whose MAC does not verify makes the guard re-read the stored secret, at most this often (a secret
replaced in the store, by hand or by a restore, is adopted without a restart; processes creating it at once
already agree: the store keeps the first one's)."""
_COOKIE = re.compile(r"([A-Za-z0-9_-]{43})\.([0-9]{1,12})\.([01])\.([0-9a-f]{64})")
SAFE_METHODS = frozenset({"GET", "HEAD"})
FRAME_DESTINATIONS = frozenset({"iframe", "frame", "embed", "object", "fencedframe"})
"""`Sec-Fetch-Dest` values of a page loaded into another page: refused (a hidden frame could run searches)."""
PUBLIC_PATHS = ("/login", "/static/")


class Refused(Exception):
    """A request the UI will not serve: 403 with a short reason."""


@dataclass(frozen=True)
class Session:
    id: str
    expires: int
    logged_in: bool


class UiGuard:
    """ASGI middleware around the UI app; `token` None means no login (a loopback bind without a token).
    `load_secret` reads (creating it once if absent) the session secret shared by every process on the store;
    without it (tests of the guard alone) the secret is this process's own."""

    def __init__(self, app: ASGIApp | None, token: str | None, load_secret: Callable[[], Awaitable[str]] | None = None):
        self.app = app
        self._token_digest = token_digest(token) if token else None
        self._load_secret = load_secret
        self._secret: bytes | None = None if load_secret else secrets.token_bytes(32)
        self._reread_after = 0.0
        self._failures: anyio.Lock | None = None

    @property
    def login_required(self) -> bool:
        return self._token_digest is not None

    # -- the shared secret

    async def _ensure_secret(self) -> bytes:
        if self._secret is None:
            assert self._load_secret is not None
            self._secret = (await self._load_secret()).encode()
            self._reread_after = time.monotonic() + SECRET_REREAD_S
        return self._secret

    async def _reread_secret(self) -> bool:
        """Re-read the stored secret (throttled); True if it changed."""
        if self._load_secret is None or time.monotonic() < self._reread_after:
            return False
        self._reread_after = time.monotonic() + SECRET_REREAD_S
        stored = (await self._load_secret()).encode()
        changed = stored != self._secret
        self._secret = stored
        return changed

    def _mac(self, purpose: str, *parts: str) -> str:
        assert self._secret is not None, "the secret is loaded before a request is served"
        message = "\x00".join((purpose, *parts)).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    # -- sessions

    def cookie_name(self, scope: Scope) -> str:
        # Browsers share cookies between the ports of a host: each site (host:port as the browser sees it,
        # the Host header) keeps its own name, the same in every replica behind it.
        host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
        port = host.rpartition(":")[2] if ":" in host.rpartition("]")[2] else ""
        if not port.isdigit():
            port = "443" if scope.get("scheme") in ("https", "wss") else "80"
        return f"agentcache_ui_{int(port)}"

    def _session_mac(self, sid: str, expires: int, logged_in: bool) -> str:
        digest = self._token_digest.hex() if logged_in and self._token_digest is not None else ""
        return self._mac("session", sid, str(expires), "1" if logged_in else "0", digest)

    def cookie_value(self, session: Session) -> str:
        flag = "1" if session.logged_in else "0"
        return (
            f"{session.id}.{session.expires}.{flag}.{self._session_mac(session.id, session.expires, session.logged_in)}"
        )

    def new_session(self, logged_in: bool = False) -> Session:
        lifetime = SESSION_LIFETIME_S if logged_in else ANONYMOUS_LIFETIME_S
        return Session(secrets.token_urlsafe(32), int(time.time() + lifetime), logged_in)

    def _verified(self, value: str | None) -> Session | bool | None:
        """The session in a cookie value; None if there is none or it expired; False if its MAC is wrong."""
        found = _COOKIE.fullmatch(value) if value else None
        if found is None:
            return None
        sid, expires, flag, mac = found.group(1), int(found.group(2)), found.group(3) == "1", found.group(4)
        if not hmac.compare_digest(mac, self._session_mac(sid, expires, flag)):
            return False
        return Session(sid, expires, flag) if expires > time.time() else None

    async def session(self, request: Request) -> Session | None:
        """The valid session of the request's cookie, or None."""
        await self._ensure_secret()
        value = request.cookies.get(self.cookie_name(request.scope))
        found = self._verified(value)
        if found is False and await self._reread_secret():
            found = self._verified(value)
        return found if isinstance(found, Session) else None

    def csrf_token(self, sid: str) -> str:
        return self._mac("csrf", sid)

    def logged_in(self, session: Session | None) -> bool:
        if not self.login_required:
            return True
        return session is not None and session.logged_in

    def log_in(self, token: str) -> Session | None:
        """A new logged-in session if `token` is the configured one, else None."""
        if self._token_digest is None or not same_token(token.encode(), self._token_digest):
            return None
        return self.new_session(logged_in=True)

    async def failed_login_pause(self) -> None:
        """The pause after a wrong token, one failure at a time across all connections: parallel guesses
        wait for each other, so guessing runs at one try per FAILED_LOGIN_PAUSE_S per process."""
        if self._failures is None:
            self._failures = anyio.Lock()
        async with self._failures:
            await anyio.sleep(FAILED_LOGIN_PAUSE_S)

    def set_cookie(self, response: Response, request: Request, session: Session, root: str | None = None) -> None:
        response.set_cookie(
            self.cookie_name(request.scope),
            self.cookie_value(session),
            path=(request.scope.get("root_path", "") if root is None else root) or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def clear_cookie(self, response: Response, request: Request) -> None:
        response.delete_cookie(
            self.cookie_name(request.scope),
            path=request.scope.get("root_path") or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    async def checked_form(self, request: Request) -> FormData:
        """The posted form, if it carries this session's CSRF token; else Refused."""
        form = await request.form()
        sid = request.state.session_id
        given = form.get("csrf")
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), self.csrf_token(sid).encode()):
            log.warning("refused %s %s: no valid CSRF token", request.method, request.url.path)
            raise Refused("forbidden: the form is out of date or came from another site (CSRF check); reload the page")
        return form

    # -- the middleware

    def _cross_site(self, request: Request) -> str | None:
        site = request.headers.get("sec-fetch-site", "same-origin")
        if request.headers.get("sec-fetch-dest", "").lower() in FRAME_DESTINATIONS:
            return "forbidden: the memory browser is not shown inside another page (a frame); open it directly"
        if request.method in SAFE_METHODS:
            # Reads change nothing, but a search runs the model: another site may link here (a top-level
            # navigation) but not make the browser fetch a page (an <img>, a fetch, a frame).
            if site in ("cross-site", "same-site") and request.headers.get("sec-fetch-mode") != "navigate":
                return "forbidden: a page of another site asked for this (Sec-Fetch-Site); open the link itself"
            if site in ("cross-site", "same-site") and (
                request.headers.get("sec-purpose") or request.headers.get("purpose")
            ):  # a prefetch or prerender is a navigation nobody made: the page would run unseen
                return "forbidden: a page of another site asked for this ahead of a click (Sec-Purpose); open the link"
            return None
        origin = request.headers.get("origin")
        if origin is not None:
            # Host and port, not the scheme: behind a TLS proxy the browser's https origin reaches us as http.
            scheme, _, authority = origin.partition("://")
            if scheme.lower() not in ("http", "https") or authority.lower() != request.headers.get("host", "").lower():
                return "forbidden: a cross-site request (Origin is not this page's own)"
        if site not in ("same-origin", "none"):
            return "forbidden: a cross-site request (Sec-Fetch-Site)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "UiGuard.app is set before the guard serves"
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")  # before the inner app's mounts extend it (/ui/static)
        request = Request(scope)
        session = await self.session(request)
        new_session = None
        if session is None:
            session = new_session = self.new_session()
        scope.setdefault("state", {})["session_id"] = session.id
        scope["state"]["session"] = session
        response: Response | None = None
        route = scope["path"][len(root) :] or "/"
        if (problem := self._cross_site(request)) is not None:
            log.warning(
                "refused %s %s: %s (Host %r, Origin %r, Sec-Fetch-Site %r, Sec-Fetch-Mode %r, Sec-Fetch-Dest %r)",
                scope["method"],
                scope["path"],
                problem,
                request.headers.get("host"),
                request.headers.get("origin"),
                request.headers.get("sec-fetch-site"),
                request.headers.get("sec-fetch-mode"),
                request.headers.get("sec-fetch-dest"),
            )
            response = refusal(problem, root, self.login_required)
            new_session = None  # nothing is set on a refused cross-site request
        elif not route.startswith(PUBLIC_PATHS) and not self.logged_in(session):
            if scope["method"] in SAFE_METHODS:
                target = route + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                response = RedirectResponse(f"{root}/login?next={quote(root + target, safe='')}", status_code=303)
            else:
                response = refusal("forbidden: log in first", root, self.login_required)
        cookie_name = self.cookie_name(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names and not route.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                cookie_prefix = cookie_name.encode() + b"="
                if new_session is not None and not any(
                    k == b"set-cookie" and v.startswith(cookie_prefix) for k, v in headers
                ):
                    cookie = Response()
                    self.set_cookie(cookie, request, new_session, root)
                    headers += [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]
                message = {**message, "headers": headers}
            await send(message)

        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def refusal(message: str, root: str = "", login: bool = False) -> Response:
    """A refusal a person can read, in the UI's style, with a way back."""
    back = f'<a href="{escape(root)}/login">Log in</a> · ' if login else ""
    return HTMLResponse(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Refused · agentcache</title><link rel="icon" href="data:,">'
        f'<link rel="stylesheet" href="{escape(root)}/static/ui.css"></head><body>'
        f'<header class="top"><a class="brand" href="{escape(root)}/">agentcache<span>memory browser</span></a>'
        f'</header><main><h1>Refused</h1><p class="error" role="alert">{escape(message)}</p>'
        f'<p>{back}<a href="{escape(root)}/">Back to the namespaces</a></p></main></body></html>',
        status_code=403,
    )
