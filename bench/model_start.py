"""Where the bundled model's load time goes, in a fresh process each run.

    python bench/model_start.py [--runs N]

Through sentence-transformers (how the server loaded it before issue 19), in order: importing torch,
importing sentence-transformers, finding the bundled model's package, the sha256 check of its weights,
building the model, its first and second encode of one sentence (the total leaves out the second). Then, in another fresh process, what the
server does now (agentcache_mcp/embeddings.py: transformers alone): import torch, the whole load (transformers,
hash check, model), the first encode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ONE_RUN = """
import json, time
marks = [("start", time.perf_counter())]
import torch
marks.append(("import torch", time.perf_counter()))
import sentence_transformers
marks.append(("import sentence_transformers", time.perf_counter()))
from agentcache_mcp.embeddings import bundled_model_dir, verify_bundled_model
path = bundled_model_dir()
marks.append(("find the bundled package", time.perf_counter()))
verify_bundled_model(path)
marks.append(("sha256 of the weights", time.perf_counter()))
model = sentence_transformers.SentenceTransformer(str(path), device="cpu", local_files_only=True)
marks.append(("build the model", time.perf_counter()))
model.encode(["what did Alice say about the trip?"], normalize_embeddings=True)
marks.append(("first encode", time.perf_counter()))
model.encode(["what did Bob say about the trip?"], normalize_embeddings=True)
marks.append(("second encode", time.perf_counter()))
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""


SERVER_RUN = """
import json, time
marks = [("start", time.perf_counter())]
import torch
marks.append(("server: import torch", time.perf_counter()))
from agentcache_mcp.embeddings import SentenceTransformerEmbedder
model = SentenceTransformerEmbedder()
model.load()
marks.append(("server: load (transformers, hash, build)", time.perf_counter()))
model.embed(["what did Alice say about the trip?"])
marks.append(("server: first encode", time.perf_counter()))
print(json.dumps([(name, t - marks[i][1]) for i, (name, t) in enumerate(marks[1:])]))
"""


def timed(script: str) -> list[tuple[str, float]]:
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return [(name, t) for name, t in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):  # the two ways alternate, so a change in the machine's load hits both
        steps = timed(ONE_RUN)
        steps.append(("total through sentence-transformers", sum(t for n, t in steps if n != "second encode")))
        server = timed(SERVER_RUN)
        server.append(("server: total", sum(t for _, t in server)))
        runs.append(steps + server)
    print("| step | " + " | ".join(f"run {i + 1} (s)" for i in range(len(runs))) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for row, (name, _) in enumerate(runs[0]):
        print(f"| {name} | " + " | ".join(f"{run[row][1]:.2f}" for run in runs) + " |")


if __name__ == "__main__":
    main()
