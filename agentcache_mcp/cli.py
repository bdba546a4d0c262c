"""Command line: the flags, the settings they make, logging, and `main`, which hands over to one of two jobs.

- `agentcache-mcp` serves stdio; `serve` picks a transport; `ui` serves the memory browser: `serving.py`.
- The other subcommands are for people at a terminal (and scripts): recall, list, show, forget, stats,
  erase, reembed, backup, export, import, auth: `commands.py`.

A bad flag or setting is one line on stderr and exit 2, before anything is opened or any client served.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, NoReturn

import anyio

from . import __version__
from .commands import EXIT_FAILED, other_store_kind, print_error, run_command
from .config import ConfigError, Settings
from .serving import CannotListen, serve, serve_ui
from .transports import bind_refusal

log = logging.getLogger("agentcache_mcp")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other error of the command line."""

    def error(self, message: str) -> NoReturn:
        from .console import safe

        # argparse quotes most values with repr, but not unrecognized arguments: escape control characters
        self.exit(2, f"agentcache-mcp: {safe(message)} (see: {safe(self.prog)} --help)\n")


class _LogLevel(argparse.Action):
    """Stores --log-level and notes that it was given: the people's subcommands default to WARNING."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, *_: Any) -> None:
        setattr(namespace, self.dest, values)
        namespace.log_level_given = True


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
        action=_LogLevel,
        default=argparse.SUPPRESS if subcommand else "INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="stderr log level (default INFO when serving, WARNING for the other subcommands); DEBUG also shows "
        "the SDK's logs and one line per HTTP request",
    )


COMMANDS = (
    "recall", "list", "show", "forget", "stats", "erase", "reembed", "backup", "export", "import", "ingest-transcript",
    "auth",
)
"""The subcommands for people and scripts (everything but serve)."""

NAMESPACE_HELP = "the namespace (default: $AGENTCACHE_NAMESPACE, else 'default')"


def _command(
    sub: Any, name: str, help: str, *, json_flag: bool = True, namespace: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    _common_options(parser, subcommand=True)
    if namespace:
        parser.add_argument("--namespace", default=None, metavar="NS", help=NAMESPACE_HELP)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts (nothing else on stdout)")
    return parser


def _tag_filter(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--tag",
        action="append",
        default=None,
        metavar="TAG",
        help="only memories with this tag (repeatable: all of them)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="agentcache-mcp",
        description="Local-first memory server for MCP hosts. Without a subcommand: serve over stdio.",
    )
    parser.add_argument("--version", action="version", version=f"agentcache-mcp {__version__}")
    _common_options(parser, subcommand=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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

    # listed for --help only: `hook ...` is run before this parser is built (_hook_arguments, entry.py)
    sub.add_parser("hook", help="run a coding agent's hook: session-start, ingest (see: hook --help)", add_help=False)

    ui = sub.add_parser(
        "ui",
        help="open the memory browser (a web page) on loopback",
        description="serve the memory browser on http://127.0.0.1:PORT/ui/ (loopback only), over the same "
        "database as the servers (they may run meanwhile); with AGENTCACHE_AUTH_TOKEN set, pages need a login",
    )
    _common_options(ui, subcommand=True)
    ui.add_argument("--port", default=None, metavar="PORT", help=f"port, 0..65535 (default {UI_PORT})")

    recall = _command(sub, "recall", "search memories by meaning and keywords, best first", namespace=True)
    recall.add_argument("query", nargs="+", help="what you want to know (several words are joined)")
    _tag_filter(recall)
    recall.add_argument("--limit", type=int, default=10, metavar="N", help="how many results, 1..100 (default 10)")

    listing = _command(sub, "list", "list a namespace's memories, newest first", namespace=True)
    _tag_filter(listing)
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="how many memories (default 20)")

    show = _command(sub, "show", "print every field of one memory")
    show.add_argument("id", help="the memory's id (any namespace)")

    forget = _command(sub, "forget", "delete memories: lists what would go; deletes only with --yes", namespace=True)
    forget.add_argument("ids", nargs="*", metavar="ID", help="ids of memories of the namespace")
    forget.add_argument(
        "--tag",
        action="append",
        default=None,
        metavar="TAG",
        help="filter: memories with this tag (repeatable: all of them)",
    )
    forget.add_argument(
        "--older-than-days",
        type=float,
        default=None,
        metavar="DAYS",
        help="filter: memories created more than DAYS ago",
    )
    forget.add_argument("--yes", action="store_true", help="delete (without it: a dry run that lists)")

    _command(sub, "stats", "memory counts, embeddings and the store (JSON when stdout is not a terminal)")

    _command(
        sub,
        "erase",
        "PostgreSQL: rewrite the memories table now, so forgotten memories' bytes leave the database files "
        "(every call waits while it runs); SQLite erases at each forget",
    )

    reembed = _command(sub, "reembed", "embed every memory with the (new) embedding model; resumable")
    reembed.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="a sentence-transformers model's directory, or its name if it is in the local Hugging Face cache "
        "(never downloaded; default: $AGENTCACHE_EMBEDDING_MODEL, else the bundled all-MiniLM-L6-v2)",
    )

    backup = _command(sub, "backup", "copy the database consistently while servers run, and verify the copy")
    backup.add_argument("dest", metavar="DEST", help="the backup file to write")
    backup.add_argument("--force", action="store_true", help="overwrite DEST if it exists")

    export = _command(sub, "export", "write memories as JSONL (stdout unless -o)", json_flag=False)
    export.add_argument(
        "--namespace",
        action="append",
        default=None,
        metavar="NS",
        help="only this namespace (repeatable; default: every namespace)",
    )
    export.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE (default: stdout)")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.add_argument(
        "--with-vectors",
        action="store_true",
        help="include each memory's embedding, so an import with the same model needs no re-embedding",
    )

    importing = _command(sub, "import", "import an export, or the official MCP memory server's file")
    importing.add_argument("file", metavar="FILE", help="the file to import")
    importing.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="put every memory there (default: an "
        "export keeps its namespaces; the official server's file goes to the default namespace)",
    )
    importing.add_argument("--dry-run", action="store_true", help="check the file and say what would be added")
    importing.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the valid lines and list the bad ones (default: a bad line imports nothing)",
    )
    from .hooks.install import add_parser as add_hooks_parser  # light: argparse and the standard library

    add_hooks_parser(sub, lambda command: _common_options(command, subcommand=True))

    ingest = _command(
        sub,
        "ingest-transcript",
        "store the durable facts of a Claude Code session's transcript (decisions, preferences, conventions, "
        "fixes; no secrets); what was read before is skipped",
    )
    ingest.add_argument("file", metavar="FILE", help="the transcript (~/.claude/projects/<project>/<session>.jsonl)")
    ingest.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help="where to store them (default: the project's namespace, from the session's folder)",
    )
    ingest.add_argument("--limit", type=int, default=10, metavar="N", help="at most N per session (default 10)")
    ingest.add_argument("--dry-run", action="store_true", help="show what would be stored; write nothing")

    auth = sub.add_parser(
        "auth",
        help="OAuth clients and grants of the built-in authorization server: list, revoke",
        description="the apps that connected by OAuth (clients) and the access the owner approved for them on the "
        "consent page (grants); revoking a grant or removing a client ends its tokens at once",
    )
    _common_options(auth, subcommand=True)
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    _command(auth_sub, "clients", "list the registered OAuth clients")
    grants = _command(auth_sub, "grants", "list the grants: one per approval on the consent page")
    grants.add_argument("--client", default=None, metavar="CLIENT_ID", help="only this client's grants")
    revoke = _command(auth_sub, "revoke", "revoke a grant: its access and refresh tokens stop working now")
    revoke.add_argument("grant_id", metavar="GRANT_ID", help="the grant's id (`auth grants` lists them)")
    remove = _command(
        auth_sub, "remove-client", "remove a client with every grant and token of it (it may register again)"
    )
    remove.add_argument("client_id", metavar="CLIENT_ID", help="the client's id (`auth clients` lists them)")
    return parser


UI_PORT = 8766
"""`agentcache-mcp ui`'s default port: beside a `serve` on the default 8765."""


def _settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment and the parsed flags (flags win); ConfigError if any is invalid."""
    allowed = getattr(args, "allowed_host", None)
    port = getattr(args, "port", None)
    if args.command == "ui" and port is None:
        port = str(UI_PORT)
    return Settings.from_env(
        db_path=getattr(args, "db", None),
        host=getattr(args, "host", None),
        port=port,
        allowed_hosts=tuple(allowed) if allowed is not None else None,
        stateful_http=getattr(args, "stateful_http", None),
        session_idle_timeout_s=getattr(args, "session_idle_timeout", None),
    )


def postgres_driver_missing() -> str | None:
    """The name of the PostgreSQL dependency that cannot be imported (the `postgres` extra), or None."""
    import importlib.util

    for module in ("psycopg", "psycopg_pool", "pgvector"):
        if importlib.util.find_spec(module) is None:
            return module
    return None


def _refuse_to_start(message: str) -> NoReturn:
    """One line on stderr and exit 2 (a usage error): before anything is opened or any client served."""
    sys.exit(print_error(message, 2))


def _checked_settings(args: argparse.Namespace, command: str, transport: str) -> Settings:
    """Every setting checked before the store is opened or a client served; on a bad one, `_refuse_to_start`."""
    try:
        settings = _settings(args)
    except ConfigError as exc:
        _refuse_to_start(f"invalid configuration: {exc}")
    given_db = ("--db", args.db) if getattr(args, "db", None) else ("AGENTCACHE_DB", os.environ.get("AGENTCACHE_DB"))
    if settings.database_url is not None:
        if (missing := postgres_driver_missing()) is not None:
            _refuse_to_start(
                f"invalid configuration: {given_db[0]} names a PostgreSQL database, but its driver is not installed "
                f"({missing}): pip install 'agentcache-mcp[postgres]'"
            )
    elif given_db[1] and not settings.db_path.parent.is_dir():
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


class _TerminalSafeFormatter(logging.Formatter):
    """Log lines with control characters shown as escapes, the message on one line: a request path
    (`/ui/%1b[2J`, `/ui/%0a...`), a file name or an id in a log line must not drive the terminal that shows
    stderr, nor forge a line; a traceback keeps its lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        from .console import safe

        return safe(super().formatMessage(record))  # one line: a '\n' in a request path must not forge a line

    def format(self, record: logging.LogRecord) -> str:
        from .console import safe

        return safe(super().format(record), multiline=True)  # a traceback keeps its lines


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TerminalSafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # The SDK logs an INFO line per streamable-HTTP session and per request; ours (transports.RequestLog)
    # says the same at DEBUG. Below DEBUG the SDK keeps its warnings and errors only.
    if level != "DEBUG":
        logging.getLogger("mcp").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def _hook_arguments(argv: list[str]) -> list[str] | None:
    """The hook runner's arguments if argv runs `hook` (after any --db or --log-level), else None. entry.py
    takes a leading `hook` before this module is imported (a hook must start fast); this serves `--db PATH hook
    ...` and console scripts installed before entry.py existed."""
    rest, db = list(argv), []
    while rest and rest[0].split("=", 1)[0] in ("--db", "--log-level"):
        flag, equals, value = rest[0].partition("=")
        if equals:
            rest = rest[1:]
        else:
            value, rest = (rest[1] if len(rest) > 1 else ""), rest[2:]
        if flag == "--db":
            db = ["--db", value]
    return [*db, *rest[1:]] if rest[:1] == ["hook"] else None


def main(argv: list[str] | None = None) -> None:
    # numpy's OpenBLAS threads spin after each vector search and starve torch's query embedding on a small
    # machine (recall p50 went from 67 ms to 29 ms at 10k memories with one thread; bench/RESULTS.md). The
    # searches are matrix-vector products that gain nothing from more threads. Set before numpy loads.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    for name, value in QUIET_THIRD_PARTY.items():
        os.environ.setdefault(name, value)
    if (hook_args := _hook_arguments(sys.argv[1:] if argv is None else argv)) is not None:
        from .hooks.runner import main as run_hook  # never refuses to start: errors are logged, exit 0

        sys.exit(run_hook(hook_args))
    args = _parser().parse_args(argv)
    command = args.command or "serve"
    quiet = command in COMMANDS and not getattr(args, "log_level_given", False)
    _configure_logging("WARNING" if quiet else args.log_level)  # a person at a terminal wants the result only
    transport = getattr(args, "transport", "stdio")
    if command == "hooks":  # edits a host's settings file: needs no store, so no settings are checked
        from .hooks.install import run as run_hooks_command

        sys.exit(run_hooks_command(args))
    if command == "backup" and (other := other_store_kind(args)) is not None:
        sys.exit(print_error(other, EXIT_FAILED))
    settings = _checked_settings(args, command, transport)
    if command in COMMANDS:
        code = run_command(command, args, settings)
        if code:
            sys.exit(code)
        return
    from .memory.ports import StoreError, StoreUnavailable

    try:
        if command == "ui":  # serve and serve_ui are looked up here, so tests can stand in for them
            anyio.run(serve_ui, settings)
        else:
            anyio.run(serve, settings, transport)
    except StoreUnavailable as exc:  # a URL naming a server that cannot be reached or lacks pgvector
        _refuse_to_start(f"invalid configuration: {exc}")
    except CannotListen as exc:  # the port is in use (or the address is not ours): before the store is opened
        _refuse_to_start(str(exc))
    except StoreError as exc:
        sys.exit(print_error(str(exc), EXIT_FAILED))
    if command in ("serve", "ui"):
        # Shutdown is complete (access stats written, WAL checkpointed, store closed). Threads it abandoned (a
        # stdin read, a model still loading, an embedding batch) would keep the interpreter waiting: leave now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


