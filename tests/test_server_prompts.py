"""What the server tells a model without being asked: its instructions, tool descriptions and prompts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from agentcache_mcp.config import Settings
from agentcache_mcp.server import (
    FORGET_DESCRIPTION,
    INSTRUCTIONS,
    INSTRUCTIONS_BUDGET,
    RECALL_DESCRIPTION,
    REMEMBER_DESCRIPTION,
    build_server,
)

from conftest import HashEmbedder

pytestmark = pytest.mark.anyio

DESCRIPTION_BUDGET = 450
"""Characters at most per tool description (the three are sent with every tools/list)."""
PROMPT_BUDGET = 700
"""Characters at most per rendered prompt."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(db_path: Path) -> AsyncIterator[Client]:
    settings = Settings(db_path=db_path, auto_forget_enabled=False, namespace="proj")
    async with Client(build_server(settings, embedder=HashEmbedder())) as c:
        yield c


async def test_initialize_returns_instructions_that_say_when_to_recall_and_when_to_remember(client: Client) -> None:
    text = client.instructions
    assert text == INSTRUCTIONS
    assert "before answering about the user, the project or past decisions" in text
    for durable in ("decisions", "preferences", "facts the user states", "fixes that worked"):
        assert durable in text
    assert "One fact per" in text
    assert '<agentcache-memory namespace="...">' in text  # the session-start hook's block


def test_instructions_tool_descriptions_and_prompts_stay_short() -> None:
    assert len(INSTRUCTIONS) <= INSTRUCTIONS_BUDGET
    for description in (REMEMBER_DESCRIPTION, RECALL_DESCRIPTION, FORGET_DESCRIPTION):
        assert len(description) <= DESCRIPTION_BUDGET


async def test_tool_descriptions_say_when_to_use_them(client: Client) -> None:
    tools = {t.name: t.description or "" for t in (await client.list_tools()).tools}
    assert "before answering about the user, the project or past decisions" in tools["recall"]
    assert "fix that worked" in tools["remember"] and "never secrets" in tools["remember"]


async def test_prompts_are_listed_with_optional_arguments(client: Client) -> None:
    prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"what-do-you-remember", "remember-this-session"}
    assert [(a.name, a.required) for a in prompts["what-do-you-remember"].arguments or []] == [
        ("topic", False),
        ("namespace", False),
    ]
    assert [(a.name, a.required) for a in prompts["remember-this-session"].arguments or []] == [("namespace", False)]
    for prompt in prompts.values():
        assert prompt.title and prompt.description
        assert all(a.description for a in prompt.arguments or [])
    assert "'proj'" in (prompts["remember-this-session"].arguments or [])[0].description  # type: ignore[operator]


async def test_what_do_you_remember_asks_the_model_to_recall_and_summarise(client: Client) -> None:
    result = await client.get_prompt("what-do-you-remember", {"topic": "  the release\nprocess ", "namespace": "acme"})
    assert len(result.messages) == 1 and result.messages[0].role == "user"
    text = result.messages[0].content.text  # type: ignore[union-attr]
    assert "`recall`" in text and "summarise" in text and "never invent" in text
    assert 'about the release process in namespace "acme".' in text
    assert len(text) <= PROMPT_BUDGET
    bare = await client.get_prompt("what-do-you-remember")
    assert "about this project and me." in bare.messages[0].content.text  # type: ignore[union-attr]


async def test_remember_this_session_asks_the_model_to_store_durable_facts_without_secrets(client: Client) -> None:
    result = await client.get_prompt("remember-this-session", {"namespace": "git:github.com:acme:widgets"})
    text = result.messages[0].content.text  # type: ignore[union-attr]
    assert '`remember` tool in namespace "git:github.com:acme:widgets":' in text
    assert "One fact per call" in text and "never store secrets" in text and "supersedes" in text
    assert len(text) <= PROMPT_BUDGET
    assert "in namespace" not in (await client.get_prompt("remember-this-session", {"namespace": ""})).messages[
        0
    ].content.text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("what-do-you-remember", {"topics": "x"}, "prompt 'what-do-you-remember' has no argument 'topics'; it accepts topic, namespace"),
        ("what-do-you-remember", {"namespace": "a/b"}, "argument 'namespace':"),
        ("what-do-you-remember", {"topic": "x" * 201}, "argument 'topic' is 201 characters; at most 200"),
        ("remember-this-session", {"namespace": "../etc"}, "argument 'namespace':"),
        ("no-such-prompt", {}, "no prompt named 'no-such-prompt'; the prompts are what-do-you-remember, remember-this-session"),
    ],
)
async def test_a_bad_prompt_argument_gets_an_error_that_names_it(
    client: Client, name: str, arguments: dict[str, str], message: str
) -> None:
    with pytest.raises(MCPError) as refused:
        await client.get_prompt(name, arguments)
    assert message in str(refused.value.message)
    assert "Error rendering prompt" not in refused.value.message
    assert (await client.list_prompts()).prompts  # the server is still up
