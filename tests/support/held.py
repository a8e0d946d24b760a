"""Long-lived client connections for balancing and limit tests.

design: `StatusConnection` is one HTTP/1.1 keep-alive connection to an etcd member
(directly or through the gateway) that asks `/v3/maintenance/status` and so learns
which member serves it, then stays open, as an etcd client's connection does for
hours. `closed()` tells, without blocking, whether the far end has ended it. Every
socket operation has a timeout.
"""
from __future__ import annotations

import http.client
import json
import select
import socket


class StatusConnection:
    """A held connection to `host:port`; `member_id()` asks who is at the other end."""

    def __init__(self, host: str, port: int, timeout: float = 10) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.connect()

    def member_id(self) -> str:
        self.conn.request("POST", "/v3/maintenance/status", body=b"{}",
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        body = json.loads(response.read())
        return str(body["header"]["member_id"])

    def closed(self, wait: float = 0.0) -> bool:
        """True once the far end closed or reset the connection (within `wait` s)."""
        sock = self.conn.sock
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.conn.close()
