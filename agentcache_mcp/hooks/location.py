"""Where the store is, for a hook: the same answer as `config.Settings.from_env`, without importing pydantic.

The server reads AGENTCACHE_DB (or --db): a PostgreSQL URL selects that backend, anything else is the SQLite
file's path, and neither set means the file in the user's data directory. config.py spends ~200 ms importing
pydantic before it can say so; a hook at every session start cannot. This resolver answers the common cases
(unset, a file path, a PostgreSQL URL) itself and hands anything odd (a libpq keyword/value string, a URL of
another scheme) to config.py, so its verdict (an error) stays written once, there. A test holds the two to
the same answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DB_VARIABLE = "AGENTCACHE_DB"
_POSTGRES_URL = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
"""config.POSTGRES_URL."""
_ODD = re.compile(r"\s*[A-Za-z_]+\s*=|[A-Za-z][A-Za-z0-9+.-]+:/")
"""What may be a keyword/value string (`host=db ...`) or a URL of another scheme: config.py decides those."""


class StoreLocationError(ValueError):
    """AGENTCACHE_DB / --db is set to something the server would refuse."""


@dataclass(frozen=True)
class StoreLocation:
    """The SQLite file (`path`), or the PostgreSQL URL (`url`, unmasked: never show it)."""

    path: Path | None = None
    url: str | None = None


def default_db_path() -> Path:
    """config.default_db_path: the user's data directory (platformdirs imports in ~6 ms)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("agentcache", appauthor=False)) / "memory.db"


def store_location(db: str | None = None, environ: Mapping[str, str] | None = None) -> StoreLocation:
    """The store the server would open with `--db db` (if given) and this environment; StoreLocationError
    for a value the server would refuse to start with."""
    env = os.environ if environ is None else environ
    given = db or env.get(DB_VARIABLE) or None  # an empty variable counts as unset, as in config.py
    if given is None:
        return StoreLocation(path=default_db_path())
    if _POSTGRES_URL.match(given):
        return StoreLocation(url=given)
    if _ODD.match(given):
        return _ask_config(db, env)
    path = Path(given).expanduser().resolve()
    if path.is_dir():  # config.Settings._check_db_path
        raise StoreLocationError(f"{DB_VARIABLE} {given!r} is a directory, not the database file")
    return StoreLocation(path=path)


def _ask_config(db: str | None, env: Mapping[str, str]) -> StoreLocation:
    from ..config import ConfigError, Settings

    try:
        settings = Settings.from_env(env, db_path=db)
    except ConfigError as exc:
        raise StoreLocationError(str(exc)) from None
    if settings.database_url is not None:
        return StoreLocation(url=settings.database_url)
    return StoreLocation(path=settings.db_path)
