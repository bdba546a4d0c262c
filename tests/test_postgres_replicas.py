"""Three real server processes (streamable HTTP) on one PostgreSQL database: stateless replicas.

A client bursts `remember` at replica A and A is killed with SIGKILL mid-burst. Every acknowledged memory is
then recallable from B and C, B and C finish the embeddings A left (its claimed-but-unfinished batches are
taken again once their lease runs out), and a paraphrased question on C finds, by meaning, a memory written
through A.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
from mcp import Client
from psycopg import sql

from conftest import free_port, wait_until_listening

pytestmark = [pytest.mark.slow, pytest.mark.model]

LEASE_S = 3
PARAPHRASED = "The quarterly budget review meeting was moved to Thursday afternoon"
QUESTION = "when is the finance planning session happening"


def start_replica(url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "AGENTCACHE_DB": url,
        "AUTO_FORGET_ENABLED": "false",
        "AGENTCACHE_EMBEDDING_LEASE_S": str(LEASE_S),
    }
    with log.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentcache_mcp", "serve", "--transport", "streamable-http", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    wait_until_listening(proc, port, "replica", log=log)
    return proc


async def stats(url: str) -> dict[str, Any]:
    async with Client(url) as client:
        result = await client.read_resource("agentcache://stats")
        return json.loads(result.contents[0].text)  # type: ignore[union-attr]


async def call(url: str, tool: str, **arguments: Any) -> dict[str, Any]:
    async with Client(url) as client:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result
        return result.structured_content  # type: ignore[return-value]


async def wait_until_models_ready(urls: list[str], timeout: float = 240) -> None:
    with anyio.fail_after(timeout):
        for url in urls:
            while not (await stats(url))["index"]["embedding_model_ready"]:
                await anyio.sleep(0.5)


def pending_and_claimed(db_url: str) -> tuple[int, int]:
    """(memories without a vector of the model, of which under a live claim)."""
    with psycopg.connect(db_url) as conn:
        [(table,)] = conn.execute("SELECT table_name FROM vector_models").fetchall()
        [(pending,)] = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM memories m WHERE NOT EXISTS (SELECT 1 FROM {} e WHERE e.memory_pk = m.pk)"
            ).format(sql.Identifier(table))
        ).fetchall()
        [(claimed,)] = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM embedding_claims c WHERE c.claimed_until > now() "
                "AND NOT EXISTS (SELECT 1 FROM {} e WHERE e.memory_pk = c.memory_pk)"
            ).format(sql.Identifier(table))
        ).fetchall()
    return int(pending), int(claimed)


def test_three_replicas_survive_a_sigkill_mid_burst(postgres_url: str, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    urls = [f"http://127.0.0.1:{p}/mcp" for p in ports]
    procs = [start_replica(postgres_url, p, tmp_path / f"replica-{n}.log") for n, p in zip("abc", ports, strict=True)]
    a, b, c = urls
    acknowledged: list[str] = []

    async def scenario() -> None:
        await wait_until_models_ready(urls)
        written_through_a = (await call(a, "remember", text=PARAPHRASED, namespace="team"))["id"]

        killed = anyio.Event()

        async def writer(worker: int) -> None:
            try:
                async with Client(a) as client:
                    for i in range(1000):
                        text = f"burst note {worker}-{i} on turbine blade inspection"
                        result = await client.call_tool("remember", {"text": text, "namespace": "team"})
                        assert not result.is_error, result
                        acknowledged.append(result.structured_content["id"])  # type: ignore[index]
            except Exception:
                if not killed.is_set():
                    raise  # a failure before A was killed is a real one
                # A died under this call: it was never acknowledged

        async with anyio.create_task_group() as tg:
            for worker in range(6):
                tg.start_soon(writer, worker)
            while len(acknowledged) < 150:
                await anyio.sleep(0.01)
            killed.set()
            procs[0].send_signal(signal.SIGKILL)  # mid-burst, calls in flight
            await anyio.to_thread.run_sync(lambda: procs[0].wait(timeout=30))

        pending, claimed = pending_and_claimed(postgres_url)
        print(f"at A's death: {len(acknowledged)} acknowledged, {pending} without a vector, {claimed} under a claim")

        # Every acknowledged memory is recallable from both survivors (by keyword at once).
        for survivor in (b, c):
            found = await call(
                survivor, "recall", query="burst note turbine blade inspection", namespace="team", limit=100
            )
            assert found["results"]
            async with Client(survivor) as client:
                for memory_id in [written_through_a, *acknowledged]:
                    res = await client.read_resource(f"agentcache://memory/{memory_id}")
                    assert memory_id in res.contents[0].text  # type: ignore[union-attr]

        # B and C finish A's embeddings, also the batches A had claimed when it died.
        with anyio.fail_after(120):
            while pending_and_claimed(postgres_url)[0]:
                await anyio.sleep(0.5)

        # A paraphrase on C finds, by meaning, what was written through A.
        outcome = await call(c, "recall", query=QUESTION, namespace="team", limit=5)
        assert outcome["retrieval"] == "hybrid"
        assert [h["id"] for h in outcome["results"]][:1] == [written_through_a]

    try:
        anyio.run(scenario)
        for proc, name in zip(procs[1:], "bc", strict=True):  # SIGTERM: drain, close the pool, exit 0 in 2 s
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(timeout=30) == 0, (tmp_path / f"replica-{name}.log").read_text()[-3000:]
            assert time.monotonic() - started < 2.0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert len(acknowledged) >= 150
