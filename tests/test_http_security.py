"""HTTP transport security: loopback detection, DNS-rebinding Host/Origin guard, bearer token, start refusal.

Almost everything drives the ASGI middleware directly with a fake app and hand-built scopes; two tests run
a real uvicorn server (an empty MCPServer, no memory engine) to show the guard and the SDK agree end to end.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver import MCPServer

from agentcache_mcp import cli, serving, transports
from agentcache_mcp.config import Settings
from agentcache_mcp.transports import (
    BearerAuth,
    HostOriginGuard,
    bind_refusal,
    guard,
    is_loopback,
    needs_host_check,
    parse_allowed_host,
)

TOKEN = "s3cret-token_value"


# --- helpers ----------------------------------------------------------------------------------------------


class Result:
    def __init__(self) -> None:
        self.app_called = False
        self.messages: list[dict[str, Any]] = []

    @property
    def status(self) -> int | None:
        for m in self.messages:
            if m["type"] == "http.response.start":
                return m["status"]
        return None

    @property
    def headers(self) -> dict[bytes, bytes]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return dict(start["headers"])

    @property
    def json(self) -> dict[str, Any]:
        body = b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")
        return json.loads(body)


async def _ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.accept"})


def call(
    wrap: Any,
    headers: Iterable[tuple[str, str | bytes]] = (),
    *,
    host: str | bytes | None = "127.0.0.1:8765",
    scope_type: str = "http",
    path: str = "/mcp",
) -> Result:
    """Send one request through `wrap(app)` and record what came back and whether the app saw it."""
    result = Result()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        result.app_called = True
        await _ok_app(scope, receive, send)

    raw = ([("host", host)] if host is not None else []) + list(headers)
    scope: dict[str, Any] = {
        "type": scope_type,
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v if isinstance(v, bytes) else v.encode()) for k, v in raw],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        result.messages.append(message)

    anyio.run(wrap(app), scope, receive, send)
    return result


def guarded(**settings: Any) -> Any:
    """A wrapper applying the CLI's guards for these settings."""
    s = Settings(**settings)
    return lambda app: guard(app, s)


def host_guard(*allowed: str) -> Any:
    return lambda app: HostOriginGuard(app, allowed)


def bearer(app: Any) -> Any:
    return BearerAuth(app, TOKEN)


def assert_refused(result: Result, status: int, word: str) -> None:
    assert not result.app_called
    assert result.status == status
    assert result.headers[b"content-type"] == b"application/json"
    assert word in result.json["error"]


def assert_admitted(result: Result) -> None:
    assert result.app_called
    assert result.status == 200


# --- 4. loopback detection and the start refusal --------------------------------------------------------

LOOPBACK_BINDS = [
    "localhost",
    "LocalHost",
    "127.0.0.1",
    "127.0.0.2",
    "127.255.255.254",
    "::1",
    "0:0:0:0:0:0:0:1",
    "0000:0000:0000:0000:0000:0000:0000:0001",
    "::1%lo",
    "::ffff:127.0.0.1",
    "::ffff:7f00:2",
    "0:0:0:0:0:ffff:127.0.0.1",
]

NOT_LOOPBACK_BINDS = [
    "",
    "0.0.0.0",
    "::",
    "::ffff:0.0.0.0",
    "10.0.0.1",
    "192.168.1.20",
    "::ffff:10.0.0.1",
    "::127.0.0.1",  # deprecated IPv4-compatible form: an ordinary IPv6 address to the kernel
    "2001:db8::1",
    "localhost.",  # a DNS name, not the hosts-file entry
    "localhost.localdomain",
    "foo.localhost",
    "127.0.0.1.nip.io",
    "example.com",
    "127.1",  # inet_aton shorthands are refused rather than guessed at
    "2130706433",
    "0177.0.0.1",
    "[::1]",
    " 127.0.0.1",
]


@pytest.mark.parametrize("host", LOOPBACK_BINDS)
def test_is_loopback_accepts_every_loopback_form(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", NOT_LOOPBACK_BINDS)
def test_is_loopback_rejects_hostnames_and_other_addresses(host: str) -> None:
    assert not is_loopback(host)


def test_ipv4_mapped_loopback_bind_starts_without_token() -> None:
    assert bind_refusal(Settings(host="::ffff:127.0.0.1")) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "example.com", "localhost.", "::"])
def test_non_loopback_bind_without_token_is_refused(host: str) -> None:
    reason = bind_refusal(Settings(host=host))
    assert reason is not None and "AGENTCACHE_AUTH_TOKEN" in reason
    assert bind_refusal(Settings(host=host, auth_token=TOKEN)) is None
    with pytest.raises(ValueError, match="non-loopback"):
        serving.http_server(MCPServer("t"), Settings(host=host), "streamable-http")


def test_cli_refuses_non_loopback_bind_without_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AGENTCACHE_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("AGENTCACHE_ALLOWED_HOSTS", raising=False)

    async def must_not_serve(*_: Any) -> None:
        raise AssertionError("served on a non-loopback address without a token")

    monkeypatch.setattr(cli, "serve", must_not_serve)
    for transport in ("sse", "streamable-http"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["serve", "--transport", transport, "--host", "0.0.0.0"])
        assert exc.value.code == 2
        assert "refusing to serve on non-loopback address 0.0.0.0" in capsys.readouterr().err


# --- 1. DNS rebinding: Host and Origin on a loopback bind without a token ---------------------------------


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"])
def test_host_check_applies_on_every_loopback_bind_without_token(bind: str) -> None:
    assert needs_host_check(Settings(host=bind))
    assert_refused(call(guarded(host=bind), host="evil.example:8765"), 403, "Host")


def test_rebinding_host_is_refused_on_127_0_0_2() -> None:
    wrap = guarded(host="127.0.0.2")
    # The attacker's page at http://rebind.evil.example:8765 now resolves to 127.0.0.2.
    assert_refused(call(wrap, host="rebind.evil.example:8765"), 403, "Host")
    assert_refused(call(wrap, host="127.0.0.2.nip.io:8765"), 403, "Host")
    assert_admitted(call(wrap, host="127.0.0.2:8765"))


def test_rebinding_host_is_refused_on_ipv6_loopback_spellings() -> None:
    for bind in ("0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"):
        assert_refused(call(guarded(host=bind), host="evil.example"), 403, "Host")


LOOPBACK_HOST_HEADERS = [
    "127.0.0.1:8765",
    "127.0.0.1",
    "127.0.0.2:8765",
    "127.9.8.7",
    "localhost:8765",
    "localhost",
    "LOCALHOST:8765",
    "[::1]:8765",
    "[::1]",
    "[0:0:0:0:0:0:0:1]:8765",
    "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "[::ffff:127.0.0.1]:8765",
    "[::FFFF:7F00:1]",
]


@pytest.mark.parametrize("value", LOOPBACK_HOST_HEADERS)
def test_loopback_host_header_is_accepted_with_or_without_port(value: str) -> None:
    assert_admitted(call(guarded(host="127.0.0.2"), host=value))


def test_ipv6_loopback_host_is_accepted() -> None:
    for bind in ("::1", "0:0:0:0:0:0:0:1", "127.0.0.1"):
        assert_admitted(call(guarded(host=bind), host="[::1]:8765"))
        assert_admitted(call(guarded(host=bind), host="[0:0:0:0:0:0:0:1]:8765"))
        assert_admitted(call(guarded(host=bind), [("Origin", "http://[::1]:8765")], host="[::1]:8765"))


FOREIGN_HOST_HEADERS = [
    "",
    "evil.example",
    "evil.example:8765",
    "localhost.",  # resolved through DNS, which the attacker may answer
    "localhost.:8765",
    "sub.localhost",
    "127.0.0.1.nip.io",
    "0.0.0.0:8765",
    "10.0.0.1:8765",
    "127.1:8765",
    "2130706433",
    "[127.0.0.1]",
    "::1",  # IPv6 must be bracketed
    "[::1",
    "[::1]x",
    "[::ffff:10.0.0.1]",
    "localhost:",
    "localhost:99999",
    "localhost:８７６５",  # non-ASCII digits
    b"localhost:8\xb9",  # a latin-1 superscript one, a digit to str.isdigit
    "localhost:8765:1",
    "evil.example@localhost",
    "localhost@evil.example",
    "localhost/evil",
    "localhost evil.example",
]


@pytest.mark.parametrize("value", FOREIGN_HOST_HEADERS)
def test_foreign_or_malformed_host_is_refused(value: str | bytes) -> None:
    assert_refused(call(guarded(host="127.0.0.1"), host=value), 403, "Host")


def test_missing_or_repeated_host_is_refused() -> None:
    assert_refused(call(guarded(host="127.0.0.1"), host=None), 403, "Host")
    assert_refused(call(guarded(host="127.0.0.1"), [("Host", "evil.example")], host="localhost"), 403, "Host")


def test_foreign_origin_is_refused() -> None:
    result = call(guarded(host="127.0.0.1"), [("Origin", "http://evil.example")], host="127.0.0.1:8765")
    assert_refused(result, 403, "Origin")
    assert result.json == {"error": "forbidden: Origin header not allowed (see --allowed-host)"}


@pytest.mark.parametrize(
    "origin",
    [
        "null",  # sandboxed frames, file: pages
        "",
        "evil.example",
        "http://evil.example:8765",
        "https://127.0.0.1.nip.io",
        "http://localhost.",
        "ftp://localhost",
        "chrome-extension://abcdef",
        "file://",
        "http://localhost:8765/path",
        "http://user@localhost",
        "http://[::1",
        "http://127.1:8765",
    ],
)
def test_bad_origin_is_refused(origin: str) -> None:
    assert_refused(call(guarded(host="127.0.0.1"), [("Origin", origin)]), 403, "Origin")


def test_repeated_origin_is_refused() -> None:
    headers = [("Origin", "http://localhost:8765"), ("Origin", "http://evil.example")]
    assert_refused(call(guarded(host="127.0.0.1"), headers), 403, "Origin")


@pytest.mark.parametrize(
    "origin",
    ["http://localhost:8765", "http://LOCALHOST", "https://127.0.0.1", "http://127.0.0.2:3000", "http://[::1]:8765"],
)
def test_loopback_origin_is_accepted(origin: str) -> None:
    assert_admitted(call(guarded(host="127.0.0.1"), [("Origin", origin)]))


def test_request_without_origin_is_accepted() -> None:
    assert_admitted(call(guarded(host="127.0.0.1")))


def test_guard_covers_every_route_and_websockets() -> None:
    wrap = guarded(host="127.0.0.1")
    for path in ("/mcp", "/sse", "/messages/", "/", "/ui/index.html"):
        assert_refused(call(wrap, host="evil.example", path=path), 403, "Host")
    refused = call(wrap, host="evil.example", scope_type="websocket", path="/ws")
    assert not refused.app_called
    assert refused.messages == [{"type": "websocket.close", "code": 1008}]
    origin = call(wrap, [("Origin", "http://evil.example")], scope_type="websocket", path="/ws")
    assert not origin.app_called
    assert call(wrap, scope_type="websocket", path="/ws").app_called


def test_lifespan_passes_through_the_guards() -> None:
    seen: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = guard(app, Settings(host="127.0.0.1", auth_token=TOKEN, allowed_hosts=("p.example",)))
    anyio.run(wrapped, {"type": "lifespan"}, None, None)
    assert seen == ["lifespan"]


# --- 2. --allowed-host / AGENTCACHE_ALLOWED_HOSTS -------------------------------------------------------


def _settings_from_cli(argv: list[str]) -> Settings:
    return cli._settings(cli._parser().parse_args(argv))


def test_allowed_host_flag_admits_proxy_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTCACHE_ALLOWED_HOSTS", raising=False)
    settings = _settings_from_cli(
        [
            "serve",
            "--transport",
            "streamable-http",
            "--allowed-host",
            "mem.example.com",
            "--allowed-host",
            "proxy.lan:8443",
        ]
    )
    assert settings.allowed_hosts == ("mem.example.com", "proxy.lan:8443")
    wrap = lambda app: guard(app, settings)  # noqa: E731
    assert_admitted(call(wrap, host="mem.example.com"))
    assert_admitted(call(wrap, [("Origin", "https://mem.example.com")], host="MEM.example.com:443"))
    assert_admitted(call(wrap, [("Origin", "https://proxy.lan:8443")], host="proxy.lan:8443"))
    assert_admitted(call(wrap, host="localhost:8765"))  # loopback still works
    assert_refused(call(wrap, host="proxy.lan:9999"), 403, "Host")  # the entry named a port
    assert_refused(call(wrap, host="evil.example"), 403, "Host")
    assert_refused(call(wrap, [("Origin", "https://evil.example")], host="mem.example.com"), 403, "Origin")


def test_allowed_host_port_matching() -> None:
    wrap = host_guard("mem.example.com:443", "[2001:db8::7]:8443", "10.1.2.3")
    assert_admitted(call(wrap, host="mem.example.com"))  # a proxy on its default port omits it
    assert_admitted(call(wrap, host="mem.example.com:443"))
    assert_refused(call(wrap, host="mem.example.com:8765"), 403, "Host")
    assert_admitted(call(wrap, [("Origin", "https://mem.example.com")], host="mem.example.com"))
    assert_refused(call(wrap, [("Origin", "http://mem.example.com")], host="mem.example.com"), 403, "Origin")
    assert_admitted(call(wrap, host="[2001:0db8:0:0:0:0:0:7]:8443"))
    assert_refused(call(wrap, host="[2001:db8::7]:8444"), 403, "Host")
    assert_admitted(call(wrap, host="10.1.2.3:1234"))
    assert_refused(call(wrap, host="10.1.2.4"), 403, "Host")


def test_allowed_hosts_env_var_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AGENTCACHE_ALLOWED_HOSTS": " mem.example.com, proxy.lan:8443 ,,"}
    assert Settings.from_env(env).allowed_hosts == ("mem.example.com", "proxy.lan:8443")
    assert Settings.from_env({}).allowed_hosts == ()
    monkeypatch.setenv("AGENTCACHE_ALLOWED_HOSTS", "from-env.example")
    assert _settings_from_cli(["serve"]).allowed_hosts == ("from-env.example",)
    # flags win over the environment, as for every other setting
    assert _settings_from_cli(["serve", "--allowed-host", "flag.example"]).allowed_hosts == ("flag.example",)


@pytest.mark.parametrize("entry", ["http://mem.example.com", "mem.example.com/mcp", "host:port", "[::1", "*", "a b"])
def test_invalid_allowed_host_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], entry: str
) -> None:
    monkeypatch.delenv("AGENTCACHE_ALLOWED_HOSTS", raising=False)
    with pytest.raises(ValueError, match="NAME"):
        parse_allowed_host(entry)
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--transport", "sse", "--allowed-host", entry])
    assert exc.value.code == 2
    assert f"invalid configuration: --allowed-host {entry!r} is invalid" in capsys.readouterr().err


def test_token_on_non_loopback_bind_without_allowed_hosts_is_guarded_by_the_token() -> None:
    settings = Settings(host="0.0.0.0", auth_token=TOKEN)
    assert not needs_host_check(settings)
    wrap = guarded(host="0.0.0.0", auth_token=TOKEN)
    assert_admitted(call(wrap, [("Authorization", f"Bearer {TOKEN}")], host="203.0.113.9:8765"))
    assert_refused(call(wrap, host="203.0.113.9:8765"), 401, "unauthorized")


def test_token_on_non_loopback_bind_with_allowed_host_checks_host() -> None:
    wrap = guarded(host="192.0.2.10", auth_token=TOKEN, allowed_hosts=("mem.example.com",))
    auth = [("Authorization", f"Bearer {TOKEN}")]
    assert_admitted(call(wrap, auth, host="mem.example.com"))
    assert_admitted(call(wrap, auth, host="192.0.2.10:8765"))  # the bind address itself
    assert_admitted(call(wrap, auth, host="localhost:8765"))
    assert_refused(call(wrap, auth, host="evil.example"), 403, "Host")
    assert_refused(call(wrap, [*auth, ("Origin", "https://evil.example")], host="mem.example.com"), 403, "Origin")
    # the Host check runs first: a refused Host says nothing about the token
    assert_refused(call(wrap, host="evil.example"), 403, "Host")
    assert_refused(call(wrap, host="mem.example.com"), 401, "unauthorized")
    # an unspecified bind address is not a name anyone connects to
    wild = guarded(host="0.0.0.0", auth_token=TOKEN, allowed_hosts=("mem.example.com",))
    assert_refused(call(wild, auth, host="0.0.0.0:8765"), 403, "Host")


def test_token_on_loopback_bind_still_checks_host() -> None:
    wrap = guarded(host="127.0.0.1", auth_token=TOKEN)
    assert_refused(call(wrap, [("Authorization", f"Bearer {TOKEN}")], host="evil.example"), 403, "Host")
    assert_admitted(call(wrap, [("Authorization", f"Bearer {TOKEN}")], host="127.0.0.1:8765"))


# --- 3. bearer token ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(scheme: str) -> None:
    assert_admitted(call(bearer, [("Authorization", f"{scheme} {TOKEN}")]))


def test_bearer_token_itself_is_case_sensitive() -> None:
    assert_refused(call(bearer, [("Authorization", f"Bearer {TOKEN.upper()}")]), 401, "unauthorized")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Bearer",
        "Bearer ",
        f"Bearer{TOKEN}",
        f"Basic {TOKEN}",
        f"Token {TOKEN}",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN} extra",
        f"Bearer\t{TOKEN}",
        TOKEN,
    ],
)
def test_malformed_or_wrong_authorization_is_401(value: str) -> None:
    result = call(bearer, [("Authorization", value)])
    assert_refused(result, 401, "unauthorized")
    assert result.headers[b"www-authenticate"] == b"Bearer"


def test_missing_or_repeated_authorization_is_401() -> None:
    assert_refused(call(bearer), 401, "unauthorized")
    twice = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {TOKEN}")]
    assert_refused(call(bearer, twice), 401, "unauthorized")
    assert_refused(call(bearer, list(reversed(twice))), 401, "unauthorized")


def test_bearer_tolerates_extra_spaces_after_the_scheme() -> None:
    assert_admitted(call(bearer, [("Authorization", f"Bearer   {TOKEN}")]))


def test_bearer_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = transports.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(transports.hmac, "compare_digest", spy)
    assert_refused(call(bearer, [("Authorization", "bearer short")]), 401, "unauthorized")
    assert_admitted(call(bearer, [("Authorization", f"BEARER {TOKEN}")]))
    # fixed-length digests, so not even the token's length shows in the timing
    assert [(len(a), len(b)) for a, b in compared] == [(32, 32), (32, 32)]


def test_bearer_guards_websockets_too() -> None:
    refused = call(bearer, scope_type="websocket", path="/ws")
    assert not refused.app_called and refused.messages == [{"type": "websocket.close", "code": 1008}]
    assert call(bearer, [("Authorization", f"Bearer {TOKEN}")], scope_type="websocket").app_called


def test_bearer_needs_a_token() -> None:
    with pytest.raises(ValueError):
        BearerAuth(_ok_app, "")


# --- real servers: the guard in front of the SDK's apps --------------------------------------------------


INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "0"},
        },
    }
).encode()


async def _status(address: tuple[str, int], request: bytes) -> int:
    """Send a raw HTTP/1.1 request and return the response status, not waiting for the body."""
    async with await anyio.connect_tcp(*address) as stream:
        await stream.send(request)
        data = b""
        with anyio.fail_after(10):
            while b"\r\n" not in data:
                data += await stream.receive()
    return int(data.split(b" ", 2)[1])


def _request(method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _with_server(settings: Settings, transport: str, check: Any) -> None:
    uv = serving.http_server(MCPServer("t"), settings, transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        with anyio.fail_after(10):
            while not uv.started:
                await anyio.sleep(0.01)
        try:
            sock: socket.socket = uv.servers[0].sockets[0]
            await check(sock.getsockname()[:2])
        finally:
            uv.should_exit = True


def test_real_streamable_http_server_on_127_0_0_2_refuses_rebinding() -> None:
    post = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    async def check(address: tuple[str, int]) -> None:
        port = address[1]
        assert await _status(address, _request("POST", "/mcp", f"evil.example:{port}", post, INIT)) == 403
        origin = {**post, "Origin": "http://evil.example"}
        assert await _status(address, _request("POST", "/mcp", f"127.0.0.2:{port}", origin, INIT)) == 403
        assert await _status(address, _request("POST", "/mcp", f"127.0.0.2:{port}", post, INIT)) == 200

    anyio.run(_with_server, Settings(host="127.0.0.2", port=0), "streamable-http", check)


def test_real_sse_server_admits_allowed_host_that_the_sdk_check_would_refuse() -> None:
    # With the SDK's own check on, a 127.0.0.1 bind answers 421 to any Host outside its fixed list.
    async def check(address: tuple[str, int]) -> None:
        assert await _status(address, _request("GET", "/sse", "mem.example.com")) == 200
        assert await _status(address, _request("GET", "/sse", "evil.example")) == 403
        assert await _status(address, _request("GET", "/sse", f"[::ffff:127.0.0.1]:{address[1]}")) == 200

    anyio.run(_with_server, Settings(host="127.0.0.1", port=0, allowed_hosts=("mem.example.com",)), "sse", check)
