"""A raw JSON-RPC client for a server subprocess over stdio, so tests can signal and kill it at will."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mcp_types.version import LATEST_HANDSHAKE_VERSION


class StdioServer:
    def __init__(self, db_path: Path, *extra_args: str, env: dict[str, str] | None = None):
        self.env = {**os.environ, "AGENTCACHE_DB": str(db_path), "AUTO_FORGET_ENABLED": "false", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentcache_mcp", *extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            text=True,
            bufsize=1,
        )
        self._next_id = 0

    def request(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        self._next_id += 1
        msg = {"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params or {}}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"server closed stdout; stderr:\n{self.stderr_tail()}")
            reply = json.loads(line)  # anything on stdout must be protocol
            if reply.get("id") == self._next_id:
                return reply
        raise TimeoutError(method)

    def notify(self, method: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"jsonrpc": "2.0", "method": method}) + "\n")
        self.proc.stdin.flush()

    def initialize(self) -> dict[str, Any]:
        reply = self.request(
            "initialize",
            {
                "protocolVersion": LATEST_HANDSHAKE_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "test", "version": "0"},
            },
        )
        self.notify("notifications/initialized")
        return reply

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        reply = self.request("tools/call", {"name": tool, "arguments": arguments})
        result = reply["result"]
        assert not result.get("isError"), result
        return result["structuredContent"]

    def stats(self) -> dict[str, Any]:
        reply = self.request("resources/read", {"uri": "agentcache://stats"})
        return json.loads(reply["result"]["contents"][0]["text"])

    def wait_model_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats()["index"]["embedding_model_ready"]:
                return
            time.sleep(0.2)
        raise TimeoutError("model did not load")

    def wait_embedded(self, timeout: float = 120) -> int:
        """Wait until no memory waits for a vector, or the timeout; how many still wait."""
        deadline = time.monotonic() + timeout
        while (pending := int(self.stats()["pending_embeddings"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        return pending

    def stderr_tail(self) -> str:
        if self.proc.poll() is None:
            return "(still running)"
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-4000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
