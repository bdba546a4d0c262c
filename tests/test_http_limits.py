"""The HTTP transports against slow and greedy clients, and a port already in use.

Real servers on 127.0.0.1 only: uvicorn with our connection limits (transports.limited_h11_protocol) in this
process, raw sockets as the clients; the file-descriptor count and the port-in-use refusal are checked on
the real command line in a subprocess. Waits are bounded and generous: the machine may be busy.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from anyio.abc import SocketStream
from mcp.server.mcpserver import MCPServer

from agentcache_mcp import serving, transports
from agentcache_mcp.config import ConfigError, Settings

from conftest import free_port, wait_until_listening

TOKEN = "s3cret-token"
PARTIAL_HEADERS = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
).encode()


def mcp_post(body: bytes = INIT, *, token: str | None = TOKEN, close: bool = True, length: int | None = None) -> bytes:
    """A streamable-HTTP POST /mcp, whole (or only its head, when the body is sent apart)."""
    lines = [
        "POST /mcp HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"Content-Length: {len(body) if length is None else length}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@asynccontextmanager
async def running(settings: Settings, transport: str = "streamable-http") -> AsyncIterator[tuple[Any, tuple[str, int]]]:
    """A real server on 127.0.0.1 (port 0) in this process: (the uvicorn server, its address)."""
    uv = serving.http_server(MCPServer("t"), settings, transport)
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        with anyio.fail_after(10):
            while not uv.started:
                await anyio.sleep(0.01)
        try:
            yield uv, uv.servers[0].sockets[0].getsockname()[:2]
        finally:
            uv.should_exit = True


@asynccontextmanager
async def connection(settings: Settings, transport: str = "streamable-http") -> AsyncIterator[SocketStream]:
    """One client connection to a real server (as `running`)."""
    async with running(settings, transport) as (_, address), await anyio.connect_tcp(*address) as stream:
        yield stream


async def read_until_closed(stream: SocketStream, limit_s: float) -> bytes:
    """Everything the server sends until it closes the connection; TimeoutError if it has not within limit_s."""
    data = b""
    with anyio.fail_after(limit_s):
        while True:
            try:
                data += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return data


async def status_of(address: tuple[str, int], request: bytes, limit_s: float = 10) -> int:
    async with await anyio.connect_tcp(*address) as stream:
        await stream.send(request)
        data = await read_until_closed(stream, limit_s)
    return int(data.split(b" ", 2)[1])


def limits(**settings: Any) -> Settings:
    return Settings(host="127.0.0.1", port=0, auth_token=TOKEN, **settings)


# --- half-sent requests are closed after the request timeout --------------------------------------------


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"", b""),  # connected, never sent a byte: closed without a word
        (b"POST /mcp HTTP/1.1\r\n", b"HTTP/1.1 408 "),
        (PARTIAL_HEADERS, b"HTTP/1.1 408 "),
        (mcp_post(b"{", length=100), b"HTTP/1.1 408 "),  # a token holder whose body stops halfway
    ],
    ids=["nothing", "request-line", "headers-unfinished", "body-unfinished"],
)
def test_a_half_sent_request_is_closed_after_the_request_timeout(sent: bytes, answer: bytes) -> None:
    async def main() -> None:
        async with connection(limits(http_request_timeout_s=1)) as stream:
            if sent:
                await stream.send(sent)
            started = time.monotonic()
            data = await read_until_closed(stream, limit_s=15)  # today: never closed
            took = time.monotonic() - started
        assert data.startswith(answer), data
        assert 0.8 < took < 8, took  # not before the timeout; soon after it

    anyio.run(main)


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token-holder", "no-token"])
def test_a_body_trickling_a_byte_at_a_time_is_closed_after_the_request_timeout(token: str | None) -> None:
    # Without a token the 401 goes out at once, without reading the body; uvicorn's keep-alive timer then
    # restarts at every byte, so a byte every 0.2 s held the connection forever.
    async def main() -> None:
        async with connection(limits(http_request_timeout_s=1)) as stream:
            await stream.send(mcp_post(b"", token=token, close=False, length=1000))
            started = time.monotonic()
            closed_after = None
            with anyio.move_on_after(15):
                while closed_after is None:
                    try:
                        await stream.send(b" ")
                        with anyio.move_on_after(0.2):
                            if not await stream.receive():
                                closed_after = time.monotonic() - started
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                        closed_after = time.monotonic() - started
        assert closed_after is not None, "the server kept a trickling request open for 15 s"
        assert 0.8 < closed_after < 8, closed_after

    anyio.run(main)


def test_a_second_request_on_a_kept_alive_connection_must_arrive_in_time_too() -> None:
    async def main() -> None:
        async with connection(limits(http_request_timeout_s=1)) as stream:
            await stream.send(mcp_post(close=False))
            with anyio.fail_after(10):
                first = await stream.receive()
            assert first.startswith(b"HTTP/1.1 200 "), first
            await anyio.sleep(0.5)  # within uvicorn's 5 s keep-alive: the connection is reused...
            await stream.send(PARTIAL_HEADERS)  # ...by a request that never finishes
            started = time.monotonic()
            rest = await read_until_closed(stream, limit_s=15)
            took = time.monotonic() - started
        assert b"HTTP/1.1 408 " in rest, rest
        assert 0.8 < took < 8, took

    anyio.run(main)


def test_a_long_response_is_not_cut_by_the_request_timeout() -> None:
    # The timeout is on receiving the request; a stream the server sends (an SSE client) lasts as long as it likes.
    async def main() -> None:
        async with connection(limits(http_request_timeout_s=1), "sse") as stream:
            head = f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            await stream.send(head.encode())
            with anyio.fail_after(10):
                data = await stream.receive()
            assert data.startswith(b"HTTP/1.1 200 "), data
            with anyio.move_on_after(3):  # three request timeouts: the stream stays open
                while True:
                    assert await stream.receive()  # raises EndOfStream if the server closed it

    anyio.run(main)


# --- the number of connections is bounded, and a token holder still gets through -----------------------


def test_stalled_connections_beyond_the_limit_do_not_lock_out_a_token_holder() -> None:
    cap, stalled = 8, 24

    async def main() -> None:
        # A long request timeout: the token holder must get through long before the stalled ones time out.
        async with running(limits(http_request_timeout_s=60, http_max_connections=cap)) as (uv, address):
            streams = []
            try:
                most = 0
                for _ in range(stalled):
                    stream = await anyio.connect_tcp(*address)
                    await stream.send(PARTIAL_HEADERS)
                    streams.append(stream)
                    await anyio.sleep(0.02)
                    most = max(most, len(uv.server_state.connections))
                await anyio.sleep(0.5)
                most = max(most, len(uv.server_state.connections))
                started = time.monotonic()
                assert await status_of(address, mcp_post(), limit_s=10) == 200
                took = time.monotonic() - started
                closed = 0
                for stream in streams:
                    with contextlib.suppress(TimeoutError):
                        answer = await read_until_closed(stream, limit_s=0.2)
                        assert answer.startswith(b"HTTP/1.1 503 "), answer  # made room for a newer one
                        closed += 1
            finally:
                for stream in streams:
                    await stream.aclose()
        assert most <= cap, f"{most} connections open with a limit of {cap}"
        assert closed >= stalled - cap + 1, closed  # the oldest stalled ones made room, the token holder too
        assert took < 5, took

    anyio.run(main)


def test_when_every_connection_is_busy_a_new_one_is_turned_away_at_once() -> None:
    async def main() -> None:
        async with running(limits(http_max_connections=2), "sse") as (uv, address):
            head = f"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
            streams = [await anyio.connect_tcp(*address) for _ in range(2)]
            try:
                for stream in streams:
                    await stream.send(head)
                    with anyio.fail_after(10):
                        assert (await stream.receive()).startswith(b"HTTP/1.1 200 ")
                assert await status_of(address, mcp_post()) == 503  # nothing to close: both are served streams
                await streams.pop().aclose()
                with anyio.fail_after(10):
                    while len(uv.server_state.connections) > 1:
                        await anyio.sleep(0.05)
                request = b"GET /ui/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                assert await status_of(address, request) != 503
            finally:
                for stream in streams:
                    await stream.aclose()

    anyio.run(main)


def test_requests_left_unanswered_past_the_request_timeout_make_room_at_the_limit() -> None:
    # A request the app holds without answering (the UI pauses each wrong login in turn, so a flood of them
    # queues up) is busy, not stalled: it keeps its place until it has waited longer than the request timeout.
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await anyio.sleep(60)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> None:
        uv = serving._uvicorn(app, limits(http_request_timeout_s=1, http_max_connections=3))
        slow = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        fast = b"GET /fast HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        async with anyio.create_task_group() as tg:
            tg.start_soon(uv.serve)
            with anyio.fail_after(10):
                while not uv.started:
                    await anyio.sleep(0.01)
            address = uv.servers[0].sockets[0].getsockname()[:2]
            held = [await anyio.connect_tcp(*address) for _ in range(3)]
            try:
                for stream in held:
                    await stream.send(slow)
                await anyio.sleep(0.3)
                assert await status_of(address, fast) == 503  # all three busy, none for long
                await anyio.sleep(1.2)
                assert await status_of(address, fast) == 200  # the oldest unanswered request made room
                answers = []
                for stream in held:
                    with contextlib.suppress(TimeoutError):
                        answers.append(await read_until_closed(stream, limit_s=0.2))
                assert [a[:13] for a in answers] == [b"HTTP/1.1 503 "]
            finally:
                for stream in held:
                    await stream.aclose()
                uv.should_exit = True

    anyio.run(main)


WEBSOCKET_UPGRADE = (
    b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def test_websocket_upgrades_do_not_let_stalled_connections_past_the_limit() -> None:
    # uvicorn hands an upgraded connection to its WebSocket protocol; the HTTP protocol it leaves behind stayed
    # listed as waiting for its request until its timer fired, and at the limit closing it made no room.
    cap, upgrades = 4, 12

    async def main() -> None:
        async with running(limits(http_request_timeout_s=60, http_max_connections=cap)) as (uv, address):
            streams = []
            try:
                for _ in range(upgrades):
                    stream = await anyio.connect_tcp(*address)
                    await stream.send(WEBSOCKET_UPGRADE)
                    streams.append(stream)
                    await read_until_closed(stream, limit_s=10)  # refused (no token), closed
                most = 0
                for _ in range(upgrades):
                    stream = await anyio.connect_tcp(*address)
                    await stream.send(PARTIAL_HEADERS)
                    streams.append(stream)
                    await anyio.sleep(0.05)
                    most = max(most, len(uv.server_state.connections))
            finally:
                for stream in streams:
                    await stream.aclose()
        assert most <= cap, f"{most} connections open with a limit of {cap}"

    anyio.run(main)


def never_reading_pipeliner(address: tuple[str, int], seconds: float = 1.0) -> socket.socket:
    """A client that pipelines thousands of requests (each answered 401) and never reads an answer: the
    server's writes stall once the socket buffers are full, in the middle of an answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.connect(address)
    sock.setblocking(False)
    requests = b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 20_000
    sent, deadline = 0, time.monotonic() + seconds
    while sent < len(requests) and time.monotonic() < deadline:
        try:
            sent += sock.send(requests[sent:])
        except BlockingIOError:
            continue
        except (ConnectionResetError, BrokenPipeError):  # the server dropped it to make room: that is allowed
            break
    return sock


def test_clients_that_never_read_their_answers_neither_lock_out_a_token_holder_nor_keep_their_sockets() -> None:
    # A response the server cannot finish writing is neither waiting for its request nor unanswered: such
    # connections were never closed, and once they filled the limit everybody got 503; a connection closed
    # to make room, its answer unsent, stayed open (asyncio's close waits for the buffer to drain).
    cap, attackers = 3, 9

    async def main() -> None:
        async with running(limits(http_request_timeout_s=1, http_max_connections=cap)) as (uv, address):
            sockets = []
            try:
                for _ in range(attackers):
                    sockets.append(await anyio.to_thread.run_sync(never_reading_pipeliner, address))
                    await anyio.sleep(0.3)
                await anyio.sleep(3)
                assert await status_of(address, mcp_post(), limit_s=10) == 200
                with anyio.move_on_after(10):
                    while uv.server_state.connections:
                        await anyio.sleep(0.1)
                assert not uv.server_state.connections, f"{len(uv.server_state.connections)} still open"
            finally:
                for sock in sockets:
                    sock.close()

    anyio.run(main)


def test_at_the_limit_a_client_that_reads_nothing_makes_room_at_once() -> None:
    # Dropped after the request timeout, such clients still held every place until then: one reconnecting as
    # fast as places freed kept token holders out (503) for as long as it went on.
    cap = 3

    async def main() -> None:
        async with running(limits(http_request_timeout_s=60, http_max_connections=cap)) as (uv, address):
            sockets = []
            try:
                for _ in range(cap):
                    sockets.append(await anyio.to_thread.run_sync(never_reading_pipeliner, address))
                with anyio.fail_after(60):  # every answer stalled: the client's buffers are full
                    while sum(c.flow.write_paused for c in uv.server_state.connections) < cap:
                        await anyio.sleep(0.1)
                assert await status_of(address, mcp_post(), limit_s=10) == 200
            finally:
                for sock in sockets:
                    sock.close()

    anyio.run(main)


def test_the_limits_are_settings_checked_at_start() -> None:
    env = {"AGENTCACHE_HTTP_REQUEST_TIMEOUT_S": "2.5", "AGENTCACHE_HTTP_MAX_CONNECTIONS": "40"}
    settings = Settings.from_env(env)
    assert (settings.http_request_timeout_s, settings.http_max_connections) == (2.5, 40)
    with pytest.raises(ConfigError, match=r"AGENTCACHE_HTTP_MAX_CONNECTIONS must be 1\.\.100000, got 0"):
        Settings.from_env({"AGENTCACHE_HTTP_MAX_CONNECTIONS": "0"})
    with pytest.raises(ConfigError, match="AGENTCACHE_HTTP_REQUEST_TIMEOUT_S must be > 0"):
        Settings.from_env({"AGENTCACHE_HTTP_REQUEST_TIMEOUT_S": "0"})


# --- the real command line: file descriptors under a slowloris attack ------------------------------------


def open_sockets(pid: int) -> int:
    """The sockets among a process's file descriptors: what client connections use up (the model loader's
    files come and go on their own schedule, so the whole count is not a measure of the clients)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def closed_by_server(sock: socket.socket, limit_s: float) -> bool:
    """Whether the server closed `sock` (after any answer) within limit_s."""
    sock.settimeout(limit_s)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    return True


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts file descriptors in /proc")
def test_a_slowloris_attack_keeps_the_servers_sockets_bounded(tmp_path: Path) -> None:
    cap, timeout_s, attackers = 20, 3, 4 * (20 + transports.LISTEN_BACKLOG)
    port = free_port()
    env = {
        **os.environ,
        "AGENTCACHE_DB": str(tmp_path / "m.db"),
        "AUTO_FORGET_ENABLED": "false",
        "AGENTCACHE_AUTH_TOKEN": TOKEN,
        "AGENTCACHE_HTTP_MAX_CONNECTIONS": str(cap),
        "AGENTCACHE_HTTP_REQUEST_TIMEOUT_S": str(timeout_s),
    }
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentcache_mcp", "serve", "--transport", "streamable-http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    sockets: list[socket.socket] = []
    try:
        wait_until_listening(proc, port, "server", log=log)
        time.sleep(0.5)  # the probe connection of wait_until_listening is gone
        before = open_sockets(proc.pid)
        most = before
        for _ in range(attackers):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(PARTIAL_HEADERS)
            sockets.append(sock)
            most = max(most, open_sockets(proc.pid))
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as holder:
            holder.sendall(mcp_post())
            reply = b""
            while chunk := holder.recv(65536):
                reply += chunk
        took = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        most = max(most, open_sockets(proc.pid))
        time.sleep(timeout_s + 2)  # every stalled connection still open has timed out by now
        still_open = sum(not closed_by_server(sock, 0.05) for sock in sockets)
        after = open_sockets(proc.pid)
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        proc.wait(timeout=60)
    print(
        f"server sockets: {before} before, at most {most} with {attackers} stalled clients, {after} after the "
        f"timeout; the token holder was answered in {took:.3f} s"
    )
    # A burst that waited in the listen queue is accepted at once (up to LISTEN_BACKLOG) and closed a moment
    # later: asyncio releases a closed transport's socket on a later turn of the loop, so on a loaded machine
    # the previous batch may still hold its sockets when the next is accepted (CI once saw 159 against a
    # bound of one batch). Two batches is the bound; without the limit every stalled client kept one.
    assert most <= before + cap + 2 * transports.LISTEN_BACKLOG, (before, most)
    assert before + cap + 2 * transports.LISTEN_BACKLOG < attackers / 2  # the bound is far from no bound
    assert took < 5, took
    assert still_open == 0
    assert after <= before, (before, after)


# --- a port already in use --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["serve", "--transport", "streamable-http"], ["serve", "--transport", "sse"], ["ui"]],
    ids=["streamable-http", "sse", "ui"],
)
def test_a_port_in_use_is_one_line_on_stderr_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "agentcache_mcp", "--db", str(tmp_path / "m.db"), *command, "--port", str(port)],
            env={**os.environ, "AUTO_FORGET_ENABLED": "false"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1, out.stderr  # no traceback, and no "serving ..." before it
    assert out.stderr.startswith(f"agentcache-mcp: cannot listen on 127.0.0.1:{port}: address already in use"), out
    assert "--port" in out.stderr
    assert not (tmp_path / "m.db").exists()  # refused before the store was opened


@pytest.mark.slow
def test_serve_logs_the_port_it_listens_on_once_it_listens(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcache_mcp", "--db", str(tmp_path / "m.db"), "serve", "--transport", "sse",
         "--port", "0"],
        env={**os.environ, "AUTO_FORGET_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 60
        line = ""
        while "serving sse on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "the server exited"
        port = int(line.rsplit(":", 1)[1])
        assert port != 0  # --port 0: the port the system picked, which clients can use
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
