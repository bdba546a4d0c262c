"""The MCP server: three tools and the browsing resources, each a thin adapter over MemoryService.

`build_server(settings)` builds everything and imports nothing heavy, so a host's `initialize` and
`tools/list` are answered while torch and the model load in the background.
"""

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import quote

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, ToolAnnotations
from pydantic import BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from . import __version__
from .config import Settings
from .embeddings import Embedder
from .memory.model import MatchLevel, Memory, memory_fields
from .memory.ports import StoreError
from .memory.validation import MAX_LIMIT, MAX_TAGS, InvalidInput, validate_namespace
from .tool_arguments import check_arguments_humanely
from .workers import App, open_app

T = TypeVar("T")

MetadataValue = str | int | float | bool

INSTRUCTIONS = """\
Long-term memory that persists across conversations.
Recall first: before answering about the user, the project or past decisions, call `recall` with the key words.
Remember as you go: decisions, preferences, conventions, facts the user states, fixes that worked. One fact per
`remember`, phrased to stand alone ("Alice prefers tabs in Python", not "she prefers tabs"); never secrets.
When an <agentcache-memory namespace="..."> block opens the session, pass that namespace to recall and remember.
`forget` when the user asks or a memory is wrong; correct one with remember(supersedes=[its id])."""
INSTRUCTIONS_BUDGET = 700
"""Characters at most: hosts put the instructions in every conversation's context (tests/test_server_prompts.py)."""


class RememberResult(BaseModel):
    id: str = Field(description="The memory's id (use it with forget).")
    namespace: str
    deduplicated: bool = Field(description="True if the same text was already stored; its id is returned.")


class MemoryHit(BaseModel):
    id: str
    text: str
    namespace: str
    tags: list[str]
    importance: float
    metadata: dict[str, MetadataValue]
    created_at: str = Field(description="ISO 8601, UTC.")
    updated_at: str = Field(description="When it was last remembered again (ISO 8601, UTC).")
    expires_at: str | None = Field(description="When it will be forgotten (ISO 8601, UTC); null: never.")
    score: float = Field(
        description="Ranking score; higher is better. Comparable within one result list only: see relevance."
    )
    relevance: float = Field(
        description="0..1, comparable across queries: how well this memory matches the query in meaning and "
        "words, whatever else is stored. Low for every result: nothing stored answers the query well."
    )


class RecallResult(BaseModel):
    results: list[MemoryHit]
    retrieval: Literal["hybrid", "keyword"] = Field(
        description="hybrid: ranked by meaning and keywords; keyword: by keywords only (see retrieval_note)."
    )
    retrieval_note: str | None = Field(default=None, description="Why the ranking was keyword-only.")
    match: MatchLevel = Field(
        description="How well the best result matches: good; weak (related, may not answer); none (nothing "
        "stored matches the query well: do not take these results as the answer)."
    )


class ForgetPreview(BaseModel):
    id: str
    preview: str = Field(description="The start of the memory's text.")


class ForgetResult(BaseModel):
    deleted: list[str] = Field(description="Ids deleted, or with dry_run the ids that would be deleted.")
    dry_run: bool
    not_found: list[str] = Field(
        default_factory=list, description="Ids asked for that are not memories of this namespace; untouched."
    )
    previews: list[ForgetPreview] = Field(
        default_factory=list, description="With dry_run: each memory that would be deleted, with its text's start."
    )


def _refuse_booleans(error_type: str) -> BeforeValidator:
    """JSON true/false is not a number: pydantic's lax mode would store `importance: true` as 1.0."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(error_type, "not a boolean")
        return value

    return BeforeValidator(check)


NOT_A_BOOLEAN_NUMBER = _refuse_booleans("float_type")
NOT_A_BOOLEAN_INT = _refuse_booleans("int_type")

NAMESPACE_PAGE = 50


def memory_json(m: Memory) -> dict[str, Any]:
    """A memory as the browsing resources show it: every field a person may want."""
    return memory_fields(m)


def _app(ctx: Context) -> App:
    app: App = ctx.request_context.lifespan_context  # type: ignore[assignment]
    return app


async def _run_tool(app: App, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run service work off the loop; expected refusals become ToolError (is_error, no traceback logged)."""
    try:
        return await app.run(fn, *args, **kwargs)
    except InvalidInput as exc:
        raise ToolError(str(exc)) from None
    except StoreError as exc:
        raise ToolError(str(exc)) from None


def _one_line(text: str) -> str:
    """A description as clients show it: one paragraph, no hard line breaks or indentation."""
    return " ".join(text.split())


REMEMBER_DESCRIPTION = _one_line(
    """Store a durable memory for later conversations: a decision, preference, convention, fact the user stated,
    or a fix that worked. One per call, phrased to stand alone; never secrets. The same text twice returns the
    existing memory. To correct a memory, remember the right version with supersedes=[the old id]."""
)
RECALL_DESCRIPTION = _one_line(
    """Search long-term memory, best match first. Call it before answering about the user, the project or past
    decisions. Ask about one thing at a time, with the names and specific words likely to be in the memory.
    Searches by meaning and keyword, within one namespace."""
)
FORGET_DESCRIPTION = _one_line(
    """Delete memories of one namespace: by ids (immediately), or by filter (tags, older_than_days, or a
    named namespace as a whole). A filter forget is a dry run unless dry_run=false: check the listed ids,
    then call again to delete. Ids that are not memories of the namespace are listed as not_found."""
)


def build_server(
    settings: Settings | None = None,
    *,
    app: App | None = None,
    embedder: Embedder | None = None,
) -> MCPServer[App]:
    """An MCPServer for these settings. With `app`, tools use that running app (the CLI owns it, so HTTP
    sessions share one store and one set of workers); without, each connection's lifespan opens its own."""
    settings = settings or Settings.from_env()

    # Static resources get no Context in the SDK, so the stats resource reads the running app from here.
    running: list[App] = [app] if app is not None else []

    @asynccontextmanager
    async def lifespan(_: MCPServer[App]) -> AsyncIterator[App]:
        if app is not None:
            yield app
            return
        async with open_app(settings, embedder=embedder) as opened:
            running.append(opened)
            try:
                yield opened
            finally:
                running.remove(opened)

    server: MCPServer[App] = MCPServer(
        name="agentcache",
        title="agentcache memory",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
    )
    _add_remember(server, settings.namespace)
    _add_recall(server, settings.namespace)
    _add_forget(server, settings.namespace)
    _add_stats_resource(server, settings, running)
    _add_memory_resource(server)
    _add_namespace_resource(server)
    _add_prompts(server, settings.namespace)
    check_arguments_humanely(server)
    return server


def _add_remember(server: MCPServer[App], default_ns: str) -> None:
    @server.tool(
        title="Remember",
        description=REMEMBER_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def remember(
        text: Annotated[str, Field(description="The memory: one self-contained fact, decision or preference.")],
        ctx: Context,
        namespace: Annotated[
            str | None, Field(description=f"Memory space, e.g. a project name. Default: {default_ns!r}.")
        ] = None,
        tags: Annotated[list[str], Field(description=f"Short labels for filtering (at most {MAX_TAGS}).")] = [],  # noqa: B006
        importance: Annotated[
            float, NOT_A_BOOLEAN_NUMBER, Field(description="0..1; low-importance memories are forgotten sooner.")
        ] = 0.5,
        ttl_days: Annotated[
            float | None,
            NOT_A_BOOLEAN_NUMBER,
            Field(description="Forget automatically after this many days. Default: never."),
        ] = None,
        metadata: Annotated[
            dict[str, MetadataValue], Field(description="Flat JSON object of strings, numbers and booleans.")
        ] = {},  # noqa: B006
        supersedes: Annotated[
            list[str],
            Field(
                description="Ids of memories (same namespace) this one corrects: they stop being recalled; "
                "forgetting this one brings them back."
            ),
        ] = [],  # noqa: B006
    ) -> RememberResult:
        app = _app(ctx)
        result = await _run_tool(
            app, app.memory.remember, text, namespace, tags, importance, ttl_days, metadata, supersedes
        )
        return RememberResult.model_validate(result, from_attributes=True)


def _add_recall(server: MCPServer[App], default_ns: str) -> None:
    @server.tool(
        title="Recall",
        description=RECALL_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def recall(
        query: Annotated[
            str, Field(description="What you want to know, as a question or key words: 'Which editor does Alice use?'")
        ],
        ctx: Context,
        namespace: Annotated[str | None, Field(description=f"Memory space to search. Default: {default_ns!r}.")] = None,
        tags: Annotated[list[str], Field(description="Only memories carrying all of these tags.")] = [],  # noqa: B006
        limit: Annotated[int, NOT_A_BOOLEAN_INT, Field(description=f"How many results, 1..{MAX_LIMIT}.")] = 10,
        since: Annotated[str | None, Field(description="Only memories created at or after this ISO 8601 time.")] = None,
        until: Annotated[
            str | None, Field(description="Only memories created at or before this ISO 8601 time.")
        ] = None,
    ) -> RecallResult:
        app = _app(ctx)
        outcome = await _run_tool(app, app.memory.recall_outcome, query, namespace, tags, limit, since, until)
        return RecallResult(
            results=[MemoryHit.model_validate(h, from_attributes=True) for h in outcome.hits],
            retrieval="hybrid" if outcome.retrieval == "hybrid" else "keyword",
            retrieval_note=outcome.note,
            match=outcome.match,
        )


def _add_forget(server: MCPServer[App], default_ns: str) -> None:
    @server.tool(
        title="Forget",
        description=FORGET_DESCRIPTION,
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def forget(
        ctx: Context,
        ids: Annotated[list[str], Field(description="Ids of memories to delete now.")] = [],  # noqa: B006
        namespace: Annotated[
            str | None,
            Field(description=f"Memory space to act in (only this one). Default: {default_ns!r}."),
        ] = None,
        tags: Annotated[list[str], Field(description="Filter: only memories with all of these tags.")] = [],  # noqa: B006
        older_than_days: Annotated[
            float | None, NOT_A_BOOLEAN_NUMBER, Field(description="Filter: only memories older than this.")
        ] = None,
        dry_run: Annotated[
            bool | None,
            Field(strict=True, description="List without deleting. Default: false with ids, true with a filter."),
        ] = None,
    ) -> ForgetResult:
        app = _app(ctx)
        result = await _run_tool(app, app.memory.forget, ids, namespace, tags, older_than_days, dry_run)
        return ForgetResult(
            deleted=result.deleted,
            dry_run=result.dry_run,
            not_found=result.not_found,
            previews=[ForgetPreview(id=i, preview=p) for i, p in result.previews],
        )


def _add_stats_resource(server: MCPServer[App], settings: Settings, running: list[App]) -> None:
    @server.resource(
        "agentcache://stats",
        name="stats",
        title="Memory statistics",
        description="Counts per namespace, pending embeddings, model, database path and index state.",
        mime_type="application/json",
    )
    async def stats() -> str:
        if not running:
            raise ResourceError("the memory store is not open")
        app = running[-1]
        data = await app.run(app.memory.stats)
        data["auto_forget"] = {
            "enabled": settings.auto_forget_enabled,
            "interval_s": settings.auto_forget_interval_s,
            "sweeps": app.sweeps,
            "last_sweep": app.last_sweep,
        }
        return json.dumps(data, indent=2)


def _add_memory_resource(server: MCPServer[App]) -> None:
    @server.resource(
        "agentcache://memory/{memory_id}",
        name="memory",
        title="A memory",
        description="One memory by id, with every field (any namespace).",
        mime_type="application/json",
    )
    async def memory(memory_id: str, ctx: Context) -> str:
        app = _app(ctx)
        found = await _read(app, app.memory.get, memory_id)
        if found is None:
            raise ResourceError(f"no memory with id {memory_id!r}")
        return json.dumps(memory_json(found), indent=2, ensure_ascii=False)


def _add_namespace_resource(server: MCPServer[App]) -> None:
    @server.resource(
        "agentcache://namespace/{name}{?before}",
        name="namespace",
        title="A namespace's memories",
        description=f"A namespace's memories, newest first, {NAMESPACE_PAGE} a page; `next` reads the next page.",
        mime_type="application/json",
    )
    async def namespace(name: str, ctx: Context, before: str | None = None) -> str:
        app = _app(ctx)
        page = await _read(app, app.memory.recent, name, NAMESPACE_PAGE + 1, before)
        more = len(page) > NAMESPACE_PAGE
        page = page[:NAMESPACE_PAGE]
        next_uri = (
            f"agentcache://namespace/{quote(name, safe='')}?before={quote(page[-1].id, safe='')}" if more else None
        )
        return json.dumps(
            {
                "namespace": name,
                "memories": [memory_json(m) for m in page],
                "next": next_uri,
            },
            indent=2,
            ensure_ascii=False,
        )


async def _read(app: App, fn: Callable[..., T], *args: Any) -> T:
    """Resource reads: expected refusals become ResourceError with the reason."""
    try:
        return await app.run(fn, *args)
    except (InvalidInput, StoreError) as exc:
        raise ResourceError(str(exc)) from None


# Prompts: for hosts that show them (Claude Desktop lists them under "+"; others as slash commands). Each is a
# user message asking the model to use the tools; the model does the work, so nothing here reads the store.

MAX_TOPIC_CHARS = 200

RECALL_PROMPT = """\
Use the agentcache `recall` tool to find what you remember about {topic}{where}. Recall a few times with \
different key words (people, decisions, preferences, conventions, fixes). Then summarise what you found in a \
short list, newest first, with dates; say plainly if nothing relevant is stored, and never invent memories."""

REMEMBER_PROMPT = """\
Go over this conversation and store its durable facts with the agentcache `remember` tool{where}: decisions \
made, preferences and conventions stated, facts about me or the project, fixes that worked. One fact per call, \
phrased to stand alone, dated if it matters. Recall first and skip what is stored; correct an outdated memory with \
supersedes. Skip passing chatter, and never store secrets (keys, tokens, passwords) or anything marked private. \
Then list what you stored."""


class _StrictPrompt(Prompt):
    """A prompt that names a wrong argument: the SDK reports any as "Error rendering prompt <name>"."""

    async def render(self, arguments: dict[str, Any] | None, context: Any) -> Any:
        known = [a.name for a in self.arguments or []]
        for name, value in (arguments or {}).items():
            if name not in known:
                raise MCPError(
                    INVALID_PARAMS, f"prompt {self.name!r} has no argument {name!r}; it accepts {', '.join(known)}"
                )
            if not isinstance(value, str):
                raise MCPError(INVALID_PARAMS, f"prompt argument {name!r} must be a string")
        return await super().render(arguments, context)


def _prompt_namespace(namespace: str | None) -> str:
    """' in namespace "NS"' for a namespace given (checked as the tools check it), else an empty string."""
    if not namespace or not namespace.strip():
        return ""
    try:
        return f' in namespace "{validate_namespace(namespace.strip())}"'
    except InvalidInput as exc:
        raise MCPError(INVALID_PARAMS, f"argument 'namespace': {exc}") from None


def _add_prompts(server: MCPServer[App], default_ns: str) -> None:
    ns_help = f"Memory space, e.g. a project's (from a session-start block). Default: {default_ns!r}."

    def what_do_you_remember(
        topic: Annotated[
            str | None, Field(description="A person, project or subject. Default: this project and me.")
        ] = None,
        namespace: Annotated[str | None, Field(description=ns_help)] = None,
    ) -> str:
        topic = " ".join((topic or "").split())
        if len(topic) > MAX_TOPIC_CHARS:
            raise MCPError(INVALID_PARAMS, f"argument 'topic' is {len(topic)} characters; at most {MAX_TOPIC_CHARS}")
        return RECALL_PROMPT.format(topic=topic or "this project and me", where=_prompt_namespace(namespace))

    def remember_this_session(namespace: Annotated[str | None, Field(description=ns_help)] = None) -> str:
        return REMEMBER_PROMPT.format(where=_prompt_namespace(namespace))

    for fn, name, title, description in (
        (
            what_do_you_remember,
            "what-do-you-remember",
            "What do you remember?",
            "Recall and summarise what is remembered about a topic, or this project.",
        ),
        (
            remember_this_session,
            "remember-this-session",
            "Remember this session",
            "Store this conversation's durable decisions, preferences and facts.",
        ),
    ):
        server.add_prompt(_StrictPrompt.from_function(fn, name=name, title=title, description=description))
    names = ("what-do-you-remember", "remember-this-session")
    sdk_get_prompt = server.get_prompt

    async def get_prompt(name: str, arguments: dict[str, Any] | None = None, context: Any = None) -> Any:
        # the SDK answers an unknown name as an internal error (and logs a traceback)
        if name not in names:
            raise MCPError(INVALID_PARAMS, f"no prompt named {name!r}; the prompts are {', '.join(names)}")
        return await sdk_get_prompt(name, arguments, context)

    server.get_prompt = get_prompt  # type: ignore[method-assign]
