"""The memory core's promises checked as a host sees them: a real server process, its tools, its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from stdio_helper import StdioServer

pytestmark = pytest.mark.slow


def database_bytes(db_path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in sorted(db_path.parent.glob(db_path.name + "*")))


def test_forgotten_memories_leave_no_text_in_any_file_and_forget_stays_in_its_namespace(db_path: Path) -> None:
    server = StdioServer(db_path, env={"AGENTCACHE_NAMESPACE": "proj"})
    try:
        server.initialize()
        kept = server.call("remember", text="we meet every tuesday at the harbour")["id"]
        by_id = server.call("remember", text="my bank PIN is 4921 xylqvortish")["id"]
        server.call("remember", text="the car needs new tyres before winter")
        by_tag = server.call("remember", text="the alarm code is 7733 quarblemost", tags=["codes"])["id"]
        server.call("remember", text="lunch with the design team on friday")
        elsewhere = server.call("remember", text="another project's door codes", namespace="else", tags=["codes"])["id"]

        assert server.call("forget", ids=[by_id]) == {
            "deleted": [by_id],
            "dry_run": False,
            "not_found": [],
            "previews": [],
        }
        assert server.call("forget", tags=["codes"])["deleted"] == [by_tag]  # a dry run, default namespace only
        assert server.call("forget", tags=["codes"], dry_run=False)["deleted"] == [by_tag]
        assert server.call("forget", ids=[elsewhere]) == {
            "deleted": [],
            "dry_run": False,
            "not_found": [elsewhere],
            "previews": [],
        }
        assert server.proc.stdin is not None
        server.proc.stdin.close()
        assert server.proc.wait(timeout=60) == 0, server.stderr_tail()
    finally:
        server.close()

    stored = database_bytes(db_path)
    for gone in [b"xylqvort", b"quarblem", b"my bank PIN", b"alarm code is"]:
        assert gone not in stored, gone
    for kept_text in [b"tuesday at the harbour", b"new tyres before winter", b"another project's door codes"]:
        assert kept_text in stored

    again = StdioServer(db_path, env={"AGENTCACHE_NAMESPACE": "proj"})
    try:
        again.initialize()
        assert again.call("recall", query="harbour tuesday")["results"][0]["id"] == kept
        assert [h["id"] for h in again.call("recall", query="door codes", namespace="else")["results"]] == [elsewhere]
        found = {h["id"] for h in again.call("recall", query="xylqvortish quarblemost 4921 7733")["results"]}
        assert not found & {by_id, by_tag}
    finally:
        again.close()
