"""The memory browser's pages: thin adapters over MemoryService, rendered server-side with Jinja2.

Everything a page shows goes through the templates' autoescaping (memory text is untrusted: an agent may
have stored anything). Reads never count as use: a person looking is not an agent recalling (touch=False).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined
from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..memory.forgetting import preview
from ..memory.model import MAX_KEY, Memory, RecallOutcome, iso, memory_fields
from ..memory.ports import StoreError
from ..memory.validation import (
    MAX_LIMIT,
    InvalidInput,
    validate_importance,
    validate_namespace,
    validate_positive_days,
    validate_tags,
)
from .chart import build_chart, day_range
from .security import Refused, UiGuard, refusal

if TYPE_CHECKING:
    from ..workers import App

PAGE = 50
"""Memories per page of a namespace."""
SEARCH_LIMIT = 20
CHART_DAYS = (7, 30, 90, 365)
NEIGHBOURS = 3
MIN_TTL_DAYS = 0.001
"""The shortest expiry the edit form takes (its input's `min`; the service takes any positive number)."""
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
    env.filters["num"] = lambda x: f"{x:g}"  # for reading; `exact` for a form's value (a save keeps it as it was)
    env.filters["exact"] = lambda x: repr(float(x))
    env.filters["seg"] = segment
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

        namespaces: dict[str, int] = context.pop("namespaces", None) or {}
        html = self.env.get_template(template).render(
            url=url,
            csrf=self.guard.csrf_token(request.state.session_id),
            login_required=self.guard.login_required,
            namespaces=namespaces,
            configured_namespace=self.memory.limits.namespace,
            min_ttl_days=MIN_TTL_DAYS,
            current_namespace=context.pop("current_namespace", None) or self.default_namespace(namespaces),
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

    def default_namespace(self, namespaces: dict[str, int]) -> str:
        """The namespace a search looks in unless told: the configured one if it has memories, else the
        largest (the configured one when the store is empty)."""
        configured = self.memory.limits.namespace
        if configured in namespaces or not namespaces:
            return configured
        return min(namespaces, key=lambda ns: (-namespaces[ns], ns))

    def redirect(self, request: Request, path: str, **query: Any) -> Response:
        root = request.scope.get("root_path", "")
        pairs = {k: v for k, v in query.items() if v is not None}
        return RedirectResponse(root + path + (f"?{urlencode(pairs)}" if pairs else ""), status_code=303)

    async def failure(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, message=message, namespaces=await self.namespaces())

    # -- pages

    async def home(self, request: Request) -> Response:
        """The namespaces with their counts; with `q`, the search results (a plain GET form, linkable)."""
        namespaces = await self.namespaces()
        q = request.query_params.get("q", "")
        namespace = request.query_params.get("namespace") or self.default_namespace(namespaces)
        if not q.strip():
            return self.render(request, "home.html", namespaces=namespaces, current_namespace=namespace)
        limit = _int(request.query_params.get("limit"), SEARCH_LIMIT, 1, MAX_LIMIT)
        started = time.monotonic()
        if not namespaces.get(validate_namespace(namespace)):
            # nothing to rank, as the CLI's recall says: no claim of a hybrid search over nothing
            outcome = RecallOutcome([], "keyword", f"namespace {namespace!r} has no memories")
        else:
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
        older_than = _key(request.query_params.get("older_than"), "older_than")
        newer_than = None if older_than is not None else _key(request.query_params.get("newer_than"), "newer_than")
        page: list[Memory] = await self.call(self.memory.recent, name, PAGE + 1, None, tags, older_than, newer_than)
        newer: int | None = None
        older: int | None
        if newer_than is not None and len(page) <= PAGE:
            # Nothing newer than this page: it is the newest page (full, and its older link from its own end;
            # memories forgotten between clicks can leave fewer than PAGE above the anchor, even none).
            newer_than = None
            page = await self.call(self.memory.recent, name, PAGE + 1, None, tags)
        if newer_than is not None:
            # The PAGE just above the anchor, newest first; one more above them means a newer page still.
            newer = page[1].key
            page = page[-PAGE:]
            older = page[-1].key
        else:
            if older_than is not None and page:
                newer = page[0].key
            older = page[PAGE - 1].key if len(page) > PAGE else None
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
            older=older,
            newer=newer,
            paged=older_than is not None or newer_than is not None,
            here=_here(request, name),
            done=request.query_params.get("done"),
        )

    async def _found(self, request: Request) -> Memory | None:
        found: Memory | None = await self.call(self.memory.get, unquote(request.path_params["memory_id"]))
        return found

    async def _memory_page(
        self,
        request: Request,
        m: Memory,
        status: int = 200,
        error: str | None = None,
        form: dict[str, str] | None = None,
        back: str | None = None,
    ) -> Response:
        earlier, later = await self.call(self.memory.neighbours_in_time, m, NEIGHBOURS)
        supersedes = await self.call(self.memory.superseded_by, m)
        replaced_by = await self.call(self.memory.get, m.superseded_by) if m.superseded_by else None
        shown = form or {
            "tags": "\n".join(m.tags),
            "importance": repr(float(m.importance)),
            "expiry": "keep",
            "ttl_days": "",
        }
        return self.render(
            request,
            "memory.html",
            status=status,
            namespaces=await self.namespaces(),
            current_namespace=m.namespace,
            m=m,
            fields=memory_fields(m),
            state=_state(m, time.time()),
            earlier=earlier,
            later=later,
            supersedes=supersedes,
            replaced_by=replaced_by,
            done=request.query_params.get("done") if error is None else None,
            error=error,
            form=shown,
            back=_back(request, m.namespace, back if back is not None else request.query_params.get("back")),
        )

    async def memory_page(self, request: Request) -> Response:
        m = await self._found(request)
        if m is None:
            return await self.failure(request, 404, "There is no memory with this id (it may have been forgotten).")
        return await self._memory_page(request, m)

    async def edit(self, request: Request) -> Response:
        form = await self.guard.checked_form(request)
        m = await self._found(request)
        if m is None or m.namespace != form.get("namespace"):
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        submitted = {k: str(form.get(k, "")) for k in ("tags", "importance", "expiry", "ttl_days")}
        submitted["expiry"] = submitted["expiry"] or "keep"
        try:
            change = _edit_from_form(form, m)
        except InvalidInput as exc:
            return await self._memory_page(request, m, 400, str(exc), submitted, str(form.get("back", "")))
        edited = await self.call(self.memory.edit, m.id, m.namespace, **change)
        if edited is None:
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        back = _back(request, m.namespace, str(form.get("back", "")))
        own = _back(request, m.namespace, None)
        return self.redirect(request, f"/memory/{segment(m.id)}", done="saved", back=None if back == own else back)

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
            back=_back(request, m.namespace, request.query_params.get("back")),
        )

    async def forget(self, request: Request) -> Response:
        form = await self.guard.checked_form(request)
        namespace = str(form.get("namespace", ""))
        result = await self.call(self.memory.forget, [unquote(request.path_params["memory_id"])], namespace)
        if not result.deleted:
            return await self.failure(request, 404, "There is no such memory in this namespace any more.")
        # Back to the page of the namespace the reader came from (the same page of it, if it still has one).
        back = _back(request, namespace, str(form.get("back", "")))
        return RedirectResponse(back + ("&" if "?" in back else "?") + "done=forgotten", status_code=303)

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
        session = self.guard.log_in(str(form.get("token", "")))
        if session is None:
            await self.guard.failed_login_pause()  # one failure at a time, across every connection
            return self.render(request, "login.html", status=403, next=target, error="That is not the token.")
        response = RedirectResponse(target, status_code=303)
        self.guard.set_cookie(response, request, session)
        return response

    async def logout(self, request: Request) -> Response:
        await self.guard.checked_form(request)
        response = self.redirect(request, "/login" if self.guard.login_required else "/")
        self.guard.clear_cookie(response, request)
        return response


def _int(value: str | None, default: int, low: int, high: int) -> int:
    try:
        number = int(value) if value else default
    except ValueError:
        return default
    return min(max(number, low), high)


def segment(value: str) -> str:
    """A value (a memory id may be any string) as one path segment of a URL: every reserved character encoded."""
    return quote(value, safe="")


def _key(value: str | None, name: str) -> int | None:
    """A page anchor (a memory's key, from an "older" or "newer" link), or None for the newest page."""
    if value is None or not value.strip():
        return None
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 19 or int(digits) > MAX_KEY:
        raise InvalidInput(f"{name} must be a whole number below 2^63, got {value[:40]!r}")
    return int(digits)


def _here(request: Request, namespace: str) -> str:
    """This page of a namespace (path and query, without a done= flash), as a `back` to return to."""
    root = request.scope.get("root_path", "")
    pairs = [(k, v) for k, v in request.query_params.multi_items() if k in ("tag", "older_than", "newer_than")]
    return f"{root}/ns/{segment(namespace)}" + (f"?{urlencode(pairs)}" if pairs else "")


def _back(request: Request, namespace: str, back: str | None) -> str:
    """Where to go back to from a memory of `namespace`: the page of that namespace the reader came from if
    the link said so (a local path only), else its first page."""
    root = request.scope.get("root_path", "")
    own = f"{root}/ns/{segment(namespace)}"
    path, _, query = (back or "").partition("?")
    if path != own:
        return own
    pairs = [(k, v) for k, v in parse_qsl(query) if k in ("tag", "older_than", "newer_than")]
    return own + (f"?{urlencode(pairs)}" if pairs else "")


def _edit_from_form(form: Any, m: Memory) -> dict[str, Any]:
    """The edit a form asks for, checked field by field (InvalidInput names the field as the form shows it).
    A field that is absent, or unchanged, is left as it is."""
    change: dict[str, Any] = {}
    if "tags" in form:
        tags = [line.strip() for line in str(form.get("tags", "")).splitlines() if line.strip()]
        try:
            change["tags"] = validate_tags(tags)
        except InvalidInput as exc:
            raise InvalidInput(f"Tags: {exc}") from None
    importance = _number(form.get("importance"), "Importance")
    if importance is not None:
        try:
            validate_importance(importance)
        except InvalidInput:
            raise InvalidInput(f"Importance: give a number from 0 to 1 (got {form.get('importance')})") from None
        if importance != m.importance:
            change["importance"] = importance
    expiry = str(form.get("expiry", "keep")) or "keep"
    typed = str(form.get("ttl_days", "")).strip()
    if expiry not in ("keep", "never", "days"):
        raise InvalidInput(f"Expiry: choose keep, never or a number of days (got {expiry[:20]!r})")
    if typed and expiry == "never":
        raise InvalidInput(f"Expiry: you chose \u201cnever expires\u201d and typed {typed[:20]} days; choose one")
    if typed or expiry == "days":
        days = _number(typed, "Expiry")
        if days is None:
            raise InvalidInput("Expiry: give the number of days until it expires")
        try:
            validate_positive_days(days, "days")
        except InvalidInput:
            raise InvalidInput(
                f"Expiry: give a number of days from {MIN_TTL_DAYS:g} to 365000 (got {typed[:20]})"
            ) from None
        if days < MIN_TTL_DAYS:
            raise InvalidInput(f"Expiry: give a number of days from {MIN_TTL_DAYS:g} to 365000 (got {typed[:20]})")
        change["ttl_days"] = days
    elif expiry == "never":
        change["never_expires"] = True
    return change


def _number(value: object, what: str) -> float | None:
    """A number typed into a form field, or None if left empty; InvalidInput names the field otherwise."""
    if value is None or not str(value).strip():
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        raise InvalidInput(f"{what}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{what}: give a finite number")
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
            return refusal(str(exc), request.scope.get("root_path", ""), pages.guard.login_required)
        except InvalidInput as exc:
            return await pages.failure(request, 400, str(exc))
        except StoreError as exc:
            return pages.render(request, "error.html", status=503, message=str(exc))

    return handler


def build_ui(app: App) -> UiGuard:
    """The web UI as an ASGI app, to mount at transports.UI_PATH: its pages over `app.memory`, behind its own
    guard (sessions, CSRF, the token login when a token is configured, security headers)."""

    async def load_secret() -> str:
        secret: str = await app.run(app.memory.ui_secret)
        return secret

    # It wraps the pages, and the pages use it; its secret is the store's, so every process on it agrees.
    guard = UiGuard(None, app.settings.auth_token, load_secret)
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
    guard.app = RequestBodyLimitMiddleware(_ids_kept_encoded(Starlette(routes=routes)), MAX_FORM_BYTES)
    return guard


def _ids_kept_encoded(inner: ASGIApp) -> ASGIApp:
    """Route /memory/ID... on the raw (still percent-encoded) path, so that an id holding `/`, `?` or `..`
    (imported ids may be any string) stays one path segment; the pages decode it (`unquote`)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path")
        root = scope.get("root_path", "")
        if scope["type"] == "http" and isinstance(raw, bytes):
            rest = raw.split(b"?", 1)[0][len(root.encode()) :] if raw.startswith(root.encode()) else b""
            if rest.startswith(b"/memory/"):
                scope = {**scope, "path": root + rest.decode("latin-1")}
        await inner(scope, receive, send)

    return app
