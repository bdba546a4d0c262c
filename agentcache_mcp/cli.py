"""Command line: `agentcache-mcp` serves stdio; `serve` picks a transport; `stats` prints the store's state.

Only protocol goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import signal
import sys
from typing import Any

import anyio
import anyio.to_thread

from . import __version__
from .config import Settings

log = logging.getLogger("agentcache_mcp")

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcache-mcp", description="Local-first memory server for MCP hosts.")
    parser.add_argument("--version", action="version", version=f"agentcache-mcp {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the MCP server (default: stdio)")
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    serve.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default 8765)")
    serve.add_argument("--db", default=None, help="database file (default: $AGENTCACHE_DB or the user data dir)")
    stats = sub.add_parser("stats", help="print memory statistics as JSON")
    stats.add_argument("--db", default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    # numpy's OpenBLAS threads spin after each vector search and starve torch's query embedding on a small
    # machine (recall p50 went from 67 ms to 29 ms at 10k memories with one thread; bench/RESULTS.md). The
    # searches are matrix-vector products that gain nothing from more threads. Set before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = args.command or "serve"
    try:
        settings = Settings.from_env(
            db_path=getattr(args, "db", None), host=getattr(args, "host", None), port=getattr(args, "port", None)
        )
    except ValueError as exc:
        sys.exit(f"agentcache-mcp: invalid configuration: {exc}")
    from .store import StoreError

    try:
        if command == "stats":
            print(json.dumps(stats(settings), indent=2))
            return
        transport = getattr(args, "transport", "stdio")
        if transport != "stdio" and not is_loopback(settings.host) and not settings.auth_token:
            sys.exit(
                f"agentcache-mcp: refusing to serve on non-loopback address {settings.host} without "
                "AGENTCACHE_AUTH_TOKEN set: anyone who can reach it could read and delete memories"
            )
        anyio.run(serve, settings, transport)
    except StoreError as exc:
        sys.exit(f"agentcache-mcp: {exc}")
    if transport == "stdio":
        # Shutdown is complete (embeddings flushed, WAL checkpointed, store closed). A stdin read abandoned by
        # a signal may still block a worker thread, which would keep the interpreter from exiting: leave now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def stats(settings: Settings) -> dict[str, Any]:
    from .engine import MemoryEngine

    engine = MemoryEngine(settings)
    try:
        engine.load_vectors()
        return engine.stats()
    finally:
        engine.close(checkpoint=False)


async def serve(settings: Settings, transport: str) -> None:
    from .server import build_server
    from .workers import open_app

    async with open_app(settings) as app, anyio.create_task_group() as tg:
        server = build_server(settings, app=app)
        if transport == "stdio":
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, None)
            await _run_stdio(server)  # returns on stdin EOF
        else:
            uv = _http_server(server, settings, transport)
            tg.start_soon(_cancel_on_signal, tg.cancel_scope, uv)
            log.info("serving %s on http://%s:%d", transport, settings.host, uv.config.port)
            await uv.serve()
        tg.cancel_scope.cancel()
    log.info("stopped")


async def _run_stdio(server: Any) -> None:
    from mcp.server.stdio import stdio_server

    stdin = _CancellableStdin(sys.stdin.buffer)
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
        lowlevel = server._lowlevel_server
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


class _CancellableStdin:
    """Lines from stdin for the SDK's stdio transport, read so that a signal can cancel the wait.

    The SDK's default reader blocks in a worker thread that cancellation must wait for, so SIGTERM could
    not stop a server whose host keeps stdin open. Here the blocked read is abandoned on cancel.
    """

    def __init__(self, stream: Any):
        self._stream = stream

    def __aiter__(self) -> _CancellableStdin:
        return self

    async def __anext__(self) -> str:
        line = await anyio.to_thread.run_sync(self._stream.readline, abandon_on_cancel=True)
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def _cancel_on_signal(scope: anyio.CancelScope, uv: Any) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s; shutting down", signal.Signals(signum).name)
            if uv is not None:
                uv.should_exit = True  # let uvicorn close its connections, then the app shuts down
            else:
                scope.cancel()
            return


def _http_server(server: Any, settings: Settings, transport: str) -> Any:
    import uvicorn

    if transport == "sse":
        asgi = server.sse_app(host=settings.host, max_request_body_size=settings.max_request_bytes)
    else:
        asgi = server.streamable_http_app(host=settings.host, max_request_body_size=settings.max_request_bytes)
    if settings.auth_token:
        asgi = BearerAuth(asgi, settings.auth_token)

    class Server(uvicorn.Server):
        def capture_signals(self):  # type: ignore[no-untyped-def,override]  # we handle signals: flush first
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(asgi, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    return Server(config)


class BearerAuth:
    """ASGI middleware: every HTTP request needs `Authorization: Bearer <token>` (constant-time compare)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                body = b'{"error": "unauthorized: send Authorization: Bearer <AGENTCACHE_AUTH_TOKEN>"}'
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b"Bearer"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
