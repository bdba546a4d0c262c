"""Command line: `agentcache-mcp` serves stdio; `serve` picks a transport; `stats` prints the store's state.

Only protocol goes to stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
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
from .transports import bind_refusal, guard, parse_allowed_host

log = logging.getLogger("agentcache_mcp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentcache-mcp", description="Local-first memory server for MCP hosts.")
    parser.add_argument("--version", action="version", version=f"agentcache-mcp {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the MCP server (default: stdio)")
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    serve.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="HTTP port (default 8765)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME[:PORT]",
        help="also accept this name in the Host/Origin headers, e.g. a reverse proxy's (repeatable; "
        "replaces $AGENTCACHE_ALLOWED_HOSTS)",
    )
    serve.add_argument("--db", default=None, help="database file (default: $AGENTCACHE_DB or the user data dir)")
    stats = sub.add_parser("stats", help="print memory statistics as JSON")
    stats.add_argument("--db", default=None)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment and the parsed flags (flags win); ValueError if invalid."""
    allowed = getattr(args, "allowed_host", None)
    settings = Settings.from_env(
        db_path=getattr(args, "db", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        allowed_hosts=tuple(allowed) if allowed is not None else None,
    )
    for entry in settings.allowed_hosts:
        parse_allowed_host(entry)  # a typo must stop the start, not silently refuse every request later
    return settings


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
    transport = getattr(args, "transport", "stdio")
    try:
        settings = _settings(args)
    except ValueError as exc:
        sys.exit(f"agentcache-mcp: invalid configuration: {exc}")
    if command == "serve" and transport != "stdio" and (refusal := bind_refusal(settings)) is not None:
        sys.exit(f"agentcache-mcp: {refusal}")
    from .memory.ports import StoreError

    try:
        if command == "stats":
            print(json.dumps(stats(settings), indent=2))
            return
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
    from .app import open_memory

    memory = open_memory(settings)
    try:
        memory.load_vectors()
        return memory.stats()
    finally:
        memory.close(checkpoint=False)


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
    from mcp.server.transport_security import TransportSecuritySettings

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
        asgi = server.streamable_http_app(
            host=settings.host, max_request_body_size=settings.max_request_bytes, transport_security=sdk_security
        )
    asgi = guard(asgi, settings)

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:  # we handle signals ourselves: flush first, then exit
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(asgi, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    return Server(config)
