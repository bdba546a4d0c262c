"""Background work, owned by one anyio task group: the origin daemon's worker threads, restructured.

- index sync: at start, check the keyword index and the vectors against the store and rebuild what is
  missing (the origin's verify_index_sync_on_boot / rebuild_index), then load the embedding model;
- embedding writer: a debounced, batched queue that embeds new memories after `remember` returned;
- access stats: recalls buffer them in memory; this loop writes them every few seconds;
- auto-forget: a first sweep shortly after start, then one every interval, with the store's maintenance after
  it; on one process of a store at a time (`StorageBackend.exclusive`: PostgreSQL replicas take turns). With
  auto-forget off, the maintenance alone runs on that schedule (its logs and expired rows must not grow forever);
- scheduled erase: where the store has a schedule (PostgreSQL, AGENTCACHE_PG_ERASE=daily), the rewrite that
  removes forgotten memories' bytes from its files, at its time of day (and shortly after a start that finds
  one missed), on one process of the store.

Shutdown (stdin EOF, SIGTERM, SIGINT) begins with `App.begin_shutdown`: waits for the store (a lock another
process holds, a connection to a server that is down) end STORE_GRACE_S later with StoreBusy, and a store call
still running ABANDON_AFTER_S after the shutdown began (a frozen server answers nothing) is abandoned, its caller
answered with StoreBusy. Then the loops are cancelled and - shielded and bounded - pending embeddings are
flushed, the buffered access stats written, the WAL checkpointed (TRUNCATE, so the -wal file is left empty) and
the store closed; if the store did not answer, those steps are skipped, since each would wait for it too.
Anything the bound cut off is still pending in the store and is picked up by the next start's sync check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import numpy as np
from anyio.abc import TaskStatus

from . import __version__
from .app import open_memory
from .config import Settings
from .embeddings import Embedder, EmbeddingModelError
from .memory.forgetting import AutoForgetReport
from .memory.ports import StoreBusy
from .memory.service import MemoryService

log = logging.getLogger(__name__)

T = TypeVar("T")

EMBED_DEBOUNCE_S = 0.05
EMBED_POLL_S = 30.0
"""Also look for pending rows this often: rows another process wrote and did not embed before it died."""
PROGRESS_LOG_S = 5.0
EMBED_WINDOW = 256
"""Memories the background writer takes at once: sorted by length and embedded 64 at a time, a wider window
pads less (memories arrive in random lengths); one write per window.
With 64 at a time, in the order remembered, a host's burst was embedded at 0.40-0.51 of the model's own
speed (bench/embed_pipeline.py; bench/RESULTS.md)."""
STORE_GRACE_S = 0.5
"""Once the shutdown began, a wait for the store (a lock, a connection) goes on this long at most: enough for
another process's transaction to commit, and well inside the hosts' 2 s."""
ERASE_RETRY_S = 600.0
"""A scheduled erase that failed (the store unreachable) is tried again this much later."""
ABANDON_AFTER_S = 0.8
"""A store call still running this long after the shutdown began is abandoned: the store did not answer (a frozen
server, a network that drops packets), and the process exits without it."""


@dataclass(eq=False)
class _StoreCall:
    scope: anyio.CancelScope
    started: float | None = None
    """When its thread began it (monotonic); None while it waits for a thread."""


@dataclass
class App:
    """What the MCP tools reach through the lifespan context."""

    settings: Settings
    memory: MemoryService
    embed_wakeup: anyio.Event = field(default_factory=anyio.Event)
    sweeps: int = 0
    maintenances: int = 0
    """Store maintenance runs of the loop that stands in for the sweep when auto-forget is off."""
    last_sweep: dict[str, Any] | None = None
    stopping_since: float | None = None
    """When the shutdown began (monotonic), or None."""
    store_stuck: bool = False
    """During the shutdown: a store call gave up waiting or was abandoned, so the store is not answering."""
    _calls: set[_StoreCall] = field(default_factory=set)
    _watchdog: Callable[[], None] | None = None

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run quick blocking work (a transaction) in a worker thread. A cancel waits for it, so a call in
        flight at shutdown still gets its answer; but once the shutdown began, a call the store holds up longer
        than ABANDON_AFTER_S is abandoned and fails with StoreBusy."""
        call = _StoreCall(anyio.CancelScope(shield=True))

        def work() -> T:
            call.started = time.monotonic()  # on its thread: a call waiting for a thread is not held up by the store
            return fn(*args, **kwargs)

        self._calls.add(call)
        try:
            with call.scope:
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except StoreBusy:
            if self.stopping_since is not None:
                self.store_stuck = True
            raise
        finally:
            self._calls.discard(call)
        # Reached only when the watchdog cancelled the call's own scope.
        self.store_stuck = True
        waited = time.monotonic() - (call.started or time.monotonic())
        raise StoreBusy(
            f"the store ({self.settings.store_location}) did not answer for {waited:.1f} s and the server is "
            "shutting down: this call was given up; it may or may not have taken effect"
        )

    def begin_shutdown(self) -> None:
        """The server is stopping (stdin EOF, a signal): waits for the model end at once, waits for the store
        end STORE_GRACE_S from now, and store calls it still holds are abandoned ABANDON_AFTER_S from now.
        Idempotent; on the event loop's thread."""
        if self.stopping_since is not None:
            return
        self.stopping_since = time.monotonic()
        self.memory.stopping.set()
        self.memory.backend.give_up_waits(STORE_GRACE_S)
        if self._watchdog is not None:
            self._watchdog()

    async def _abandon_stuck_calls(self, done: anyio.Event) -> None:
        """From the shutdown's start until its end: abandon each store call still running ABANDON_AFTER_S after
        the shutdown began (one started later: ABANDON_AFTER_S after it started)."""
        assert self.stopping_since is not None
        with anyio.CancelScope(shield=True):
            while not done.is_set():
                now = time.monotonic()
                for call in list(self._calls):
                    if call.started is not None and now >= max(self.stopping_since, call.started) + ABANDON_AFTER_S:
                        call.scope.cancel()
                with anyio.move_on_after(0.02):
                    await done.wait()

    async def run_abandonable(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run slow blocking work (loading the model, embedding, a sweep, loading vectors) in a worker thread
        that a cancel abandons, so shutdown never waits for it. Such work must leave the store consistent
        wherever it is cut off: each of its writes is one transaction."""
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs), abandon_on_cancel=True)

    def wake_embedder(self) -> None:
        self.embed_wakeup.set()

    # -- workers

    async def index_sync(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            report = await self.run_abandonable(self.memory.verify_index)
            log.info(
                "index sync: %d memories, %d vectors loaded, %d waiting for embeddings%s (%.2f s)",
                report.memories,
                report.vectors_loaded,
                report.pending_embeddings,
                ", keyword index rebuilt" if report.fts_rebuilt else "",
                report.seconds,
            )
        except Exception:
            log.exception("index sync check failed; recall uses what is loaded")

    async def model_loader(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the embedding model from the start, beside the index sync; a shutdown abandons the load."""
        task_status.started()
        started = time.monotonic()
        try:
            await self.run_abandonable(self.memory.embedder.load)
        except EmbeddingModelError as exc:
            log.error("%s -- recall continues by keyword only, and says so", exc)
            return
        log.info("embedding model ready %.1f s after start", time.monotonic() - started)
        self.wake_embedder()

    async def embedding_writer(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.memory.on_remember.append(self.wake_embedder_threadsafe)
        task_status.started()
        # Also poll once a claim lease has run out: a batch another replica claimed and died with is ours then.
        poll_s = min(EMBED_POLL_S, self.settings.embedding_lease_s)
        while True:
            with anyio.move_on_after(poll_s):
                await self.embed_wakeup.wait()
            self.embed_wakeup = anyio.Event()
            await anyio.sleep(EMBED_DEBOUNCE_S)  # let a burst of remembers form one batch
            if not self.memory.embedder.ready:
                continue
            try:
                await self._embed_backlog()
            except StoreBusy as exc:
                log.warning("embedding paused: %s", exc)
                await anyio.sleep(1.0)
            except Exception:
                log.exception("embedding batch failed; the rows stay pending and are retried")
                await anyio.sleep(1.0)

    async def embed_one_batch(self, after_key: int = 0, size: int | None = None) -> tuple[int, int]:
        """Embed the next pending batch (`size`, else the configured batch size) after after_key: (rows
        written, last key seen; 0 if none pending). The model runs abandonably (a shutdown does not wait for
        it); the write is one quick transaction."""
        batch = await self.run(self.memory.embedding_batch, after_key, size)
        if not batch:
            return 0, 0
        # Shortest first, one model batch at a time: sorted, each batch pads little; and a recall's query
        # embedding (same encoder thread) waits for one batch, never for the whole window.
        step = self.settings.embed_batch_size
        order = sorted(range(len(batch)), key=lambda i: len(batch[i][1]))
        parts = []
        for start in range(0, len(order), step):
            texts = [batch[i][1] for i in order[start : start + step]]
            parts.append(await self.run_abandonable(self.memory.embedder.embed, texts))
        vectors = np.empty_like(np.concatenate(parts))
        vectors[order] = np.concatenate(parts)
        written = await self.run(self.memory.store_embeddings, batch, vectors)
        return written, batch[-1][0]

    async def _embed_backlog(self) -> None:
        """Embed until nothing is pending; a large backlog (a rebuild) logs its progress every few seconds."""
        backlog = await self.run(self.memory.pending_embeddings)
        done = after = 0
        started = last_log = time.monotonic()
        while True:
            written, after = await self.embed_one_batch(after, EMBED_WINDOW)
            if not after:
                self.memory.mark_embeddings_caught_up()
                break
            done += written
            if time.monotonic() - last_log >= PROGRESS_LOG_S:
                last_log = time.monotonic()
                rate = done / (last_log - started)
                log.info("embedding: %d of %d done (%.0f/s)", done, max(backlog, done), rate)
        if done and time.monotonic() - started >= PROGRESS_LOG_S:
            log.info("embedding: %d memories embedded in %.1f s", done, time.monotonic() - started)

    def wake_embedder_threadsafe(self) -> None:
        # on_remember callbacks run in the worker thread that served remember.
        try:
            anyio.from_thread.run_sync(self.embed_wakeup.set)
        except RuntimeError:
            self.embed_wakeup.set()  # already on the event loop thread

    async def access_flush_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Write the access stats recalls buffered; the last interval's are written at shutdown."""
        task_status.started()
        while True:
            await anyio.sleep(self.settings.access_flush_interval_s)
            try:
                await self.run(self.memory.flush_accesses)
            except StoreBusy as exc:
                log.warning("access stats kept for the next flush: %s", exc)
            except Exception:
                log.exception("writing access stats failed; they are kept for the next flush")

    async def auto_forget_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await anyio.sleep(self.settings.auto_forget_first_delay_s)
        while True:
            await self.sweep()
            await anyio.sleep(self.settings.auto_forget_interval_s)

    async def maintenance_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """With auto-forget off, the store's upkeep still runs on the sweep's schedule
        (`StorageBackend.maintenance`: pruning the change logs other processes read, expired OAuth rows, the
        after-forget erase): without it those tables grow for as long as the store lives."""
        task_status.started()
        await anyio.sleep(self.settings.auto_forget_first_delay_s)
        while True:
            try:
                if await self.run_abandonable(self._maintain_alone):
                    self.maintenances += 1
            except Exception:
                log.exception("store maintenance failed; retrying next interval")
            await anyio.sleep(self.settings.auto_forget_interval_s)

    def _maintain_alone(self) -> bool:
        """The store's maintenance under the sweep's lock (one process of the store at a time); False if another
        process holds it (it is sweeping or maintaining)."""
        backend = self.memory.backend
        with backend.exclusive("auto-forget") as alone:
            if alone:
                backend.maintenance()
            return alone

    async def erase_loop(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the store's scheduled erase when due (`StorageBackend.scheduled_erase`); ends at once for a store
        without a schedule. A failure is logged and tried again ERASE_RETRY_S later."""
        task_status.started()
        await anyio.sleep(self.settings.auto_forget_first_delay_s)
        while True:
            try:
                next_at = await self.run_abandonable(self.memory.backend.scheduled_erase, time.time())
            except Exception:
                log.exception("scheduled erase failed; retrying in %.0f s", ERASE_RETRY_S)
                next_at = time.time() + ERASE_RETRY_S
            if next_at is None:
                return
            await anyio.sleep(max(1.0, next_at - time.time() + 1.0))  # a second past the time: it is due then

    async def sweep(self) -> None:
        """One auto-forget sweep; a failure is logged and the next interval tries again."""
        started = time.monotonic()
        try:
            report = await self.run_abandonable(self._sweep_alone)
        except Exception:
            log.exception("auto-forget sweep failed; retrying next interval")
            return
        if report is None:
            log.info("auto-forget sweep skipped: another process of this store is sweeping")
            return
        self.sweeps += 1
        self.last_sweep = {**report.counts, "seconds": round(time.monotonic() - started, 3)}
        log.info("auto-forget sweep: %s", self.last_sweep)

    def _sweep_alone(self) -> AutoForgetReport | None:
        """The sweep and the store's maintenance, on one process of the store at a time (replicas of one
        PostgreSQL database take turns); None if another process holds the sweep lock."""
        backend = self.memory.backend
        with backend.exclusive("auto-forget") as alone:
            if not alone:
                return None
            report = self.memory.auto_forget()
            backend.maintenance()
            return report

    # -- shutdown

    async def flush(self, progress: list[int]) -> bool:
        """Embed what is pending, batch by batch, until done (True) or cancelled; progress[0] counts the rows
        written so far (a cancel keeps the count)."""
        after = 0
        while True:
            n, after = await self.embed_one_batch(after)
            if not after:
                return True
            progress[0] += n


@asynccontextmanager
async def open_app(settings: Settings, *, embedder: Embedder | None = None) -> AsyncIterator[App]:
    """The composition root: open the store, start the workers, and shut all down in order."""
    memory = open_memory(settings, embedder=embedder)
    described = memory.backend.describe()
    log.info(
        "agentcache-mcp %s: %s store %s (schema %s); embedding model %s: %s, loading in the background",
        __version__,
        described.get("backend"),
        described.get("db_path"),
        described.get("schema_version"),
        memory.embedder.model_id,
        getattr(memory.embedder, "state", "ready" if memory.embedder.ready else "not loaded"),
    )
    app = App(settings, memory)
    shutdown_done = anyio.Event()
    async with anyio.create_task_group() as watch:  # the watchdog runs from begin_shutdown to the end of _shutdown

        def start_watchdog() -> None:
            watch.start_soon(app._abandon_stuck_calls, shutdown_done)

        app._watchdog = start_watchdog
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(app.model_loader)
                await tg.start(app.index_sync)
                await tg.start(app.embedding_writer)
                await tg.start(app.access_flush_loop)
                await tg.start(app.auto_forget_loop if settings.auto_forget_enabled else app.maintenance_loop)
                await tg.start(app.erase_loop)
                try:
                    yield app
                finally:
                    app.begin_shutdown()  # before the loops stop: a loop's store call may be what is stuck
                    tg.cancel_scope.cancel()
        finally:
            try:
                await _shutdown(app)
            finally:
                shutdown_done.set()


async def _shutdown(app: App) -> None:
    """Bounded: embed what fits before shutdown_flush_timeout_s (counted from the shutdown's start; the rest stays
    pending for the next start), then write the access stats, checkpoint the WAL and close. If the store did not
    answer (a call gave up waiting for it, or was abandoned), only close: each other step would wait for it too.
    Work still running in abandoned threads (a model load, an embedding batch, a sweep, a call to a frozen server)
    is not waited for; each of its writes is a transaction."""
    settings = app.settings
    with anyio.CancelScope(shield=True):
        app.begin_shutdown()
        assert app.stopping_since is not None
        progress = [0]
        started = time.monotonic()
        if app.store_stuck:
            pass
        elif not app.memory.embedder.ready:
            # Loading the model now would take longer than the bound; the next start does it.
            log.info("shutdown: the embedding model is not loaded; memories without a vector get one at the next start")
        else:
            try:
                done = False
                with anyio.move_on_after(app.stopping_since + settings.shutdown_flush_timeout_s - started):
                    done = await app.flush(progress)
                if done and progress[0]:
                    log.info("shutdown: embedded %d memories; none waits for a vector", progress[0])
                elif done:
                    log.info("shutdown: no memory waits for a vector")
                elif not app.store_stuck:
                    log.info(
                        "shutdown: embedded %d memories in %.1f s, the time allowed; any memory still without a "
                        "vector gets one at the next start",
                        progress[0],
                        time.monotonic() - started,
                    )
            except StoreBusy:
                pass  # the store is stuck: said below
            except Exception:
                log.exception("embedding at shutdown failed; the rows stay pending")
        stuck = app.store_stuck
        if stuck:
            log.warning(
                "shutdown: the store is not answering; embedding, access stats and the checkpoint are skipped "
                "(what was committed is stored; memories without a vector get one at the next start)"
            )
        try:
            # Abandonable: a transaction of an abandoned sweep (or another process's) may hold the store a
            # moment; the host's 2 s are not waited out for it. Committed data is safe either way.
            with anyio.move_on_after(settings.shutdown_close_timeout_s):
                await app.run_abandonable(app.memory.close, checkpoint=not stuck, write_accesses=not stuck)
        except Exception:
            log.exception("closing the store failed")
