"""A tiny non-blocking HTTP/1.1 server for /metrics, /health and /endpoints.

design: it runs on the master's own `Loop` (no threads): one request per connection,
then `Connection: close`. It accepts through the workers' accept loop (accept.py).
Everything is bounded so a scraper cannot hurt the master:
at most `max_connections` open at once (extra ones are closed at accept), a request head
of at most `max_head` bytes (else 431), and `timeout` seconds per connection from
accept to close (a monotonic `call_later` timer). The handler is a plain function
`(method, path) -> (status, content type, body)`; if it raises, the client gets 500 and
the loop goes on. After the response the write side is shut down and unread input is
drained briefly before close ("lingering close"), so a client that sent more than we
read still gets its answer instead of a reset. Closing always shuts the socket down
first, which ends the connection even if a forked worker still holds a copy of the fd;
a forked child calls `close_after_fork()` to drop its copies without touching the
master's connections or its epoll interest list.
"""
from __future__ import annotations

import http
import socket
import time
from typing import Callable

from gateway import log as gwlog
from gateway.accept import ACCEPT_BATCH, ACCEPT_PAUSE, accept_batch
from gateway.addresses import HostPort
from gateway import listeners
from gateway.loop import READ, WRITE, Loop, Timer

logger = gwlog.get("metrics")

Response = tuple[int, str, bytes]   # status, content type, body
Handler = Callable[[str, str], Response]

MAX_HEAD = 8 * 1024
TIMEOUT = 5.0
MAX_CONNECTIONS = 64
LINGER = 1.0          # at most this long draining input after the response
_READ_SIZE = 4096
_METHODS = ("GET", "HEAD")


def bind_http(addr: HostPort) -> socket.socket:
    """A listening, non-blocking socket for the HTTP endpoint (`--metrics-addr`),
    bound as the gateway's own listener is (`listeners.bind`)."""
    return listeners.bind(addr, option="--metrics-addr")


def render(status: int, content_type: str, body: bytes, head_only: bool = False,
           extra_headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response (head, and body unless `head_only`)."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in extra_headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def _text(status: int, message: str) -> Response:
    return status, "text/plain; charset=utf-8", (message + "\n").encode()


def parse_request_line(head: bytes) -> tuple[str, str] | None:
    """(method, path without query or fragment) of a request head, or None if malformed."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    parts = text.split(" ")
    if len(parts) != 3 or not parts[0] or not parts[2].startswith("HTTP/"):
        return None
    method, target = parts[0], parts[1]
    if target.startswith(("http://", "https://")):  # absolute form
        after = target.split("://", 1)[1]
        target = "/" + after.split("/", 1)[1] if "/" in after else "/"
    if not target.startswith("/"):
        return None
    path = target.split("?", 1)[0].split("#", 1)[0]
    return method, path


class _Conn:
    """One client connection: read the head, answer, linger, close."""
    __slots__ = ("server", "sock", "fd", "inbuf", "out", "interest", "timer", "deadline",
                 "lingering")

    def __init__(self, server: "HttpServer", sock: socket.socket):
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.inbuf = bytearray()
        self.out = memoryview(b"")
        self.interest = 0
        self.timer = server.loop.call_later(server.timeout, self.expire)
        self.deadline = self.timer.deadline
        self.lingering = False

    def expire(self) -> None:
        self.server._close(self)

    def on_ready(self, fd: int, mask: int) -> None:
        if self.lingering:
            self._drain()
        elif self.out:
            self._write()
        else:
            self._read()

    def _read(self) -> None:
        server = self.server
        while True:
            try:
                data = self.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                server._close(self)
                return
            if not data:
                server._close(self)  # gone before a complete head
                return
            self.inbuf += data
            end = self.inbuf.find(b"\r\n\r\n")
            if end < 0:
                end = self.inbuf.find(b"\n\n")
            if end > server.max_head or (end < 0 and len(self.inbuf) > server.max_head):
                self._respond(render(*_text(431, "request header fields too large")))
                return
            if end >= 0:
                self._respond(server._answer(bytes(self.inbuf[:end])))
                return

    def _respond(self, payload: bytes) -> None:
        self.inbuf = bytearray()
        self.out = memoryview(payload)
        self._write()

    def _write(self) -> None:
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                self.interest = self.server.loop.set_interest(self.fd,
                                             self.interest, WRITE,
                                             self.on_ready)
                return
            except OSError:
                self.server._close(self)
                return
            self.out = self.out[sent:]
        self._start_linger()

    def _start_linger(self) -> None:
        """Response sent: FIN now, then discard input until EOF or a short deadline
        (never past the connection's own deadline)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.server._close(self)
            return
        self.lingering = True
        self.interest = self.server.loop.set_interest(self.fd, self.interest,
                                     READ, self.on_ready)
        self.timer.cancel()
        delay = min(LINGER, max(0.0, self.deadline - time.monotonic()))
        self.timer = self.server.loop.call_later(delay, self.expire)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.server._close(self)
                return
            if not data:
                self.server._close(self)
                return


class HttpServer:
    """Serve `handler` on the listening socket `sock`, on `loop`."""

    def __init__(self, loop: Loop, sock: socket.socket, handler: Handler, *,
                 timeout: float = TIMEOUT, max_connections: int = MAX_CONNECTIONS,
                 max_head: int = MAX_HEAD):
        self.loop = loop
        self.sock = sock
        self.handler = handler
        self.timeout = timeout
        self.max_connections = max_connections
        self.max_head = max_head
        self._conns: dict[int, _Conn] = {}
        self._accepting = False
        self._resume: Timer | None = None
        self._closed = False
        self._overload = gwlog.Throttle(10.0)
        self._accept_errors = gwlog.Throttle(10.0)
        sock.setblocking(False)
        self._start_accepting()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def address(self) -> tuple:
        return self.sock.getsockname()

    # -- accept ------------------------------------------------------------------------
    def _start_accepting(self) -> None:
        self._resume = None
        if not self._closed and not self._accepting:
            self.loop.add(self.sock.fileno(), READ,
                                        self._on_accept)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting:
            self.loop.remove(self.sock.fileno())
            self._accepting = False
        if self._resume is None:
            self._resume = self.loop.call_later(ACCEPT_PAUSE, self._start_accepting)

    def _on_accept(self, fd: int, mask: int) -> None:
        for client, _ in accept_batch(self.sock.accept, ACCEPT_BATCH, self._out_of_descriptors,
                                      self._accept_failed):
            if len(self._conns) >= self.max_connections:
                suppressed = self._overload.allow()
                if suppressed is not None:
                    logger.warning("too many HTTP connections; closing new ones",
                                   extra=gwlog.fields(limit=self.max_connections,
                                                      suppressed=suppressed))
                client.close()
                continue
            client.setblocking(False)
            conn = _Conn(self, client)
            self._conns[conn.fd] = conn
            conn.interest = self.loop.set_interest(conn.fd, 0, READ, conn.on_ready)
            conn.on_ready(conn.fd, READ)  # the request often came with the SYN-ACK

    def _out_of_descriptors(self, exc: OSError) -> None:
        self._accept_failed(exc)
        self._pause_accepting()

    def _accept_failed(self, exc: OSError) -> None:
        suppressed = self._accept_errors.allow()
        if suppressed is not None:
            logger.warning("cannot accept HTTP connection", extra=gwlog.fields(
                error=exc.strerror or str(exc), suppressed=suppressed))

    # -- requests ----------------------------------------------------------------------
    def _answer(self, head: bytes) -> bytes:
        """The rendered response to a complete request head."""
        request = parse_request_line(head)
        if request is None:
            return render(*_text(400, "bad request"))
        method, path = request
        if method not in _METHODS:
            return render(*_text(405, "method not allowed"),
                          extra_headers=(("Allow", "GET, HEAD"),))
        try:
            status, ctype, body = self.handler(method, path)
            return render(status, ctype, body, head_only=method == "HEAD")
        except Exception as exc:  # noqa: BLE001 - a bad page must not stop the master
            logger.error("HTTP handler failed", exc_info=True, extra=gwlog.fields(
                method=method, path=path, error=str(exc)))
            return render(*_text(500, "internal server error"))

    # -- closing -----------------------------------------------------------------------
    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        conn.timer.cancel()
        if conn.interest:
            self.loop.remove(conn.fd)
            conn.interest = 0
        try:
            # ends the connection even if a forked child still holds a copy of the fd
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        conn.sock.close()

    def close(self) -> None:
        """Stop serving: unregister and close the listener and every connection."""
        if self._closed:
            return
        self._closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._accepting:
            self.loop.remove(self.sock.fileno())
            self._accepting = False
        for conn in list(self._conns.values()):
            self._close(conn)
        self.sock.close()

    def close_after_fork(self) -> None:
        """In a forked child: close the inherited fds only. No loop calls (the epoll
        instance is shared with the parent) and no shutdown (the parent's connections
        must go on)."""
        self._closed = True
        for conn in self._conns.values():
            conn.timer.cancel()
            conn.sock.close()
        self._conns.clear()
        self._accepting = False
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.sock.close()
