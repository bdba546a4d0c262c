"""The web UI in a real browser: Debian's chromium, headless, driven by selenium through the system
chromedriver (nothing is downloaded). The server is the real composition (MCP at /mcp and the UI at /ui
behind the guards, cli._http_server) over a test store; the paraphrase test runs `agentcache-mcp ui` as a
subprocess with the bundled model.

Without chromium these tests are skipped on a developer's machine and fail in CI (CI=true): .ci/run
installs it.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.fusion import FusionParams

from conftest import HashEmbedder, free_port, wait_until_listening
from ui_support import XSS_TEXTS, UiServer, chromium, chromium_missing, seed

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TOKEN = "browser-test-token-7"


def _require_chromium() -> None:
    missing = chromium_missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests need chromium in CI: {missing}")
    pytest.skip(missing)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    with chromium() as driver:
        yield driver


@pytest.fixture
def server(tmp_path: Path, browser: Any) -> Iterator[tuple[UiServer, dict[str, str]]]:
    browser.delete_all_cookies()
    with UiServer(Settings(db_path=tmp_path / "memory.db", auto_forget_enabled=False), HashEmbedder()) as running:
        ids = seed(running.memory)
        for text in XSS_TEXTS:
            ids[text] = running.memory.remember(text, namespace="work", tags=["<b>x</b>"]).id
        running.memory.embed_pending()
        yield running, ids


def find(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def find_all(driver: Any, css: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def click_and_wait(driver: Any, css: str) -> None:
    """Click something that loads a new page, and wait until it has."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    old = find(driver, "html")
    find(driver, css).click()

    def replaced(_: Any) -> bool:
        # selenium's staleness_of, plus chromedriver's other answer for an element of a page being replaced
        # at that moment ("Node with given id does not belong to the document"; failed one CI run).
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(driver, 30).until(replaced)


def no_script_ran(driver: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    assert driver.execute_script("return typeof window.__pwned") == "undefined"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - reading it is the check


def call_tool(base: str, name: str, arguments: dict[str, Any]) -> Any:
    async def run() -> Any:
        async with Client(f"{base}/mcp") as client:
            result = await client.call_tool(name, arguments)
            assert not result.is_error, result
            return result.structured_content

    return anyio.run(run)


# --- pages render with data --------------------------------------------------------------------------------


def test_every_page_renders_with_data(server: tuple[UiServer, dict[str, str]], browser: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    running, ids = server
    browser.get(f"{running.base}/ui/")
    assert browser.title == "Namespaces · agentcache"
    rows = {r.find_elements("css selector", "td")[0].text: r for r in find_all(browser, "table.grid tbody tr")}
    assert set(rows) == {"home", "research", "work"}
    rows["work"].find_element("link text", "browse").click()
    WebDriverWait(browser, 30).until(lambda d: d.current_url.endswith("/ui/ns/work"))
    assert browser.current_url.endswith("/ui/ns/work")
    texts = [c.text for c in find_all(browser, "td.text")]
    assert texts[0].startswith('"><svg onload') and any("staging database" in t for t in texts)

    find(browser, "form.filter input[name=tag]").send_keys("infra")
    click_and_wait(browser, "form.filter button")
    assert [c.text for c in find_all(browser, "td.text")] == [
        "Feature flags live in LaunchDarkly; the kill switch for search is search-v2-off.",
        "The staging database runs on port 5433, not the default 5432.",
    ]

    click_and_wait(browser, "td.text a")
    assert "Feature flags live in LaunchDarkly" in find(browser, "#memory-text").text
    assert len(find_all(browser, "ol.timeline li")) >= 3

    browser.get(f"{running.base}/ui/memory/{ids['correction']}")
    assert "The team offsite is in Porto in March." in find(browser, "dl.fields").text

    browser.get(f"{running.base}/ui/stats")
    assert find(browser, "#pending").text == "0"
    browser.get(f"{running.base}/ui/chart?days=30")
    bars = find_all(browser, "svg#chart rect")
    assert len(bars) == len(running.memory.created_per_day(30))
    assert "work" in find(browser, "figcaption").text
    # the stylesheet came from the server and applied (nothing was fetched from anywhere else)
    assert browser.execute_script("return getComputedStyle(document.querySelector('main')).maxWidth") != "none"


def test_search_form_is_a_linkable_get(server: tuple[UiServer, dict[str, str]], browser: Any) -> None:
    running, ids = server
    browser.get(f"{running.base}/ui/")
    from selenium.webdriver.support.ui import Select

    Select(find(browser, "form.search select")).select_by_visible_text("work")
    find(browser, "form.search input[name=q]").send_keys("which port does the staging database use")
    click_and_wait(browser, "form.search button")
    assert "/ui/?namespace=work&q=which+port+does+the+staging+database+use" in browser.current_url
    first = find(browser, "table.grid tbody tr td.text a")
    assert first.get_attribute("href").endswith(f"/ui/memory/{ids['work0']}")
    assert "retrieval: hybrid" in find(browser, "p.lede").text
    browser.get(browser.current_url)  # the link itself brings the same results back
    assert find(browser, "table.grid tbody tr td.text a").get_attribute("href").endswith(ids["work0"])


# --- untrusted text stays text -------------------------------------------------------------------------------


def test_memory_text_with_markup_renders_as_inert_text(server: tuple[UiServer, dict[str, str]], browser: Any) -> None:
    running, ids = server
    for text in XSS_TEXTS:
        browser.get(f"{running.base}/ui/memory/{ids[text]}")
        assert find(browser, "#memory-text").text == text  # shown as written
        assert find_all(browser, "main img, main script, main svg[onload]") == []  # and not parsed as markup
        no_script_ran(browser)
        assert find(browser, "dl.fields .tag").text == "<b>x</b>"
    for path in ("/ui/ns/work", "/ui/?namespace=work&q=pwned+window+script", f"/ui/memory/{ids[XSS_TEXTS[0]]}/forget"):
        browser.get(running.base + path)
        assert "<img src=x" in find(browser, "main").text
        assert find_all(browser, "main img, main script") == []
        no_script_ran(browser)


# --- editing and forgetting change what the tools return -----------------------------------------------------


def test_editing_and_forgetting_in_the_ui_change_what_the_tools_return(
    server: tuple[UiServer, dict[str, str]], browser: Any
) -> None:
    running, ids = server
    memory_id = ids["editor"]
    query = {"query": "Alice code editor", "namespace": "home"}
    assert call_tool(running.base, "recall", {**query, "tags": ["editors"]})["results"] == []

    browser.get(f"{running.base}/ui/memory/{memory_id}")
    tags = find(browser, "textarea[name=tags]")
    tags.clear()
    tags.send_keys("tools\neditors")
    importance = find(browser, "input[name=importance]")
    importance.clear()
    importance.send_keys("0.95")
    find(browser, "#expiry-days").click()
    find(browser, "input[name=ttl_days]").send_keys("10")
    click_and_wait(browser, "#edit-form button")
    assert find(browser, "p.flash").text == "Saved."
    assert find(browser, "#importance").text == "0.95"

    [hit] = call_tool(running.base, "recall", {**query, "tags": ["editors"]})["results"]
    assert hit["id"] == memory_id and hit["tags"] == ["tools", "editors"] and hit["importance"] == 0.95
    assert hit["expires_at"] is not None

    click_and_wait(browser, "#forget-link")
    assert find(browser, "h1").text == "Forget this memory?"
    assert any(h["id"] == memory_id for h in call_tool(running.base, "recall", query)["results"])  # not yet
    click_and_wait(browser, "#confirm-forget")
    assert browser.current_url.endswith("/ui/ns/home?done=forgotten")
    assert all(h["id"] != memory_id for h in call_tool(running.base, "recall", query)["results"])
    assert call_tool(running.base, "forget", {"ids": [memory_id], "namespace": "home"})["not_found"] == [memory_id]


# --- cross-site requests, foreign hosts, the token login -----------------------------------------------------


class _EvilSite:
    """Another site on loopback (another port: same host, so the browser sends the UI's SameSite cookie to it
    all the same), serving a form that posts to the UI."""

    def __init__(self, html: str):
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        Handler.timeout = 5  # a connection chromium opens ahead and never uses must not hold the server
        # Threaded, without joining: a single-threaded server blocked reading such a connection never got
        # back to its shutdown check (the test hung in close() once, under load).
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_cross_site_post_is_refused(server: tuple[UiServer, dict[str, str]], browser: Any) -> None:
    running, ids = server
    memory_id = ids["work1"]
    browser.get(f"{running.base}/ui/memory/{memory_id}")  # the person has the UI open: a session exists
    stolen = find(browser, "#edit-form input[name=csrf]").get_attribute("value")  # worst case: even if leaked
    for csrf in ("", stolen):
        evil = _EvilSite(
            f'<form method="post" action="{running.base}/ui/memory/{memory_id}/forget">'
            f'<input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="namespace" value="work">'
            '<button id="go">win a prize</button></form>'
        )
        try:
            browser.get(evil.url)
            click_and_wait(browser, "#go")
            assert "cross-site request" in find(browser, "body").text
        finally:
            evil.close()
        assert running.memory.get(memory_id) is not None
    browser.get(f"{running.base}/ui/memory/{memory_id}/forget")
    click_and_wait(browser, "#confirm-forget")  # from the UI itself the same post works
    assert running.memory.get(memory_id) is None


def test_another_site_can_link_to_a_search_but_not_run_one_in_the_background(
    server: tuple[UiServer, dict[str, str]], browser: Any, caplog: pytest.LogCaptureFixture
) -> None:
    running, _ = server
    search = f"{running.base}/ui/?namespace=work&q=staging+database+port"
    evil = _EvilSite(f'<img src="{search}&via=img" alt=""><a id="go" href="{search}&via=link">a search</a>')
    try:
        with caplog.at_level("WARNING", logger="agentcache_mcp"):
            browser.get(evil.url)
            deadline = time.monotonic() + 10
            while "refused GET /ui/" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "refused GET /ui/" in caplog.text and "Sec-Fetch-Site" in caplog.text  # the <img> ran nothing
        click_and_wait(browser, "#go")  # a link is a top-level navigation: it opens
        assert "The staging database runs on port 5433" in find(browser, "main").text
    finally:
        evil.close()


def test_another_site_cannot_run_a_search_in_a_hidden_frame(
    server: tuple[UiServer, dict[str, str]], browser: Any, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    running, _ = server
    searches: list[Any] = []
    recall = running.memory.recall_outcome
    monkeypatch.setattr(running.memory, "recall_outcome", lambda *a, **k: searches.append(a) or recall(*a, **k))
    search = f"{running.base}/ui/?namespace=work&q=staging+database+port"
    evil = _EvilSite(f'<iframe src="{search}&via=iframe" width="1" height="1" style="opacity:0"></iframe>')
    try:
        with caplog.at_level("WARNING", logger="agentcache_mcp"):
            browser.get(evil.url)
            deadline = time.monotonic() + 10
            while "'iframe'" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "refused GET /ui/" in caplog.text and "Sec-Fetch-Dest 'iframe'" in caplog.text
        assert searches == []  # refused before the search ran, not only hidden by frame-ancestors
    finally:
        evil.close()


def test_a_foreign_host_is_refused(server: tuple[UiServer, dict[str, str]]) -> None:
    running, _ = server
    # DNS rebinding: a name the attacker controls now resolves to 127.0.0.1
    with chromium("--host-resolver-rules=MAP rebind.example 127.0.0.1") as driver:
        driver.get(f"http://rebind.example:{running.port}/ui/")
        body = find(driver, "body").text
        assert "Host header not allowed" in body and "Namespaces" not in body
        driver.get(f"http://127.0.0.1:{running.port}/ui/")
        assert driver.title == "Namespaces · agentcache"


def test_with_a_token_no_page_is_reachable_without_logging_in(tmp_path: Path, browser: Any) -> None:
    browser.delete_all_cookies()
    settings = Settings(db_path=tmp_path / "memory.db", auto_forget_enabled=False, auth_token=TOKEN)
    with UiServer(settings, HashEmbedder()) as running:
        ids = seed(running.memory)
        pages = [
            "/ui/",
            "/ui/ns/work",
            f"/ui/memory/{ids['work0']}",
            "/ui/stats",
            "/ui/chart",
            "/ui/?namespace=work&q=port",
        ]
        for path in pages:
            browser.get(running.base + path)
            assert "/ui/login?next=" in browser.current_url and find(browser, "h1").text == "Log in"
            assert "staging" not in find(browser, "body").text
        browser.get(running.base + "/ui/stats")
        find(browser, "#token").send_keys("not-it")
        click_and_wait(browser, "section.login button")
        assert find(browser, "p.error").text == "That is not the token."
        find(browser, "#token").send_keys(TOKEN)
        click_and_wait(browser, "section.login button")
        assert browser.current_url == running.base + "/ui/stats"
        assert TOKEN not in browser.current_url
        [cookie] = browser.get_cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert TOKEN not in cookie["value"]
        for path in pages:
            browser.get(running.base + path)
            assert "/login" not in browser.current_url
        click_and_wait(browser, "header nav button")  # log out
        browser.get(running.base + "/ui/")
        assert "/ui/login" in browser.current_url


# --- `agentcache-mcp ui` with the real model: search by meaning ---------------------------------------------


@pytest.mark.model
def test_ui_command_search_finds_a_memory_by_a_paraphrase(tmp_path: Path) -> None:
    _require_chromium()
    db = tmp_path / "memory.db"
    seeding = open_memory(Settings(db_path=db), embedder=HashEmbedder())
    ids = seed(seeding)
    query = "when does the heating get its yearly check-up"
    keyword_only = seeding.recall(query, "home", fusion=FusionParams(method="keyword"))
    assert ids["home1"] not in [h.id for h in keyword_only]  # no shared word: only meaning can find it
    seeding.close()

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcache_mcp", "ui", "--port", str(port), "--db", str(db)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # a search waits for the model (3 s by default, then by keyword): this one is about meaning
        env={**os.environ, "AGENTCACHE_MODEL_WAIT_S": "120"},
    )
    try:
        wait_until_listening(proc, port, "agentcache-mcp ui")
        with chromium() as driver:
            driver.set_page_load_timeout(120)  # the first search waits for the model to load
            driver.get(f"http://127.0.0.1:{port}/")
            assert driver.current_url == f"http://127.0.0.1:{port}/ui/"
            driver.get(f"http://127.0.0.1:{port}/ui/?namespace=home&q={query.replace(' ', '+')}")
            assert "retrieval: hybrid" in find(driver, "p.lede").text
            first = find(driver, "table.grid tbody tr td.text a")
            assert first.get_attribute("href").endswith(f"/ui/memory/{ids['home1']}")
            assert "boiler" in first.text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            if proc.stderr is not None:
                proc.stderr.close()


def test_at_400_px_the_search_box_and_its_button_fit(server: tuple[UiServer, dict[str, str]], browser: Any) -> None:
    running, ids = server
    shots = Path(os.environ.get("UI_SCREENSHOTS", running.settings.db_path.parent))
    browser.set_window_size(400, 900)
    try:
        for path in ("/ui/", f"/ui/memory/{ids['correction']}", "/ui/?namespace=work&q=staging+port"):
            browser.get(running.base + path)
            width = browser.execute_script("return document.documentElement.clientWidth")
            for css in ("form.search button", "form.search select", "form.search input[type=search]"):
                box = browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", find(browser, css))
                assert box["left"] >= 0 and box["right"] <= width, (path, css, box, width)
            assert browser.execute_script("return document.documentElement.scrollWidth") <= width, path
        browser.save_screenshot(str(shots / "ui-400px.png"))
    finally:
        browser.set_window_size(1280, 900)
