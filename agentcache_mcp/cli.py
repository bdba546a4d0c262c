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
from typing import Any, NoReturn

import anyio
import anyio.to_thread

from . import __version__
from .config import ConfigError, Settings
from .transports import bind_refusal, guard

log = logging.getLogger("agentcache_mcp")


def _common_options(parser: argparse.ArgumentParser, *, subcommand: bool) -> None:
    """--db and --log-level, accepted before the subcommand and after it. The subcommand's copies default
    to SUPPRESS, so they leave a value given before the subcommand alone unless given again (then they win)."""
    parser.add_argument(
        "--db",
        default=argparse.SUPPRESS if subcommand else None,
        metavar="PATH",
        help="database file (default: $AGENTCACHE_DB, else the user data directory)",
    )
    parser.add_argument(
        "--log-level",
        default=argparse.SUPPRESS if subcommand else "INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default INFO); DEBUG also shows the SDK's logs and one line per HTTP request",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentcache-mcp",
        description="Local-first memory server for MCP hosts. Without a subcommand: serve over stdio.",
    )
    parser.add_argument("--version", action="version", version=f"agentcache-mcp {__version__}")
    _common_options(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the MCP server (default: stdio)")
    _common_options(serve, subcommand=True)
    serve.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    serve.add_argument("--host", default=None, help="HTTP bind address (default 127.0.0.1)")
    # --port and --session-idle-timeout are strings here: Settings checks them with every other setting,
    # so a bad value gets the same one-line error as a bad environment variable.
    serve.add_argument("--port", default=None, metavar="PORT", help="HTTP port, 0..65535 (default 8765)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME[:PORT]",
        help="also accept this name in the Host/Origin headers, e.g. a reverse proxy's (repeatable; "
        "replaces $AGENTCACHE_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--stateful-http",
        action="store_true",
        default=None,
        help="streamable HTTP: keep a session per client, closed after --session-idle-timeout idle seconds "
        "(default: stateless, nothing kept between requests; $AGENTCACHE_STATEFUL_HTTP)",
    )
    serve.add_argument(
        "--session-idle-timeout",
        default=None,
        metavar="SECONDS",
        help="with --stateful-http: close a session idle this long (default 300; $AGENTCACHE_SESSION_IDLE_TIMEOUT_S)",
    )
    stats = sub.add_parser("stats", help="print memory statistics as JSON")
    _common_options(stats, subcommand=True)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment and the parsed flags (flags win); ConfigError if any is invalid."""
    allowed = getattr(args, "allowed_host", None)
    return Settings.from_env(
        db_path=getattr(args, "db", None),
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        allowed_hosts=tuple(allowed) if allowed is not None else None,
        stateful_http=getattr(args, "stateful_http", None),
        session_idle_timeout_s=getattr(args, "session_idle_timeout", None),
    )


def _refuse_to_start(message: str) -> NoReturn:
    """One line on stderr and exit 2 (a usage error): before anything is opened or any client served."""
    print(f"agentcache-mcp: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _checked_settings(args: argparse.Namespace, command: str, transport: str) -> Settings:
    """Every setting checked before the store is opened or a client served; on a bad one, `_refuse_to_start`."""
    try:
        settings = _settings(args)
    except ConfigError as exc:
        _refuse_to_start(f"invalid configuration: {exc}")
    given_db = ("--db", args.db) if getattr(args, "db", None) else ("AGENTCACHE_DB", os.environ.get("AGENTCACHE_DB"))
    if given_db[1] and not settings.db_path.parent.is_dir():
        # the default location's directory is created; one the user named must exist (a typo is not a new home)
        _refuse_to_start(
            f"invalid configuration: {given_db[0]} {given_db[1]!r} is invalid: the directory "
            f"{settings.db_path.parent} does not exist (create it, or name a file in an existing directory)"
        )
    if command == "serve" and transport != "streamable-http":
        for flag in ("stateful_http", "session_idle_timeout"):
            if getattr(args, flag, None) is not None:
                option = "--" + flag.replace("_", "-")
                _refuse_to_start(
                    f"invalid configuration: {option} applies only to --transport streamable-http, "
                    f"got --transport {transport}"
                )
    if command == "serve" and transport != "stdio" and (refusal := bind_refusal(settings)) is not None:
        _refuse_to_start(refusal)
    return settings


QUIET_THIRD_PARTY = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # the "Loading weights" bar sentence-transformers shows on load
    "TQDM_DISABLE": "1",  # any other tqdm bar
    "TRANSFORMERS_VERBOSITY": "error",  # transformers' advisory warnings
}
"""Environment defaults set before transformers can be imported: stderr is the host's log, not a terminal.
A value the user set is kept."""


def _configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK logs an INFO line per streamable-HTTP session and per request; ours (transports.RequestLog)
    # says the same at DEBUG. Below DEBUG the SDK keeps its warnings and errors only.
    if level != "DEBUG":
        logging.getLogger("mcp").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def main(argv: list[str] | None = None) -> None:
    # numpy's OpenBLAS threads spin after each vector search and starve torch's query embedding on a small
    # machine (recall p50 went from 67 ms to 29 ms at 10k memories with one thread; bench/RESULTS.md). The
    # searches are matrix-vector products that gain nothing from more threads. Set before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name, value in QUIET_THIRD_PARTY.items():
        os.environ.setdefault(name, value)
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    command = args.command or "serve"
    transport = getattr(args, "transport", "stdio")
    settings = _checked_settings(args, command, transport)
    from .memory.ports import StoreError

    try:
        if command == "stats":
            print(json.dumps(stats(settings), indent=2))
            return
        anyio.run(serve, settings, transport)
    except StoreError as exc:
        sys.exit(f"agentcache-mcp: {exc}")
    if command == "serve":
        # Shutdown is complete (access stats written, WAL checkpointed, store closed). Threads it abandoned (a
        # stdin read, a model still loading, an embedding batch) would keep the interpreter waiting: leave now.
        logging.shutdown()
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

    async with open_app(settings) as app:
        async with anyio.create_task_group() as tg:
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
        _hold_signals_during_shutdown()  # open_app's bounded shutdown runs next
    log.info("stopped")


def _hold_signals_during_shutdown() -> None:
    """Keep SIGTERM / SIGINT from killing the bounded shutdown that is already under way.

    Hosts close stdin, wait about 2 s, then send SIGTERM. The signal receiver is gone by then (closing it
    restores the default handlers), so without this a SIGTERM during the WAL checkpoint would kill us.
    """

    def note(signum: int, _frame: object) -> None:
        log.info("received %s while shutting down; finishing the shutdown first", signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, note)


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
        # Stateless by default: every request gets a fresh transport that ends with it, so nothing piles up
        # per client (our tools need no session). --stateful-http keeps sessions, closed when idle.
        asgi = server.streamable_http_app(
            host=settings.host,
            max_request_body_size=settings.max_request_bytes,
            transport_security=sdk_security,
            stateless_http=not settings.stateful_http,
            session_idle_timeout=settings.session_idle_timeout_s,
        )
    asgi = guard(asgi, settings)

    class Server(uvicorn.Server):
        def capture_signals(self) -> Any:  # we handle signals ourselves: flush first, then exit
            import contextlib

            return contextlib.nullcontext()

    config = uvicorn.Config(asgi, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    return Server(config)
