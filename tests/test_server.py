"""The MCP tools and resource through the SDK's in-memory client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
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
        "supersedes",
    }
    for tool in tools.values():
        assert tool.input_schema["additionalProperties"] is False
    assert set(tools["recall"].input_schema["properties"]) == {"query", "namespace", "tags", "limit", "since", "until"}
    assert set(tools["forget"].input_schema["properties"]) == {
        "ids",
        "namespace",
        "tags",
        "older_than_days",
        "dry_run",
    }


async def test_tool_descriptions_are_one_paragraph_without_hard_line_breaks(client: Client) -> None:
    # clients show the description as it is sent: a docstring's line breaks and indentation showed as such
    for tool in (await client.list_tools()).tools:
        assert tool.description and "\n" not in tool.description and "  " not in tool.description, tool.name


async def test_the_readme_names_the_resource_templates_as_they_are_advertised(client: Client) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    templates = [t.uri_template for t in (await client.list_resource_templates()).resource_templates]
    assert templates
    for template in templates:
        assert f"`{template}`" in readme, template


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
    assert set(hit) == {
        "id",
        "text",
        "namespace",
        "tags",
        "importance",
        "metadata",
        "created_at",
        "updated_at",
        "expires_at",
        "score",
        "relevance",
    }
    assert hit["expires_at"] is None and hit["updated_at"] >= hit["created_at"]
    assert found["retrieval"] == "hybrid" and found["retrieval_note"] is None
    assert found["match"] == "good" and 0.0 <= hit["relevance"] <= 1.0

    preview = await call(client, "forget", namespace="proj", tags=["editor"])
    assert preview == {
        "deleted": [r["id"]],
        "dry_run": True,
        "not_found": [],
        "previews": [{"id": r["id"], "preview": "Alice uses vim with the gruvbox theme"}],
    }
    assert len((await call(client, "recall", query="editor Alice"))["results"]) == 1
    gone = await call(client, "forget", ids=[r["id"]])
    assert gone == {"deleted": [r["id"]], "dry_run": False, "not_found": [], "previews": []}
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
        (
            "remember",
            {"text": "ok", "importance": "high"},
            "argument 'importance' must be a number; got \"high\" (a string)",
        ),
        ("remember", {"text": "ok", "priority": "high"}, "unknown argument 'priority'; it accepts importance,"),
        ("remember", {"importance": 0.5}, "argument 'text' is required"),
        ("remember", {"text": "ok", "tags": "a"}, "argument 'tags' must be a list; got \"a\" (a string)"),
        ("remember", {"text": "ok", "tags": ["a", 3]}, "argument 'tags[1]' must be a string; got 3 (a number)"),
        ("recall", {"query": "x", "limit": "ten"}, "argument 'limit' must be a whole number; got \"ten\""),
        ("forget", {"ids": ["x"], "dry_run": "maybe"}, "argument 'dry_run' must be true or false"),
        ("remember", {"text": "ok", "supersedes": ["NOSUCHID"]}, "supersedes names NOSUCHID"),
        (
            "remember",
            {"text": "ok", "importance": True},
            "argument 'importance' must be a number; got true (a boolean)",
        ),
        ("remember", {"text": "ok", "ttl_days": False}, "argument 'ttl_days' must be a number; got false"),
        ("recall", {"query": "x", "limit": True}, "argument 'limit' must be a whole number; got true (a boolean)"),
        (
            "remember",
            {"text": "ok", "metadata": {"a": [1]}},
            "argument 'metadata[a]' must be a string, a number or true or false; got [1] (a list)",
        ),
    ],
)
async def test_bad_input_is_a_clear_tool_error_and_the_server_stays_up(
    client: Client, tool: str, args: dict, fragment: str
) -> None:
    message = await error(client, tool, **args)
    assert fragment in message
    assert "Traceback" not in message and "pydantic" not in message and "http" not in message
    # still serving
    await call(client, "remember", text="still alive")


async def test_stats_resource(client: Client) -> None:
    await call(client, "remember", text="one", namespace="a")
    await call(client, "remember", text="two", namespace="b")
    result = await client.read_resource("agentcache://stats")
    stats = json.loads(result.contents[0].text)  # type: ignore[union-attr]
    assert stats["memories"] == 2 and stats["namespaces"] == {"a": 1, "b": 1}
    assert {"pending_embeddings", "embedding_model", "db_path", "index"} <= set(stats)


async def test_remember_supersedes_corrects_a_memory_and_forgetting_the_correction_restores_it(
    client: Client,
) -> None:
    old = (await call(client, "remember", text="The team standup is at 9:30 in room Hopper"))["id"]
    new = (await call(client, "remember", text="The team standup moved to 10:00 in room Lovelace", supersedes=[old]))[
        "id"
    ]
    found = [h["id"] for h in (await call(client, "recall", query="When and where is the team standup?"))["results"]]
    assert found == [new]
    await call(client, "forget", ids=[new])
    found = [h["id"] for h in (await call(client, "recall", query="When and where is the team standup?"))["results"]]
    assert found == [old]


async def test_supersedes_refuses_ids_of_another_namespace_and_stores_nothing(client: Client) -> None:
    theirs = (await call(client, "remember", text="their standup time", namespace="other"))["id"]
    message = await error(client, "remember", text="our standup time is noon", supersedes=[theirs])
    assert f"supersedes names {theirs}" in message and "nothing was stored" in message
    assert (await call(client, "recall", query="standup noon"))["results"] == []
    found = await call(client, "recall", query="their standup", namespace="other")
    assert [h["id"] for h in found["results"]] == [theirs]


async def test_memory_and_namespace_resources_browse_the_store(client: Client) -> None:
    ids = [(await call(client, "remember", text=f"browsable note number {i}", tags=["b"]))["id"] for i in range(55)]
    one = json.loads((await client.read_resource(f"agentcache://memory/{ids[3]}")).contents[0].text)  # type: ignore[union-attr]
    assert one["id"] == ids[3] and one["text"] == "browsable note number 3" and one["namespace"] == "proj"
    assert {"created_at", "updated_at", "expires_at", "access_count", "superseded_by", "tags"} <= set(one)

    templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
    assert {"agentcache://memory/{memory_id}", "agentcache://namespace/{name}{?before}"} <= templates
    first = json.loads((await client.read_resource("agentcache://namespace/proj")).contents[0].text)  # type: ignore[union-attr]
    assert [m["id"] for m in first["memories"]] == ids[::-1][:50]  # newest first
    second = json.loads((await client.read_resource(first["next"])).contents[0].text)  # type: ignore[union-attr]
    assert [m["id"] for m in second["memories"]] == ids[::-1][50:] and second["next"] is None
    empty = json.loads((await client.read_resource("agentcache://namespace/nobody")).contents[0].text)  # type: ignore[union-attr]
    assert empty == {"namespace": "nobody", "memories": [], "next": None}


async def test_unknown_memory_resource_is_a_clear_error(client: Client) -> None:
    from mcp.shared.exceptions import MCPError

    with pytest.raises(MCPError, match="no memory with id 'NOPE'"):
        await client.read_resource("agentcache://memory/NOPE")
    with pytest.raises(MCPError, match="namespace"):
        await client.read_resource("agentcache://namespace/bad%20name")


async def test_a_second_correction_does_not_undo_the_first(client: Client) -> None:
    a = (await call(client, "remember", text="the meeting room is Alpha"))["id"]
    b = (await call(client, "remember", text="the meeting room is Beta", supersedes=[a]))["id"]
    c = (await call(client, "remember", text="the meeting room is Gamma", supersedes=[a]))["id"]
    await call(client, "forget", ids=[c])
    found = [h["id"] for h in (await call(client, "recall", query="which meeting room?"))["results"]]
    assert found == [b]  # a stays replaced by its first correction


class SlowLoadingEmbedder(HashEmbedder):
    """Loads as the real model does (in the background, started by the server or by the first wait), only
    slower than a recall's bound: the load ends when `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.loaded = threading.Event()
        self.load_started = False

    @property  # type: ignore[override]
    def ready(self) -> bool:
        return self.loaded.is_set()

    def load(self) -> None:
        self.load_started = True
        self.release.wait(60)
        self.loaded.set()

    def wait_ready(self, timeout: float) -> bool:
        if not self.load_started:
            threading.Thread(target=self.load, daemon=True).start()
        return self.loaded.wait(timeout)

    def embed(self, texts: list[str]) -> np.ndarray:
        self.load()
        return super().embed(texts)


async def test_a_first_recall_answers_by_keyword_within_the_default_wait_while_the_model_loads(db_path: Path) -> None:
    """openai-agents gives up on a call after 5 s; the bundled model takes 6-9 s to load on a small CPU. By
    default a recall waits MODEL_WAIT_S (3 s) for it, then answers by keyword and says why."""
    model = SlowLoadingEmbedder()
    settings = Settings(db_path=db_path, auto_forget_enabled=False)
    async with Client(build_server(settings, embedder=model)) as c:
        await call(c, "remember", text="the spare key is under the blue flower pot")
        started = time.monotonic()
        found = await call(c, "recall", query="where is the spare key?")
        elapsed = time.monotonic() - started
        assert elapsed < 3.0 + 1.5, elapsed  # well inside a 5 s client timeout
        assert found["retrieval"] == "keyword" and "still loading" in found["retrieval_note"]
        assert found["results"][0]["text"] == "the spare key is under the blue flower pot"
        model.release.set()
        assert await anyio.to_thread.run_sync(model.loaded.wait, 30)
        later = await call(c, "recall", query="where is the spare key?")
        assert later["retrieval"] == "hybrid" and later["retrieval_note"] is None


async def test_recall_says_match_none_when_nothing_stored_matches_and_describes_the_fields(client: Client) -> None:
    await call(client, "remember", text="Alice uses vim with the gruvbox theme")
    await call(client, "remember", text="The staging database listens on port 5433")
    found = await call(client, "recall", query="What is the boiling point of mercury?")
    assert found["results"] and found["match"] == "none"
    assert all(hit["relevance"] < 0.5 for hit in found["results"])
    assert (await call(client, "recall", query="staging database port"))["match"] == "good"
    [tool] = [t for t in (await client.list_tools()).tools if t.name == "recall"]
    assert tool.output_schema is not None
    schema = tool.output_schema
    assert "nothing" in schema["properties"]["match"]["description"]
    hit_schema = schema["$defs"]["MemoryHit"]["properties"]
    assert "across queries" in hit_schema["relevance"]["description"]
    assert "within one result list" in hit_schema["score"]["description"]
