"""Wall time of the whole `agentcache-mcp hook session-start` process on a store of 10k memories of one project.

    python bench/session_start.py [--workdir DIR] [--memories 10000] [--runs 50] [--compare-cli]

The store is built once in the work directory (default /tmp/agentcache-bench-session-start) and reused: memories
are added through the product (MemoryService.remember, as the `remember` tool does; no embedding: the hook reads
none), a few hundred of them superseding others; then the columns the server writes over time are set directly:
ages (created/updated up to two years back), recall counts (most never recalled, a few often) and a few expiries.
Importance varies 0.1 to 1.0. The project is a folder with a git remote, so the namespace is derived as a real
session's would be.

Each run is a fresh process, as Claude Code starts it: `python -m agentcache_mcp hook session-start` with the hook's
JSON on stdin; the time is from spawn to exit. --compare-cli also times the same hook through cli.main (what a
console script installed before entry.py runs), to show what the early dispatch saves.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAMESPACE_REMOTE = "git@github.com:acme/widgets.git"
WORDS = ["deploy", "release", "build", "cache", "index", "schema", "migration", "billing", "auth", "token", "retry", "queue", "worker", "pytest", "fixture", "docker", "compose", "staging", "production", "latency", "budget", "timeout", "config", "flag", "logger", "metrics", "alert", "owner", "review", "branch", "rebase", "merge", "lint", "format", "typing", "refactor", "api", "endpoint", "client", "server", "pool", "replica", "backup", "restore"]


def build(path: Path, project: Path, count: int, seed: int = 21) -> None:
    from agentcache_mcp.app import open_memory
    from agentcache_mcp.config import Settings
    from agentcache_mcp.hooks.project import project_namespace

    namespace = project_namespace(project, environ={})
    rng = random.Random(seed)
    memory = open_memory(Settings(db_path=path))
    started = time.perf_counter()
    ids: list[str] = []
    try:
        for i in range(count):
            words = rng.choices(WORDS, k=rng.randint(6, 45))
            text = f"Note {i}: " + " ".join(words) + "."
            importance = round(rng.uniform(0.1, 1.0), 2)
            supersedes = [ids[rng.randrange(len(ids))]] if ids and rng.random() < 0.03 else None
            result = memory.remember(text, namespace=namespace, importance=importance, supersedes=supersedes)
            ids.append(result.id)
    finally:
        memory.close()
    import sqlean

    now = time.time()
    db = sqlean.connect(str(path))
    with db:
        rows = []
        for memory_id in ids:
            age = rng.uniform(0, 730) * 86400
            recalls = 0 if rng.random() < 0.7 else int(rng.expovariate(1 / 6))
            expires = now - 3600 if rng.random() < 0.02 else None
            last = now - rng.uniform(0, age) if recalls else None
            rows.append((now - age, now - age, recalls, last, expires, memory_id))
        db.executemany(
            "UPDATE memories SET created_at = ?, updated_at = ?, access_count = ?, last_accessed_at = ?, "
            "expires_at = ? WHERE id = ?",
            rows,
        )
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    print(f"built {count} memories in {time.perf_counter() - started:.1f} s: {path}", file=sys.stderr)


def project_folder(workdir: Path) -> Path:
    project = workdir / "widgets"
    if not (project / ".git" / "config").exists():
        (project / ".git").mkdir(parents=True, exist_ok=True)
        (project / ".git" / "config").write_text(f'[remote "origin"]\n\turl = {NAMESPACE_REMOTE}\n')
    return project


def timed_runs(
    command: list[str], env: dict[str, str], stdin: bytes, runs: int, *, output_expected: bool = True
) -> tuple[list[float], str]:
    times, output = [], ""
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, input=stdin, capture_output=True, env=env, timeout=60)
        times.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0 or (output_expected and not done.stdout):
            raise SystemExit(f"the hook failed: rc={done.returncode} stderr={done.stderr.decode()!r}")
        output = done.stdout.decode()
    return times, output


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{name}: runs {len(times)}, p50 {statistics.median(times):.0f} ms, p95 {p95:.0f} ms, "
        f"min {ordered[0]:.0f} ms, max {ordered[-1]:.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/agentcache-bench-session-start"))
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--compare-cli", action="store_true")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    project = project_folder(args.workdir)
    store = args.workdir / f"memory-{args.memories}.db"
    if not store.exists():
        build(store, project, args.memories)
    env = os.environ | {
        "AGENTCACHE_DB": str(store),
        "AGENTCACHE_HOOK_LOG": str(args.workdir / "hooks.log"),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    env.pop("AGENTCACHE_PROJECT_NAMESPACE", None)
    stdin = json.dumps(
        {"session_id": "bench", "transcript_path": str(project / "t.jsonl"), "cwd": str(project),
         "hook_event_name": "SessionStart", "source": "startup"}
    ).encode()
    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")
    hook = [sys.executable, "-m", "agentcache_mcp", "hook", "session-start"]
    timed_runs(hook, env, stdin, 2)  # warm the page cache
    times, output = timed_runs(hook, env, stdin, args.runs)
    print(summary("hook session-start (entry.py)", times))
    print(f"output: {len(output)} characters, {output.count(chr(10) + '- [')} memories")
    baseline, _ = timed_runs([sys.executable, "-c", "pass"], env, b"", max(10, args.runs // 5), output_expected=False)
    print(summary("python -c pass (interpreter start alone)", baseline))
    if args.compare_cli:
        cli = [sys.executable, "-c", "from agentcache_mcp.cli import main; main()", "hook", "session-start"]
        times, _ = timed_runs(cli, env, stdin, args.runs)
        print(summary("the same through cli.main (a console script from before entry.py)", times))
    print(f"load after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min)")


if __name__ == "__main__":
    main()
