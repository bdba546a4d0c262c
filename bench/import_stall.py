"""How long another process's `remember` waits while a large import runs on the same store.

    PYTHONPATH=. python bench/import_stall.py [--memories 10000] [--dim 384]
    PYTHONPATH=. python bench/import_stall.py --database-url 'postgresql://...'   # a fresh database there

On SQLite the writer remembers into its own namespace (the file has one write lock); on PostgreSQL into a
namespace the import writes too (writes there are serialised per namespace, by an advisory lock).

Writes an export of N memories (with vectors of a stand-in model), starts a second process that remembers one
memory every 20 ms into the same database and times each call, imports the file, and prints the longest and the
99th-percentile remember while the import ran, with the import's own time. Run it against another checkout of
the package (PYTHONPATH) to compare. No model is loaded: a hashed stand-in embedder of the given dimension.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "bench-stand-in"

WRITER = r"""
import sys, time, json
from pathlib import Path
sys.path[:0] = [p for p in sys.argv[3].split(":") if p]
from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
import numpy as np

class StandIn:
    model_id = sys.argv[2]
    ready = True
    dim = 384
    def load(self): pass
    def wait_ready(self, timeout): return True
    def embed(self, texts): return np.ones((len(texts), self.dim), dtype=np.float32) / self.dim ** 0.5

where = dict(database_url=sys.argv[1]) if sys.argv[1].startswith("postgresql") else dict(db_path=Path(sys.argv[1]))
memory = open_memory(Settings(**where, auto_forget_enabled=False), embedder=StandIn())
print("ready", flush=True)
n = 0
while not Path(sys.argv[4] + ".stop").exists():
    started = time.time()
    memory.remember(f"written by another process while importing, number {n}", namespace=sys.argv[5])
    print(json.dumps([started, time.time() - started]), flush=True)
    n += 1
    time.sleep(0.02)
memory.close()
"""


def write_export(path: Path, count: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", encoding="utf-8") as out:
        out.write(json.dumps({"format": "agentcache-export", "version": 1, "embedding_model": MODEL}) + "\n")
        for n in range(count):
            v = rng.standard_normal(dim).astype("<f4")
            v /= np.linalg.norm(v)
            record = {
                "id": f"BENCH{n:08d}",
                "namespace": f"ns{n % 4}",
                "text": f"imported memory {n}: the quarterly budget review for team {n % 97} is on day {n % 28}",
                "tags": ["bench"],
                "importance": 0.5,
                "metadata": {"n": n},
                "created_at": "2026-01-01T00:00:00.000000Z",
                "updated_at": "2026-01-01T00:00:00.000000Z",
                "vector": {"model": MODEL, "dim": dim, "float32_base64": base64.b64encode(v.tobytes()).decode()},
            }
            out.write(json.dumps(record) + "\n")


def fresh_database(server_url: str) -> str:
    """A new empty database on the server named by server_url (left there: drop import_stall_* by hand)."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    name = f"import_stall_{int(time.time())}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server whose user may CREATE DATABASE")
    args = parser.parse_args()

    from agentcache_mcp.app import open_memory
    from agentcache_mcp.config import Settings
    from agentcache_mcp.memory.exchange import import_jsonl

    class StandIn:
        model_id = MODEL
        ready = True
        dim = args.dim

        def load(self) -> None:
            pass

        def wait_ready(self, timeout: float) -> bool:
            return True

        def embed(self, texts: list[str]) -> np.ndarray:
            return np.ones((len(texts), self.dim), dtype=np.float32) / self.dim**0.5

    with tempfile.TemporaryDirectory() as tmp:
        db, dump = Path(tmp) / "memory.db", Path(tmp) / "dump.jsonl"
        write_export(dump, args.memories, args.dim)
        store, namespace = str(db), "live"
        if args.database_url:
            store, namespace = fresh_database(args.database_url), "ns0"
            settings = Settings(database_url=store, auto_forget_enabled=False)
        else:
            settings = Settings(db_path=db, auto_forget_enabled=False)
        memory = open_memory(settings, embedder=StandIn())
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, store, MODEL, ":".join(sys.path), str(db), namespace],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        started = time.time()
        report = import_jsonl(memory, dump, namespace=None, dry_run=False, skip_invalid=False)
        ended = time.time()
        time.sleep(1.0)
        Path(str(db) + ".stop").touch()
        calls = [json.loads(line) for line in writer.stdout]
        writer.wait(30)
        memory.close()
    during = sorted(d for t, d in calls if t + d >= started and t <= ended)
    print(
        json.dumps(
            {
                "store": "postgres" if args.database_url else "sqlite",
                "memories": args.memories,
                "added": report.added,
                "import_s": round(ended - started, 2),
                "remembers_during_import": len(during),
                "longest_remember_s": round(during[-1], 3) if during else None,
                "p99_remember_s": round(during[int(0.99 * (len(during) - 1))], 3) if during else None,
                "median_remember_s": round(during[len(during) // 2], 4) if during else None,
            }
        )
    )


if __name__ == "__main__":
    main()
