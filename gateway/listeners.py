"""The listening socket: bound by the master, or adopted from systemd socket activation.

design: the master owns the listener for its whole life and hands it to every worker
through fork; it never accepts on it. `:PORT` and `[::]:PORT` bind every interface,
IPv4 and IPv6 (dual stack where the host has IPv6). TCP_NODELAY and SO_KEEPALIVE are
set on the listener so accepted sockets inherit them (Linux copies them at accept),
which saves two system calls per client on the hot path; each worker sets the
keepalive timers on it the same way (gateway/keepalive.py).
"""
from __future__ import annotations

import os
import socket

from gateway.addresses import HostPort, join_host_port

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
SD_LISTEN_FDS_START = 3


class ListenError(Exception):
    """The listen address cannot be bound (one line, for the operator)."""


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.set_inheritable(True)


def bind(addr: HostPort, option: str = "--listen-addr") -> socket.socket:
    """A listening, non-blocking socket on `addr`; ListenError names `option`."""
    host = addr.host
    if host in ("", "::"):
        try:
            return _bind(socket.AF_INET6, ("::", addr.port), dual_stack=True)
        except OSError as exc:
            if host == "::":
                raise ListenError(f"option {option}: cannot listen on {addr}: {exc.strerror}") from None
            host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, addr.port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                   0, socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(f"option {option}: cannot resolve {addr}: "
                          f"{getattr(exc, 'strerror', None) or exc}") from None
    family, _, _, _, sockaddr = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    try:
        return _bind(family, sockaddr, dual_stack=False)
    except OSError as exc:
        raise ListenError(f"option {option}: cannot listen on {addr}: {exc.strerror}") from None


def _bind(family: int, sockaddr: tuple, dual_stack: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        sock.bind(sockaddr)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        _tune(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def systemd_listener(environ: dict[str, str] | None = None) -> socket.socket | None:
    """The socket systemd passed (LISTEN_FDS/LISTEN_PID, first fd 3), or None."""
    env = os.environ if environ is None else environ
    try:
        pid, count = int(env.get("LISTEN_PID", "0")), int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if pid != os.getpid() or count < 1:
        return None
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise ListenError(f"socket activation (LISTEN_FDS={count}): fd "
                          f"{SD_LISTEN_FDS_START} is not a socket: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        raise ListenError(f"socket activation: fd {SD_LISTEN_FDS_START} is not a stream socket")
    sock.setblocking(False)
    _tune(sock)
    return sock


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return join_host_port(host, port)
