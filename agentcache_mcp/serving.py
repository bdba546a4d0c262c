"""The serving process: `serve` (stdio, SSE or streamable HTTP) and `ui` (the memory browser alone).

Only protocol goes to stdout; logs go to stderr. Signals (SIGTERM, SIGINT) and stdin EOF start the bounded
shutdown of `workers.open_app`; a signal during it is logged, never fatal. Over stdio, a signal ends the input as
EOF does, and either way the calls in flight are answered before the transport closes (a call the store holds
up gets StoreBusy within `workers.ABANDON_AFTER_S`). The HTTP transports run under uvicorn behind
`transports.guard` (Host/Origin and bearer checks), on sockets bound before the store is opened: a port
already in use is `CannotListen`, one line from the CLI.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .config import Settings
from .transports import LISTEN_BACKLOG, bind_refusal, guard, limited_h11_protocol

if TYPE_CHECKING:
    from .workers import App

log = logging.getLogger("agentcache_mcp")

ANSWER_WAIT_S = 1.2
"""After a signal: how long the calls in flight get to answer before the transport closes (a call the store holds
up is answered with StoreBusy by workers.ABANDON_AFTER_S)."""
STALLED_S = 0.3
"""At stdin EOF, while calls are in flight: the shutdown begins once none has answered for this long."""
EOF_ANSWER_WAIT_S = 60.0
"""At stdin EOF: every request read before it is handled and answered first (a host may pipe its requests and
close stdin); a stuck store cannot stretch this (its calls fail fast once the shutdown began). A host's SIGTERM
cuts it to ANSWER_WAIT_S."""
SIGNAL_HARD_STOP_S = 1.6
"""After a signal, the stdio session is cancelled outright if it has not ended by then."""
WAITING_FOR_A_HOST = (
    "agentcache-mcp: speaking MCP (JSON-RPC) on stdin/stdout, waiting for a host to connect; "
    "this is not a prompt (see README, Hosts). Ctrl-D or Ctrl-C quits."
)
"""Said on stderr when stdin is a terminal: a person started the server by hand."""


async def serve(settings: Settings, transport: str) -> None:
    from .server import build_server
    from .workers import open_app

    async with (
        _listening(settings, transport) as sockets,
        open_app(settings) as app,
        anyio.create_task_group() as tg,
    ):
        server = build_server(settings, app=app)
        if transport == "stdio":
            if _is_terminal(sys.stdin):
                print(WAITING_FOR_A_HOST, file=sys.stderr, flush=True)
            stdin = _CancellableStdin(sys.stdin.buffer)
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, None, app, stdin)
            await _run_stdio(server, app, stdin)  # returns at stdin EOF or a signal, the calls in flight answered
        else:
            uv = http_server(server, settings, transport, app=app, port=sockets[0].getsockname()[1])
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, uv, app)
            tg.start_soon(_announce, uv, f"serving {transport} on", "")
            await uv.serve(sockets=sockets)
        app.begin_shutdown()
        tg.cancel_scope.cancel()
    log.info("stopped")


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


async def serve_ui(settings: Settings) -> None:
    """`agentcache-mcp ui`: the memory browser alone, on loopback, over the store the servers use. It loads the
    model (search by meaning) and embeds what is pending like a server, but leaves auto-forget to the servers."""
    from .workers import open_app

    async with (
        _listening(settings, "ui") as sockets,
        open_app(settings.model_copy(update={"auto_forget_enabled": False})) as app,
    ):
        uv = _uvicorn(ui_only_app(app, settings), settings)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, uv, app)
            tg.start_soon(_announce, uv, "memory browser on", "/ui/")
            await uv.serve(sockets=sockets)
            app.begin_shutdown()
            tg.cancel_scope.cancel()
    log.info("stopped")


def ui_only_app(app: Any, settings: Settings) -> Any:
    """`agentcache-mcp ui`'s ASGI app: the UI at /ui (and / sent there), behind transports.guard. The UI logs
    in itself (a browser cannot send a bearer header); the Host/Origin checks apply as they do to /mcp."""
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route, Router

    from .transports import UI_PATH
    from .ui import build_ui

    asgi = Router(
        [
            Route("/", lambda _: RedirectResponse(UI_PATH + "/", status_code=307)),
            Mount(UI_PATH, build_ui(app)),
        ]
    )
    return guard(asgi, settings, logs_in_itself=lambda _: True)


async def _announce(uv: Any, what: str, path: str) -> None:
    """Log where clients reach the server once uvicorn serves (its port, also when --port 0 had it picked)."""
    while not uv.started:
        await anyio.sleep(0.05)
    host, port = uv.servers[0].sockets[0].getsockname()[:2]
    log.info("%s http://%s:%d%s", what, f"[{host}]" if ":" in host else host, port, path)


class CannotListen(Exception):
    """The HTTP port cannot be bound (in use, not an address of this machine, no permission). The message is
    one line for the user: the address, why, and what to do."""


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for `host`:`port`, bound as asyncio's create_server would bind them (every address
    the name resolves to; SO_REUSEADDR on POSIX, so a restart need not wait out TIME_WAIT; IPv6 only on IPv6
    sockets), all on one port when `port` is 0. CannotListen if any cannot be bound."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise CannotListen(f"cannot listen on {where}: cannot resolve {host!r} ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix" and sys.platform != "cygwin":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)  # now: a port bound but not listening can be bound again (SO_REUSEADDR)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise CannotListen(f"cannot listen on {where}: {_why(exc)}") from None
    return sockets


def _why(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (another agentcache-mcp serve or ui?); choose another port with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "cannot assign requested address (not an address of this machine?); check --host"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges); choose another port with --port"
    return (exc.strerror or str(exc)).lower()


@contextlib.asynccontextmanager
async def _listening(settings: Settings, transport: str) -> AsyncIterator[list[socket.socket]]:
    """The HTTP transports' (and the UI's) sockets, bound before the store is opened and closed at the end;
    none for stdio."""
    if transport != "stdio" and (refusal := bind_refusal(settings, ui_only=transport == "ui")) is not None:
        raise ValueError(refusal)  # main checks first; this keeps any other caller from listening at all
    sockets = [] if transport == "stdio" else listen(settings.host, settings.port)
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _hold_signals_during_shutdown() -> None:
    """Keep SIGTERM / SIGINT from killing the bounded shutdown that is already under way.

    Hosts close stdin, wait about 2 s, then send SIGTERM. Closing anyio's signal receiver restores the
    default handlers, so this is installed the moment the receiver closes (see _cancel_on_signal): a second
    signal, or one during the WAL checkpoint, is logged and the shutdown finishes.
    """

    def note(signum: int, _frame: object) -> None:
        log.info("received %s while shutting down; finishing the shutdown first", signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, note)


async def _run_stdio(server: Any, app: App, stdin: _CancellableStdin) -> None:
    from mcp.server.stdio import stdio_server

    in_flight = _RequestsInFlight()

    async def end_of_input() -> None:
        # Before the transport closes: the SDK cancels the calls still in flight, and a cancelled call's answer
        # is lost. So every request read is answered first. While answers come, the calls run as before (a
        # host may pipe its requests and close stdin); once none came for STALLED_S (the store holds them up,
        # or a recall waits for the model), the shutdown begins: their waits end and each answers.
        if not stdin.stopped.is_set():
            await in_flight.stalled(STALLED_S)
        app.begin_shutdown()
        if not await in_flight.answered(EOF_ANSWER_WAIT_S, cut_short=stdin.stopped, then=ANSWER_WAIT_S):
            log.warning("%d calls still in flight as the transport closes; they get no answer", len(in_flight))

    stdin.on_end = end_of_input
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
        lowlevel = server._lowlevel_server
        await lowlevel.run(
            in_flight.reading(read_stream),
            in_flight.writing(write_stream),
            lowlevel.create_initialization_options(),
        )


class _ClosesAsWrapped:
    """A stream wrapper that closes, and enters as a context, as the stream it wraps."""

    def __init__(self, stream: Any):
        self._wrapped = stream

    def close(self) -> None:
        self._wrapped.close()

    async def aclose(self) -> None:
        await self._wrapped.aclose()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._wrapped.aclose()


class _RequestsInFlight:
    """The ids of the requests read and not yet answered, seen on the SDK's streams, so the end of a session
    can wait for their answers."""

    def __init__(self) -> None:
        self._ids: set[Any] = set()
        self._answers = 0

    def __len__(self) -> int:
        return len(self._ids)

    async def stalled(self, quiet_s: float) -> None:
        """Return once no request is in flight, or none was answered for quiet_s."""
        answers = self._answers
        quiet_since = time.monotonic()
        while self._ids and time.monotonic() - quiet_since < quiet_s:
            await anyio.sleep(0.01)
            if self._answers != answers:
                answers, quiet_since = self._answers, time.monotonic()

    async def answered(self, timeout: float, cut_short: anyio.Event, then: float) -> bool:
        """Wait until every request read has been answered: at most `timeout`, or `then` once cut_short is set."""
        deadline = time.monotonic() + timeout
        while self._ids and time.monotonic() < deadline:
            if cut_short.is_set():
                deadline = min(deadline, time.monotonic() + then)
            await anyio.sleep(0.01)
        return not self._ids

    def reading(self, stream: Any) -> Any:
        requests = self

        class Reading(_ClosesAsWrapped):
            """The read stream, noting each request's id (and forgetting one the host cancelled)."""

            @property
            def last_context(self) -> Any:  # the SDK restores the sender's context from it
                return getattr(stream, "last_context", None)

            async def receive(self) -> Any:
                item = await stream.receive()
                requests._read(item)
                return item

            def __aiter__(self) -> Any:
                return self

            async def __anext__(self) -> Any:
                try:
                    return await self.receive()
                except anyio.EndOfStream:
                    raise StopAsyncIteration from None

        return Reading(stream)

    def writing(self, stream: Any) -> Any:
        requests = self

        class Writing(_ClosesAsWrapped):
            """The write stream, noting each answer once the transport has taken it."""

            async def send(self, item: Any) -> None:
                await stream.send(item)
                requests._written(item)

        return Writing(stream)

    def _read(self, item: Any) -> None:
        from mcp_types import JSONRPCNotification, JSONRPCRequest

        message = getattr(item, "message", None)
        if isinstance(message, JSONRPCRequest):
            self._ids.add(message.id)
        elif isinstance(message, JSONRPCNotification) and message.method == "notifications/cancelled":
            self._ids.discard((message.params or {}).get("requestId"))  # never answered (the spec says so)

    def _written(self, item: Any) -> None:
        from mcp_types import JSONRPCError, JSONRPCResponse

        message = getattr(item, "message", None)
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            self._ids.discard(message.id)
            self._answers += 1


class _CancellableStdin:
    """Lines from stdin for the SDK's stdio transport, read so that a signal can end them.

    The SDK's default reader blocks in a worker thread that cancellation must wait for, so SIGTERM could
    not stop a server whose host keeps stdin open. Here the blocked read is abandoned when `stop()` is called
    (a signal), which ends the input as EOF does. At the end, `on_end` runs before the SDK sees it: the SDK then
    cancels the calls still in flight, so on_end lets them answer first.
    """

    def __init__(self, stream: Any, on_end: Callable[[], Awaitable[None]] | None = None):
        self._stream = stream
        self.on_end = on_end
        self.stopped = anyio.Event()
        self._ended = False
        self._reader = anyio.CapacityLimiter(1)

    def stop(self) -> None:
        self.stopped.set()

    def __aiter__(self) -> _CancellableStdin:
        return self

    async def __anext__(self) -> str:
        line = b"" if self._ended else await self._next_line()
        if not line:
            if not self._ended:
                self._ended = True
                if not self.stopped.is_set():
                    log.info("stdin closed by the host; shutting down")
                if self.on_end is not None:
                    await self.on_end()
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")

    async def _next_line(self) -> bytes:
        """The next line, or b"" at EOF or once stopped."""
        line = b""
        async with anyio.create_task_group() as tg:

            async def read() -> None:
                nonlocal line
                # On a thread of its own, not the pool the tool calls share: calls stuck on the store must not
                # keep the EOF (and so the shutdown that unsticks them) from being read. Every request read
                # before the EOF is still answered first: on_end waits for them.
                line = await anyio.to_thread.run_sync(
                    self._stream.readline, abandon_on_cancel=True, limiter=self._reader
                )
                tg.cancel_scope.cancel()

            tg.start_soon(read)
            await self.stopped.wait()
            tg.cancel_scope.cancel()
        return line if not self.stopped.is_set() else b""


async def _cancel_on_signal(
    scope: anyio.CancelScope, uv: Any, app: App, stdin: _CancellableStdin | None = None
) -> None:
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                app.begin_shutdown()
                if uv is not None:
                    uv.should_exit = True  # let uvicorn close its connections (bounded), then the app shuts down
                    return
                if stdin is not None:
                    stdin.stop()  # ends the session as EOF does: the calls in flight answer first
                    break
                scope.cancel()
                return
    finally:
        _hold_signals_during_shutdown()
    await anyio.sleep(SIGNAL_HARD_STOP_S)
    log.warning("the session did not end %.1f s after the signal; cancelling it", SIGNAL_HARD_STOP_S)
    scope.cancel()


def http_server(server: Any, settings: Settings, transport: str, *, app: Any = None, port: int | None = None) -> Any:
    """A uvicorn server for the MCP transport, behind transports.guard; with `app` (the running App) the
    memory browser is served at /ui/ beside it (off loopback only with AGENTCACHE_AUTH_TOKEN, its login).

    With AGENTCACHE_OAUTH on, the protected-resource metadata (and for `builtin` the authorization server's
    routes, its state in `app`'s store) are added, and auth.resource.ResourceGuard checks tokens; `port` is the
    port bound (the default public URL's on loopback; settings.port if not given)."""
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.routing import Mount

    from .auth.resource import build_resource_side
    from .transports import UI_PATH, is_ui_path, serves_ui_over_http

    if (refusal := bind_refusal(settings)) is not None:
        raise ValueError(refusal)  # main checks first; this keeps any other caller from skipping it
    # The SDK's own Host/Origin check covers only binds spelled 127.0.0.1/localhost/::1 and a fixed host
    # list, so it would refuse names our guard admits (--allowed-host, 127.0.0.2) and protect nothing else.
    # transports.guard is the check for every request of both transports; the SDK's is switched off.
    sdk_security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if transport == "sse":
        asgi = server.sse_app(
            host=settings.host, max_request_body_size=settings.max_request_bytes, transport_security=sdk_security
        )
    else:
        # Stateless by default: every request gets a fresh transport that ends with it, so nothing piles up
        # per client (our tools need no session). --stateful-http keeps sessions, closed when idle.
        asgi = server.streamable_http_app(
            host=settings.host,
            max_request_body_size=settings.max_request_bytes,
            transport_security=sdk_security,
            stateless_http=not settings.stateful_http,
            session_idle_timeout=settings.session_idle_timeout_s,
        )
    state = (lambda: app.memory.backend.auth_state) if app is not None else None
    # The consent page's signing key is the store's shared secret (as the UI's sessions are): a page shown by
    # one replica may be approved through another.
    signing_secret = app.memory.ui_secret() if app is not None and settings.oauth == "builtin" else None
    resource = build_resource_side(settings, transport, settings.port if port is None else port, state, signing_secret)
    if resource is not None:
        asgi.router.routes[:0] = resource.routes  # before the SDK's, so none of them can shadow the metadata
        log.info(
            "OAuth (%s): tokens for %s from %s%s",
            settings.oauth,
            resource.config.resource_url,
            resource.config.authorization_server,
            "; the static token is accepted too" if settings.auth_token else "",
        )
    with_ui = app is not None and serves_ui_over_http(settings)
    if with_ui:
        from .ui import build_ui

        asgi.router.routes.append(Mount(UI_PATH, build_ui(app)))
    elif app is not None:
        log.info(
            "the memory browser (/ui/) is not served: reachable from beyond loopback (a non-loopback bind, or a "
            "public URL or allowed host with OAuth), it needs AGENTCACHE_AUTH_TOKEN for its login"
        )
    return _uvicorn(
        guard(asgi, settings, logs_in_itself=is_ui_path if with_ui else None, resource=resource), settings
    )


def _uvicorn(asgi: Any, settings: Settings) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:  # we handle signals ourselves: flush first, then exit
            import contextlib

            return contextlib.nullcontext()

    # An open stream (an SSE or GET /mcp client) must not hold the shutdown: uvicorn waits for it at most 1 s.
    config = uvicorn.Config(
        asgi,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
        http=limited_h11_protocol(settings.http_request_timeout_s, settings.http_max_connections),
        backlog=LISTEN_BACKLOG,
    )
    return Server(config)
