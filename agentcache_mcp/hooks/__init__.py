"""Memory without being asked: hooks a coding agent's host runs at session start and end, and their helpers.

Kept light to import: a hook runs at every session start, so nothing here may import the MCP SDK, pydantic or
the embedding model at module level.
"""
