"""Fixtures of the contract suite: every test runs once per backend harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcache_mcp.memory.service import MemoryService

from .harness import HARNESSES, Harness, PostgresHarness, SqliteHarness


@pytest.fixture(params=HARNESSES)
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param == "postgres":
        yield PostgresHarness(request.getfixturevalue("postgres_server"), request.getfixturevalue("postgres_url"))
    else:
        yield SqliteHarness(tmp_path)


@pytest.fixture
def service(harness: Harness) -> Iterator[MemoryService]:
    memory = harness.open(namespace="home")
    yield memory
    memory.close()
