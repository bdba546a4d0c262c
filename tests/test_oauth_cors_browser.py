"""CORS in a real browser: a page served from a loopback origin (as the MCP inspector is, at
http://localhost:6274) calls the server with `fetch`, as a browser-based MCP client does: it reads the 401's
challenge (an exposed header), sends its bearer token after a preflight, and reads the metadata; a page from
another origin can do none of it. Headless system chromium, as tests/test_ui_browser.py drives it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_oauth_flow import STATIC, Server, builtin
from test_ui_browser import _require_chromium

from ui_support import chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "page", "version": "0"}},
    }
)
CALLS = """
const [server, token, init, done] = arguments;
(async () => {
  const out = {};
  const post = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"};
  try {
    const bare = await fetch(server + "/mcp", {method: "POST", headers: post, body: init});
    out.bare = {status: bare.status, challenge: bare.headers.get("www-authenticate")};
    const authed = await fetch(server + "/mcp", {
      method: "POST", body: init,
      headers: {...post, "Authorization": "Bearer " + token, "Mcp-Protocol-Version": "2025-06-18"},
    });
    out.authed = {status: authed.status, text: await authed.text()};
    out.metadata = await (await fetch(server + "/.well-known/oauth-protected-resource/mcp")).json();
  } catch (error) {
    out.error = String(error);
  }
  done(out);
})();
"""


@pytest.fixture(scope="module")
def pages() -> Iterator[int]:
    """A plain page on a port of its own: the origin the script runs in."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>a browser MCP client</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(driver: Any, page: str, server: Server) -> dict[str, Any]:
    driver.get(page)
    driver.set_script_timeout(30)
    return driver.execute_async_script(CALLS, server.base, STATIC, INIT)  # type: ignore[no-any-return]


def test_a_page_on_a_loopback_origin_reads_the_challenge_calls_with_its_token_and_reads_the_metadata(
    tmp_path: Path, pages: int
):
    _require_chromium()
    with Server(builtin(tmp_path)) as server, chromium() as driver:
        out = _run(driver, f"http://localhost:{pages}/", server)
    assert "error" not in out, out
    assert out["bare"]["status"] == 401
    assert out["bare"]["challenge"] == (
        f'Bearer resource_metadata="{server.base}/.well-known/oauth-protected-resource/mcp", scope="memory"'
    )
    assert out["authed"]["status"] == 200 and '"serverInfo"' in out["authed"]["text"]
    assert out["metadata"]["resource"] == server.base + "/mcp"


def test_a_page_on_another_origin_gets_nothing(tmp_path: Path, pages: int):
    _require_chromium()
    with (
        Server(builtin(tmp_path)) as server,
        chromium("--host-resolver-rules=MAP page.example 127.0.0.1") as driver,
    ):
        out = _run(driver, f"http://page.example:{pages}/", server)
    assert out == {"error": "TypeError: Failed to fetch"}
