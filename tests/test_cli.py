"""The command line: configuration checked at start, --db on either side of the subcommand, stateless
streamable HTTP (and idle-expiring sessions when stateful), quiet SDK logs, no progress bars on stderr.

Most tests run `cli.main` in-process with `cli.serve` replaced, so nothing is opened or served; subprocesses
only where the exit code or a fresh interpreter's stderr is the point.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http import StreamableHTTPServerTransport

from agentcache_mcp import cli, commands, serving
from agentcache_mcp.config import ENV_VARIABLES, Settings
from agentcache_mcp.memory.validation import InvalidInput, validate_namespace


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No setting leaks in from the developer's shell, and whatever main() sets is undone afterwards."""
    for name in (*ENV_VARIABLES, *cli.QUIET_THIRD_PARTY, "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "x")  # records the original value (or its absence) for the undo
        monkeypatch.delenv(name)
    sdk = logging.getLogger("mcp")
    level = sdk.level
    yield
    sdk.setLevel(level)  # main() turns the SDK's loggers down


class Served(Exception):
    """Raised by the stand-in for cli.serve: main() got past every check."""

    def __init__(self, settings: Settings, transport: str):
        super().__init__(transport)
        self.settings = settings
        self.transport = transport


async def record_serve(settings: Settings, transport: str) -> None:
    raise Served(settings, transport)


def run_main(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Served:
    """Run main(argv) up to the point where it would serve; return what it would serve with."""
    monkeypatch.setattr(cli, "serve", record_serve)
    with pytest.raises(Served) as served:
        cli.main(argv)
    return served.value


def refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run main(argv), which must refuse to start: exit 2, one line on stderr, nothing on stdout; the line."""
    monkeypatch.setattr(cli, "serve", record_serve)  # a Served here would fail the test: it started

    def no_stats(_: Settings) -> Any:
        raise AssertionError("stats ran with an invalid configuration")

    monkeypatch.setattr(commands, "stats", no_stats)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    for noise in ("pydantic", "further information", "Traceback", "validation error", "Input should"):
        assert noise not in err
    return lines[0]


# --- 1. configuration checked at start --------------------------------------------------------------------

BAD_CONFIGURATIONS = [
    # (argv, environment, the line's text after "agentcache-mcp: invalid configuration: ")
    (["serve", "--transport", "streamable-http", "--port", "99999"], {}, "--port must be 0..65535, got 99999"),
    (["serve", "--port", "-1"], {}, "--port must be 0..65535, got -1"),
    (["serve", "--port", "http"], {}, "--port must be a whole number 0..65535, got 'http'"),
    (
        [],
        {"AGENTCACHE_NAMESPACE": "a/b"},
        "AGENTCACHE_NAMESPACE 'a/b' is invalid: use letters, digits and . _ - : @ +",
    ),
    (["stats"], {"AGENTCACHE_NAMESPACE": "team..x"}, "AGENTCACHE_NAMESPACE 'team..x' is invalid: use letters"),
    ([], {"AGENTCACHE_NAMESPACE": "my notes"}, "AGENTCACHE_NAMESPACE 'my notes' is invalid: use letters"),
    ([], {"AGENTCACHE_NAMESPACE": "n" * 129}, "is invalid: namespace is longer than 128 characters"),
    ([], {"AUTO_FORGET_INTERVAL_S": "hourly"}, "AUTO_FORGET_INTERVAL_S must be a number > 0, got 'hourly'"),
    ([], {"AUTO_FORGET_INTERVAL_S": "0"}, "AUTO_FORGET_INTERVAL_S must be > 0, got 0"),
    ([], {"AUTO_FORGET_INTERVAL_S": "-60"}, "AUTO_FORGET_INTERVAL_S must be > 0, got -60"),
    ([], {"AUTO_FORGET_INTERVAL_S": "inf"}, "AUTO_FORGET_INTERVAL_S must be a finite number > 0, got 'inf'"),
    ([], {"AUTO_FORGET_INTERVAL_S": "nan"}, "AUTO_FORGET_INTERVAL_S must be a finite number > 0, got 'nan'"),
    (
        [],
        {"AUTO_FORGET_ENABLED": "maybe"},
        "AUTO_FORGET_ENABLED must be true or false (or 1/0, yes/no, on/off), got 'maybe'",
    ),
    ([], {"AGENTCACHE_MAX_TEXT_BYTES": "32k"}, "AGENTCACHE_MAX_TEXT_BYTES must be a whole number > 0, got '32k'"),
    ([], {"AGENTCACHE_MAX_TEXT_BYTES": "0"}, "AGENTCACHE_MAX_TEXT_BYTES must be > 0, got 0"),
    ([], {"AGENTCACHE_STATEFUL_HTTP": "sessions"}, "AGENTCACHE_STATEFUL_HTTP must be true or false"),
    ([], {"AGENTCACHE_SESSION_IDLE_TIMEOUT_S": "0"}, "AGENTCACHE_SESSION_IDLE_TIMEOUT_S must be > 0, got 0"),
    ([], {"AGENTCACHE_MODEL_WAIT_S": "-1"}, "AGENTCACHE_MODEL_WAIT_S must be >= 0 and <= 3600, got -1"),
    ([], {"AGENTCACHE_MODEL_WAIT_S": "10s"}, "AGENTCACHE_MODEL_WAIT_S must be a number >= 0 and <= 3600, got '10s'"),
    (
        ["serve", "--transport", "streamable-http", "--stateful-http", "--session-idle-timeout", "5m"],
        {},
        "--session-idle-timeout must be a number > 0, got '5m'",
    ),
    (
        ["serve", "--transport", "sse"],
        {"AGENTCACHE_ALLOWED_HOSTS": "ok.example,http://bad.example"},
        "AGENTCACHE_ALLOWED_HOSTS 'http://bad.example' is invalid: expected NAME[:PORT]",
    ),
    (
        ["serve", "--transport", "sse", "--allowed-host", "ok.example", "--allowed-host", "a b"],
        {},
        "--allowed-host 'a b' is invalid: expected NAME[:PORT]",
    ),
    (["serve", "--transport", "sse", "--host", "[::1]"], {}, "--host '[::1]' is invalid: write an IPv6 address"),
    (["serve", "--transport", "sse", "--host", "my host"], {}, "--host 'my host' is invalid: expected an IP address"),
    (
        ["serve", "--transport", "sse", "--stateful-http"],
        {},
        "--stateful-http applies only to --transport streamable-http, got --transport sse",
    ),
    (["serve", "--session-idle-timeout", "60"], {}, "--session-idle-timeout applies only to --transport"),
]


@pytest.mark.parametrize(("argv", "env", "expected"), BAD_CONFIGURATIONS)
def test_invalid_setting_is_one_line_and_exit_2_before_serving(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    line = refused(monkeypatch, capsys, ["--db", str(tmp_path / "m.db"), *argv])
    assert line.startswith("agentcache-mcp: invalid configuration: ")
    assert expected in line
    assert not (tmp_path / "m.db").exists()


def test_db_that_is_a_directory_or_in_a_missing_directory_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = refused(monkeypatch, capsys, ["serve", "--db", str(tmp_path)])
    assert f"--db {str(tmp_path)!r} is invalid: expected the database file's path" in line
    missing = tmp_path / "typo" / "memory.db"
    monkeypatch.setenv("AGENTCACHE_DB", str(missing))
    line = refused(monkeypatch, capsys, ["stats"])
    assert f"AGENTCACHE_DB {str(missing)!r} is invalid: the directory {missing.parent} does not exist" in line
    assert not missing.parent.exists()


def test_non_loopback_bind_without_token_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = refused(
        monkeypatch, capsys, ["serve", "--db", str(tmp_path / "m.db"), "--transport", "sse", "--host", "0.0.0.0"]
    )
    assert line.startswith("agentcache-mcp: refusing to serve on non-loopback address 0.0.0.0")


NAMESPACES = ["default", "a/b", "a\\b", "..", "x..y", "", " lead", "trail ", "tab\tx", "nl\n", "ü-ok", "-x", ".x",
              "x" * 128, "x" * 129, "a:b@c+d_e.f-g", "nul\x00", "ok", "日本語"]  # fmt: skip


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_start_accepts_a_namespace_exactly_when_the_tools_do(namespace: str) -> None:
    try:
        validate_namespace(namespace)
        tools_accept = True
    except InvalidInput:
        tools_accept = False
    try:
        Settings.from_env({}, namespace=namespace)
        start_accepts = True
    except ValueError:
        start_accepts = False
    assert start_accepts == tools_accept


def test_valid_settings_reach_serve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AGENTCACHE_NAMESPACE", "team:alpha")
    monkeypatch.setenv("AUTO_FORGET_ENABLED", "off")
    monkeypatch.setenv("AUTO_FORGET_INTERVAL_S", "600")
    monkeypatch.setenv("AGENTCACHE_MAX_TEXT_BYTES", "4096")
    monkeypatch.setenv("AGENTCACHE_ALLOWED_HOSTS", "mem.example.com, proxy.lan:8443")
    monkeypatch.setenv("AGENTCACHE_SESSION_IDLE_TIMEOUT_S", "90")
    monkeypatch.setenv("AGENTCACHE_MODEL_WAIT_S", "0")
    argv = ["serve", "--db", str(tmp_path / "m.db"), "--transport", "streamable-http", "--port", "0"]
    served = run_main(monkeypatch, [*argv, "--stateful-http"])
    s = served.settings
    assert served.transport == "streamable-http"
    assert (s.namespace, s.auto_forget_enabled, s.auto_forget_interval_s, s.max_text_bytes) == (
        "team:alpha",
        False,
        600.0,
        4096,
    )
    assert s.allowed_hosts == ("mem.example.com", "proxy.lan:8443") and s.port == 0
    assert s.stateful_http and s.session_idle_timeout_s == 90.0 and s.model_wait_s == 0
    # stateless unless asked; the flag beats the variable
    assert not run_main(monkeypatch, argv).settings.stateful_http
    monkeypatch.setenv("AGENTCACHE_STATEFUL_HTTP", "yes")
    assert run_main(monkeypatch, argv).settings.stateful_http
    monkeypatch.setenv("AGENTCACHE_SESSION_IDLE_TIMEOUT_S", "")  # empty counts as unset
    assert run_main(monkeypatch, [*argv, "--session-idle-timeout", "12.5"]).settings.session_idle_timeout_s == 12.5
    assert run_main(monkeypatch, argv).settings.session_idle_timeout_s == 300.0


def test_invalid_setting_exits_2_from_a_real_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES}
    for argv, extra, expected in [
        (["serve", "--transport", "streamable-http", "--port", "99999"], {}, "--port must be 0..65535, got 99999"),
        (["serve"], {"AGENTCACHE_NAMESPACE": "a/b"}, "AGENTCACHE_NAMESPACE 'a/b' is invalid: use letters"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "agentcache_mcp", "--db", str(tmp_path / "m.db"), *argv],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 2
        assert out.stdout == ""
        assert out.stderr.count("\n") == 1 and out.stderr.startswith("agentcache-mcp: invalid configuration: ")
        assert expected in out.stderr
    assert not (tmp_path / "m.db").exists()


# --- 2. --db before or after the subcommand ---------------------------------------------------------------


def parsed(argv: list[str]) -> tuple[str, Settings]:
    args = cli._parser().parse_args(argv)
    return args.command or "serve", cli._settings(args)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["--db", "{db}", "serve"], "serve"),
        (["serve", "--db", "{db}"], "serve"),
        (["--db", "{db}", "stats"], "stats"),
        (["stats", "--db", "{db}"], "stats"),
        (["--db", "{db}"], "serve"),
        (["--db", "{db}", "serve", "--transport", "sse", "--port", "0"], "serve"),
        (["--log-level", "debug", "--db", "{db}", "serve", "--log-level", "WARNING"], "serve"),
    ],
)
def test_db_is_accepted_before_or_after_the_subcommand(tmp_path: Path, argv: list[str], command: str) -> None:
    db = tmp_path / "m.db"
    got_command, settings = parsed([a.replace("{db}", str(db)) for a in argv])
    assert (got_command, settings.db_path) == (command, db)


def test_db_after_the_subcommand_wins_over_one_before(tmp_path: Path) -> None:
    first, second = tmp_path / "a.db", tmp_path / "b.db"
    assert parsed(["--db", str(first), "serve", "--db", str(second)])[1].db_path == second
    # and the flag beats the variable on either side
    assert Settings.from_env({"AGENTCACHE_DB": str(first)}, db_path=str(second)).db_path == second


def test_log_level_is_accepted_on_either_side() -> None:
    assert cli._parser().parse_args(["serve", "--log-level", "debug"]).log_level == "DEBUG"
    assert cli._parser().parse_args(["--log-level", "ERROR", "stats"]).log_level == "ERROR"
    assert cli._parser().parse_args(["stats"]).log_level == "INFO"


def test_db_before_no_subcommand_serves_stdio(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served = run_main(monkeypatch, ["--db", str(tmp_path / "m.db")])
    assert served.transport == "stdio" and served.settings.db_path == tmp_path / "m.db"
    served = run_main(monkeypatch, ["--db", str(tmp_path / "m.db"), "serve", "--transport", "sse", "--port", "0"])
    assert served.transport == "sse" and served.settings.db_path == tmp_path / "m.db"


def test_stats_with_db_before_the_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "m.db"
    cli.main(["--db", str(db), "stats"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["db_path"] == str(db)


# --- 3. streamable HTTP: stateless by default, idle sessions expire when stateful -------------------------


def _server() -> MCPServer:
    server = MCPServer("t")

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


VERSION = "2025-06-18"
JSON_SSE = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def _rpc(method: str, params: dict[str, Any], request_id: int | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return json.dumps(message).encode()


def _result(response: httpx2.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
    return json.loads(next(d for d in data if d))


async def one_shot_client(http: httpx2.AsyncClient, url: str, n: int) -> str | None:
    """What a one-shot host does: initialize, initialized, call a tool, and go away without a DELETE.
    Returns the session id the server handed out, if any."""
    init = await http.post(
        url,
        headers=JSON_SSE,
        content=_rpc(
            "initialize",
            {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
            1,
        ),
    )
    assert _result(init)["result"]["serverInfo"]["name"] == "t"
    session = init.headers.get("mcp-session-id")
    headers = {**JSON_SSE, "MCP-Protocol-Version": VERSION, **({"Mcp-Session-Id": session} if session else {})}
    note = await http.post(url, headers=headers, content=_rpc("notifications/initialized", {}))
    assert note.status_code == 202
    call = await http.post(
        url, headers=headers, content=_rpc("tools/call", {"name": "echo", "arguments": {"text": f"hi {n}"}}, 2)
    )
    assert _result(call)["result"]["content"][0]["text"] == f"hi {n}"
    return session


def live_transports() -> int:
    """The SDK's per-client transports still reachable from anything: one per session kept."""
    with warnings.catch_warnings():
        # Collecting may finalise other tests' leftovers (an unclosed client socket): not what is counted here.
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    # type() rather than isinstance(): isinstance reads __class__, which some lazy modules (torch) warn on.
    return sum(type(o) is StreamableHTTPServerTransport for o in gc.get_objects())


async def with_http_server(
    settings: Settings, check: Callable[[MCPServer, str], Awaitable[None]], server: MCPServer | None = None
) -> None:
    server = server or _server()
    uv = serving.http_server(server, settings, "streamable-http")
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        with anyio.fail_after(10):
            while not uv.started:
                await anyio.sleep(0.01)
        try:
            sock: socket.socket = uv.servers[0].sockets[0]
            host, port = sock.getsockname()[:2]
            await check(server, f"http://{host}:{port}/mcp")
        finally:
            uv.should_exit = True


CYCLES = 6


def test_stateless_http_keeps_nothing_per_client(tmp_path: Path) -> None:
    async def check(server: MCPServer, url: str) -> None:
        before = live_transports()
        async with httpx2.AsyncClient(timeout=10) as http:
            sessions = [await one_shot_client(http, url, n) for n in range(CYCLES)]
        assert sessions == [None] * CYCLES  # no session id handed out
        assert server.session_manager.stateless
        assert server.session_manager._server_instances == {}
        with anyio.fail_after(5):
            while live_transports() > before:  # a transport ends with its request; allow it to be collected
                await anyio.sleep(0.05)

    anyio.run(with_http_server, Settings(db_path=tmp_path / "m.db", port=0), check)


def test_stateful_http_sessions_pile_up_until_idle_timeout(tmp_path: Path) -> None:
    """The same clients against --stateful-http: one session each is kept (what the stateless check would
    catch), and each is closed once idle for session_idle_timeout_s."""

    async def check(server: MCPServer, url: str) -> None:
        before = live_transports()
        async with httpx2.AsyncClient(timeout=10) as http:
            sessions = [await one_shot_client(http, url, n) for n in range(CYCLES)]
        assert all(sessions) and len(set(sessions)) == CYCLES
        assert set(server.session_manager._server_instances) == set(sessions)
        assert live_transports() >= before + CYCLES
        with anyio.fail_after(10):
            while server.session_manager._server_instances:
                await anyio.sleep(0.1)
        with anyio.fail_after(5):
            while live_transports() > before:
                await anyio.sleep(0.05)
        async with httpx2.AsyncClient(timeout=10) as http:  # an expired session is gone for good
            headers = {**JSON_SSE, "MCP-Protocol-Version": VERSION, "Mcp-Session-Id": str(sessions[0])}
            gone = await http.post(url, headers=headers, content=_rpc("tools/list", {}, 3))
            assert gone.status_code == 404

    settings = Settings(db_path=tmp_path / "m.db", port=0, stateful_http=True, session_idle_timeout_s=0.5)
    anyio.run(with_http_server, settings, check)


# --- logs -------------------------------------------------------------------------------------------------


def test_sdk_loggers_quiet_unless_debug() -> None:
    sdk = logging.getLogger("mcp.server.streamable_http_manager")
    cli._configure_logging("INFO")
    assert not sdk.isEnabledFor(logging.INFO) and sdk.isEnabledFor(logging.WARNING)
    cli._configure_logging("ERROR")
    assert not sdk.isEnabledFor(logging.WARNING)
    logging.getLogger("mcp").setLevel(logging.NOTSET)
    cli._configure_logging("DEBUG")
    assert logging.getLogger("mcp").level == logging.NOTSET  # left to the root level: everything


def test_http_requests_logged_at_debug_and_sdk_info_lines_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cli._configure_logging("INFO")
    caplog.set_level(logging.DEBUG, logger="agentcache_mcp")

    async def check(server: MCPServer, url: str) -> None:
        async with httpx2.AsyncClient(timeout=10) as http:
            await one_shot_client(http, url, 0)
            refused = await http.post(url, headers={**JSON_SSE, "Host": "evil.example"}, content=b"{}")
            assert refused.status_code == 403

    settings = Settings(db_path=tmp_path / "m.db", port=0, stateful_http=True)
    anyio.run(with_http_server, settings, check)
    ours = [r.getMessage() for r in caplog.records if r.name == "agentcache_mcp" and r.levelno == logging.DEBUG]
    # one line per request when it ends (an SSE response may end after the next request has been answered)
    assert sorted(m.split(" (")[0] for m in ours) == [
        "POST /mcp 200",
        "POST /mcp 200",
        "POST /mcp 202",
        "POST /mcp 403",
    ]
    # a stateful session makes the SDK log "Created new transport with session ID" at INFO: turned down
    assert not [r for r in caplog.records if r.name.startswith("mcp") and r.levelno < logging.WARNING]


# --- 4. no progress bars on stderr ------------------------------------------------------------------------

LOAD_THROUGH_MAIN = textwrap.dedent(
    """
    import sys
    from agentcache_mcp import cli

    async def load_model(settings, transport):
        from agentcache_mcp.embeddings import SentenceTransformerEmbedder
        SentenceTransformerEmbedder().load()
        print("loaded", flush=True)

    cli.serve = load_model
    cli.main(["--db", sys.argv[1], "serve", "--transport", "streamable-http", "--port", "0"])
    """
)

LOAD_DIRECTLY = textwrap.dedent(
    """
    from agentcache_mcp.embeddings import SentenceTransformerEmbedder
    SentenceTransformerEmbedder().load()
    print("loaded", flush=True)
    """
)

PROGRESS_BAR_TEXT = ("Loading weights", "it/s", "%|")


@pytest.mark.model
def test_model_load_under_main_prints_no_progress_bar(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in (*ENV_VARIABLES, *cli.QUIET_THIRD_PARTY)}

    def run(script: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "m.db")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == "loaded\n"
        return out.stderr

    # The check can fail: without main()'s defaults the same load draws a bar on stderr.
    assert any(text in run(LOAD_DIRECTLY) for text in PROGRESS_BAR_TEXT)
    stderr = run(LOAD_THROUGH_MAIN)
    assert not [text for text in PROGRESS_BAR_TEXT if text in stderr], stderr


def test_quiet_defaults_keep_a_value_the_user_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TQDM_DISABLE", "0")
    run_main(monkeypatch, ["--db", str(tmp_path / "m.db"), "serve", "--transport", "sse", "--port", "0"])
    assert os.environ["TQDM_DISABLE"] == "0"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1" and os.environ["TRANSFORMERS_VERBOSITY"] == "error"
