"""Client ID Metadata Documents (the MCP 2025-11-25 client registration; draft-ietf-oauth-client-id-metadata-
document): a client whose client_id is an https URL publishes its RFC 7591 metadata at that URL, and the
authorization server fetches it. The SDK's server side has no support for it (its handlers only look clients up
in the provider), so this module fetches and checks the document, and the authorization server caches it in the
store as the client's record.

Fetching a URL that anyone may name is a server-side request forgery risk: the server would make requests on the
attacker's behalf to addresses the attacker cannot reach (the loopback interface, the LAN, a cloud's metadata
service). So:
- the URL must be https, with a host and a path, without user information, a fragment or dot segments;
- the host is resolved first and every address it resolves to must be globally routable (no loopback, private,
  link-local, shared, reserved, multicast or unspecified address, IPv4-mapped ones included); the request then
  goes to the checked address itself (the Host header and TLS SNI/certificate name are the URL's host), so a
  second DNS answer cannot point the connection elsewhere (DNS rebinding);
- no proxy from the environment, no redirects, a total timeout, and a size cap read as a stream;
- the document must be a JSON object whose `client_id` is exactly the URL, with redirect_uris, and it may not
  ask for a client secret (a document is public: there is no secret to share) or private_key_jwt (this server
  holds no keys to check one).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2

FETCH_TIMEOUT_S = 5.0
"""The whole fetch (resolve, connect, TLS, read) of one document."""
MAX_DOCUMENT_BYTES = 5 * 1024
"""The largest document read (the draft suggests servers limit it; a client's metadata is a few hundred bytes)."""
CACHE_S = 3600.0
"""A cached document is fetched again at the next authorization once it is this old."""

Resolver = Callable[[str, int], Awaitable[list[str]]]


class ClientMetadataError(Exception):
    """A Client ID Metadata Document that cannot be used; the message says why, in one line."""


def is_client_metadata_url(client_id: str) -> bool:
    """Is this client_id a Client ID Metadata Document URL (an https URL), as opposed to a registered id?"""
    return client_id.startswith("https://")


def check_url(url: str) -> tuple[str, int]:
    """The host and port of a usable document URL, or ClientMetadataError."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise ClientMetadataError("a client_id URL must be https")
    if parts.username is not None or parts.password is not None:
        raise ClientMetadataError("a client_id URL may not carry user information")
    if parts.fragment or "#" in url:
        raise ClientMetadataError("a client_id URL may not have a fragment")
    if not parts.hostname:
        raise ClientMetadataError("a client_id URL needs a host")
    if parts.path in ("", "/"):
        raise ClientMetadataError("a client_id URL needs a path")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise ClientMetadataError("a client_id URL may not have dot segments")
    try:
        port = parts.port or 443
    except ValueError as exc:
        raise ClientMetadataError("a client_id URL has an invalid port") from exc
    return parts.hostname, port


def public_address(address: str) -> bool:
    """Is this IP address one the server may connect to on a stranger's behalf (globally routable unicast)?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (an IP literal is its own)."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ClientMetadataError(f"the client_id host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in found))


@dataclass
class ClientMetadataFetcher:
    """Fetches and checks Client ID Metadata Documents. `transport` and `resolve` are for tests (a served document
    without a public address); the defaults are the real network and the system resolver."""

    transport: httpx2.AsyncBaseTransport | None = None
    resolve: Resolver = system_resolve
    timeout_s: float = FETCH_TIMEOUT_S
    max_bytes: int = MAX_DOCUMENT_BYTES
    fetched: list[str] = field(default_factory=list)
    """The URLs fetched so far (what a test checks was, or was not, requested)."""

    async def fetch(self, url: str) -> dict[str, Any]:
        """The checked document at `url`; ClientMetadataError (a one-line reason) if it cannot be used."""
        host, port = check_url(url)
        try:
            with anyio.fail_after(self.timeout_s):
                addresses = await self.resolve(host, port)
                refused = [a for a in addresses if not public_address(a)]
                if not addresses or refused:
                    raise ClientMetadataError(
                        f"the client_id host {host!r} resolves to a non-public address ({', '.join(refused) or 'none'});"
                        " refused"
                    )
                body = await self._get(url, host, port, addresses[0])
        except TimeoutError as exc:
            raise ClientMetadataError(f"fetching the client metadata document took over {self.timeout_s:g} s") from exc
        return check_document(url, body)

    async def _get(self, url: str, host: str, port: int, address: str) -> bytes:
        parts = urlsplit(url)
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
        self.fetched.append(url)
        headers = {"Host": parts.netloc, "Accept": "application/json"}
        async with httpx2.AsyncClient(
            transport=self.transport, trust_env=False, follow_redirects=False, timeout=self.timeout_s
        ) as http:
            try:
                async with http.stream(
                    "GET", pinned, headers=headers, extensions={"sni_hostname": host}
                ) as response:
                    if response.status_code != 200:
                        raise ClientMetadataError(
                            f"the client metadata document answered HTTP {response.status_code}, not 200"
                        )
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ClientMetadataError(
                                f"the client metadata document is larger than {self.max_bytes} bytes"
                            )
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx2.HTTPError as exc:
                raise ClientMetadataError(f"the client metadata document could not be fetched ({type(exc).__name__})") from exc


def check_document(url: str, body: bytes) -> dict[str, Any]:
    """The document as a dict if it is usable as the metadata of client `url`; else ClientMetadataError."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClientMetadataError("the client metadata document is not JSON") from exc
    if not isinstance(document, dict):
        raise ClientMetadataError("the client metadata document is not a JSON object")
    if document.get("client_id") != url:
        raise ClientMetadataError("the client metadata document's client_id is not its own URL")
    redirects = document.get("redirect_uris")
    if not isinstance(redirects, list) or not redirects or not all(isinstance(r, str) for r in redirects):
        raise ClientMetadataError("the client metadata document has no redirect_uris")
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        raise ClientMetadataError(
            f"the client metadata document asks for token_endpoint_auth_method {method!r}; only 'none' is supported"
        )
    if "client_secret" in document:
        raise ClientMetadataError("a client metadata document may not carry a client_secret")
    return document
