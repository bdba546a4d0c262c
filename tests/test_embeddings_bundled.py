"""The bundled model loads on transformers alone, and gives sentence-transformers' vectors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import agentcache_mcp
from agentcache_mcp.embeddings import SentenceTransformerEmbedder, bundled_model_dir

pytestmark = pytest.mark.model

PACKAGE_ROOT = Path(agentcache_mcp.__file__).resolve().parent.parent
"""Where the agentcache_mcp under test lives: the subprocess imports that one."""

TEXTS = [
    "Alice uses Neovim with the gruvbox theme",
    "Dana: Oh yes, Ravi, those trips are my favourite memories. I kept every photo [shares a lake at dusk]",
    "  leading and trailing spaces  ",
    "\ttabs\nand newlines\r\n",
    "x",
    "",
    "🙂 emoji, ünïcödé, 日本語のテキスト, Ελληνικά",
    "snake_case_words and CamelCaseWords and UPPER CASE",
    "word " * 600,  # far past the 256-token limit: truncated alike
    "What did Ravi decide after his first marathon?",
]


def test_the_bundled_model_gives_the_vectors_sentence_transformers_gives() -> None:
    from sentence_transformers import SentenceTransformer

    ours = SentenceTransformerEmbedder()
    ours.load()
    reference = SentenceTransformer(str(bundled_model_dir()), device="cpu", local_files_only=True)
    expected = reference.encode(TEXTS, batch_size=4, normalize_embeddings=True, convert_to_numpy=True)
    for batch_size in (64, 3):  # the batching (and so the padding) does not change a vector
        ours.batch_size = batch_size
        got = ours.embed(TEXTS)
        assert got.dtype == np.float32 and got.shape == (len(TEXTS), ours.dim) == expected.shape
        assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(ours.embed(TEXTS), axis=1), 1.0, atol=1e-5)


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    """The script in a fresh interpreter (nothing imported yet), with the agentcache_mcp under test."""
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=PACKAGE_ROOT,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )


def test_loading_the_bundled_model_does_not_import_sentence_transformers() -> None:
    """Importing it took 4.5-5.3 s of the 6.5-8 s load on a quiet 2-core machine."""
    script = (
        "import sys\n"
        "from agentcache_mcp.embeddings import SentenceTransformerEmbedder\n"
        "model = SentenceTransformerEmbedder()\n"
        "model.load()\n"
        "assert model.embed(['hello']).shape == (1, 384)\n"
        "print(sorted(m for m in ('sentence_transformers', 'sklearn') if m in sys.modules))\n"
    )
    out = run_python(script)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


def test_the_bundled_model_says_its_dimension_without_loading() -> None:
    """An import learns the store model's dimension (to check the file's vectors) before it writes anything:
    reading it from the model's config spares it the 4-5 s load, and it is the loaded model's."""
    script = (
        "import sys\n"
        "from agentcache_mcp.embeddings import SentenceTransformerEmbedder\n"
        "model = SentenceTransformerEmbedder()\n"
        "before = model.dim\n"
        "print(before, model.ready, 'torch' in sys.modules)\n"
        "model.load()\n"
        "print(model.dim, model.embed(['hello']).shape[1])\n"
    )
    out = run_python(script)
    unloaded, loaded = out.stdout.strip().splitlines()[-2:]
    assert unloaded == "384 False False", out.stderr[-2000:]
    assert loaded == "384 384"
