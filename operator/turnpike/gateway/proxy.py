"""Forwarding one request to one upstream Triton, streaming the answer back.

Response bodies are relayed chunk by chunk as they arrive (never buffered),
so ``generate_stream`` tokens reach the client as Triton produces them.
Bodies pass through undecoded (``auto_decompress=False``): Triton's
compressed or binary-tensor answers arrive byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

# RFC 9110 §7.6.1 hop-by-hop fields, plus what the gateway sets itself.
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
# Credentials stop at the gateway: Triton has no use for them and logs headers in verbose mode.
CREDENTIALS = frozenset(h.lower() for h in ("Authorization", "X-Api-Key", "Cookie"))


def new_session(
    *, connections: int, connect_timeout_s: float, read_timeout_s: float
) -> aiohttp.ClientSession:
    """The upstream pool: bounded, no environment proxies, no cookies, bytes as sent."""
    return aiohttp.ClientSession(
        trust_env=False,
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=30.0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        ),
    )


def upstream_headers(headers: Mapping[str, str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    dropped = HOP_BY_HOP | CREDENTIALS | {d.lower() for d in drop}
    connection = headers.get("Connection", "")
    dropped |= {token.strip().lower() for token in connection.split(",") if token.strip()}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def client_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP)


def cut_short(request: web.Request) -> None:
    """End a response that can no longer be completed so the client sees it truncated.

    The status is already sent; closing the connection is the only way left to
    say "this body is not whole" (a clean chunked end would claim it is).
    """
    transport = request.transport
    if transport is not None:
        transport.close()


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    on_first_byte: Callable[[], None],
    on_broken: Callable[[str], None],
    *,
    chunk_bytes: int = 64 * 1024,
) -> web.StreamResponse:
    """Copy status, end-to-end headers and the body as it comes."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    response.headers.update(client_headers(upstream.headers))
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    first = True
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_chunked(chunk_bytes):
            if first:
                on_first_byte()
                first = False
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        on_broken("timeout" if isinstance(exc, TimeoutError) else "reset")
        cut_short(request)
        return response
    if first:
        on_first_byte()
    await response.write_eof()
    return response
