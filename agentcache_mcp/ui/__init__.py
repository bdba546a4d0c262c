"""The memory browser: server-rendered pages over MemoryService, served at /ui/ by the HTTP transports and by
`agentcache-mcp ui`. No script; templates, styles and the chart come from this package (works offline)."""

from .routes import build_ui

__all__ = ["build_ui"]
