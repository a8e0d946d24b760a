"""A connection burst: many clients at once, each one request on its own connection.

design: one thread, non-blocking sockets and a selector. Every connection is
started at once (connect, then a linearizable `POST /v3/kv/range` with
`Connection: close`); a connection counts as served when its answer begins with
`HTTP/1.1 200` and ends with EOF, and as failed on a refused/reset connection, an
error status, or when the shared deadline passes. Several targets run in the same
burst (the gateway, and the members directly as the baseline), so both meet the
same moment of the cluster.
"""
from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from dataclasses import dataclass, field

from scripts.soaklib.etcdhttp import b64, split_addr


@dataclass
class BurstResult:
    served: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed += 1
        self.errors[why] = self.errors.get(why, 0) + 1


@dataclass
class _Conn:
    sock: socket.socket
    result: BurstResult
    out: bytes
    got: bytearray = field(default_factory=bytearray)


def _request(addr: str, key: bytes) -> bytes:
    body = json.dumps({"key": b64(key)}).encode()
    return (f"POST /v3/kv/range HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def burst(targets: dict[str, list[str]], count: int, key: bytes,
          timeout: float) -> dict[str, BurstResult]:
    """``count`` connections to each target (spread over its addresses), all at once."""
    results = {name: BurstResult() for name in targets}
    sel = selectors.DefaultSelector()
    try:
        for name, addrs in targets.items():
            for i in range(count):
                addr = addrs[i % len(addrs)]
                _open(sel, addr, key, results[name])
        _run(sel, time.monotonic() + timeout)
    finally:
        for key_ in list(sel.get_map().values()):
            conn: _Conn = key_.data
            conn.result.fail("deadline")
            sel.unregister(conn.sock)
            conn.sock.close()
        sel.close()
    return results


def _open(sel: selectors.BaseSelector, addr: str, key: bytes, result: BurstResult) -> None:
    sock = socket.socket(socket.AF_INET6 if ":" in split_addr(addr)[0] else socket.AF_INET)
    sock.setblocking(False)
    err = sock.connect_ex(split_addr(addr))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        result.fail(errno.errorcode.get(err, str(err)))
        return
    sel.register(sock, selectors.EVENT_WRITE, _Conn(sock, result, _request(addr, key)))


def _run(sel: selectors.BaseSelector, deadline: float) -> None:
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        for key_, mask in sel.select(min(left, 0.5)):
            conn: _Conn = key_.data
            try:
                if mask & selectors.EVENT_WRITE:
                    _send(sel, conn)
                elif _receive(conn):
                    sel.unregister(conn.sock)
                    conn.sock.close()
            except OSError as exc:
                sel.unregister(conn.sock)
                conn.sock.close()
                conn.result.fail(errno.errorcode.get(exc.errno or 0, type(exc).__name__))


def _send(sel: selectors.BaseSelector, conn: _Conn) -> None:
    err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, "connect")
    sent = conn.sock.send(conn.out)
    conn.out = conn.out[sent:]
    if not conn.out:
        sel.modify(conn.sock, selectors.EVENT_READ, conn)


def _receive(conn: _Conn) -> bool:
    """Read what arrived; True when the connection is finished (and counted)."""
    data = conn.sock.recv(65536)
    if data:
        conn.got += data
        return False
    if conn.got.startswith(b"HTTP/1.1 200"):
        conn.result.served += 1
    else:
        status = bytes(conn.got.split(b"\r\n", 1)[0][:40]).decode("latin-1") or "closed"
        conn.result.fail(status)
    return True
