"""The MCP tools and resource through the SDK's in-memory client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from agentcache_mcp.config import Settings
from agentcache_mcp.server import build_server

from conftest import HashEmbedder

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    settings = Settings(db_path=db_path, auto_forget_enabled=False, namespace="proj")
    async with Client(build_server(settings, embedder=HashEmbedder())) as c:
        yield c


async def call(client: Client, tool: str, **args: object) -> dict:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def error(client: Client, tool: str, **args: object) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    return result.content[0].text  # type: ignore[union-attr]


async def test_tools_are_listed_with_schemas_and_annotations(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"remember", "recall", "forget"}
    assert tools["recall"].annotations and tools["recall"].annotations.read_only_hint
    assert tools["forget"].annotations and tools["forget"].annotations.destructive_hint
    assert tools["remember"].annotations and tools["remember"].annotations.idempotent_hint
    for tool in tools.values():
        assert tool.output_schema is not None and tool.description
    assert set(tools["remember"].input_schema["properties"]) == {
        "text",
        "namespace",
        "tags",
        "importance",
        "ttl_days",
        "metadata",
    }
    assert set(tools["recall"].input_schema["properties"]) == {"query", "namespace", "tags", "limit", "since", "until"}
    assert set(tools["forget"].input_schema["properties"]) == {
        "ids",
        "namespace",
        "tags",
        "older_than_days",
        "dry_run",
    }


async def test_remember_recall_forget_round_trip(client: Client) -> None:
    r = await call(
        client, "remember", text="Alice uses vim with the gruvbox theme", tags=["editor"], metadata={"src": "chat"}
    )
    assert r["namespace"] == "proj" and r["deduplicated"] is False  # AGENTCACHE_NAMESPACE default
    again = await call(client, "remember", text="alice uses VIM with the gruvbox theme")
    assert again == {**r, "deduplicated": True}

    found = await call(client, "recall", query="Which editor does Alice use?")
    [hit] = found["results"]
    assert hit["id"] == r["id"] and hit["tags"] == ["editor"] and hit["metadata"] == {"src": "chat"}
    assert set(hit) == {"id", "text", "namespace", "tags", "importance", "metadata", "created_at", "score"}

    preview = await call(client, "forget", namespace="proj", tags=["editor"])
    assert preview == {"deleted": [r["id"]], "dry_run": True, "not_found": []}
    assert len((await call(client, "recall", query="editor Alice"))["results"]) == 1
    gone = await call(client, "forget", ids=[r["id"]])
    assert gone == {"deleted": [r["id"]], "dry_run": False, "not_found": []}
    assert (await call(client, "recall", query="editor Alice"))["results"] == []


async def test_namespaces_are_isolated_over_the_protocol(client: Client) -> None:
    await call(client, "remember", text="blue team secret", namespace="team-a")
    assert (await call(client, "recall", query="secret", namespace="team-b"))["results"] == []
    assert len((await call(client, "recall", query="secret", namespace="team-a"))["results"]) == 1


@pytest.mark.parametrize(
    ("tool", "args", "fragment"),
    [
        ("remember", {"text": ""}, "empty"),
        ("remember", {"text": "x" * 33_000}, "limit is 32768"),
        ("remember", {"text": "ok", "importance": 2}, "between 0 and 1"),
        ("remember", {"text": "ok", "ttl_days": 0}, "positive"),
        ("remember", {"text": "ok", "namespace": "../../etc"}, "namespace"),
        ("remember", {"text": "ok", "tags": [f"t{i}" for i in range(33)]}, "at most 32 tags"),
        ("remember", {"text": "ok", "metadata": {"a": {"b": 1}}}, "metadata"),
        ("remember", {"text": 12}, "text"),
        ("recall", {"query": "x", "limit": 0}, "limit"),
        ("recall", {"query": "x", "limit": 1000}, "limit"),
        ("recall", {"query": "x", "since": "last tuesday"}, "ISO 8601"),
        ("recall", {"query": ""}, "empty"),
        ("forget", {}, "needs ids"),
        ("forget", {"ids": "notalist"}, "ids"),
        ("nosuchtool", {}, "nosuchtool"),
    ],
)
async def test_bad_input_is_a_clear_tool_error_and_the_server_stays_up(
    client: Client, tool: str, args: dict, fragment: str
) -> None:
    message = await error(client, tool, **args)
    assert fragment in message
    assert "Traceback" not in message
    # still serving
    await call(client, "remember", text="still alive")


async def test_stats_resource(client: Client) -> None:
    await call(client, "remember", text="one", namespace="a")
    await call(client, "remember", text="two", namespace="b")
    result = await client.read_resource("agentcache://stats")
    stats = json.loads(result.contents[0].text)  # type: ignore[union-attr]
    assert stats["memories"] == 2 and stats["namespaces"] == {"a": 1, "b": 1}
    assert {"pending_embeddings", "embedding_model", "db_path", "index"} <= set(stats)
