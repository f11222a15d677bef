"""The scrape port's listening socket, opened by the supervisor before any worker starts.

Its own module so the supervisor does not import the HTTP server (aiohttp): what the
supervisor imports, every worker it forks inherits.
"""

from __future__ import annotations

import socket


def bind(listen: str) -> socket.socket:
    """Open the scrape port before anything starts, so 'address in use' fails early."""
    from .config import parse_listen

    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6 and host == "::":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
