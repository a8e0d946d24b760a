"""Free TCP ports for tests.

Design: ask the kernel for ephemeral ports by binding to port 0.  When several
ports are needed at once, every socket is kept open until all have been picked,
so the kernel cannot hand out the same port twice; then all are closed and the
numbers returned.  IPv4 or IPv6 follows the host given ("::1" or "[::1]").
There is an unavoidable race between closing and the caller binding, which is
acceptable on a test machine (the probe sockets never connect, so a port just
closed leaves no TIME_WAIT behind for the caller).
"""
from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``n`` distinct TCP ports that were free on ``host`` a moment ago."""
    if n < 0:
        raise ValueError("n must be >= 0")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # "::1" or "127.0.0.1"
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(family, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    """Return one TCP port that was free on ``host`` a moment ago."""
    return free_ports(1, host)[0]
