"""The background jobs under one task group: embedding writer, start-up sync, auto-forget loop, shutdown."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.workers import open_app

from conftest import HashEmbedder

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError
        await anyio.sleep(0.02)


async def test_embedding_writer_embeds_after_remember_returns(db_path: Path) -> None:
    async with open_app(Settings(db_path=db_path, auto_forget_enabled=False), embedder=HashEmbedder()) as app:
        await app.run(app.memory.remember, "embedded in the background", "ns")
        await wait_for(lambda: app.memory.pending_embeddings() == 0)
        assert app.memory.backend.vectors is not None and len(app.memory.backend.vectors) == 1


async def test_start_up_sync_embeds_what_a_previous_run_left_pending(db_path: Path) -> None:
    engine = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    for i in range(10):
        engine.remember(f"left pending {i}", namespace="ns")
    engine.close()
    async with open_app(Settings(db_path=db_path, auto_forget_enabled=False), embedder=HashEmbedder()) as app:
        await wait_for(lambda: app.memory.pending_embeddings() == 0)
        assert app.memory.backend.vectors is not None and len(app.memory.backend.vectors) == 10


async def test_shutdown_flushes_pending_embeddings_and_truncates_wal(db_path: Path) -> None:
    settings = Settings(db_path=db_path, auto_forget_enabled=False)
    async with open_app(settings, embedder=HashEmbedder()) as app:
        for i in range(50):
            app.memory.remember(f"burst {i}", namespace="ns")  # on the loop thread: no wake-up reaches the writer
    engine = open_memory(settings, embedder=HashEmbedder())
    try:
        assert engine.pending_embeddings() == 0
    finally:
        engine.close()
    wal = Path(f"{db_path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


async def test_auto_forget_loop_sweeps_and_survives_a_failing_sweep(db_path: Path) -> None:
    settings = Settings(db_path=db_path, auto_forget_interval_s=0.05, auto_forget_first_delay_s=0)
    async with open_app(settings, embedder=HashEmbedder()) as app:
        calls = {"n": 0}
        real = app.memory.auto_forget

        def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("disk hiccup")
            return real(*args, **kwargs)

        app.memory.auto_forget = flaky  # type: ignore[method-assign]
        r = await app.run(app.memory.remember, "expires quickly", "ns", None, 0.5, 0.000001)
        await wait_for(lambda: app.sweeps >= 2)
        assert calls["n"] >= 3  # the failure was logged, and the loop kept going
        await wait_for(lambda: app.memory.backend.memories.get(None, [r.id]) == [])
        assert app.last_sweep is not None and "expired" in app.last_sweep


async def test_auto_forget_can_be_disabled(db_path: Path) -> None:
    settings = Settings(
        db_path=db_path, auto_forget_enabled=False, auto_forget_interval_s=0.01, auto_forget_first_delay_s=0
    )
    async with open_app(settings, embedder=HashEmbedder()) as app:
        r = await app.run(app.memory.remember, "expires quickly", "ns", None, 0.5, 0.000001)
        await anyio.sleep(0.2)
        assert app.sweeps == 0 and app.memory.backend.memories.get(None, [r.id]) != []  # nothing forgotten


async def test_with_auto_forget_off_the_store_is_still_maintained(db_path: Path) -> None:
    """The change log other processes read and the OAuth tables are pruned by the store's maintenance, which
    the sweep runs; with the sweep off, a loop of its own runs it on the same schedule, and survives a failure."""
    settings = Settings(
        db_path=db_path, auto_forget_enabled=False, auto_forget_interval_s=0.02, auto_forget_first_delay_s=0
    )
    async with open_app(settings, embedder=HashEmbedder()) as app:
        calls = {"n": 0}
        real = app.memory.backend.maintenance

        def flaky() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("disk hiccup")
            real()

        app.memory.backend.maintenance = flaky  # type: ignore[method-assign]
        await wait_for(lambda: app.maintenances >= 2)
        assert calls["n"] >= 3 and app.sweeps == 0


async def test_a_window_embedded_shortest_first_stores_each_memory_its_own_vector(db_path: Path) -> None:
    settings = Settings(db_path=db_path, auto_forget_enabled=False, embed_batch_size=4)
    texts = [("word " * (1 + (i * 7) % 11)) + f"item{i}" for i in range(10)]  # lengths out of order
    async with open_app(settings, embedder=HashEmbedder()) as app:
        for text in texts:
            await app.run(app.memory.remember, text, "ns")
        await wait_for(lambda: app.memory.pending_embeddings() == 0)
        keys, stored = app.memory.backend.vectors.vectors("ns")
        by_key = {m.key: m.text for m in app.memory.backend.memories.get_by_keys("ns", keys.tolist()).values()}
        expected = HashEmbedder().embed([by_key[int(k)] for k in keys])
        assert len(keys) == 10 and abs(stored - expected).max() < 1e-3  # float16 copy
