"""What the contract suite needs from a backend, and one harness per backend.

A harness opens MemoryServices over one store (several at once, as several processes would) and, after
they closed, says whether some bytes still appear anywhere the backend keeps data.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol
from urllib.parse import urlsplit

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings
from agentcache_mcp.memory.service import MemoryService

from conftest import HashEmbedder, PostgresServer


class Harness(Protocol):
    can_read_files: bool
    """stored_bytes() works here (False: a PostgreSQL server whose files this machine cannot read)."""

    def open(self, embedder: HashEmbedder | None = None, **settings: object) -> MemoryService:
        """A service over this harness's store (the same store every time)."""
        ...

    def stored_bytes(self) -> bytes:
        """Every byte of the store's files, read after all services closed (checkpointed; on PostgreSQL, erased
        first: its erase runs on a schedule)."""
        ...


class SqliteHarness:
    can_read_files = True

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "memory.db"

    def open(self, embedder: HashEmbedder | None = None, **settings: object) -> MemoryService:
        return open_memory(Settings(db_path=self.path, **settings), embedder=embedder or HashEmbedder())  # type: ignore[arg-type]

    def stored_bytes(self) -> bytes:
        files = sorted(self.path.parent.glob(self.path.name + "*"))  # memory.db, -wal, -shm
        return b"".join(f.read_bytes() for f in files)


class PostgresHarness:
    """A fresh database on the session's PostgreSQL server. stored_bytes() is every file of that database's
    directory (base/<oid>: tables, indexes, TOAST, free-space maps) after a CHECKPOINT wrote the server's
    buffers out. Not the WAL (pg_wal), which PostgreSQL keeps for recovery and no backend can erase: see
    backends/postgres/__init__.py and tests/test_postgres_erasure.py."""

    can_read_files: ClassVar[bool]

    def __init__(self, server: PostgresServer, url: str):
        self.server = server
        self.url = url
        self.can_read_files = server.data_directory is not None

    def open(self, embedder: HashEmbedder | None = None, **settings: object) -> MemoryService:
        return open_memory(Settings(database_url=self.url, **settings), embedder=embedder or HashEmbedder())  # type: ignore[arg-type]

    def database_files(self) -> list[Path]:
        import psycopg

        assert self.server.data_directory is not None
        name = urlsplit(self.url).path.lstrip("/")
        with psycopg.connect(self.server.url, autocommit=True) as admin:
            admin.execute("CHECKPOINT")
            row = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (name,)).fetchone()
        assert row is not None
        return sorted(p for p in (self.server.data_directory / "base" / str(row[0])).iterdir() if p.is_file())

    def stored_bytes(self) -> bytes:
        return b"".join(f.read_bytes() for f in self.database_files())

    def wal_bytes(self) -> bytes:
        assert self.server.data_directory is not None
        wal = self.server.data_directory / "pg_wal"
        return b"".join(f.read_bytes() for f in sorted(wal.iterdir()) if f.is_file())


HARNESSES = ("postgres", "sqlite")
