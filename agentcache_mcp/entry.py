"""The console script `agentcache-mcp` (and `python -m agentcache_mcp`): hooks first, then the command line.

`agentcache-mcp hook <event>` runs at every session start of a coding agent, so it goes straight to the hook
runner (hooks/runner.py) without importing cli.py, which loads pydantic, anyio and the MCP SDK (~200 ms)
before it parses a flag. Everything else is cli.main, unchanged.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["hook"]:
        from .hooks.runner import main as run_hook

        sys.exit(run_hook(sys.argv[2:]))
    from .cli import main as cli_main

    cli_main()
