"""The consent page in a real browser: Debian's chromium, headless, driven by selenium through the system
chromedriver (nothing is downloaded), against the authorization server served by uvicorn on a loopback port.

The browser opens the authorization URL a connector would open, the owner reads who asks, types the passphrase
and approves; the browser lands on the loopback callback with code, state and iss, and the code buys a token
that the bearer-checked MCP endpoint accepts.

Without chromium these tests are skipped on a developer's machine and fail in CI (CI=true).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx2
import pytest
import uvicorn
from oauth_support import PASSPHRASE, auth_state, pkce, protected_app

from agentcache_mcp.auth.server import AuthServerConfig, build_authorization_server

from conftest import free_port
from ui_support import chromium, chromium_missing

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _require_chromium() -> None:
    missing = chromium_missing()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser tests need chromium in CI: {missing}")
    pytest.skip(missing)


class Served:
    """The authorization server beside a bearer-checked /mcp, served by uvicorn from a thread."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.resource = self.issuer + "/mcp"
        self._state = auth_state(tmp_path / "oauth.db")
        self.state = self._state.__enter__()
        config = AuthServerConfig(
            issuer_url=self.issuer, resource_url=self.resource, passphrase=PASSPHRASE, failed_passphrase_pause_s=0.05
        )
        app = protected_app(
            build_authorization_server(config, lambda: self.state), issuer=self.issuer, resource=self.resource
        )
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=lambda: anyio.run(self.server.serve), daemon=True)

    def __enter__(self) -> Served:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._state.__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    with chromium() as driver:
        yield driver


@pytest.fixture
def served(tmp_path: Path, browser: Any) -> Iterator[Served]:
    browser.delete_all_cookies()
    with Served(tmp_path) as running:
        yield running


def find(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def wait_for_url(driver: Any, prefix: str) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.current_url.startswith(prefix))
    return str(driver.current_url)


def test_the_owner_approves_in_chromium_and_the_loopback_callback_gets_code_state_and_iss(
    served: Served, browser: Any
) -> None:
    # The client registered a portless loopback redirect (as VS Code does) and listens on whatever port it got.
    registered = httpx2.post(
        served.issuer + "/register",
        json={"client_name": "Chromium test client", "redirect_uris": ["http://127.0.0.1/callback"]},
    )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    callback = f"http://127.0.0.1:{served.port}/callback"
    verifier, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": callback,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "browser-state-1",
        "resource": served.resource,
        "scope": "memory",
    }
    browser.get(f"{served.issuer}/authorize?{urlencode(query)}")
    wait_for_url(browser, served.issuer + "/consent?")
    assert find(browser, "#client-name").text == "Chromium test client"
    assert find(browser, "#redirect-host").text == f"127.0.0.1:{served.port}"
    assert find(browser, "#scope").text.startswith("memory")

    # a wrong passphrase first: the page says so and stays
    find(browser, "#passphrase").send_keys("not it")
    find(browser, "#approve").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda d: d.find_elements("css selector", "#error"))
    assert find(browser, "#error").text == "Wrong passphrase."
    assert served.state.list_grants() == []

    find(browser, "#passphrase").send_keys(PASSPHRASE)
    find(browser, "#approve").click()
    landed = wait_for_url(browser, callback + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
    assert params["state"] == "browser-state-1"
    assert params["iss"] == served.issuer
    assert "you may close this window" in find(browser, "body").text

    token = httpx2.post(
        served.issuer + "/token",
        data={
            "grant_type": "authorization_code",
            "code": params["code"],
            "redirect_uri": callback,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": served.resource,
        },
    )
    assert token.status_code == 200, token.text
    access = token.json()["access_token"]
    reply = httpx2.get(served.resource, headers={"Authorization": f"Bearer {access}"})
    assert reply.status_code == 200 and client_id in reply.text


def test_the_consent_page_does_not_show_inside_another_sites_frame(served: Served, browser: Any, tmp_path: Path) -> None:
    registered = httpx2.post(served.issuer + "/register", json={"redirect_uris": ["http://127.0.0.1/callback"]})
    client_id = registered.json()["client_id"]
    _, challenge = pkce()
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": f"http://127.0.0.1:{served.port}/callback",
        "code_challenge": challenge,
        "state": "s",
        "resource": served.resource,
    }
    authorize = httpx2.get(f"{served.issuer}/authorize?{urlencode(query)}")
    consent_url = authorize.headers["location"]
    # another site (another origin: localhost is not 127.0.0.1) frames the consent page
    attacker = tmp_path / "frame.html"
    attacker.write_text(f'<!doctype html><iframe id="f" src="{consent_url}" width="600" height="400"></iframe>')
    browser.get(attacker.as_uri())
    time.sleep(1.0)  # let the frame load (or be refused)
    browser.switch_to.frame(find(browser, "#f"))
    try:
        assert browser.find_elements("css selector", "#approve") == [], "the consent form must not render in a frame"
    finally:
        browser.switch_to.default_content()


def test_a_connector_that_speaks_only_oauth_adds_the_real_server_by_url_in_chromium_and_calls_its_tools(
    browser: Any, tmp_path: Path
) -> None:
    """The whole connector story against `serve`'s own app (serving.http_server over a real store): discovery
    from the 401, registration, the owner's approval in Chromium, the token, then the MCP SDK's client calls
    remember and recall with it."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from test_oauth_flow import PASSPHRASE as SERVER_PASSPHRASE
    from test_oauth_flow import Server, builtin

    browser.delete_all_cookies()
    with Server(builtin(tmp_path)) as server:
        challenge_header = httpx2.post(server.base + "/mcp", json={}).headers["www-authenticate"]
        metadata_url = challenge_header.split('resource_metadata="', 1)[1].split('"', 1)[0]
        resource_doc = httpx2.get(metadata_url).json()
        issuer = resource_doc["authorization_servers"][0]
        as_doc = httpx2.get(issuer + "/.well-known/oauth-authorization-server").json()
        registered = httpx2.post(
            as_doc["registration_endpoint"],
            json={"client_name": "Browser connector", "redirect_uris": ["http://127.0.0.1/callback"]},
        )
        assert registered.status_code == 201, registered.text
        client_id = registered.json()["client_id"]
        callback = f"http://127.0.0.1:{server.port}/callback"  # any loopback port: the browser only has to land
        verifier, challenge = pkce()
        query = {
            "response_type": "code", "client_id": client_id, "redirect_uri": callback, "code_challenge": challenge,
            "code_challenge_method": "S256", "state": "connector-1", "resource": resource_doc["resource"],
            "scope": "memory",
        }
        browser.get(f"{as_doc['authorization_endpoint']}?{urlencode(query)}")
        wait_for_url(browser, issuer + "/consent?")
        assert find(browser, "#client-name").text == "Browser connector"
        find(browser, "#passphrase").send_keys(SERVER_PASSPHRASE)
        find(browser, "#approve").click()
        landed = wait_for_url(browser, callback + "?")
        params = {k: v[0] for k, v in parse_qs(urlsplit(landed).query).items()}
        assert params["state"] == "connector-1" and params["iss"] == issuer
        token = httpx2.post(as_doc["token_endpoint"], data={
            "grant_type": "authorization_code", "code": params["code"], "redirect_uri": callback,
            "client_id": client_id, "code_verifier": verifier, "resource": resource_doc["resource"],
        })
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]

        async def use_tools() -> str:
            headers = {"Authorization": f"Bearer {access}"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=30) as http,
                Client(streamable_http_client(resource_doc["resource"], http_client=http)) as client,
            ):
                await client.call_tool("remember", {"text": "The on-call rotation changes every Monday"})
                found = await client.call_tool("recall", {"query": "on-call rotation"})
                return str(found.content)

        assert "every Monday" in anyio.run(use_tools)
