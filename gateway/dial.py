"""A non-blocking TCP connect to a member: the one way the workers and the master's
checks dial, and the one wording of its errors.

design: `start` makes a non-blocking socket (one call: SOCK_NONBLOCK), sets the
caller's socket options and starts the connect. The socket is the C-level
`_socket.socket`: the Python subclass `socket.socket` adds a Python __init__ per
socket and conveniences (makefile, a context manager, dup, sendfile) that a dial's
socket, soon detached (a session keeps the raw fd) or closed, never uses. It returns
the socket and whether it connected at once (on loopback the handshake is done when
connect() returns, though it says EINPROGRESS: TCP_INFO tells); a connect refused at
once raises `DialError`, the socket closed. A connect in progress is the caller's to
watch: it registers the socket for WRITE on its loop and arms its own deadline; once
writable, `outcome` says whether it connected. The texts are the Go original's
net.Dial words, so operators grep the same lines: "dial tcp ADDR: connect: connection
refused", "dial tcp ADDR: i/o timeout (dial timeout 1s)". socket() itself failing
(EMFILE and the like) is an OSError for the caller: a local shortage, not the member's
fault.
"""
from __future__ import annotations

import _socket
import errno
import os
import socket
from collections.abc import Iterable

from gateway.endpoints import Endpoint

_SOCK_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # Linux: non-blocking at once
_IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN)
_TCP_ESTABLISHED = 1  # tcp_info.tcpi_state (linux/tcp_states.h)

SockOpt = tuple[int, int, int]   # level, option, value


class DialError(Exception):
    """A connect failed at once (one line, as the original logs it)."""


def start(ep: Endpoint, options: Iterable[SockOpt] = ()) -> tuple[_socket.socket, bool]:
    """(socket, connected at once) for a connect to `ep`; DialError if it failed at
    once; OSError if no socket could be made."""
    sock = _socket.socket(ep.family, _SOCK_FLAGS)
    try:
        setsockopt = sock.setsockopt
        for option in options:  # (level, option, value): the call's own argument tuple
            setsockopt(*option)
        err = sock.connect_ex(ep.sockaddr)
    except BaseException:
        sock.close()
        raise
    if err == 0:
        return sock, True
    if err in _IN_PROGRESS:
        return sock, _established(sock)
    sock.close()
    raise DialError(connect_error(ep.address, err))


def _established(sock: _socket.socket) -> bool:
    """True when a connect that said EINPROGRESS has in fact completed: on loopback
    (members on the gateway's host) the member's SYN-ACK is processed before connect()
    returns (2000 of 2000 in a probe). One getsockopt, the state byte of TCP_INFO,
    against an epoll registration for WRITE, a wake-up, SO_ERROR and a second
    registration; a refused connect is never ESTABLISHED and takes the usual path."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_ESTABLISHED


def outcome(sock: _socket.socket, address: str) -> str | None:
    """A connect in progress that became writable: None if it connected, else why not."""
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    return connect_error(address, err) if err else None


def connect_error(address: str, err: int) -> str:
    """A failed connect, worded as the original gateway logs it (Go's net.Dial)."""
    return f"dial tcp {address}: connect: {os.strerror(err).lower()}"


def timeout_error(address: str, timeout: float) -> str:
    """A connect that did not complete within the dial timeout."""
    return f"dial tcp {address}: i/o timeout (dial timeout {timeout:g}s)"
