"""For the web UI's tests: the real HTTP server (serving.http_server: MCP at /mcp, the UI at /ui, behind the
guards) run in a thread over a test store, some memories to look at, and a headless system chromium."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

from agentcache_mcp import serving
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import Embedder
from agentcache_mcp.memory.model import DAY, NewMemory, content_hash, new_id
from agentcache_mcp.memory.service import MemoryService, merge_remembered
from agentcache_mcp.server import build_server
from agentcache_mcp.workers import App, open_app

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
XSS_TEXTS = (
    '<img src=x onerror="window.__pwned = 1">',
    "<script>window.__pwned = 2</script> a note with a script tag",
    '"><svg onload="window.__pwned = 3"> attribute breakout',
)


class UiServer:
    """The composed HTTP server (`serve --transport streamable-http` or `sse`: MCP, the UI, behind the guards) on a
    free loopback port, served from a thread over a test store. Its socket is bound first, so the settings carry
    the real port (a public URL built from it, as the OAuth tests need) before the app is built."""

    def __init__(self, settings: Settings, embedder: Embedder | None, transport: str = "streamable-http"):
        self.transport = transport
        self.endpoint = "/sse" if transport == "sse" else "/mcp"
        self.sock = serving.listen("127.0.0.1", 0)[0]
        self.port = self.sock.getsockname()[1]
        self.settings = settings.model_copy(update={"port": self.port})
        self.embedder = embedder
        self.app: App | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def memory(self) -> MemoryService:
        assert self.app is not None
        return self.app.memory

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as exc:  # reported to the test thread by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        async with open_app(self.settings, embedder=self.embedder) as app:
            self.app = app
            server = build_server(self.settings, app=app)
            uv = serving.http_server(server, self.settings, self.transport, app=app, port=self.port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: uv.serve(sockets=[self.sock]))
                while not uv.started:
                    await anyio.sleep(0.01)
                self._ready.set()
                while not self._stop.is_set():
                    await anyio.sleep(0.05)
                uv.should_exit = True

    def __enter__(self) -> UiServer:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the test server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.sock.close()


def put(memory: MemoryService, namespace: str, text: str, created_at: float, **fields: Any) -> str:
    """A memory with a chosen creation time (for the chart), through the repository port."""
    new = NewMemory(
        new_id(),
        namespace,
        text,
        content_hash(text),
        fields.get("tags", []),
        fields.get("importance", 0.5),
        fields.get("metadata", {}),
        created_at,
        fields.get("expires_at"),
    )
    return memory.backend.memories.remember(new, merge_remembered)[0].id


def seed(memory: MemoryService, now: float | None = None) -> dict[str, str]:
    """A small store to look at: three namespaces over two weeks, tags, a correction, metadata, an expiry.
    Returns the ids of the memories tests refer to by name."""
    now = time.time() if now is None else now
    ids: dict[str, str] = {}
    work = [
        ("The staging database runs on port 5433, not the default 5432.", ["infra", "database"]),
        ("Deploys happen on Tuesdays and Thursdays after the 10:00 stand-up.", ["process"]),
        ("The billing service is written in Go and owned by the payments team.", ["services"]),
        ("Alice prefers reviews in the morning; she works from Lisbon (UTC+0).", ["people"]),
        ("Feature flags live in LaunchDarkly; the kill switch for search is search-v2-off.", ["infra"]),
        ("The quarterly report is due on the 5th working day of each quarter.", ["process", "reports"]),
    ]
    for n, (text, tags) in enumerate(work):
        ids[f"work{n}"] = put(memory, "work", text, now - (13 - 2 * n) * DAY - 3600 * n, tags=tags)
    home = [
        "Alice's favourite code editor is Neovim, with a light colour scheme.",
        "The boiler is serviced every October by Hendrik (phone in the green notebook).",
        "Bob is allergic to peanuts; bring the other snacks to the party.",
        "The car's MOT is due in May; the garage on Mill Road is cheapest.",
        "Book club meets on the first Wednesday of the month at the library.",
    ]
    for n, text in enumerate(home):
        ids[f"home{n}"] = put(memory, "home", text, now - (10 - 2 * n) * DAY - 1800 * n, tags=["home"])
    for n in range(9):
        put(
            memory,
            "research",
            f"Paper note {n}: retrieval fusion baseline variant {n} scored R@10 0.{60 + n}.",
            now - (n % 5) * DAY - 60 * n,
            tags=["papers"],
            importance=0.3,
        )
    old = memory.remember("The team offsite is in Porto in March.", namespace="work", tags=["events"]).id
    ids["corrected"] = old
    ids["correction"] = memory.remember(
        "The team offsite moved to Lisbon, still in March.",
        namespace="work",
        tags=["events"],
        importance=0.8,
        metadata={"source": "email from Carol", "confidence": 0.9},
        supersedes=[old],
    ).id
    ids["expiring"] = memory.remember(
        "Temporary: the office wifi password this week is harbour-7.", namespace="work", ttl_days=7
    ).id
    ids["editor"] = ids["home0"]
    return ids


def chromium_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is not installed (apt-get install -y chromium chromium-driver)"
    return None


@contextmanager
def chromium(*extra_flags: str) -> Iterator[Any]:
    """A headless system chromium driven by the system chromedriver; Selenium Manager is never asked to
    download anything (both paths are given), and chromium is kept off the network it cannot reach."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="agentcache-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
        *extra_flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
