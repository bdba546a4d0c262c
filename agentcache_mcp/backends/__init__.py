"""Storage backends behind the ports of agentcache_mcp.memory.ports."""
