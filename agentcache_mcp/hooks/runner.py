"""`agentcache-mcp hook <event>`: what a coding agent's host runs at session start and end.

    agentcache-mcp hook session-start [--namespace NS] [--db PATH] [--max-chars N]
    agentcache-mcp hook ingest [--namespace NS] [--db PATH]

Each reads the host's hook JSON on stdin (Claude Code: session_id, transcript_path, cwd, hook_event_name and,
for SessionStart, source; https://code.claude.com/docs/en/hooks), at most MAX_STDIN_BYTES, closed within
STDIN_TIMEOUT_S; a missing field is tolerated (no cwd: the process's own; a terminal or an empty stdin: {}). The project's namespace is `project_namespace(cwd)` unless
--namespace names one.

A broken memory never breaks a session: on any error a hook prints nothing on stdout and exits 0; the error
goes to the hook log (`hook_log_path()`, capped at LOG_MAX_BYTES with one older file kept) and one line to
stderr, which Claude Code does not add to the context. `ingest`'s stdout is always empty: a Stop hook's
stdout may be read as a decision by the host.

Light to import: the console script (entry.py) comes here before cli.py, so a session start loads neither
the MCP SDK nor pydantic, numpy or torch (tests/test_hooks_session_start.py checks it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, NoReturn

from .location import DB_VARIABLE, StoreLocation, StoreLocationError, store_location
from .project import ENV_VAR as PROJECT_NAMESPACE_VARIABLE
from .project import ProjectNamespaceError, project_namespace

EVENTS = ("session-start", "ingest")
MAX_STDIN_BYTES = 1024 * 1024
"""A hook's JSON is a few hundred bytes; more is not a hook's input."""
STDIN_TIMEOUT_S = 5.0
"""Claude Code writes the JSON and closes stdin at once; a stdin still open after this is given up on."""
LOG_VARIABLE = "AGENTCACHE_HOOK_LOG"
LOG_MAX_BYTES = 256 * 1024
"""The hook log's size at most: past it, it becomes hooks.log.1 (replacing the previous one) and a new one starts."""
LOG_ENTRY_MAX_CHARS = 4000


class HookUsageError(ValueError):
    """The hook's command line is wrong (a settings file pointing at an event this version does not know)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise HookUsageError(message)


def _parser() -> argparse.ArgumentParser:
    from .session_start import DEFAULT_MAX_CHARS

    parser = _Parser(
        prog="agentcache-mcp hook",
        description="Run a coding agent's hook: reads the hook's JSON on stdin. On any error: nothing on stdout, "
        "exit 0, the error in the hook log.",
    )
    parser.add_argument(
        "event",
        choices=EVENTS,
        help="session-start: print the project's memories; ingest: store durable facts from the session's transcript",
    )
    parser.add_argument(
        "--namespace",
        default=None,
        metavar="NS",
        help=f"the project's namespace (default: ${PROJECT_NAMESPACE_VARIABLE}, else from the git remote or folder "
        "of the hook's cwd)",
    )
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH",
        help="database file or PostgreSQL URL (default: $AGENTCACHE_DB, else the user data directory)",
    )
    parser.add_argument(
        "--max-chars",
        type=int,
        default=DEFAULT_MAX_CHARS,
        metavar="N",
        help=f"session-start: print at most N characters (default {DEFAULT_MAX_CHARS})",
    )
    return parser


def hook_log_path(environ: Mapping[str, str] | None = None) -> Path:
    """$AGENTCACHE_HOOK_LOG, else hooks.log in the user's log directory (Linux ~/.local/state/agentcache/log,
    macOS ~/Library/Logs/agentcache, Windows %LOCALAPPDATA%\\agentcache\\Logs)."""
    env = os.environ if environ is None else environ
    if env.get(LOG_VARIABLE):
        return Path(env[LOG_VARIABLE]).expanduser()
    import platformdirs

    return Path(platformdirs.user_log_dir("agentcache", appauthor=False)) / "hooks.log"


def main(argv: list[str] | None = None, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    """Run one hook; always 0 (see the module docstring)."""
    out = sys.stdout if stdout is None else stdout
    args = sys.argv[1:] if argv is None else argv
    event = next((a for a in args if a in EVENTS), "hook")
    location: StoreLocation | None = None
    try:
        try:
            options = _parser().parse_args(args)
        except SystemExit as exc:  # --help, printed by argparse
            if exc.code in (0, None):
                return 0
            raise
        event = options.event
        payload = read_payload(sys.stdin.buffer if stdin is None else stdin)
        cwd = payload.get("cwd")
        if not isinstance(cwd, str) or not cwd:
            cwd = os.getcwd()
        with _environment(options):
            namespace = project_namespace(cwd)
            if event == "session-start":
                location = store_location()
                text = session_start(location, namespace, options.max_chars)
                if text:
                    out.write(text)
                    out.flush()
            else:
                ingest(payload)
    except BaseException as exc:  # a hook never fails its session, whatever went wrong
        log_error(event, exc, location)
        with contextlib.suppress(Exception):
            print(
                f"agentcache-mcp hook {event}: {_one_line(exc, location)} (logged to {hook_log_path()})",
                file=sys.stderr,
            )
    return 0


@contextlib.contextmanager
def _environment(options: argparse.Namespace) -> Iterator[None]:
    """--namespace and --db, set for the hook as their variables ($AGENTCACHE_PROJECT_NAMESPACE, $AGENTCACHE_DB):
    so `ingest` (and whatever it opens) sees them too. Restored afterwards."""
    values: dict[str, str] = {}
    if options.namespace is not None:
        try:  # checked as the variable is, with the flag's name in the message
            project_namespace(".", {PROJECT_NAMESPACE_VARIABLE: options.namespace})
        except ProjectNamespaceError as exc:
            reason = str(exc).split(" is not a namespace: ", 1)[-1]
            raise HookUsageError(f"--namespace {options.namespace!r} is not a namespace: {reason}") from None
        values[PROJECT_NAMESPACE_VARIABLE] = options.namespace
    if options.db:
        values[DB_VARIABLE] = options.db
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def read_payload(stream: IO[bytes]) -> dict[str, Any]:
    """The hook's JSON object; {} for an empty stdin or a terminal (a person trying the hook by hand)."""
    if stream.isatty():
        return {}
    data = _read_within(stream, MAX_STDIN_BYTES + 1, STDIN_TIMEOUT_S)
    if len(data) > MAX_STDIN_BYTES:
        raise ValueError(f"the hook's stdin holds more than {MAX_STDIN_BYTES} bytes: not a hook's JSON")
    if not data.strip():
        return {}
    try:
        payload = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the hook's stdin is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"the hook's stdin is JSON, but not an object: {type(payload).__name__}")
    return payload


def _read_within(stream: IO[bytes], size: int, timeout: float) -> bytes:
    """stream.read(size), given up after `timeout` seconds: a host that never closes stdin must not hold the
    session's start until its own hook timeout (Claude Code's: 60 s). The reading thread is a daemon: it does
    not keep the process alive."""
    import threading

    result: list[bytes] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            result.append(stream.read(size))
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=read, name="hook-stdin", daemon=True)
    reader.start()
    reader.join(timeout)
    if failure:
        raise failure[0]
    if not result:
        raise TimeoutError(f"the hook's stdin was not closed within {timeout:g} s")
    return result[0]


def session_start(location: StoreLocation, namespace: str, max_chars: int) -> str:
    """The block for `namespace` ("" if it has no memories), from what is stored."""
    from .session_start import MIN_MAX_CHARS, read_memories, render

    if max_chars < MIN_MAX_CHARS:
        raise HookUsageError(f"--max-chars must be at least {MIN_MAX_CHARS}, got {max_chars}")
    return render(namespace, read_memories(location, namespace, time.time()), max_chars)


def ingest(payload: dict[str, Any]) -> None:
    """Store durable facts from the session's transcript (hooks/ingest.py); nothing it prints reaches stdout."""
    from .ingest import run_hook  # type: ignore[import-not-found,unused-ignore]

    with contextlib.redirect_stdout(sys.stderr):
        run_hook(payload)


def log_error(event: str, exc: BaseException, location: StoreLocation | None = None) -> None:
    """One entry in the hook log: the time, the event, the error and where it was raised. Never raises."""
    with contextlib.suppress(Exception):
        path = hook_log_path()
        frames = traceback.extract_tb(exc.__traceback__)[-4:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entry = f"{stamp} {event} pid={os.getpid()}: {_one_line(exc, location)}" + (f" [at {where}]" if where else "")
        entry = entry[:LOG_ENTRY_MAX_CHARS].replace("\n", " ") + "\n"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            if path.stat().st_size + len(entry) > LOG_MAX_BYTES:
                os.replace(path, path.with_name(path.name + ".1"))
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as log:
            log.write(entry)


def _one_line(exc: BaseException, location: StoreLocation | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = " ".join(text.split())
    if location is not None and location.url is not None and not isinstance(exc, StoreLocationError):
        # a driver's error may quote the URL: mask it as every other message does (config.py; the slow
        # import is paid on this error path only)
        try:
            from ..config import mask_secrets

            text = mask_secrets(text, location.url)
        except Exception:
            text = text.replace(location.url, "postgresql://***")
    return text
