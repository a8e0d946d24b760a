"""etcd's v3 JSON gateway over plain HTTP/1.1: the soak's only way of talking to etcd.

design: one `KvClient` per client thread holds one keep-alive connection
(http.client) to one address at a time; `put` and `get` are single attempts that
either return the response's header revision or raise `EtcdError`, and the caller
decides about retries (load.py). A failed attempt drops the connection, so the next
one starts clean. A watch is a raw socket (`WatchStream`) reading the chunked
response incrementally into a buffer: a read timeout only means "nothing new yet"
and never corrupts the stream state, which http.client cannot promise. Keys and
values travel base64-encoded, as the JSON gateway wants; revisions arrive as
decimal strings (uint64 in JSON).
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any


class EtcdError(Exception):
    """One failed attempt: connection trouble, a timeout, or an error answer."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


def split_addr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Answer:
    """What a successful put or range said: the store revision, and the member."""

    revision: int
    member_id: str
    body: dict[str, Any]


class KvClient:
    """Unary calls (put, linearizable range) on one keep-alive connection."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._addr = ""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def put(self, addr: str, key: bytes, value: bytes) -> Answer:
        return self._call(addr, "/v3/kv/put", {"key": b64(key), "value": b64(value)})

    def get(self, addr: str, key: bytes) -> Answer:
        """A linearizable range (the default: serializable is false)."""
        return self._call(addr, "/v3/kv/range", {"key": b64(key)})

    def _call(self, addr: str, path: str, request: dict[str, Any]) -> Answer:
        if self._conn is None or addr != self._addr:
            self.close()
            host, port = split_addr(addr)
            self._conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            self._addr = addr
        try:
            self._conn.request("POST", path, body=json.dumps(request),
                               headers={"Content-Type": "application/json"})
            resp = self._conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise EtcdError(f"{type(exc).__name__}: {exc}") from None
        if resp.status != 200:
            self.close()
            raise EtcdError(f"HTTP {resp.status}: {data[:200]!r}")
        return _answer(data)


def _answer(data: bytes) -> Answer:
    try:
        body = json.loads(data)
        header = body["header"]
        return Answer(int(header["revision"]), str(header.get("member_id", "")), body)
    except (ValueError, KeyError, TypeError) as exc:
        raise EtcdError(f"bad answer ({exc}): {data[:200]!r}") from None


@dataclass(frozen=True)
class Event:
    revision: int
    key: bytes


class WatchStream:
    """POST /v3/watch on a raw socket; `poll()` returns the events that arrived.

    The first message is the "created" answer (its header names the member that
    serves the watch). `poll` raises EtcdError when the stream ends or says that
    the watch was cancelled or compacted: the caller reconnects from its last
    revision + 1.
    """

    def __init__(self, addr: str, prefix: bytes, start_revision: int,
                 connect_timeout: float) -> None:
        self.member_id = ""
        self.created = False
        self._buf = bytearray()     # raw bytes not yet de-chunked
        self._body = bytearray()    # de-chunked body not yet split into messages
        self._chunked = False
        self._headers_done = False
        request = json.dumps({"create_request": {
            "key": b64(prefix), "range_end": b64(prefix_end(prefix)),
            "start_revision": start_revision}}).encode()
        host, port = split_addr(addr)
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise EtcdError(f"watch connect: {exc}") from None
        head = (f"POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(request)}\r\n\r\n").encode()
        try:
            self._sock.sendall(head + request)
        except OSError as exc:
            self.close()
            raise EtcdError(f"watch send: {exc}") from None

    def close(self) -> None:
        self._sock.close()

    def poll(self, wait: float) -> list[Event]:
        """Events that arrived within ``wait`` seconds (maybe none)."""
        self._sock.settimeout(wait)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return []
        except OSError as exc:
            raise EtcdError(f"watch recv: {exc}") from None
        if not data:
            raise EtcdError("watch stream closed")
        self._buf += data
        self._decode()
        return self._messages()

    def _decode(self) -> None:
        if not self._headers_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buf[:end]).decode("latin-1")
            del self._buf[:end + 4]
            status = head.split("\r\n", 1)[0]
            if " 200 " not in status + " ":
                raise EtcdError(f"watch answer: {status}")
            self._chunked = "transfer-encoding: chunked" in head.lower()
            self._headers_done = True
        if not self._chunked:
            self._body += self._buf
            self._buf.clear()
            return
        while True:
            line_end = self._buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self._buf[:line_end]).split(b";")[0], 16)
            if size == 0:
                raise EtcdError("watch stream ended")
            if len(self._buf) < line_end + 2 + size + 2:
                return
            start = line_end + 2
            self._body += self._buf[start:start + size]
            del self._buf[:start + size + 2]

    def _messages(self) -> list[Event]:
        events: list[Event] = []
        while True:
            end = self._body.find(b"\n")
            if end < 0:
                return events
            line = bytes(self._body[:end]).strip()
            del self._body[:end + 1]
            if line:
                events.extend(self._message(line))

    def _message(self, line: bytes) -> list[Event]:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise EtcdError(f"watch message is not JSON ({exc}): {line[:200]!r}") from None
        if "error" in msg:
            raise EtcdError(f"watch error: {str(msg['error'])[:200]}")
        result = msg.get("result", {})
        if result.get("created"):
            self.created = True
            self.member_id = str(result.get("header", {}).get("member_id", ""))
        if result.get("canceled") or result.get("compact_revision"):
            raise EtcdError(f"watch cancelled: {str(result)[:200]}")
        return [Event(int(e["kv"]["mod_revision"]), base64.b64decode(e["kv"]["key"]))
                for e in result.get("events", [])]
