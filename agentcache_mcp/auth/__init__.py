"""OAuth 2.1 for the HTTP transports: the state every replica shares (state.py), the built-in authorization
server and the resource-server side (their own modules)."""
