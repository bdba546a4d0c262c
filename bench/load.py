"""Mixed load on loopback: concurrent streamable-HTTP clients, remember:recall 1:4, bounded in time.

    python bench/load.py [--clients 8] [--seconds 60]

Starts its own server on 127.0.0.1 (an ephemeral port, a temporary database) and reports throughput,
p50/p95/p99 latency and errors. Traffic goes to the loopback address only and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run_load(url: str, clients: int, seconds: float, seed: int = 1) -> dict[str, Any]:
    latencies: dict[str, list[float]] = {"remember": [], "recall": []}
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def one_client(n: int) -> None:
        rng = random.Random(seed + n)
        async with Client(url) as client:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                if rng.random() < 0.2:
                    tool = "remember"
                    args: dict[str, Any] = {"text": f"client {n} note {i}: " + " ".join(rng.choices(WORDS, k=8))}
                else:
                    tool = "recall"
                    args = {"query": " ".join(rng.choices(WORDS, k=3)), "limit": 10}
                started = time.perf_counter()
                try:
                    result = await client.call_tool(tool, args)
                except Exception as exc:  # a transport failure is an error too
                    errors.append(f"{tool}: {exc!r}")
                    continue
                latencies[tool].append(1000 * (time.perf_counter() - started))
                if result.is_error:
                    errors.append(f"{tool}: {result.content}")

    async with anyio.create_task_group() as tg:
        for n in range(clients):
            tg.start_soon(one_client, n)
    every = latencies["remember"] + latencies["recall"]
    return {
        "clients": clients,
        "seconds": seconds,
        "calls": len(every),
        "throughput_per_s": len(every) / seconds,
        "remember_calls": len(latencies["remember"]),
        "recall_calls": len(latencies["recall"]),
        "p50_ms": statistics.median(every) if every else float("nan"),
        "p95_ms": percentile(every, 95) if every else float("nan"),
        "p99_ms": percentile(every, 99) if every else float("nan"),
        "errors": len(errors),
        "first_errors": errors[:5],
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    db_path: Path, port: int, transport: str = "streamable-http", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A server subprocess on 127.0.0.1:port, returned once it accepts connections."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentcache_mcp", "serve", "--transport", transport, "--port", str(port)],
        env={**os.environ, "AGENTCACHE_DB": str(db_path), "AUTO_FORGET_ENABLED": "false", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("server did not start listening")


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start_server(Path(tmp) / "load.db", port)
        try:
            out = anyio.run(run_load, f"http://127.0.0.1:{port}/mcp", args.clients, args.seconds)
        finally:
            stop_server(proc)
    print(
        f"{out['clients']} clients, {out['seconds']:.0f} s: {out['calls']} calls "
        f"({out['remember_calls']} remember, {out['recall_calls']} recall), {out['throughput_per_s']:.1f} calls/s, "
        f"p50 {out['p50_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, errors {out['errors']}"
    )
    for line in out["first_errors"]:
        print("  ", line)


if __name__ == "__main__":
    main()
