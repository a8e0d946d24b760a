"""Small client-side helpers shared by the tests: bounded waits and echoes.

design: every helper is bounded (a timeout on every socket, a deadline on every
wait) so a broken gateway fails a test instead of hanging the suite.
"""
from __future__ import annotations

import socket
import time
from typing import Callable


def wait_until(condition: Callable[[], object], timeout: float, message: str,
               interval: float = 0.05) -> None:
    """Poll `condition` until true; AssertionError(`message`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(interval)


def sockaddr_of(addr: str | tuple[str, int]) -> tuple[str, int]:
    """"host:port" or "[v6]:port" (or a ready tuple) as a (host, port) tuple."""
    if isinstance(addr, tuple):
        return addr
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def echo_once(addr: str | tuple[str, int], payload: bytes = b"ping",
              timeout: float = 10) -> bytes:
    """Connect, send `payload`, half-close, read to EOF: what came back."""
    with socket.create_connection(sockaddr_of(addr), timeout=timeout) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """On an open connection: send `payload`, read back as many bytes (or until EOF)."""
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def accepts(addr: str | tuple[str, int]) -> bool:
    """True when a TCP connect to `addr` succeeds within a second."""
    try:
        with socket.create_connection(sockaddr_of(addr), timeout=1):
            return True
    except OSError:
        return False
