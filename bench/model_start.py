"""Where the bundled model's load time goes, in a fresh process each run.

    python bench/model_start.py [--runs N]

Times, in order: importing torch, importing sentence-transformers, finding the bundled model's package, the
sha256 check of its weights, building the model, its first and second encode of one sentence. What a
server's background load does (agentcache_mcp/embeddings.py), step by step.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        out = subprocess.run(
            [sys.executable, "-c", ONE_RUN],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| step | " + " | ".join(f"run {i + 1} (s)" for i in range(len(runs))) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for row, (name, _) in enumerate(runs[0]):
        print(f"| {name} | " + " | ".join(f"{run[row][1]:.2f}" for run in runs) + " |")
    print("| total | " + " | ".join(f"{sum(t for _, t in run):.2f}" for run in runs) + " |")


if __name__ == "__main__":
    main()
