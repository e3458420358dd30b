"""The server's sockets, made here so that accepting a connection costs one wake-up.

With ``TCP_DEFER_ACCEPT`` (Linux; nginx's ``listen ... deferred``) the kernel hands a
connection to the server only once the client's first bytes (its HTTP request) have
arrived, so the server wakes once per connection for the accept and the request
together, instead of once for each, and a client's connect() does not have to wake
it (what that bought: docs/performance.md, "Figures behind the code"). Where the option
does not exist it is skipped.

The sockets are only bound here: aiohttp listens on them once the application has
started, so a connection attempt during start-up is refused, as with aiohttp's own.
"""

from __future__ import annotations

import socket

# How long the kernel holds a connection that has sent nothing. An HTTP client speaks
# first, at once; one that does not is handed over after this anyway.
DEFER_SECONDS = 5


def bound_sockets(host: str, port: int) -> list[socket.socket]:
    """A bound TCP socket (not yet listening) per address ``host`` resolves to; an
    empty host is every interface, as in asyncio."""
    addresses = {
        (family, address)
        for family, _, _, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    }
    sockets: list[socket.socket] = []
    try:
        for family, address in sorted(addresses, key=str):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: the IPv4 address binds apart
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if hasattr(socket, "TCP_DEFER_ACCEPT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_SECONDS)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
