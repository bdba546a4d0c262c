"""The web UI without a browser: pages, the service rules behind its forms, and its security rules, through
the same guarded ASGI app the HTTP transports serve (serving.http_server), with starlette's TestClient."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import anyio
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.testclient import TestClient

from agentcache_mcp import cli, serving
from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.model import DAY, NewMemory, content_hash
from agentcache_mcp.memory.service import merge_remembered
from agentcache_mcp.server import build_server
from agentcache_mcp.ui.chart import OTHER, SERIES_SHOWN, build_chart, day_range
from agentcache_mcp.workers import App

from conftest import HashEmbedder
from ui_support import XSS_TEXTS, seed

TOKEN = "s3cret-ui-token"
BASE = "http://127.0.0.1:8765"


class Ui:
    def __init__(self, app: App, client: TestClient, ids: dict[str, str]):
        self.app = app
        self.client = client
        self.ids = ids

    @property
    def memory(self) -> Any:
        return self.app.memory

    def csrf(self, **headers: str) -> str:
        page = self.client.get(f"/ui/memory/{self.ids['home1']}", headers=headers)  # a page with a form
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, page.text[:500]
        return found.group(1)

    def post(self, path: str, data: dict[str, Any], **headers: str) -> Any:
        return self.client.post(path, data=data, headers={"Origin": BASE, **headers}, follow_redirects=False)


def _ui(tmp_path: Path, transport: str = "streamable-http", **settings: Any) -> Iterator[Ui]:
    config = Settings(db_path=tmp_path / "memory.db", auto_forget_enabled=False, **settings)
    memory = open_memory(config, embedder=HashEmbedder())
    app = App(config, memory)
    ids = seed(memory)
    for text in XSS_TEXTS:
        ids[text] = memory.remember(text, namespace="work", tags=["<b>x</b>"]).id
    memory.embed_pending()
    memory.load_vectors()
    asgi = serving.http_server(build_server(config, app=app), config, transport, app=app).config.app
    try:
        with TestClient(asgi, base_url=BASE) as client:
            yield Ui(app, client, ids)
    finally:
        memory.close()


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[Ui]:
    yield from _ui(tmp_path)


@pytest.fixture
def ui_token(tmp_path: Path) -> Iterator[Ui]:
    yield from _ui(tmp_path, auth_token=TOKEN)


# --- the pages ---------------------------------------------------------------------------------------------


def test_home_lists_namespaces_with_counts(ui: Ui) -> None:
    page = ui.client.get("/ui/")
    assert page.status_code == 200
    counts = ui.memory.backend.memories.counts_by_namespace()
    for namespace, n in counts.items():
        assert re.search(
            rf'href="/ui/ns/{namespace}"><bdi>{namespace}</bdi></a></td>\s*<td class="num">{n}</td>', page.text
        )


def test_namespace_page_is_newest_first_filtered_by_tag_and_paginated(ui: Ui) -> None:
    page = ui.client.get("/ui/ns/work", params={"tag": "infra"}).text
    assert page.index("Feature flags live in LaunchDarkly") < page.index("The staging database runs on port 5433")
    assert "billing service" not in page
    for n in range(60):
        ui.memory.remember(f"bulk note number {n}", namespace="bulk")
    first = ui.client.get("/ui/ns/bulk").text
    assert "bulk note number 59<" in first and "bulk note number 10<" in first and "bulk note number 9<" not in first
    older = re.search(r'href="(/ui/ns/bulk\?older_than=[^"]+)" rel="next">older', first)
    assert older, "a full page links to the older memories"
    second = ui.client.get(older.group(1).replace("&amp;", "&")).text
    assert "bulk note number 9<" in second and "bulk note number 0<" in second and "bulk note number 10<" not in second
    assert "older »" not in second


def test_a_tag_filter_never_gives_the_namespace_count_as_the_count_with_the_tag(ui: Ui) -> None:
    for n in range(30):
        ui.memory.remember(f"untagged note number {n}", namespace="work")
    total = ui.memory.backend.memories.counts_by_namespace()["work"]
    page = ui.client.get("/ui/ns/work", params={"tag": "infra"}).text
    lede = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", re.search(r'<p class="lede">(.*?)</p>', page, re.S).group(1)))
    assert not re.search(rf"\b{total} memories, newest first, with tag", lede), lede
    assert lede == f"The memories with tag infra (clear), newest first, of the {total} memories in this namespace."
    unfiltered = ui.client.get("/ui/ns/work").text
    assert f'<p class="lede">{total} memories, newest first.</p>' in unfiltered


def test_searching_an_empty_namespace_selects_it_and_says_keyword_only_as_the_cli_does(ui: Ui) -> None:
    page = ui.client.get("/ui/", params={"namespace": "nothing-here", "q": "staging database"}).text
    assert '<option value="nothing-here" selected>nothing-here (empty)</option>' in page
    assert len(re.findall(r"<option [^>]*selected", page)) == 1  # not another namespace shown as the one searched
    assert "retrieval: keyword only" in page and "hybrid" not in page
    assert "namespace &#39;nothing-here&#39; has no memories" in page  # the CLI's words (recall --json's note)
    assert "This namespace has no memories." in page
    browse = ui.client.get("/ui/ns/nothing-here").text
    assert '<option value="nothing-here" selected>nothing-here (empty)</option>' in browse


def follow(ui: Ui, page: str, rel: str) -> str:
    """The page the "bulk" namespace page's rel="next" (older) or rel="prev" (newer) link leads to."""
    link = re.search(rf'href="(/ui/ns/bulk\?[^"]+)" rel="{rel}"', page)
    assert link, f"no {rel} link"
    return ui.client.get(link.group(1).replace("&amp;", "&")).text


def bulk_notes(page: str) -> list[int]:
    """The numbers of the "bulk note number N" memories a page lists, in its order."""
    return [int(n) for n in re.findall(r"<bdi>bulk note number (\d+)<", page)]


def test_a_newer_link_pages_back_toward_the_newest_memories(ui: Ui) -> None:
    for n in range(120):
        ui.memory.remember(f"bulk note number {n}", namespace="bulk")

    first = ui.client.get("/ui/ns/bulk").text
    assert 'rel="prev"' not in first  # the newest page has nothing newer
    second = follow(ui, first, "next")
    third = follow(ui, second, "next")
    assert bulk_notes(third) == list(range(19, -1, -1)) and 'rel="next"' not in third
    back = follow(ui, third, "prev")
    assert bulk_notes(back) == bulk_notes(second) == list(range(69, 19, -1))
    newest = follow(ui, back, "prev")
    assert bulk_notes(newest) == bulk_notes(first) == list(range(119, 69, -1))
    assert 'rel="prev"' not in newest and 'rel="next"' in newest
    assert bulk_notes(follow(ui, newest, "next")) == bulk_notes(second)
    # a bad anchor is a clear error
    assert ui.client.get("/ui/ns/bulk", params={"newer_than": "x1"}).status_code == 400


def test_out_of_range_or_odd_digit_page_anchors_are_a_400_not_a_crash(ui: Ui) -> None:
    """Review finding (8621024, inherited from older_than): _key admits 19 digits and anything str.isdigit()
    calls a digit, so a key above 2**63-1 reaches SQLite (OverflowError) and '\u00b2' reaches int() (ValueError):
    an unhandled exception, a 500, where a bad anchor is meant to be a 400."""
    failures = []
    for param in ("newer_than", "older_than"):
        for value in ("9999999999999999999", "9223372036854775808", "\u00b2"):
            try:
                got: object = ui.client.get("/ui/ns/work", params={param: value}).status_code
            except Exception as exc:  # the test client re-raises what would be a 500
                got = f"500 ({type(exc).__name__}: {exc})"
            if got not in (200, 400):
                failures.append(f"{param}={value!r}: {got}")
    assert failures == []


def test_the_older_link_of_an_empty_newer_page_does_not_skip_its_anchor(ui: Ui) -> None:
    """Review finding (8621024): when nothing was left above a newer_than anchor (forgotten between clicks), the
    page was empty and its "older" link older_than=<the anchor> paged strictly below it: the anchor memory,
    shown on the page the reader came from, was on no page the links led to. A newer page with nothing
    newer now shows the newest page."""
    ids = [ui.memory.remember(f"bulk note number {n}", namespace="bulk").id for n in range(120)]

    second = follow(ui, ui.client.get("/ui/ns/bulk").text, "next")
    assert bulk_notes(second)[0] == 69
    ui.memory.forget(ids=ids[70:], namespace="bulk")  # the newer page's memories go, between clicks
    newer = follow(ui, second, "prev")
    assert bulk_notes(newer) == list(range(69, 19, -1)) and 'rel="prev"' not in newer  # the newest page now
    assert bulk_notes(follow(ui, newer, "next")) == list(range(19, -1, -1))


def test_a_memory_opened_from_a_newer_page_returns_to_that_page(ui: Ui) -> None:
    """Review (8621024): no test held _here/_back keeping newer_than (dropping it from both passed every UI test)."""
    for n in range(120):
        ui.memory.remember(f"bulk note number {n}", namespace="bulk")
    first = ui.client.get("/ui/ns/bulk").text
    older = re.search(r'href="(/ui/ns/bulk\?older_than=\d+)"', first)
    assert older
    second = ui.client.get(older.group(1)).text
    newer = re.search(r'href="(/ui/ns/bulk\?newer_than=\d+)"', second)
    assert newer
    page = ui.client.get(newer.group(1)).text
    opened = re.search(r'href="(/ui/memory/[^"]+)"><bdi>bulk note', page)
    assert opened
    memory_page = ui.client.get(opened.group(1).replace("&amp;", "&")).text
    crumb = re.search(r'<p class="crumbs"><a href="([^"]+)"', memory_page)
    assert crumb and crumb.group(1).replace("&amp;", "&") == newer.group(1)


def test_search_is_a_linkable_get_showing_scores_and_the_retrieval(ui: Ui) -> None:
    page = ui.client.get("/ui/", params={"namespace": "work", "q": "which port does the staging database use"})
    assert page.status_code == 200
    assert "retrieval: hybrid" in page.text
    first = page.text.index("<tbody>")
    assert page.text.index("staging database runs on port 5433", first) < page.text.index("billing", first)
    assert re.search(r'<meter min="0" max="[0-9.]+" value="[0-9.]+"></meter> <span>\d\.\d{3}</span>', page.text)


def test_search_says_when_it_was_keyword_only(ui: Ui) -> None:
    ui.memory.embedder.error = RuntimeError("no model here")  # what a failed model load leaves
    ui.memory.embedder.ready = False  # type: ignore[misc]
    ui.memory.embedder.wait_ready = lambda timeout: False
    page = ui.client.get("/ui/", params={"namespace": "work", "q": "staging database"}).text
    assert "retrieval: keyword only" in page and "no model here" in page


def test_memory_page_shows_every_field_its_neighbours_and_supersession(ui: Ui) -> None:
    fixed = ui.client.get(f"/ui/memory/{ui.ids['correction']}").text
    assert "The team offsite moved to Lisbon" in fixed
    assert "email from Carol" in fixed and "0.8" in fixed
    assert f'href="/ui/memory/{ui.ids["corrected"]}"><bdi>The team offsite is in Porto in March.' in fixed
    old = ui.client.get(f"/ui/memory/{ui.ids['corrected']}").text
    assert "superseded</span>" in old and f'href="/ui/memory/{ui.ids["correction"]}"' in old
    earlier, later = ui.memory.neighbours_in_time(ui.memory.get(ui.ids["correction"]))
    for neighbour in earlier + later:
        assert f'href="/ui/memory/{neighbour.id}?back=' in fixed


def test_unknown_memory_is_a_404_page(ui: Ui) -> None:
    page = ui.client.get("/ui/memory/01JH3X5ZQ8W5V1R7Y0K2M4N6P8")
    assert page.status_code == 404 and "no memory with this id" in page.text


def test_stats_page_shows_pending_embeddings_index_state_and_recorded_sweeps(ui: Ui) -> None:
    ui.memory.remember("a memory not embedded yet", namespace="work")
    ui.memory.auto_forget(now=time.time() + 8 * DAY)  # the week-long memory expires
    page = ui.client.get("/ui/stats").text
    assert re.search(r'id="pending">1<', page)
    assert "checked, in step" in page or "not checked yet" in page
    assert re.search(r'<td class="num">1</td>\s*<td class="num">0</td>', page)  # 1 expired, 0 superseded
    assert f'<span class="gone"><bdi>{ui.ids["expiring"]}</bdi></span> (expired, deleted)' in page


def test_chart_page_draws_bars_per_day_per_namespace_as_inline_svg(ui: Ui) -> None:
    page = ui.client.get("/ui/chart", params={"days": 30}).text
    rects = re.findall(
        r'<rect class="s(\d)" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="[\d.]+"><title>([^<]+)</title>', page
    )
    labels = {label for _, label in rects}
    counts = ui.memory.created_per_day(30)
    assert len(rects) == len(counts)
    for namespace, day, n in counts:
        assert f"{day} · {namespace}: {n}" in labels


def test_chart_geometry_stacks_each_day_and_folds_small_namespaces_into_other() -> None:
    days = day_range(3, 20_000 * DAY + 5)
    counts = [("a", days[0], 3), ("b", days[0], 1), ("a", days[2], 4)]
    chart = build_chart(counts, days)
    assert chart.series == ["a", "b"] and chart.totals == {"a": 7, "b": 1}
    first_day = [b for b in chart.bars if b.label.startswith(days[0])]
    assert first_day[0].y + first_day[0].height == chart.bottom  # stacked from the baseline up
    assert first_day[1].y + first_day[1].height == pytest.approx(first_day[0].y)
    tallest = max(b.height for b in chart.bars)
    assert tallest == pytest.approx(first_day[0].height * 4 / 3)
    many = [(f"ns{i}", days[1], 1) for i in range(SERIES_SHOWN + 2)]
    folded = build_chart(many, days)
    assert len(folded.series) == SERIES_SHOWN and folded.series[-1] == OTHER
    assert folded.totals[OTHER] == 3


# --- editing and forgetting go through the service's rules -----------------------------------------------


def test_edit_form_sets_tags_importance_and_expiry(ui: Ui) -> None:
    memory_id = ui.ids["editor"]
    form = {"csrf": ui.csrf(), "namespace": "home", "tags": "people\nsoftware, tools\n", "importance": "0.9"}
    answer = ui.post(f"/ui/memory/{memory_id}/edit", {**form, "expiry": "days", "ttl_days": "3"})
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui/memory/{memory_id}?done=saved"
    edited = ui.memory.get(memory_id)
    assert edited.tags == ["people", "software, tools"] and edited.importance == 0.9
    assert edited.expires_at == pytest.approx(time.time() + 3 * DAY, abs=60)
    ui.post(f"/ui/memory/{memory_id}/edit", {**form, "expiry": "never"})
    assert ui.memory.get(memory_id).expires_at is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"importance": "2"}, "Importance: give a number from 0 to 1"),
        ({"importance": "high"}, "Importance: &#39;high&#39; is not a number"),
        ({"tags": "x" * 65}, "longer than 64 characters"),
        ({"expiry": "days", "ttl_days": "-1"}, "Expiry: give a number of days from 0.001 to 365000"),
        ({"expiry": "days", "ttl_days": "0"}, "Expiry: give a number of days from 0.001 to 365000"),
        ({"expiry": "days", "ttl_days": ""}, "give the number of days"),
    ],
)
def test_edit_form_refuses_what_remember_refuses(ui: Ui, fields: dict[str, str], message: str) -> None:
    memory_id = ui.ids["editor"]
    before = ui.memory.get(memory_id)
    form = {"csrf": ui.csrf(), "namespace": "home", "tags": "home", "importance": "0.5", "expiry": "keep"}
    answer = ui.post(f"/ui/memory/{memory_id}/edit", {**form, **fields})
    assert answer.status_code == 400 and message in answer.text
    assert ui.memory.get(memory_id) == before


def test_forget_asks_first_and_deletes_only_on_the_confirming_post(ui: Ui) -> None:
    memory_id = ui.ids["work2"]
    confirm = ui.client.get(f"/ui/memory/{memory_id}/forget")
    assert confirm.status_code == 200 and "Forget this memory?" in confirm.text
    assert ui.memory.get(memory_id) is not None  # a GET never deletes
    answer = ui.post(f"/ui/memory/{memory_id}/forget", {"csrf": ui.csrf(), "namespace": "work"})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/ns/work?done=forgotten"
    assert ui.memory.get(memory_id) is None
    again = ui.post(f"/ui/memory/{memory_id}/forget", {"csrf": ui.csrf(), "namespace": "work"})
    assert again.status_code == 404


def test_forget_acts_only_in_the_namespace_the_form_names(ui: Ui) -> None:
    memory_id = ui.ids["work2"]
    answer = ui.post(f"/ui/memory/{memory_id}/forget", {"csrf": ui.csrf(), "namespace": "home"})
    assert answer.status_code == 404 and ui.memory.get(memory_id) is not None


def test_forgetting_a_correction_from_the_ui_brings_back_what_it_superseded(ui: Ui) -> None:
    confirm = ui.client.get(f"/ui/memory/{ui.ids['correction']}/forget").text
    assert "It supersedes 1 older memory" in confirm and "Porto" in confirm
    ui.post(f"/ui/memory/{ui.ids['correction']}/forget", {"csrf": ui.csrf(), "namespace": "work"})
    assert [h.id for h in ui.memory.recall("team offsite", "work")][:1] == [ui.ids["corrected"]]


# --- security ----------------------------------------------------------------------------------------------


PAGES = ["/ui/", "/ui/ns/work", "/ui/stats", "/ui/chart", "/ui/?namespace=work&q=port", "/ui/memory/{id}"]


def test_every_response_sends_a_strict_csp_and_forbids_framing(ui: Ui) -> None:
    paths = [p.format(id=ui.ids["work0"]) for p in PAGES] + ["/ui/memory/01JH3X5ZQ8W5V1R7Y0K2M4N6P8", "/ui/nowhere"]
    for path in [*paths, "/ui/static/ui.css"]:
        answer = ui.client.get(path)
        csp = answer.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert ui.client.get("/ui/").headers["cache-control"] == "no-store"


def test_pages_hold_no_inline_script_and_fetch_nothing_from_elsewhere(ui: Ui) -> None:
    for path in [p.format(id=ui.ids["correction"]) for p in PAGES]:
        html = ui.client.get(path).text
        assert "<script" not in html.replace("&lt;script", "")
        assert not re.search(r' on[a-z]+="', html), "no inline event handlers"
        assert not re.search(r'(src|href)="(https?:)?//', html), "nothing from another origin"


def test_memory_text_is_escaped_wherever_it_is_shown(ui: Ui) -> None:
    pages = [
        "/ui/ns/work",
        f"/ui/memory/{ui.ids[XSS_TEXTS[0]]}",
        f"/ui/memory/{ui.ids[XSS_TEXTS[1]]}/forget",
        "/ui/?namespace=work&q=window+pwned+img+script+svg",
    ]
    for path in pages:
        html = ui.client.get(path).text
        assert "<img src=x" not in html and "<script>window" not in html and "<svg onload" not in html
        assert "&lt;" in html
        assert "<b>x</b>" not in html
    search = ui.client.get("/ui/", params={"namespace": "work", "q": '"><script>alert(1)</script>'}).text
    assert "<script>alert(1)" not in search and "&lt;script&gt;alert(1)" in search


def test_a_post_without_the_right_csrf_token_is_refused_and_changes_nothing(ui: Ui) -> None:
    memory_id = ui.ids["work0"]
    before = ui.memory.get(memory_id)
    edit = {"namespace": "work", "tags": "changed", "importance": "1", "expiry": "never"}
    for csrf in (None, "", "0" * 64):
        form = edit if csrf is None else {**edit, "csrf": csrf}
        assert ui.post(f"/ui/memory/{memory_id}/edit", form).status_code == 403
        forget = {"namespace": "work"} if csrf is None else {"namespace": "work", "csrf": csrf}
        assert ui.post(f"/ui/memory/{memory_id}/forget", forget).status_code == 403
    assert ui.memory.get(memory_id) == before


def test_a_csrf_token_is_bound_to_its_session(ui: Ui, tmp_path: Path) -> None:
    token = ui.csrf()
    ui.client.cookies.clear()  # another browser: a new session
    answer = ui.post(f"/ui/memory/{ui.ids['work0']}/forget", {"csrf": token, "namespace": "work"})
    assert answer.status_code == 403 and ui.memory.get(ui.ids["work0"]) is not None


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},  # refused by the Host/Origin guard, as on /mcp
        {"Origin": "http://127.0.0.1:9999"},  # a loopback origin the guard admits, but another site
        {"Origin": "http://localhost:8765"},
        {"Origin": "null"},
        {"Origin": BASE, "Sec-Fetch-Site": "cross-site"},
        {"Origin": BASE, "Sec-Fetch-Site": "same-site"},
    ],
)
def test_a_cross_site_post_is_refused_even_with_a_valid_token(ui: Ui, headers: dict[str, str]) -> None:
    memory_id = ui.ids["work0"]
    answer = ui.post(f"/ui/memory/{memory_id}/forget", {"csrf": ui.csrf(), "namespace": "work"}, **headers)
    assert answer.status_code == 403
    assert ui.memory.get(memory_id) is not None


def test_a_foreign_host_is_refused_on_every_ui_path(ui: Ui) -> None:
    for path in ["/ui/", "/ui/stats", "/ui/static/ui.css", "/ui/login"]:
        answer = ui.client.get(path, headers={"Host": "evil.example"})
        assert answer.status_code == 403 and "Host header not allowed" in answer.text


def test_forget_and_edit_are_never_reachable_by_get(ui: Ui) -> None:
    memory_id = ui.ids["work0"]
    assert ui.client.get(f"/ui/memory/{memory_id}/edit?importance=1&csrf={ui.csrf()}").status_code == 405
    for method in ("PUT", "DELETE", "PATCH"):
        assert ui.client.request(method, f"/ui/memory/{memory_id}/forget", headers={"Origin": BASE}).status_code in (
            403,
            405,
        )
    assert ui.memory.get(memory_id) is not None


def test_an_oversized_form_is_refused_before_it_is_read(ui: Ui) -> None:
    memory_id = ui.ids["work0"]
    form = {"csrf": ui.csrf(), "namespace": "work", "tags": "x\n" * 40_000, "importance": "1", "expiry": "keep"}
    assert ui.post(f"/ui/memory/{memory_id}/edit", form).status_code == 413
    assert ui.memory.get(memory_id).importance == 0.5


def test_the_session_cookie_is_httponly_samesite_strict_and_scoped_to_the_ui(ui: Ui) -> None:
    cookie = ui.client.get("/ui/").headers["set-cookie"]
    assert cookie.startswith("agentcache_ui_8765=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie


# --- with a token -------------------------------------------------------------------------------------------


def login(ui: Ui, token: str = TOKEN, next_page: str = "/ui/") -> Any:
    page = ui.client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
    assert csrf
    return ui.post("/ui/login", {"csrf": csrf.group(1), "token": token, "next": next_page})


def test_with_a_token_no_page_is_reachable_without_logging_in(ui_token: Ui) -> None:
    ui = ui_token
    for path in [p.format(id=ui.ids["work0"]) for p in PAGES] + ["/ui/nowhere"]:
        answer = ui.client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login?next=")
        assert "Neovim" not in answer.text and "staging" not in answer.text
    answer = ui.post(f"/ui/memory/{ui.ids['work0']}/forget", {"namespace": "work"})
    assert answer.status_code == 403 and ui.memory.get(ui.ids["work0"]) is not None
    assert ui.client.get("/ui/static/ui.css").status_code == 200  # the login page's styles


def test_login_sets_a_new_httponly_strict_session_and_returns_to_the_page_asked_for(ui_token: Ui) -> None:
    ui = ui_token
    first = ui.client.get("/ui/stats", follow_redirects=False)
    assert first.headers["location"] == "/ui/login?next=%2Fui%2Fstats"
    before = ui.client.cookies.get("agentcache_ui_8765")
    answer = login(ui, next_page="/ui/stats")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/stats"
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert TOKEN not in cookie and TOKEN not in answer.headers["location"]
    assert ui.client.cookies.get("agentcache_ui_8765") != before  # a pre-login session is never promoted
    assert ui.client.get("/ui/stats").status_code == 200


def test_a_wrong_token_logs_nobody_in(ui_token: Ui) -> None:
    ui = ui_token
    answer = login(ui, token="wrong")
    assert answer.status_code == 403 and "not the token" in answer.text
    assert ui.client.get("/ui/", follow_redirects=False).status_code == 303


def test_the_token_in_a_url_logs_nobody_in(ui_token: Ui) -> None:
    ui = ui_token
    for path in (f"/ui/login?token={TOKEN}", f"/ui/?token={TOKEN}"):
        ui.client.get(path)
    assert ui.client.get("/ui/", follow_redirects=False).status_code == 303


def test_login_goes_back_only_to_a_page_of_the_ui(ui_token: Ui) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/mcp", "/ui\\..\\mcp"):
        answer = login(ui_token, next_page=target)
        assert answer.headers["location"] == "/ui/", target


def test_logging_out_ends_the_session(ui_token: Ui) -> None:
    ui = ui_token
    login(ui)
    assert ui.client.get("/ui/").status_code == 200
    assert ui.post("/ui/logout", {"csrf": ui.csrf()}).status_code == 303
    assert ui.client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_ui_login_does_not_open_the_mcp_endpoint(ui_token: Ui) -> None:
    ui = ui_token
    login(ui)
    answer = ui.client.post("/mcp", json={}, headers={"Accept": "application/json, text/event-stream"})
    assert answer.status_code == 401


def test_the_ui_is_only_mounted_with_a_running_app(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "m.db", auth_token=TOKEN)
    asgi = serving.http_server(MCPServer("t"), settings, "streamable-http").config.app
    with TestClient(asgi, base_url=BASE) as client:
        assert client.get("/ui/").status_code == 401  # no UI here: the bearer check covers /ui like any path


def test_the_sse_transport_serves_the_ui_too(tmp_path: Path) -> None:
    for ui in _ui(tmp_path, transport="sse"):
        assert "Namespaces" in ui.client.get("/ui/").text
        assert ui.client.get("/ui/", headers={"Host": "evil.example"}).status_code == 403


def test_behind_a_tls_proxy_the_https_origin_of_the_same_host_is_the_pages_own(tmp_path: Path) -> None:
    for ui in _ui(tmp_path, allowed_hosts=("mem.example.com",)):
        proxied = {"Host": "mem.example.com", "Origin": "https://mem.example.com"}
        memory_id = ui.ids["work0"]
        csrf = ui.csrf(Host="mem.example.com")  # the session cookie is the site's, named after its port
        answer = ui.post(f"/ui/memory/{memory_id}/forget", {"csrf": csrf, "namespace": "work"}, **proxied)
        assert answer.status_code == 303 and ui.memory.get(memory_id) is None
        other = {"Host": "mem.example.com", "Origin": "https://mem.example.com:8443"}
        answer = ui.post(f"/ui/memory/{ui.ids['work1']}/forget", {"csrf": csrf, "namespace": "work"}, **other)
        assert answer.status_code == 403


def test_the_ui_command_serves_only_the_ui_behind_the_same_guards(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "m.db", auto_forget_enabled=False, auth_token=TOKEN, port=8765)
    memory = open_memory(settings, embedder=HashEmbedder())
    try:
        memory.remember("a memory behind the login", namespace="default")
        with TestClient(serving.ui_only_app(App(settings, memory), settings), base_url=BASE) as client:
            assert client.get("/", follow_redirects=False).headers["location"] == "/ui/"
            page = client.get("/ui/")  # to the login form: the token is asked for, not a bearer header
            assert page.status_code == 200 and "Log in" in page.text and "behind the login" not in page.text
            assert client.get("/ui/", headers={"Host": "evil.example"}).status_code == 403
            assert client.post("/mcp", json={}).status_code == 404  # no MCP endpoint here
    finally:
        memory.close()


def test_ui_command_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["ui", "--port", "99999"])
    assert info.value.code == 2
    assert "--port must be 0..65535, got 99999" in capsys.readouterr().err


# --- found by review: each of these failed before its fix ---------------------------------------------------


def _edit_form(ui: Ui, memory_id: str) -> dict[str, str]:
    """The edit form of a memory's page as a browser would post it untouched."""
    page = ui.client.get(f"/ui/memory/{quote(memory_id, safe='')}").text
    form = page[page.index('id="edit-form"') : page.index("</form>", page.index('id="edit-form"'))]
    fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
    fields["importance"] = re.search(r'name="importance"[^>]* value="([^"]*)"', form).group(1)  # type: ignore[union-attr]
    fields["tags"] = re.search(r"<textarea[^>]*>([^<]*)</textarea>", form).group(1)  # type: ignore[union-attr]
    fields["expiry"] = "keep"
    fields["ttl_days"] = ""
    return {k: v.replace("&amp;", "&") for k, v in fields.items()}


def test_typing_days_without_choosing_their_radio_sets_the_expiry(ui: Ui) -> None:
    memory_id = ui.ids["editor"]
    answer = ui.post(f"/ui/memory/{memory_id}/edit", {**_edit_form(ui, memory_id), "ttl_days": "3"})
    assert answer.status_code == 303
    assert ui.memory.get(memory_id).expires_at == pytest.approx(time.time() + 3 * DAY, abs=60)


def test_typing_days_with_never_chosen_is_refused_and_changes_nothing(ui: Ui) -> None:
    memory_id = ui.ids["expiring"]
    before = ui.memory.get(memory_id)
    form = {**_edit_form(ui, memory_id), "expiry": "never", "ttl_days": "3"}
    answer = ui.post(f"/ui/memory/{memory_id}/edit", form)
    assert answer.status_code == 400 and "Expiry:" in answer.text
    assert ui.memory.get(memory_id) == before


def test_the_days_input_refuses_in_the_browser_what_the_server_refuses(ui: Ui) -> None:
    page = ui.client.get(f"/ui/memory/{ui.ids['editor']}").text
    minimum = float(re.search(r'name="ttl_days"[^>]* min="([^"]+)"', page).group(1))  # type: ignore[union-attr]
    assert minimum > 0
    form = _edit_form(ui, ui.ids["editor"])
    assert ui.post(f"/ui/memory/{ui.ids['editor']}/edit", {**form, "ttl_days": str(minimum)}).status_code == 303
    assert ui.post(f"/ui/memory/{ui.ids['editor']}/edit", {**form, "ttl_days": str(minimum / 2)}).status_code == 400


def test_search_defaults_to_a_namespace_that_exists(ui: Ui) -> None:
    assert "default" not in ui.memory.backend.memories.counts_by_namespace()
    page = ui.client.get("/ui/").text
    assert re.search(r'<option value="work" selected>', page)  # the largest namespace
    assert '<option value="default">default (empty)</option>' in page  # offered, said to be empty
    assert not re.search(r'<option value="default"[^>]*>default</option>', page)
    found = ui.client.get("/ui/", params={"q": "staging database port"}).text
    assert "staging database runs on port 5433" in found


def test_the_configured_namespace_is_the_default_when_it_has_memories(ui: Ui) -> None:
    ui.memory.remember("a note in the default namespace", namespace="default")
    assert re.search(r'<option value="default" selected>default</option>', ui.client.get("/ui/").text)


def test_an_edit_that_leaves_importance_alone_keeps_it_exactly(ui: Ui) -> None:
    memory_id = ui.ids["editor"]
    ui.memory.edit(memory_id, "home", importance=0.123456789012)
    form = _edit_form(ui, memory_id)
    assert form["importance"] == "0.123456789012"
    assert ui.post(f"/ui/memory/{memory_id}/edit", {**form, "tags": "home\nkitchen"}).status_code == 303
    edited = ui.memory.get(memory_id)
    assert edited.importance == 0.123456789012 and edited.tags == ["home", "kitchen"]


@pytest.mark.parametrize("mode", ["no-cors", "cors", "nested-navigate"])
@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_a_page_of_another_site_cannot_make_the_browser_run_a_search(ui: Ui, site: str, mode: str) -> None:
    answer = ui.client.get(
        "/ui/", params={"namespace": "work", "q": "staging"}, headers={"Sec-Fetch-Site": site, "Sec-Fetch-Mode": mode}
    )
    assert answer.status_code == 403 and "staging" not in answer.text


def test_a_link_from_another_site_to_a_search_still_opens_it(ui: Ui) -> None:
    answer = ui.client.get(
        "/ui/",
        params={"namespace": "work", "q": "staging"},
        headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
    )
    assert answer.status_code == 200 and "staging database runs on port 5433" in answer.text


@pytest.mark.parametrize("site", ["cross-site", "same-site", "same-origin", None])
@pytest.mark.parametrize("dest", ["iframe", "frame", "embed", "object", "fencedframe"])
def test_a_page_loaded_into_a_frame_is_refused_before_the_search_runs(
    ui: Ui, monkeypatch: pytest.MonkeyPatch, dest: str, site: str | None
) -> None:
    searches: list[Any] = []
    recall = ui.memory.recall_outcome
    monkeypatch.setattr(ui.memory, "recall_outcome", lambda *a, **k: searches.append(a) or recall(*a, **k))
    headers = {"Sec-Fetch-Dest": dest, "Sec-Fetch-Mode": "navigate", **({"Sec-Fetch-Site": site} if site else {})}
    answer = ui.client.get("/ui/", params={"namespace": "work", "q": "staging"}, headers=headers)
    assert answer.status_code == 403 and "staging database" not in answer.text and "frame" in answer.text
    assert searches == []  # refused before the search, not only hidden from view (frame-ancestors)
    assert ui.client.get(f"/ui/memory/{ui.ids['editor']}/forget", headers=headers).status_code == 403
    top = {**headers, "Sec-Fetch-Dest": "document"}  # the same link opened as a page of its own
    assert ui.client.get("/ui/", params={"namespace": "work", "q": "staging"}, headers=top).status_code == 200
    assert searches


@pytest.mark.parametrize("purpose", [{"Sec-Purpose": "prefetch"}, {"Sec-Purpose": "prefetch;prerender"}, {"Purpose": "prefetch"}])
@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_another_site_cannot_prefetch_or_prerender_a_search(
    ui: Ui, monkeypatch: pytest.MonkeyPatch, site: str, purpose: dict[str, str]
) -> None:
    searches: list[Any] = []
    recall = ui.memory.recall_outcome
    monkeypatch.setattr(ui.memory, "recall_outcome", lambda *a, **k: searches.append(a) or recall(*a, **k))
    headers = {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", **purpose}
    answer = ui.client.get("/ui/", params={"namespace": "work", "q": "staging"}, headers=headers)
    assert answer.status_code == 403 and searches == []
    own = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", **purpose}
    assert ui.client.get("/ui/", params={"namespace": "work", "q": "staging"}, headers=own).status_code == 200


ODD_IDS = ["a/b", "x?y#z", "../../stats", "ID/forget", "100% sure", "ns/../work"]


@pytest.mark.parametrize("odd_id", ODD_IDS)
def test_a_memory_with_any_id_can_be_opened_edited_and_forgotten(ui: Ui, odd_id: str) -> None:
    new = NewMemory(odd_id, "odd", f"imported memory {odd_id}", content_hash(odd_id), ["x"], 0.5, {}, time.time(), None)
    ui.memory.backend.memories.remember(new, merge_remembered)
    listing = ui.client.get("/ui/ns/odd").text
    link = f'href="/ui/memory/{quote(odd_id, safe="")}?back='
    assert link in listing
    page = ui.client.get(f"/ui/memory/{quote(odd_id, safe='')}")
    assert page.status_code == 200 and f"imported memory {odd_id}".replace("&", "&amp;") in page.text
    assert f'action="/ui/memory/{quote(odd_id, safe="")}/edit"' in page.text
    form = {**_edit_form(ui, odd_id), "tags": "y"}
    answer = ui.post(f"/ui/memory/{quote(odd_id, safe='')}/edit", form)
    assert answer.status_code == 303 and answer.headers["location"].startswith(f"/ui/memory/{quote(odd_id, safe='')}?")
    assert ui.memory.get(odd_id).tags == ["y"]
    confirm = ui.client.get(f"/ui/memory/{quote(odd_id, safe='')}/forget")
    assert confirm.status_code == 200 and "Forget this memory?" in confirm.text
    answer = ui.post(f"/ui/memory/{quote(odd_id, safe='')}/forget", {"csrf": ui.csrf(), "namespace": "odd"})
    assert answer.status_code == 303 and ui.memory.get(odd_id) is None


def test_an_older_link_still_pages_after_its_anchor_is_forgotten(ui: Ui) -> None:
    ids = [ui.memory.remember(f"bulk note number {n}", namespace="bulk").id for n in range(60)]
    first = ui.client.get("/ui/ns/bulk").text
    older = re.search(r'href="(/ui/ns/bulk\?older_than=[^"]+)" rel="next">older', first)
    assert older
    ui.memory.forget([ids[10]], "bulk")  # the last memory of the first page: the older link's anchor
    second = ui.client.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert "bulk note number 9<" in second.text and "bulk note number 0<" in second.text


def test_forgetting_from_the_ui_returns_to_the_page_the_reader_came_from(ui: Ui) -> None:
    for n in range(60):
        ui.memory.remember(f"bulk note number {n}", namespace="bulk")
    first = ui.client.get("/ui/ns/bulk").text
    older = re.search(r'href="(/ui/ns/bulk\?older_than=[^"]+)" rel="next">older', first).group(1)  # type: ignore[union-attr]
    older = older.replace("&amp;", "&")
    second = ui.client.get(older).text
    link = re.search(r'href="/ui/memory/([^"?]+)\?back=([^"]+)"><bdi>bulk note number 5<', second)
    assert link and unquote(link.group(2)) == older
    memory_page = ui.client.get(f"/ui/memory/{link.group(1)}?back={link.group(2)}").text
    assert f'href="{older}"' in memory_page.replace("&amp;", "&")  # the crumb back
    confirm = ui.client.get(f"/ui/memory/{link.group(1)}/forget?back={link.group(2)}").text
    back = re.search(r'name="back" value="([^"]+)"', confirm).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    answer = ui.post(f"/ui/memory/{link.group(1)}/forget", {"csrf": ui.csrf(), "namespace": "bulk", "back": back})
    assert answer.status_code == 303 and answer.headers["location"] == older + "&done=forgotten"
    # a back link to anywhere else is not followed
    other = ui.memory.remember("one more", namespace="bulk").id
    form = {"csrf": ui.csrf(), "namespace": "bulk", "back": "https://evil.example/ui/ns/bulk"}
    assert ui.post(f"/ui/memory/{other}/forget", form).headers["location"] == "/ui/ns/bulk?done=forgotten"


def test_right_to_left_overrides_in_untrusted_text_are_isolated(ui: Ui) -> None:
    rlo = "\u202eevil\u202c"
    memory_id = ui.memory.remember(f"note {rlo}", namespace="work", tags=[f"t{rlo}"], metadata={"k": rlo}).id
    search = ui.client.get("/ui/", params={"namespace": "work", "q": f"note {rlo}"}).text
    assert f"<q><bdi>note {rlo}</bdi></q>" in search
    listing = ui.client.get("/ui/ns/work").text
    assert f"><bdi>note {rlo}</bdi></a>" in listing and f"<bdi>t{rlo}</bdi>" in listing
    page = ui.client.get(f"/ui/memory/{memory_id}").text
    assert f"<td><bdi>{rlo}</bdi></td>" in page and f"<bdi>t{rlo}</bdi>" in page
    assert "<bdi>work</bdi>" in ui.client.get("/ui/").text


def test_an_edit_without_a_tags_field_leaves_the_tags(ui: Ui) -> None:
    memory_id = ui.ids["work0"]
    form = {k: v for k, v in _edit_form(ui, memory_id).items() if k != "tags"}
    assert ui.post(f"/ui/memory/{memory_id}/edit", {**form, "importance": "0.7"}).status_code == 303
    edited = ui.memory.get(memory_id)
    assert edited.tags == ["infra", "database"] and edited.importance == 0.7


def test_failed_logins_are_paused_one_at_a_time_across_connections(
    ui_token: Ui, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentcache_mcp.ui import security

    monkeypatch.setattr(security, "FAILED_LOGIN_PAUSE_S", 0.3)
    page = ui_token.client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    statuses: list[int] = []

    def guess(n: int) -> None:
        statuses.append(ui_token.post("/ui/login", {"csrf": csrf, "token": f"guess-{n}", "next": "/ui/"}).status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=guess, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [403] * 5
    assert time.monotonic() - started >= 5 * 0.3 - 0.05  # one pause after another, not five at once


def test_a_steady_trickle_of_wrong_logins_does_not_keep_the_token_holder_from_logging_in(
    ui_token: Ui, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the throttle, the token holder's login was checked at once and succeeded whatever the queue.
    from agentcache_mcp.ui import security

    monkeypatch.setattr(security, "FAILED_LOGIN_PAUSE_S", 0.3)
    page = ui_token.client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    stop = threading.Event()

    def attacker(n: int) -> None:
        while not stop.is_set():
            ui_token.post("/ui/login", {"csrf": csrf, "token": f"guess-{n}", "next": "/ui/"})

    threads = [threading.Thread(target=attacker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # a queue of paused guesses has formed by now
        statuses = [
            ui_token.post("/ui/login", {"csrf": csrf, "token": TOKEN, "next": "/ui/"}).status_code for _ in range(3)
        ]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert 303 in statuses, statuses


def test_a_rejected_edit_keeps_what_was_typed_and_says_which_field(ui: Ui) -> None:
    memory_id = ui.ids["editor"]
    form = {**_edit_form(ui, memory_id), "tags": "kept-tag\nanother", "importance": "7", "ttl_days": "12"}
    answer = ui.post(f"/ui/memory/{memory_id}/edit", form)
    assert answer.status_code == 400 and "Importance: give a number from 0 to 1" in answer.text
    assert ">kept-tag\nanother</textarea>" in answer.text and 'value="7"' in answer.text
    assert re.search(r'name="ttl_days"[^>]* value="12"', answer.text)
    kept_back = ui.post(f"/ui/memory/{memory_id}/edit", {**form, "back": "/ui/ns/home?tag=home"})
    assert 'name="back" value="/ui/ns/home?tag=home"' in kept_back.text  # the way back survives a rejection
    answer = ui.post(f"/ui/memory/{memory_id}/edit", {**form, "importance": "0.5", "expiry": "days", "ttl_days": "x"})
    message = re.search(r'<p class="error" role="alert">([^<]*)</p>', answer.text).group(1)  # type: ignore[union-attr]
    assert answer.status_code == 400 and message.startswith("Not saved: Expiry:") and "ttl_days" not in message
    assert re.search(r'value="days" id="expiry-days" checked', answer.text)


def test_pages_name_a_blank_icon_so_the_browser_asks_for_none(ui: Ui) -> None:
    assert '<link rel="icon" href="data:,">' in ui.client.get("/ui/").text


def test_a_cookie_set_on_a_static_file_covers_the_whole_ui(ui: Ui) -> None:
    cookie = ui.client.get("/ui/static/ui.css").headers["set-cookie"]
    assert "Path=/ui;" in cookie or cookie.endswith("Path=/ui")


def test_a_refusal_is_a_page_with_a_way_back(ui: Ui) -> None:
    answer = ui.post(f"/ui/memory/{ui.ids['work0']}/forget", {"csrf": "wrong", "namespace": "work"})
    assert answer.status_code == 403 and 'href="/ui/"' in answer.text and "/ui/static/ui.css" in answer.text
    cross = ui.client.get("/ui/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
    assert cross.status_code == 403 and 'href="/ui/"' in cross.text


def test_logging_out_clears_the_cookie(ui_token: Ui) -> None:
    ui = ui_token
    login(ui)
    answer = ui.post("/ui/logout", {"csrf": ui.csrf()})
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("agentcache_ui_8765=") and "Max-Age=0" in cookie and "Path=/ui" in cookie


def test_a_memory_page_is_titled_by_its_text(ui: Ui) -> None:
    page = ui.client.get(f"/ui/memory/{ui.ids['work0']}").text
    assert "<title>The staging database runs on port 5433" in page
    assert re.search(r"<h1[^>]*><bdi>The staging database runs on port 5433", page)


# --- sessions shared by every process on the store ---------------------------------------------------------


def _replica(db: Path, token: str | None = TOKEN) -> tuple[App, Any]:
    config = Settings(db_path=db, auto_forget_enabled=False, auth_token=token)
    memory = open_memory(config, embedder=HashEmbedder())
    app = App(config, memory)
    return app, serving.http_server(build_server(config, app=app), config, "streamable-http", app=app).config.app


@contextlib.contextmanager
def _replicas(db: Path, *tokens: str | None) -> Iterator[list[tuple[App, Any]]]:
    """One replica per token (each its own MemoryService on the same store, as separate processes would
    have), all closed afterwards."""
    opened: list[tuple[App, Any]] = []
    try:
        for token in tokens:
            opened.append(_replica(db, token))
        yield opened
    finally:
        for app, _ in opened:
            app.memory.close()


def test_a_login_on_one_replica_works_on_another_with_its_csrf_tokens(tmp_path: Path) -> None:
    # Two replicas: other processes on the same store, each its own MemoryService.
    with _replicas(tmp_path / "shared.db", TOKEN, TOKEN) as [(app_a, asgi_a), (_, asgi_b)]:
        memory_id = app_a.memory.remember("a memory both replicas serve", namespace="work").id
        with TestClient(asgi_a, base_url=BASE) as a, TestClient(asgi_b, base_url=BASE) as b:
            ui_a = Ui(app_a, a, {"home1": memory_id})
            assert login(ui_a).status_code == 303
            csrf = ui_a.csrf()
            b.cookies.update(a.cookies)  # the browser sends the same cookie, whichever replica answers
            page = b.get(f"/ui/memory/{memory_id}", follow_redirects=False)
            assert page.status_code == 200 and "a memory both replicas serve" in page.text
            answer = b.post(
                f"/ui/memory/{memory_id}/edit",
                data={"csrf": csrf, "namespace": "work", "tags": "shared", "importance": "0.6", "expiry": "keep"},
                headers={"Origin": BASE},
                follow_redirects=False,
            )
            assert answer.status_code == 303 and app_a.memory.get(memory_id).tags == ["shared"]


def test_replicas_starting_together_agree_on_the_session_secret(tmp_path: Path) -> None:
    with _replicas(tmp_path / "shared.db", TOKEN, TOKEN) as [(app_a, _), (app_b, _)]:
        seen: list[str] = []
        memories = [app_a.memory, app_b.memory] * 3
        threads = [threading.Thread(target=lambda m=m: seen.append(m.ui_secret())) for m in memories]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The first write is kept and every caller gets it.
        assert len(seen) == 6 and all(seen) and len(set(seen)) == 1
        assert app_a.memory.ui_secret() == app_b.memory.ui_secret()


def test_a_session_survives_a_restart_and_ends_when_the_token_changes(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    with _replicas(db, TOKEN) as [(app_a, asgi_a)], TestClient(asgi_a, base_url=BASE) as a:
        login(Ui(app_a, a, {}))
        cookies = dict(a.cookies)
    # Restarted with the same token, and with a new one.
    with _replicas(db, TOKEN, "a-new-token") as [(_, asgi_b), (_, asgi_c)]:
        with TestClient(asgi_b, base_url=BASE, cookies=cookies) as b:
            assert b.get("/ui/stats", follow_redirects=False).status_code == 200
        with TestClient(asgi_c, base_url=BASE, cookies=cookies) as c:
            assert c.get("/ui/stats", follow_redirects=False).status_code == 303  # to the login form


def test_the_cookie_is_named_after_the_port_the_browser_sees(ui: Ui) -> None:
    behind = ui.client.get("/ui/", headers={"Host": "127.0.0.1:9443"}).headers["set-cookie"]
    assert behind.startswith("agentcache_ui_9443=")
    assert ui.client.get("/ui/", headers={"Host": "127.0.0.1"}).headers["set-cookie"].startswith("agentcache_ui_80=")


def test_a_guard_that_cached_a_secret_lost_in_a_race_adopts_the_stored_one() -> None:
    from starlette.requests import Request

    from agentcache_mcp.ui.security import UiGuard

    stored = {"secret": "the-one-overwritten"}

    async def load() -> str:
        return stored["secret"]

    async def run() -> None:
        loser = UiGuard(None, TOKEN, load)
        await loser._ensure_secret()  # it read back its own write, before the other process's landed
        stored["secret"] = "the-one-kept"
        winner = UiGuard(None, TOKEN, load)
        await winner._ensure_secret()
        session = winner.log_in(TOKEN)
        assert session is not None
        cookie = f"agentcache_ui_8765={winner.cookie_value(session)}".encode()
        scope = {"type": "http", "headers": [(b"host", b"127.0.0.1:8765"), (b"cookie", cookie)], "method": "GET"}
        loser._reread_after = 0.0  # the throttle has passed
        found = await loser.session(Request(scope))
        assert found is not None and found.logged_in and found.id == session.id

    anyio.run(run)
