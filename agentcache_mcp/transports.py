"""Who may talk to the HTTP transports: the bind-address policy and the ASGI guards in front of both apps.

- `is_loopback(bind)`: whether a bind address listens on loopback only. The CLI refuses any other bind
  without a token.
- `HostOriginGuard`: DNS-rebinding protection. The Host header must name a loopback host (`localhost`, any
  127.x.y.z, `[::1]` in any spelling, IPv4-mapped `[::ffff:127.x.y.z]`) or an `--allowed-host` entry; an
  Origin header, when sent, must be http(s) to such a host. Anything else gets 403 before the app sees it.
- `BearerAuth`: `Authorization: Bearer <token>` (scheme case-insensitive, token compared in constant time).
- `guard(asgi, settings)`: wraps an app in the guards the settings call for. Both transports go through
  it, and the guards see every HTTP and WebSocket request, so a route added later is covered too. The web
  UI's paths (`/ui/...`) pass the bearer check to the UI's own token login (a browser cannot send the
  header), never the Host/Origin check. With AGENTCACHE_OAUTH on, the bearer check is OAuth's
  (auth.resource.ResourceGuard, which takes the static token too), and with a token or OAuth, CORS
  (auth.resource.Cors) answers browser clients of the admitted origins.
- `RequestLog`: one DEBUG line per HTTP request (method, path, status, duration), outermost in `guard`.
- `limited_h11_protocol`: uvicorn's HTTP/1.1 protocol with a request timeout and a connection limit, so
  half-sent requests and stalled clients cannot hold connections (and file descriptors) for long.
- `bind_host_problem(host)`: the start-up check of `--host`.

The SDK has its own Host/Origin check, but it fires only when the bind address is one of three exact
strings and matches a fixed list of host strings, so it cannot be the guarantee; `guard` is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:
    from .auth.resource import ResourceSide

log = logging.getLogger("agentcache_mcp")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""The usual spellings of loopback; `is_loopback` also accepts every other one."""

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _ip(text: str) -> _IP | None:
    """The address `text` spells exactly (no inet_aton shorthands), IPv4-mapped IPv6 unwrapped; else None."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1; the stdlib (3.11) does not call it loopback
    return ip


def is_loopback(host: str) -> bool:
    """Whether binding `host` listens on loopback only.

    True for `localhost` (any case), every 127.0.0.0/8 address, `::1` in any spelling (`0:0:0:0:0:0:0:1`,
    `::1%lo`) and IPv4-mapped loopback (`::ffff:127.0.0.1`). False for anything else: other hostnames (a
    name can resolve anywhere), `localhost.` (a DNS name, not the hosts-file entry), unspecified addresses
    (`0.0.0.0`, `::`), shorthands such as `127.1`, and the deprecated IPv4-compatible `::127.0.0.1`.
    """
    if host.lower() == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def _is_loopback_name(name: str) -> bool:
    """`name` is a Host/Origin host as `split_host_port` returns it: lowercase, no brackets."""
    if name == "localhost":
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


def _canonical(name: str) -> str:
    ip = _ip(name)
    return str(ip) if ip is not None else name.lower()


def split_host_port(authority: str) -> tuple[str, int | None]:
    """`name`, `name:port`, `[v6]` or `[v6]:port` -> (canonical name, port or None). ValueError if malformed.

    The name is lower-cased, or for an IP literal written the one canonical way, so `[0:0:0:0:0:0:0:1]`
    and `[::1]` compare equal. An IPv6 literal must be bracketed; an IPv4 literal must not.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {authority!r}")
        name, rest = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise ValueError(f"not an IPv6 address in brackets: {authority!r}") from None
    else:
        name, colon, port_text = authority.partition(":")
        rest = colon + port_text
        if not _HOSTNAME.fullmatch(name):
            raise ValueError(f"not a host name: {authority!r}")
    port: int | None = None
    if rest:
        digits = rest[1:]
        if not rest.startswith(":") or not (digits.isascii() and digits.isdigit()) or int(digits) > 65535:
            raise ValueError(f"bad port in {authority!r}")
        port = int(digits)
    return _canonical(name), port


def canonical_origin(scheme: str, name: str, port: int | None) -> str:
    """`scheme://name[:port]` as browsers send an Origin: lower case, IPv6 bracketed, no default port."""
    host = f"[{name}]" if ":" in name else name
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else "")


def bind_host_problem(host: str) -> str | None:
    """Why `host` cannot be a bind address, or None: an IP address (IPv6 without brackets) or a host name."""
    if _ip(host) is not None or _HOSTNAME.fullmatch(host):
        return None
    if host.startswith("[") and host.endswith("]") and _ip(host[1:-1]) is not None:
        return f"write an IPv6 address without brackets, e.g. {host[1:-1]}"
    return "expected an IP address (IPv6 without brackets) or a host name, e.g. 127.0.0.1, ::1, localhost"


def parse_allowed_host(entry: str) -> tuple[str, int | None]:
    """An `--allowed-host` / AGENTCACHE_ALLOWED_HOSTS entry, `NAME[:PORT]` (IPv6 as `[ADDR][:PORT]`)."""
    try:
        return split_host_port(entry.strip())
    except ValueError as exc:
        raise ValueError(f"allowed host {entry!r} is not NAME[:PORT]: {exc}") from None


async def _refuse(scope: dict[str, Any], send: Any, status: int, message: str, headers: Iterable = ()) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
        return
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header_values(scope: dict[str, Any], name: bytes) -> list[bytes]:
    return [value for key, value in scope.get("headers") or [] if key.lower() == name]


class HostOriginGuard:
    """ASGI middleware against DNS rebinding: every HTTP/WebSocket request needs an accepted Host header,
    and an accepted Origin header if it sends one; otherwise 403 with a short JSON error.

    Accepted hosts: every loopback host, with or without a port (`localhost`, any 127.x.y.z, `[::1]` and
    its other spellings, `[::ffff:127.x.y.z]`), plus `allowed_hosts` entries `NAME[:PORT]`. An entry
    without a port matches any port; one with a port matches that port, or a Host without a port when it is
    80 or 443 (a proxy's default port), or an Origin whose scheme's default port it is. A missing or
    repeated Host header, a repeated Origin header and `Origin: null` are refused. `allowed_origins` are web
    origins (`https://app.example`, AGENTCACHE_ALLOWED_ORIGINS) admitted as an Origin only, never as a Host:
    a browser client served from there may call the server, which that name cannot be.
    """

    def __init__(self, app: Any, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = tuple(parse_allowed_host(entry) for entry in allowed_hosts)
        self.allowed_origins = frozenset(allowed_origins)  # exact origins (config canonicalises them), Origin only

    def _admits(self, name: str, port: int | None, default_port: int | None) -> bool:
        if _is_loopback_name(name):
            return True
        for allowed_name, allowed_port in self.allowed:
            if name != allowed_name:
                continue
            if allowed_port is None or allowed_port == port:
                return True
            if port is None and (allowed_port == default_port or (default_port is None and allowed_port in (80, 443))):
                return True
        return False

    def admits_host(self, value: str) -> bool:
        try:
            name, port = split_host_port(value)
        except ValueError:
            return False
        return self._admits(name, port, None)

    def admits_origin(self, value: str) -> bool:
        scheme, sep, authority = value.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in _DEFAULT_PORTS:
            return False  # includes "null" (sandboxed frames, file: pages) and non-web schemes
        try:
            name, port = split_host_port(authority)
        except ValueError:
            return False  # a path, userinfo or junk: not an origin a browser sends
        if self.allowed_origins and canonical_origin(scheme, name, port) in self.allowed_origins:
            return True
        return self._admits(name, port, _DEFAULT_PORTS[scheme])

    def problem(self, scope: dict[str, Any]) -> str | None:
        """Why this request is refused, or None."""
        hosts = _header_values(scope, b"host")
        if len(hosts) != 1 or not self.admits_host(hosts[0].decode("latin-1")):
            return "forbidden: Host header not allowed (see --allowed-host)"
        origins = _header_values(scope, b"origin")
        if len(origins) > 1 or (origins and not self.admits_origin(origins[0].decode("latin-1"))):
            return "forbidden: Origin header not allowed (see --allowed-host)"
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = self.problem(scope)
            if problem is not None:
                log.warning(
                    "refused %s %s: %s (Host %r, Origin %r)",
                    scope.get("method", "WEBSOCKET"),
                    scope.get("path", ""),
                    problem,
                    b",".join(_header_values(scope, b"host")).decode("latin-1"),
                    b",".join(_header_values(scope, b"origin")).decode("latin-1"),
                )
                await _refuse(scope, send, 403, problem)
                return
        await self.app(scope, receive, send)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def same_token(given: bytes, digest: bytes) -> bool:
    """Whether `given` is the token whose token_digest is `digest`, compared as SHA-256 digests in constant
    time: the time taken reveals neither the token's content nor its length."""
    return hmac.compare_digest(hashlib.sha256(given).digest(), digest)


UI_PATH = "/ui"
"""Where the HTTP transports serve the web UI (agentcache_mcp.ui)."""


def is_ui_path(path: str) -> bool:
    return path == UI_PATH or path.startswith(UI_PATH + "/")


class BearerAuth:
    """ASGI middleware: every HTTP/WebSocket request needs `Authorization: Bearer <token>`, else 401.

    The scheme is case-insensitive (RFC 9110: `bearer`, `BEARER` are fine); the token is compared as SHA-256
    digests with `hmac.compare_digest`, so the time taken reveals neither its content nor its length. A
    missing, repeated or malformed header is refused.
    """

    def __init__(self, app: Any, token: str, *, logs_in_itself: Callable[[str], bool] | None = None):
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self._digest = token_digest(token)
        self._logs_in_itself = logs_in_itself

    def authorized(self, scope: dict[str, Any]) -> bool:
        values = _header_values(scope, b"authorization")
        if len(values) != 1:
            return False
        scheme, sep, credentials = values[0].strip().partition(b" ")
        credentials = credentials.lstrip(b" ")
        if not sep or scheme.lower() != b"bearer" or not credentials:
            return False
        return same_token(credentials, self._digest)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] in ("http", "websocket")
            and not (self._logs_in_itself is not None and self._logs_in_itself(scope.get("path", "")))
            and not self.authorized(scope)
        ):
            await _refuse(
                scope,
                send,
                401,
                "unauthorized: send Authorization: Bearer <AGENTCACHE_AUTH_TOKEN>",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


def bind_refusal(settings: Settings, *, ui_only: bool = False) -> str | None:
    """Why the HTTP transports (or, `ui_only`, the `ui` command) must not start with these settings, or None:
    without a token, only a loopback bind is allowed (Host/Origin checks then keep browsers' rebinding tricks
    out), unless OAuth guards the MCP endpoint (config has then required AGENTCACHE_PUBLIC_URL). OAuth does not
    guard the web UI, which logs in with the token: `ui` alone still needs it off loopback."""
    if not settings.auth_token and not is_loopback(settings.host) and (ui_only or settings.oauth == "off"):
        return (
            f"refusing to serve on non-loopback address {settings.host} without AGENTCACHE_AUTH_TOKEN set"
            + ("" if ui_only else " (or AGENTCACHE_OAUTH)")
            + ": anyone who can reach it could read and delete memories"
        )
    return None


def serves_ui_over_http(settings: Settings) -> bool:
    """Whether `serve` over HTTP mounts the web UI: it logs in with AGENTCACHE_AUTH_TOKEN, so without the token
    only where nothing but loopback reaches it. Off loopback (which OAuth alone allows) it is not served; nor,
    with OAuth on, on a loopback bind that admits another name (AGENTCACHE_PUBLIC_URL, --allowed-host): that
    is a tunnel or a proxy bringing the network in (how claude.ai reaches a laptop), which OAuth guards /mcp
    for, and the UI's pages, open without a login, would hand every memory to whoever has the URL."""
    if settings.auth_token:
        return True
    if not is_loopback(settings.host):
        return False
    if settings.oauth == "off":
        return True  # as before OAuth: without a token /mcp is as open as the UI to whatever is admitted
    admitted = [parse_allowed_host(entry)[0] for entry in (*public_url_entry(settings), *settings.allowed_hosts)]
    return all(_is_loopback_name(name) for name in admitted)


def needs_host_check(settings: Settings) -> bool:
    """Host/Origin checks apply on a loopback bind (always, token or not), without a token (which the CLI
    allows only on loopback, or with OAuth), and with a token on any other bind when allowed hosts, a public
    URL or allowed origins are configured; a token on a non-loopback bind with none of them is guarded by the
    token alone."""
    return (
        is_loopback(settings.host)
        or not settings.auth_token
        or bool(settings.allowed_hosts or settings.allowed_origins or settings.public_url)
    )


def public_url_entry(settings: Settings) -> list[str]:
    """AGENTCACHE_PUBLIC_URL's host (with its port if it names one) as an allowed-host entry: the name clients,
    and the consent page's own form posts, arrive with."""
    if not settings.public_url:
        return []
    name, port = split_host_port(settings.public_url.partition("://")[2])
    if _is_loopback_name(name):
        return []
    host = f"[{name}]" if ":" in name else name
    return [host if port is None else f"{host}:{port}"]


def _bind_entries(host: str) -> list[str]:
    """The bind address as an allowed-host entry, so clients may name the address they connect to; none for
    a loopback bind (already accepted) or an unspecified one (`0.0.0.0`, `::` name no host)."""
    if is_loopback(host):
        return []
    ip = _ip(host)
    if ip is not None:
        if ip.is_unspecified:
            return []
        return [f"[{ip}]" if ip.version == 6 else str(ip)]
    return [host] if _HOSTNAME.fullmatch(host) else []


class RequestLog:
    """ASGI middleware: one DEBUG line per HTTP request when it ends, `METHOD PATH STATUS (SECONDS s)`.

    Outermost, so refused requests are logged too. The SDK's own per-session and per-request INFO lines
    are turned down by the CLI unless --log-level DEBUG; this line is what remains at DEBUG. A request
    that ends without a response (client gone) logs status `-`.
    """

    def __init__(self, app: Any, logger: logging.Logger = log):
        self.app = app
        self.log = logger

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.log.isEnabledFor(logging.DEBUG):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            self.log.debug(
                "%s %s %s (%.3f s)",
                scope.get("method", "?"),
                scope.get("path", ""),
                status[0] if status else "-",
                time.perf_counter() - start,
            )


def guard(
    asgi: Any,
    settings: Settings,
    *,
    logs_in_itself: Callable[[str], bool] | None = None,
    resource: ResourceSide | None = None,
) -> Any:
    """`asgi` behind the guards `settings` call for: Host/Origin first, then CORS (with a token or OAuth), then
    the bearer check (OAuth's, `resource`, when given: auth.resource.ResourceGuard, which takes the static token
    too; else the static token's); the request log outermost. Paths for which `logs_in_itself` is true (the
    web UI's: a browser cannot send a bearer header) are left to the app's own token login and get no CORS;
    Host/Origin checks still apply to them.

    Without a token or OAuth there is no CORS: a server anyone on the machine may call must not let every web
    page served from localhost (a dev server) read its answers, as browsers then would."""
    if resource is not None:
        asgi = resource.guard(asgi, logs_in_itself=logs_in_itself)
    elif settings.auth_token:
        asgi = BearerAuth(asgi, settings.auth_token, logs_in_itself=logs_in_itself)
    origins = HostOriginGuard(
        asgi, [*_bind_entries(settings.host), *public_url_entry(settings), *settings.allowed_hosts], settings.allowed_origins
    )
    if resource is not None or settings.auth_token:
        from .auth.resource import Cors

        asgi = origins.app = Cors(asgi, origins.admits_origin, skip=logs_in_itself)
    if needs_host_check(settings):
        asgi = origins
    return RequestLog(asgi)


LISTEN_BACKLOG = 128
"""The listening socket's queue of connections not yet accepted; also how many asyncio accepts in one go, so
with `http_max_connections` it bounds the file descriptors a flood of connections can take at once."""

_AT_LIMIT_WARNING_EVERY_S = 60.0


def limited_h11_protocol(request_timeout_s: float, max_connections: int) -> type[Any]:
    """uvicorn's h11 protocol with the two limits uvicorn lacks, for `uvicorn.Config(http=...)`:

    - **Request timeout.** uvicorn times a connection out only while it is idle between requests (its
      keep-alive timer, armed once a response is sent, and restarted by every byte received). A connection
      that never finishes its request line, headers or body was held forever. Here a request must have
      arrived whole `request_timeout_s` after the connection opened, or after the first byte of a later
      request on a kept-alive connection; else the connection gets 408 (or, if nothing was sent, just
      closes). The response is not timed: a stream the server sends (SSE) lasts as long as it lasts; but a
      client that reads nothing of it for `request_timeout_s` (writes paused: its buffers are full) is
      dropped, since a response that has started is never closed to make room (pipelined requests never
      read held their connections, and the limit, for good). An upgrade to WebSocket leaves this protocol.
    - **Connection limit.** At most `max_connections` open. One more closes the oldest connection that is
      still waiting for its request (half-sent, or idle between requests), so stalled clients make room for
      new ones instead of locking them out; failing that, the one whose client has read nothing of its answer
      the longest (its writes paused); failing that, the oldest request that has waited longer than
      `request_timeout_s` without the start of an answer (a queue of wrong UI logins, each paused in turn, is
      such); failing that (every connection busy and answering, e.g. SSE streams), the new one is answered
      503 and closed. So nobody is locked out for much longer than the request timeout.

    Pinned to h11 (pure Python, always installed): the limits are written against its states, and httptools,
    which uvicorn would pick if it were installed, is not used.
    """
    import asyncio

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: dict[Any, None] = {}  # connections waiting for (the rest of) a request, oldest first
    last_warning = [-_AT_LIMIT_WARNING_EVERY_S]

    def warn_at_limit(what: str) -> None:
        now = time.monotonic()
        if now - last_warning[0] >= _AT_LIMIT_WARNING_EVERY_S:
            last_warning[0] = now
            log.warning(
                "HTTP: %d connections open, the limit (AGENTCACHE_HTTP_MAX_CONNECTIONS): %s (said once a minute)",
                max_connections,
                what,
            )

    def response(status: int, reason: str, text: str) -> bytes:
        body = (text + "\n").encode()
        head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        return (head + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body

    request_timeout = response(408, "Request Timeout", f"the request did not arrive within {request_timeout_s:g} s")
    too_many = response(503, "Service Unavailable", "too many connections; try again shortly")

    class LimitedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _request_started = False  # some bytes of the request now awaited have arrived
        _received_at: float | None = None  # when the request being handled had arrived whole
        _write_stall: asyncio.TimerHandle | None = None  # armed while the client reads nothing it is sent
        _upgraded = False  # handed to uvicorn's WebSocket protocol

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if (
                len(self.connections) > max_connections  # the cheap test first; then the ones not closing already
                and sum(not c.transport.is_closing() for c in self.connections) > max_connections
            ):
                oldest = next(iter(waiting), None)
                if oldest is not None:
                    warn_at_limit("closing the oldest connections that have not sent their request")
                    oldest._drop(too_many if oldest._request_started else None)
                elif (unread := self._longest_unread()) is not None:
                    warn_at_limit("closing the connections that have read nothing of their answer the longest")
                    unread._write_stalled()
                elif (unanswered := self._longest_unanswered()) is not None:
                    warn_at_limit("closing the oldest requests unanswered for longer than the request timeout")
                    unanswered._drop(too_many)
                else:
                    warn_at_limit("every one is busy answering a request; new connections get 503")
                    self._drop(too_many)
                    return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None:  # the first bytes of a request on a kept-alive connection
                self._arm()
            self._request_started = True
            super().data_received(data)
            self._settle()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (
                self.conn.their_state is h11.SEND_BODY or self.conn.trailing_data[0]
            ):
                if self._deadline is None:  # a pipelined request partly here (a body still coming is timed)
                    self._arm()
            else:
                self._request_started = False  # idle between requests: uvicorn's keep-alive timer closes it
            self._settle()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._write_stall_cancel()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            super().handle_websocket_upgrade(event)
            self._upgraded = True  # the WebSocket protocol has the connection now: no request is awaited here
            self._disarm()

        def pause_writing(self) -> None:
            # The client reads nothing of what it is sent (the buffers are full): it gets the request timeout to
            # read again, else it is dropped. Such a response has started, so nothing else would ever close it.
            super().pause_writing()
            self._write_stall_cancel()
            self._write_stall = self.loop.call_later(request_timeout_s, self._write_stalled)

        def resume_writing(self) -> None:
            self._write_stall_cancel()
            super().resume_writing()

        def _write_stall_cancel(self) -> None:
            if self._write_stall is not None:
                self._write_stall.cancel()
                self._write_stall = None

        def _write_stalled(self) -> None:
            self._write_stall = None
            log.debug("HTTP: dropped a connection from %s: it read nothing for %g s", self.client, request_timeout_s)
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True
                self.cycle.message_event.set()
            self.transport.abort()

        def _waiting_for_request(self) -> bool:
            return (
                not self._upgraded
                and not self.transport.is_closing()
                and self.conn.their_state in (h11.IDLE, h11.SEND_BODY)
            )

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout_s, self._timed_out)
            waiting[self] = None  # moved to the end: the newest to wait

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            waiting.pop(self, None)

        def _settle(self) -> None:
            if not self._waiting_for_request():
                self._disarm()  # the request is here (or the connection is closing): the app has it
                self._request_started = False
                if self._received_at is None:
                    self._received_at = time.monotonic()
            else:
                self._received_at = None
                if self not in waiting:
                    waiting[self] = None  # idle between requests: the first to make room at the limit

        def _longest_unread(self) -> LimitedH11Protocol | None:
            """The connection whose client has read nothing of its answer the longest (writes paused)."""
            stalled = [
                other
                for other in self.connections
                if isinstance(other, LimitedH11Protocol)
                and other._write_stall is not None
                and not other.transport.is_closing()
            ]
            return min(stalled, key=lambda other: other._write_stall.when(), default=None)  # type: ignore[union-attr]

        def _longest_unanswered(self) -> LimitedH11Protocol | None:
            """The connection whose request has waited longest, and over request_timeout_s, for an answer."""
            now, found = time.monotonic(), None
            for other in self.connections:
                if (
                    isinstance(other, LimitedH11Protocol)
                    and not other.transport.is_closing()
                    and other._received_at is not None
                    and now - other._received_at > request_timeout_s
                    and other.cycle is not None
                    and not other.cycle.response_started
                    and (found is None or other._received_at < found._received_at)  # type: ignore[operator]
                ):
                    found = other
            return found

        def _timed_out(self) -> None:
            self._deadline = None
            if self._waiting_for_request():
                log.debug("HTTP: closed a connection from %s: request not received in %g s", self.client, request_timeout_s)
                self._drop(request_timeout if self._request_started else None)

        def _drop(self, answer: bytes | None) -> None:
            """Close the connection, first answering `answer` if no response has begun."""
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app's receive() says so; its late send() writes nothing
                self.cycle.message_event.set()
            if answer is not None and self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                self.transport.write(answer)
            self.transport.close()
            if self.transport.get_write_buffer_size():
                # close() waits for the buffer to drain: a client that does not read would keep the socket
                self.loop.call_later(min(request_timeout_s, 1.0), self.transport.abort)

    return LimitedH11Protocol
