"""Fixtures of the contract suite: every test runs once per backend harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentcache_mcp.memory.service import MemoryService

from .harness import HARNESSES, Harness


@pytest.fixture(params=sorted(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    yield HARNESSES[request.param](tmp_path)


@pytest.fixture
def service(harness: Harness) -> Iterator[MemoryService]:
    memory = harness.open(namespace="home")
    yield memory
    memory.close()
