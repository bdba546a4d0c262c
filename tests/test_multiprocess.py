"""Two real processes on one database file: each sees the other's writes, by keyword and by vector."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentcache_mcp.app import open_memory
from agentcache_mcp.config import Settings

from conftest import HashEmbedder

pytestmark = pytest.mark.slow

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from agentcache_mcp.config import Settings
    from agentcache_mcp.app import open_memory
    from conftest import HashEmbedder
    eng = open_memory(Settings(db_path=Path(sys.argv[1])), embedder=HashEmbedder())
    ids = [eng.remember(f"process two note {i} about lighthouses", namespace="shared").id for i in range(20)]
    eng.embed_pending()
    seen = [h.id for h in eng.recall("harbours", namespace="shared", limit=1)]
    print(" ".join(seen))
    print(" ".join(ids))
    eng.close()
    """
)


def test_two_processes_share_one_file(db_path: Path) -> None:
    here = open_memory(Settings(db_path=db_path), embedder=HashEmbedder())
    try:
        mine = here.remember("process one note about harbours", namespace="shared")
        here.embed_pending()
        before = here.recall("lighthouses", namespace="shared")
        assert all("lighthouses" not in h.text for h in before)

        out = subprocess.run(
            [sys.executable, "-c", WRITER, str(db_path), str(Path(__file__).parent)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seen_line, ids_line = out.stdout.strip().splitlines()
        assert seen_line == mine.id  # the other process recalled our write
        theirs = ids_line.split()
        assert len(theirs) == 20

        # No restart: keyword hits immediately, and their vectors reached our index via the change log.
        hits = here.recall("lighthouses", namespace="shared", limit=50)
        assert set(theirs) <= {h.id for h in hits}
        assert len(here.backend.vectors) == 21
    finally:
        here.close()
