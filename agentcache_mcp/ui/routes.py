"""The memory browser's pages: thin adapters over MemoryService, rendered server-side with Jinja2.

Everything a page shows goes through the templates' autoescaping (memory text is untrusted: an agent may
have stored anything). Reads never count as use: a person looking is not an agent recalling (touch=False).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..memory.forgetting import preview
from ..memory.model import Memory, iso, memory_fields
from ..memory.ports import StoreError
from ..memory.validation import MAX_LIMIT, InvalidInput, validate_namespace
from .chart import build_chart, day_range
from .security import FAILED_LOGIN_PAUSE_S, Refused, UiGuard, refusal

if TYPE_CHECKING:
    from ..workers import App

PAGE = 50
"""Memories per page of a namespace."""
SEARCH_LIMIT = 20
CHART_DAYS = (7, 30, 90, 365)
NEIGHBOURS = 3
MAX_FORM_BYTES = 64 * 1024
"""The largest form body a page posts (32 tags of 64 characters fit many times over); larger is refused, 413."""


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("agentcache_mcp.ui", "templates"),
        autoescape=True,  # every template, whatever its name: memory text is untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = lambda ts: "never" if ts is None else iso(ts)[:19].replace("T", " ") + " UTC"
    env.filters["day"] = lambda ts: iso(ts)[:16].replace("T", " ")
    env.filters["preview"] = lambda text, n=140: preview(text, n)
    env.filters["num"] = lambda x: f"{x:g}"
    return env


class Pages:
    def __init__(self, app: App, guard: UiGuard):
        self.app = app
        self.memory = app.memory
        self.guard = guard
        self.env = _environment()

    # -- helpers

    def render(self, request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        root = request.scope.get("root_path", "")

        def url(path: str, **query: Any) -> str:
            pairs = [(k, v) for k, v in query.items() if v not in (None, "", [])]
            flat = [(k, x) for k, v in pairs for x in (v if isinstance(v, list | tuple) else [v])]
            return root + path + (f"?{urlencode(flat)}" if flat else "")

        html = self.env.get_template(template).render(
            url=url,
            csrf=self.guard.csrf_token(request.state.session_id),
            login_required=self.guard.login_required,
            namespaces=context.pop("namespaces", None) or {},
            current_namespace=context.pop("current_namespace", self.memory.limits.namespace),
            query=context.pop("query", ""),
            active=None,  # templates set these two for the layout
            hide_nav=False,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.app.run(fn, *args, **kwargs)

    async def namespaces(self) -> dict[str, int]:
        counts: dict[str, int] = await self.call(self.memory.backend.memories.counts_by_namespace)
        return counts

    def redirect(self, request: Request, path: str, **query: Any) -> Response:
        root = request.scope.get("root_path", "")
        return RedirectResponse(root + path + (f"?{urlencode(query)}" if query else ""), status_code=303)

    async def failure(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, message=message, namespaces=await self.namespaces())

    # -- pages

    async def home(self, request: Request) -> Response:
        """The namespaces with their counts; with `q`, the search results (a plain GET form, linkable)."""
        namespaces = await self.namespaces()
        q = request.query_params.get("q", "")
        namespace = request.query_params.get("namespace") or self.memory.limits.namespace
        if not q.strip():
            return self.render(request, "home.html", namespaces=namespaces, current_namespace=namespace)
        limit = _int(request.query_params.get("limit"), SEARCH_LIMIT, 1, MAX_LIMIT)
        started = time.monotonic()
        outcome = await self.call(self.memory.recall_outcome, q, namespace, None, limit, touch=False)
        return self.render(
            request,
            "search.html",
            namespaces=namespaces,
            current_namespace=namespace,
            query=q,
            outcome=outcome,
            top=max((h.score for h in outcome.hits), default=1.0) or 1.0,
            seconds=time.monotonic() - started,
            limit=limit,
        )

    async def namespace(self, request: Request) -> Response:
        name = validate_namespace(request.path_params["namespace"])
        tags = [t for t in request.query_params.getlist("tag") if t.strip()]
        before = request.query_params.get("before") or None
        page: list[Memory] = await self.call(self.memory.recent, name, PAGE + 1, before, tags)
        namespaces = await self.namespaces()
        now = time.time()
        return self.render(
            request,
            "namespace.html",
            namespaces=namespaces,
            current_namespace=name,
            name=name,
            total=namespaces.get(name, 0),
            tags=tags,
            memories=page[:PAGE],
            states={m.id: _state(m, now) for m in page},
            older=page[PAGE - 1].id if len(page) > PAGE else None,
            paged=before is not None,
            done=request.query_params.get("done"),
        )

    async def _found(self, request: Request) -> Memory | None:
        found: Memory | None = await self.call(self.memory.get, request.path_params["memory_id"])
        return found

    async def memory_page(self, request: Request) -> Response:
        m = await self._found(request)
        if m is None:
            return await self.failure(request, 404, "There is no memory with this id (it may have been forgotten).")
        earlier, later = await self.call(self.memory.neighbours_in_time, m, NEIGHBOURS)
        supersedes = await self.call(self.memory.superseded_by, m)
        replaced_by = await self.call(self.memory.get, m.superseded_by) if m.superseded_by else None
        return self.render(
            request,
            "memory.html",
            namespaces=await self.namespaces(),
            current_namespace=m.namespace,
            m=m,
            fields=memory_fields(m),
            state=_state(m, time.time()),
            earlier=earlier,
            later=later,
            supersedes=supersedes,
            replaced_by=replaced_by,
            done=request.query_params.get("done"),
            error=None,
        )

    async def edit(self, request: Request) -> Response:
        form = await self.guard.checked_form(request)
        m = await self._found(request)
        if m is None or m.namespace != form.get("namespace"):
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        tags = [line.strip() for line in str(form.get("tags", "")).splitlines() if line.strip()]
        expiry = str(form.get("expiry", "keep"))
        try:
            importance = _number(form.get("importance"), "importance")
            ttl_days = _number(form.get("ttl_days"), "days until it expires") if expiry == "days" else None
            if expiry == "days" and ttl_days is None:
                raise InvalidInput("give the number of days until it expires")
            edited = await self.call(
                self.memory.edit,
                m.id,
                m.namespace,
                tags=tags,
                importance=importance,
                ttl_days=ttl_days,
                never_expires=expiry == "never",
            )
        except InvalidInput as exc:
            earlier, later = await self.call(self.memory.neighbours_in_time, m, NEIGHBOURS)
            return self.render(
                request,
                "memory.html",
                status=400,
                namespaces=await self.namespaces(),
                current_namespace=m.namespace,
                m=m,
                fields=memory_fields(m),
                state=_state(m, time.time()),
                earlier=earlier,
                later=later,
                supersedes=await self.call(self.memory.superseded_by, m),
                replaced_by=await self.call(self.memory.get, m.superseded_by) if m.superseded_by else None,
                done=None,
                error=str(exc),
            )
        if edited is None:
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        return self.redirect(request, f"/memory/{m.id}", done="saved")

    async def confirm_forget(self, request: Request) -> Response:
        m = await self._found(request)
        if m is None:
            return await self.failure(request, 404, "There is no memory with this id (it may have been forgotten).")
        return self.render(
            request,
            "forget.html",
            namespaces=await self.namespaces(),
            current_namespace=m.namespace,
            m=m,
            supersedes=await self.call(self.memory.superseded_by, m),
        )

    async def forget(self, request: Request) -> Response:
        form = await self.guard.checked_form(request)
        namespace = str(form.get("namespace", ""))
        result = await self.call(self.memory.forget, [request.path_params["memory_id"]], namespace)
        if not result.deleted:
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        return self.redirect(request, f"/ns/{namespace}", done="forgotten")

    async def stats(self, request: Request) -> Response:
        data = await self.call(self.memory.stats)
        sweeps = await self.call(self.memory.recent_sweeps)
        settings = self.app.settings
        return self.render(
            request,
            "stats.html",
            namespaces=data["namespaces"],
            data=data,
            sweeps=sweeps,
            auto_forget={
                "enabled": settings.auto_forget_enabled,
                "interval_s": settings.auto_forget_interval_s,
                "sweeps": self.app.sweeps,
                "last_sweep": self.app.last_sweep,
            },
        )

    async def chart(self, request: Request) -> Response:
        days = _int(request.query_params.get("days"), 30, 1, 3660)
        now = time.time()
        counts = await self.call(self.memory.created_per_day, days, now)
        return self.render(
            request,
            "chart.html",
            namespaces=await self.namespaces(),
            chart=build_chart(counts, day_range(days, now)),
            days=days,
            choices=CHART_DAYS,
        )

    # -- login

    async def login_form(self, request: Request) -> Response:
        if not self.guard.login_required:
            return self.redirect(request, "/")
        return self.render(request, "login.html", next=_local(request, request.query_params.get("next")), error=None)

    async def login(self, request: Request) -> Response:
        form = await self.guard.checked_form(request)
        target = _local(request, str(form.get("next", "")))
        sid = self.guard.log_in(str(form.get("token", "")))
        if sid is None:
            import anyio

            await anyio.sleep(FAILED_LOGIN_PAUSE_S)  # a guessing client gets one try a second per connection
            return self.render(request, "login.html", status=403, next=target, error="That is not the token.")
        response = RedirectResponse(target, status_code=303)
        self.guard.set_cookie(response, request, sid)
        return response

    async def logout(self, request: Request) -> Response:
        await self.guard.checked_form(request)
        self.guard.log_out(request.state.session_id)
        return self.redirect(request, "/login" if self.guard.login_required else "/")


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value else default
    except ValueError:
        return default
    return min(max(number, low), high)


def _number(value: object, what: str) -> float | None:
    """A number typed into a form field, or None if left empty; InvalidInput names the field otherwise."""
    if value is None or not str(value).strip():
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{what} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{what} must be a finite number")
    return number


def _local(request: Request, target: str | None) -> str:
    """Where to go after logging in: a path of this UI only (never another site: no open redirect)."""
    root = request.scope.get("root_path", "")
    if target and target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
        return target
    return root + "/"


def _state(m: Memory, now: float) -> str:
    if m.expires_at is not None and m.expires_at <= now:
        return "expired"
    return "superseded" if m.superseded_by else ""


def _handle(
    pages: Pages, endpoint: Callable[[Request], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """Expected refusals become pages a person can read: a bad value 400, a CSRF or origin failure 403, an
    unusable store 503."""

    async def handler(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Refused as exc:
            return refusal(str(exc))
        except InvalidInput as exc:
            return await pages.failure(request, 400, str(exc))
        except StoreError as exc:
            return pages.render(request, "error.html", status=503, message=str(exc))

    return handler


def build_ui(app: App) -> UiGuard:
    """The web UI as an ASGI app, to mount at transports.UI_PATH: its pages over `app.memory`, behind its own
    guard (sessions, CSRF, the token login when a token is configured, security headers)."""
    guard = UiGuard(None, app.settings.auth_token)  # it wraps the pages, and the pages use it
    pages = Pages(app, guard)
    get, post = ["GET", "HEAD"], ["POST"]
    routes = [
        Route("/", _handle(pages, pages.home), methods=get),
        Route("/ns/{namespace}", _handle(pages, pages.namespace), methods=get),
        Route("/memory/{memory_id}", _handle(pages, pages.memory_page), methods=get),
        Route("/memory/{memory_id}/edit", _handle(pages, pages.edit), methods=post),
        Route("/memory/{memory_id}/forget", _handle(pages, pages.confirm_forget), methods=get),
        Route("/memory/{memory_id}/forget", _handle(pages, pages.forget), methods=post),
        Route("/stats", _handle(pages, pages.stats), methods=get),
        Route("/chart", _handle(pages, pages.chart), methods=get),
        Route("/login", _handle(pages, pages.login_form), methods=get),
        Route("/login", _handle(pages, pages.login), methods=post),
        Route("/logout", _handle(pages, pages.logout), methods=post),
        Mount("/static", StaticFiles(packages=[("agentcache_mcp.ui", "static")]), name="static"),
    ]
    # The SDK limits request bodies on its own routes only: the UI's forms are small, so are its limits.
    guard.app = RequestBodyLimitMiddleware(Starlette(routes=routes), MAX_FORM_BYTES)
    return guard
