"""Reliability and security: crashes, concurrent hosts, hostile input, a damaged environment, the network.

The long ones are marked slow and still run in CI; their figures are printed (run with -s) and recorded in
bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlean as sqlite3
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.ports import StoreError, StoreFullError
from agentcache_mcp.server import build_server

from conftest import HashEmbedder
from stdio_helper import StdioServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from load import free_port, run_load, start_server, stop_server  # noqa: E402

# --- crash -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_mid_burst_loses_no_acknowledged_write(db_path: Path) -> None:
    rng = random.Random(5)
    acknowledged: dict[str, str] = {}  # id -> unique token in its text
    for round_ in range(3):
        server = StdioServer(db_path)
        try:
            server.initialize()
            killer = threading.Timer(rng.uniform(0.2, 0.6), server.proc.send_signal, args=(signal.SIGKILL,))
            killer.start()
            i = 0
            while True:
                token = f"tok{round_}x{i}"
                try:
                    reply = server.call("remember", text=f"crash round {round_} item {i} marker {token}")
                except (RuntimeError, BrokenPipeError, OSError, ValueError):
                    break  # killed mid-burst: this one was never acknowledged
                acknowledged[reply["id"]] = token
                i += 1
            killer.join()
            server.proc.wait(timeout=10)
            assert server.proc.returncode == -signal.SIGKILL
        finally:
            server.close()
    assert len(acknowledged) > 10
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    server = StdioServer(db_path)
    try:
        server.initialize()
        for memory_id, token in acknowledged.items():
            hits = server.call("recall", query=token, limit=1)["results"]
            assert hits and hits[0]["id"] == memory_id, token
    finally:
        server.close()


# --- concurrent hosts --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_hosts_on_one_file_write_at_once_and_see_each_other(db_path: Path) -> None:
    hosts = [StdioServer(db_path) for _ in range(4)]
    errors: list[BaseException] = []
    written: dict[int, list[str]] = {}
    try:
        for host in hosts:
            host.initialize()
        barrier = threading.Barrier(4)

        def write(n: int) -> None:
            try:
                barrier.wait()
                written[n] = [hosts[n].call("remember", text=f"host{n} entry{i} zq{n}w{i}")["id"] for i in range(60)]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        for n, host in enumerate(hosts):
            for other in range(4):
                if other == n:
                    continue
                hits = host.call("recall", query=f"zq{other}w7", limit=1)["results"]
                assert hits and hits[0]["id"] == written[other][7]
    finally:
        for host in hosts:
            host.close()
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("SELECT count(*) FROM memories").fetchone()[0] == 240
    finally:
        db.close()


# --- hostile input -----------------------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    '"',
    "AND OR NOT",
    "NEAR(a b)",
    "*",
    "^",
    "col:val",
    "{a b}: c",
    "../../etc/passwd",
    "/abs/path",
    "C:\\Windows",
    "..",
    "🙂" * 50,
    "x" * 40_000,
    "'; DROP TABLE memories; --",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(HOSTILE_STRINGS),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
PARAMS = {
    "remember": ["text", "namespace", "tags", "importance", "ttl_days", "metadata"],
    "recall": ["query", "namespace", "tags", "limit", "since", "until"],
    "forget": ["ids", "namespace", "tags", "older_than_days", "dry_run"],
}


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tool = draw(st.sampled_from(sorted(PARAMS)))
    keys = draw(st.lists(st.sampled_from([*PARAMS[tool], "unexpected"]), unique=True, max_size=6))
    args = {key: draw(values) for key in keys}
    if draw(st.booleans()):  # often give the required argument a plausible value, to get past the schema
        required = {"remember": "text", "recall": "query"}.get(tool)
        if required:
            args[required] = draw(st.sampled_from(["a plain memory", *HOSTILE_STRINGS]))
    return tool, args


@pytest.fixture(scope="module")
def portal_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BlockingPortal, Client]]:
    db_path = tmp_path_factory.mktemp("hostile") / "memory.db"
    server = build_server(Settings(db_path=db_path, auto_forget_enabled=False), embedder=HashEmbedder())
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(server)) as client:
        yield portal, client


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(call=tool_calls())
def test_hostile_arguments_get_a_result_or_a_clear_error(
    portal_client: tuple[BlockingPortal, Client], call: tuple[str, dict[str, Any]]
) -> None:
    portal, client = portal_client
    tool, args = call
    result = portal.call(client.call_tool, tool, args)
    if result.is_error:
        message = result.content[0].text  # type: ignore[union-attr]
        assert "Traceback" not in message
        # A crash reads exactly "Error executing tool <name>"; an anticipated refusal says why.
        assert message.strip() != f"Error executing tool {tool}", (tool, args)
    else:
        assert result.structured_content is not None
    alive = portal.call(client.call_tool, "recall", {"query": "still serving"})
    assert not alive.is_error


# --- damaged environment -----------------------------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_directory_is_a_clear_error_at_start(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=1m") as directory:
        with pytest.raises(StoreError, match="not writable"):
            open_memory(Settings(db_path=directory / "memory.db"), embedder=HashEmbedder())
        out = subprocess.run(
            [sys.executable, "-m", "agentcache_mcp", "stats", "--db", str(directory / "memory.db")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0 and "not writable" in out.stderr and "Traceback" not in out.stderr


def test_existing_database_on_a_read_only_mount_is_refused_untouched(tmp_path: Path) -> None:
    directory = tmp_path / "data"
    directory.mkdir()
    engine = open_memory(Settings(db_path=directory / "memory.db"), embedder=HashEmbedder())
    engine.remember("kept safe", namespace="ns")
    engine.close()
    before = (directory / "memory.db").read_bytes()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(directory), str(directory)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only here ({done.stderr.decode().strip()}); needs root")
    try:
        with pytest.raises(StoreError):
            open_memory(Settings(db_path=directory / "memory.db"), embedder=HashEmbedder())
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
    assert (directory / "memory.db").read_bytes() == before


def test_corrupted_database_is_refused_at_server_start_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "memory.db"
    junk = os.urandom(8192)
    path.write_bytes(junk)
    out = subprocess.run(
        [sys.executable, "-m", "agentcache_mcp"],
        env={**os.environ, "AGENTCACHE_DB": str(path)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "left untouched" in out.stderr and "Traceback" not in out.stderr
    assert out.stdout == ""
    assert path.read_bytes() == junk


def test_full_database_refuses_the_write_and_keeps_what_was_stored(db_path: Path) -> None:
    engine = open_memory(Settings(db_path=db_path), embedder=HashEmbedder(), max_page_count=40)
    stored: list[str] = []
    try:
        with pytest.raises(StoreFullError, match="full"):
            for i in range(5000):
                stored.append(engine.remember(f"filling memory {i} " + "padding " * 40, namespace="ns").id)
        assert stored
        assert len(engine.backend.memories.get(None, stored)) == len(stored)
        assert engine.backend.db.integrity_check() == "ok"
        hits = engine.recall("filling memory 3", namespace="ns", limit=100)
        assert stored[3] in {h.id for h in hits}
    finally:
        engine.close()


def test_full_disk_is_a_clear_tool_error_and_nothing_is_lost(tmp_path: Path) -> None:
    # 512 KiB: the empty store (schema 3 with the OAuth tables) and its WAL take most of 256 KiB already
    with tmpfs(tmp_path / "small", "size=512k") as directory:
        db_path = directory / "memory.db"

        async def run() -> tuple[list[str], str]:
            ids: list[str] = []
            server = build_server(Settings(db_path=db_path, auto_forget_enabled=False), embedder=HashEmbedder())
            async with Client(server) as client:
                for i in range(10_000):
                    result = await client.call_tool("remember", {"text": f"disk filler {i} " + "lorem ipsum " * 60})
                    if result.is_error:
                        return ids, result.content[0].text  # type: ignore[union-attr]
                    ids.append(result.structured_content["id"])  # type: ignore[index]
                return ids, ""

        ids, message = anyio.run(run)
        assert ids and "full" in message
        db = sqlite3.connect(db_path)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            found = {r[0] for r in db.execute("SELECT id FROM memories")}
        finally:
            db.close()
        assert set(ids) <= found


# --- network -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_http_checks_host_and_origin_and_limits_body_size(db_path: Path) -> None:
    port = free_port()
    proc = start_server(db_path, port)
    url = f"http://127.0.0.1:{port}/mcp"
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    try:
        for extra, status in [({"Host": "evil.example:80"}, 403), ({"Origin": "http://evil.example"}, 403)]:
            request = urllib.request.Request(url, data=body, headers={**headers, **extra}, method="POST")
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(request, timeout=5)
            assert info.value.code == status
            info.value.close()
        # Declare a 2 MiB body and send none of it: the limit answers from the header alone, so the test does
        # not race the server closing the connection while a large body is still being written.
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.putrequest("POST", "/mcp")
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.putheader("Content-Length", str(2 * 2**20))
            conn.endheaders()
            assert conn.getresponse().status == 413
        finally:
            conn.close()
    finally:
        assert stop_server(proc) == 0


# --- load --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mixed_load_8_clients_60_s_has_no_errors(db_path: Path) -> None:
    port = free_port()
    proc = start_server(db_path, port)
    try:
        out = anyio.run(run_load, f"http://127.0.0.1:{port}/mcp", 8, 60.0)
    finally:
        assert stop_server(proc) == 0
    print(f"\nload: {json.dumps(out)}")
    assert out["errors"] == 0, out["first_errors"]
    assert out["recall_calls"] > out["remember_calls"] > 0
