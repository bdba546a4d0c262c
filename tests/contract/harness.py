"""What the contract suite needs from a backend, and one harness per backend.

A harness opens MemoryServices over one store (several at once, as several processes would) and, after
they closed, says whether some bytes still appear anywhere the backend keeps data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder


class Harness(Protocol):
    def open(self, embedder: HashEmbedder | None = None, **settings: object) -> MemoryService:
        """A service over this harness's store (the same store every time)."""
        ...

    def stored_bytes(self) -> bytes:
        """Every byte of the store's files, read after all services closed (checkpointed)."""
        ...


class SqliteHarness:
    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "memory.db"

    def open(self, embedder: HashEmbedder | None = None, **settings: object) -> MemoryService:
        return open_memory(Settings(db_path=self.path, **settings), embedder=embedder or HashEmbedder())  # type: ignore[arg-type]

    def stored_bytes(self) -> bytes:
        files = sorted(self.path.parent.glob(self.path.name + "*"))  # memory.db, -wal, -shm
        return b"".join(f.read_bytes() for f in files)


HARNESSES = {"sqlite": SqliteHarness}
