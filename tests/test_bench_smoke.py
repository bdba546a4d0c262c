"""A tiny run of the LoCoMo harness, so it never rots (the full run is `python bench/locomo.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"

pytestmark = [pytest.mark.slow, pytest.mark.model]


def test_gold_normalisation() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from locomo import normalise_gold
    finally:
        sys.path.pop(0)
    valid = {"D8:6", "D9:17", "D11:26", "D30:5"}
    assert normalise_gold(["D8:6; D9:17"], valid) == {"D8:6", "D9:17"}
    assert normalise_gold(["D:11:26", "D30:05", "D", "D99:1"], valid) == {"D11:26", "D30:5"}


@pytest.mark.skipif(not DATA.is_file(), reason="needs ../shared/bench/locomo/locomo_dev.json beside the repo")
def test_locomo_harness_runs_on_a_slice() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "locomo.py"),
            str(DATA),
            "--limit-conversations",
            "1",
            "--questions",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    headline = out.stdout.split("Per category")[0]
    rows = {line.split("|")[1].strip(): line for line in headline.splitlines() if line.startswith("| ")}
    assert {"bm25", "dense", "hybrid"} <= set(rows)
    r10 = float(rows["hybrid"].split("|")[3])
    assert 0.0 < r10 <= 1.0


def test_scale_harness_runs_small() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "300", "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert "recall p50 / floor" in rows and "peak RSS (MiB)" in rows
    ratio = float(rows["recall p50 / floor"].split("|")[2].strip().rstrip("x"))
    assert ratio > 0


def test_load_harness_runs_briefly() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "load.py"), "--clients", "2", "--seconds", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "errors 0" in out.stdout, out.stdout


def test_scale_harness_runs_small_on_postgres() -> None:
    """`--backend postgres` on the bundled server: the SQLite build moved across with its vectors, ANN recall."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--backend", "postgres", "--sizes", "300", "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ")}
    assert "import into PostgreSQL (s; memories/s)" in rows and "peak RSS (MiB)" in rows
    recall = float(rows["ANN recall@10 vs exact, k=10 (p50 ms)"].split("|")[2].split()[0])
    assert recall == 1.0, out.stdout  # 300 vectors in one namespace: searched exactly


def test_load_harness_runs_replicas_on_postgres() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "load.py"),
            *("--postgres", "--replicas", "2", "--clients", "2", "--seconds", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "2 server(s)" in out.stdout and "errors 0" in out.stdout, out.stdout
    assert "replica exit codes after SIGTERM: [0, 0]" in out.stdout, out.stdout
