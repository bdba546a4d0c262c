"""The console script `agentcache-mcp` (and `python -m agentcache_mcp`): hooks first, then the command line.

`agentcache-mcp hook <event>` runs at every session start of a coding agent, so it goes straight to the hook
runner (hooks/runner.py) without importing cli.py, which loads pydantic, anyio and the MCP SDK (~200 ms)
before it parses a flag. Everything else is cli.main, unchanged.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["hook"]:
        try:
            from .hooks.runner import main as run_hook
        except Exception as exc:  # a broken installation must not break the session either (the runner logs
            # every later error itself; this one can only be said on stderr, which the host shows or drops)
            print(f"agentcache-mcp hook: cannot load the hook runner: {type(exc).__name__}: {exc}", file=sys.stderr)
            sys.exit(0)
        sys.exit(run_hook(sys.argv[2:]))
    from .cli import main as cli_main

    cli_main()
