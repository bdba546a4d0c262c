"""The web UI's own guard: sessions, CSRF, the token login and the security headers of every response.

It sits inside the `/ui` mount, behind `transports.guard` (the Host/Origin allow-list that protects `/mcp`
covers `/ui` too; the bearer check leaves `/ui` to this guard, since a browser cannot send a header).

- Every response carries a strict Content-Security-Policy (no script at all, `default-src 'self'`, no
  framing), `X-Frame-Options: DENY`, `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` and
  `Cache-Control: no-store` (pages hold memory text).
- A session is a random id in an HttpOnly, SameSite=Strict cookie scoped to the UI's path. Its CSRF token is
  an HMAC of the id under a per-process secret; every form that changes something carries it in a hidden
  field and `checked_form` refuses a request without the right one (403).
- A request that is not GET or HEAD is refused (403) when its Origin names another host or port than its
  Host header (another port of the same host is another site; the scheme is not compared, as a TLS proxy
  turns https into http), or when `Sec-Fetch-Site` says it came from another site.
- With a token configured, every page but the login form and the static files needs a logged-in session:
  a GET is sent to the login form, anything else refused. The login form compares the token in constant
  time (transports.same_token), answers a wrong one after a pause, and on success starts a new session (a
  session id set before the login is never the logged-in one). The token never appears in a URL.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from urllib.parse import quote

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
"""A login lasts this long (and ends when the process stops: sessions live in its memory)."""
MAX_SESSIONS = 1000
"""Logged-in sessions kept at most; the oldest is dropped first."""
FAILED_LOGIN_PAUSE_S = 1.0
_SID = re.compile(r"[A-Za-z0-9_-]{43}")
SAFE_METHODS = frozenset({"GET", "HEAD"})
PUBLIC_PATHS = ("/login", "/static/")


class Refused(Exception):
    """A request the UI will not serve: 403 with a short reason."""


class UiGuard:
    """ASGI middleware around the UI app; `token` None means no login (a loopback bind without a token)."""

    def __init__(self, app: ASGIApp | None, token: str | None):
        self.app = app
        self._token_digest = token_digest(token) if token else None
        self._secret = secrets.token_bytes(32)
        self._logged_in: OrderedDict[str, float] = OrderedDict()

    @property
    def login_required(self) -> bool:
        return self._token_digest is not None

    # -- sessions

    def cookie_name(self, scope: Scope) -> str:
        # Browsers share cookies between the ports of a host: each server keeps its own name.
        server = scope.get("server") or ("", 0)
        return f"agentcache_ui_{server[1] or 0}"

    def session_id(self, request: Request) -> str | None:
        sid = request.cookies.get(self.cookie_name(request.scope))
        return sid if sid is not None and _SID.fullmatch(sid) else None

    def csrf_token(self, sid: str) -> str:
        return hmac.new(self._secret, b"csrf:" + sid.encode(), hashlib.sha256).hexdigest()

    def logged_in(self, sid: str | None) -> bool:
        if not self.login_required:
            return True
        if sid is None:
            return False
        expires = self._logged_in.get(sid)
        if expires is None or expires < time.time():
            self._logged_in.pop(sid, None)
            return False
        return True

    def log_in(self, token: str) -> str | None:
        """A new logged-in session id if `token` is the configured one, else None."""
        if self._token_digest is None or not same_token(token.encode(), self._token_digest):
            return None
        sid = secrets.token_urlsafe(32)
        self._logged_in[sid] = time.time() + SESSION_LIFETIME_S
        while len(self._logged_in) > MAX_SESSIONS:
            self._logged_in.popitem(last=False)
        return sid

    def log_out(self, sid: str | None) -> None:
        if sid is not None:
            self._logged_in.pop(sid, None)

    def set_cookie(self, response: Response, request: Request, sid: str) -> None:
        response.set_cookie(
            self.cookie_name(request.scope),
            sid,
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
        origin = request.headers.get("origin")
        if origin is not None:
            # Host and port, not the scheme: behind a TLS proxy the browser's https origin reaches us as http.
            scheme, _, authority = origin.partition("://")
            if scheme.lower() not in ("http", "https") or authority.lower() != request.headers.get("host", "").lower():
                return "forbidden: a cross-site request (Origin is not this page's own)"
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return "forbidden: a cross-site request (Sec-Fetch-Site)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "UiGuard.app is set before the guard serves"
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        sid = self.session_id(request)
        new_sid = None
        if sid is None:
            sid = new_sid = secrets.token_urlsafe(32)
        scope.setdefault("state", {})["session_id"] = sid
        response: Response | None = None
        route = scope["path"][len(scope.get("root_path", "")) :] or "/"
        if scope["method"] not in SAFE_METHODS and (problem := self._cross_site(request)) is not None:
            log.warning(
                "refused %s %s: %s (Host %r, Origin %r, Sec-Fetch-Site %r)",
                scope["method"],
                scope["path"],
                problem,
                request.headers.get("host"),
                request.headers.get("origin"),
                request.headers.get("sec-fetch-site"),
            )
            response = refusal(problem)
        elif not route.startswith(PUBLIC_PATHS) and not self.logged_in(sid):
            if scope["method"] in SAFE_METHODS:
                target = route + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                root = scope.get("root_path", "")
                response = RedirectResponse(f"{root}/login?next={quote(root + target, safe='')}", status_code=303)
            else:
                response = refusal("forbidden: log in first")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                if b"cache-control" not in names and not route.startswith("/static/"):
                    headers.append((b"cache-control", b"no-store"))
                cookie_prefix = self.cookie_name(scope).encode() + b"="
                if new_sid is not None and not any(
                    k == b"set-cookie" and v.startswith(cookie_prefix) for k, v in headers
                ):
                    cookie = Response()
                    self.set_cookie(cookie, request, new_sid)
                    headers += [(k, v) for k, v in cookie.raw_headers if k == b"set-cookie"]
                message = {**message, "headers": headers}
            await send(message)

        if response is not None:
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


def refusal(message: str) -> Response:
    return HTMLResponse(f"<!doctype html><title>Refused</title><p>{escape(message)}</p>", status_code=403)
