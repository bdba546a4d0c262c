"""Shared fixtures: a temporary database, a deterministic fake embedder, an engine built on both."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.service import MemoryService

DIM = 64


class HashEmbedder:
    """Deterministic stand-in for a sentence model: a hashed bag of lower-cased words.

    Texts sharing words get similar vectors, so vector recall, near-duplicate detection and fusion can be
    tested without torch; unrelated texts are nearly orthogonal.
    """

    model_id = "test-hash-embedder"
    ready = True

    def __init__(self, dim: int = DIM):
        self._dim = dim
        self.calls = 0

    @property
    def dim(self) -> int:
        return self._dim

    def load(self) -> None:
        pass

    def wait_ready(self, timeout: float) -> bool:
        return True

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[i, h % self._dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = np.linalg.norm(out[i])
            out[i] = out[i] / norm if norm else out[i]
        return out


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "memory.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(db_path=db_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[MemoryService]:
    eng = open_memory(settings, embedder=HashEmbedder())
    yield eng
    eng.close()
