"""Simple TCP peers for gateway tests: an echo server, a hung listener, a dead port.

Design:
- EchoServer: one accept thread plus one thread per connection, all on
  blocking sockets with a short timeout so every loop notices ``stop()``.  In
  echo mode each chunk is echoed before the next is read; on EOF the server
  has therefore finished echoing and does ``shutdown(SHUT_WR)``, which lets a
  test check that a proxy forwards half-closes both ways.  In flood mode it
  writes continuously and never reads (backpressure tests), until the
  connection breaks, ``flood_bytes`` is reached or ``stop()`` is called.
- HungListener: a listening socket with backlog 0 that never accepts; it
  fills its own accept queue with filler connections until a further connect
  gets no answer, so every later connect hangs in SYN_SENT (Linux drops a SYN
  when the accept queue is full) instead of being refused.  The constructor
  verifies this and raises if it cannot get there.
- dead_addr(): a port nobody listens on, so a connect is refused at once.
"""
from __future__ import annotations

import errno
import logging
import select
import socket
import threading
import time
from typing import Any

from .ports import free_port

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_TICK = 0.2  # socket timeout: how often blocked loops look at the stop flag


def dead_addr(host: str = HOST) -> str:
    """"host:PORT" of a port that nobody listens on (connects are refused)."""
    return f"{host}:{free_port(host)}"


class EchoServer:
    """Threaded TCP echo (or flood) server on 127.0.0.1, or ``host`` (another loopback
    address such as 127.0.0.2, or ::1), on a free port unless ``port``."""

    def __init__(self, flood: bool = False, flood_bytes: int | None = None,
                 chunk: int = 64 * 1024, port: int = 0, host: str = HOST) -> None:
        self.flood = flood
        self.flood_bytes = flood_bytes
        self.chunk = chunk
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lsock = socket.socket(family, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, port))
        self.host = host
        self.port: int = self._lsock.getsockname()[1]
        self.addr = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_thread: threading.Thread | None = None
        self.accepted = 0          # connections accepted so far
        self.bytes_echoed = 0      # echo mode: bytes written back
        self.bytes_sent = 0        # flood mode: bytes written
        self.half_closes = 0       # echo mode: EOFs answered with SHUT_WR

    @classmethod
    def on_port(cls, port: int, **kwargs: Any) -> "EchoServer":
        """An echo server on a given port (e.g. a backend that comes back)."""
        return cls(port=port, **kwargs)

    @property
    def active(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._conns)

    def start(self) -> "EchoServer":
        self._lsock.listen(socket.SOMAXCONN)  # bursts of thousands of connects
        self._lsock.settimeout(_TICK)
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"echo-accept-{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 5) -> None:
        """Stop accepting, close every connection, join the threads (bounded). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._lsock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        threads = ([self._accept_thread] if self._accept_thread else []) + self._threads
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "EchoServer":
        if self._accept_thread is None:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break  # listener closed by stop()
                log.warning("echo server %s: accept failed: %s", self.addr, exc)
                time.sleep(0.05)  # EMFILE, ECONNABORTED...: transient
                continue
            conn.settimeout(_TICK)
            with self._lock:
                self.accepted += 1
                self._conns.add(conn)
            t = threading.Thread(
                target=self._serve, args=(conn,), name=f"echo-conn-{self.port}", daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.flood:
                self._flood(conn)
            else:
                self._echo(conn)
        except OSError as exc:
            log.debug("echo connection ended: %s", exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def _echo(self, conn: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                data = conn.recv(self.chunk)
            except socket.timeout:
                continue
            if not data:
                with self._lock:  # counted first: the client may look once it sees EOF
                    self.half_closes += 1
                conn.shutdown(socket.SHUT_WR)
                return
            self._send_all(conn, data)
            with self._lock:
                self.bytes_echoed += len(data)

    def _send_all(self, conn: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stop.is_set():
            try:
                n = conn.send(view)
            except socket.timeout:
                continue
            view = view[n:]

    def _flood(self, conn: socket.socket) -> None:
        block = b"x" * self.chunk
        while not self._stop.is_set():
            if self.flood_bytes is not None:
                left = self.flood_bytes - self.bytes_sent
                if left <= 0:
                    return
                payload = block[:left]
            else:
                payload = block
            try:
                n = conn.send(payload)
            except socket.timeout:
                continue  # peer not reading: the point of the test
            with self._lock:
                self.bytes_sent += n


class HungListener:
    """A listening socket that never accepts and whose accept queue is full.

    A connect to ``addr`` then neither completes nor is refused: it times out.
    """

    def __init__(self, max_fillers: int = 16, probe_timeout: float = 0.3) -> None:
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.bind((HOST, 0))
        self._lsock.listen(0)
        self.port: int = self._lsock.getsockname()[1]
        self.addr = f"{HOST}:{self.port}"
        self._fillers: list[socket.socket] = []
        try:
            self._fill(max_fillers, probe_timeout)
        except BaseException:
            self.close()
            raise

    def _fill(self, max_fillers: int, probe_timeout: float) -> None:
        for _ in range(max_fillers):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            rc = s.connect_ex((HOST, self.port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                raise RuntimeError(f"HungListener: filler connect failed: {errno.errorcode.get(rc, rc)}")
            _, writable, _ = select.select([], [s], [], probe_timeout)
            if not writable:
                # This one hangs: the queue is full. Drop it (it would only retransmit SYNs).
                s.close()
                log.debug("HungListener %s full after %d fillers", self.addr, len(self._fillers))
                return
            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                s.close()
                raise RuntimeError(f"HungListener: filler connect error {errno.errorcode.get(err, err)}")
            self._fillers.append(s)
        raise RuntimeError(
            f"HungListener: accept queue of {self.addr} not full after {max_fillers} connections")

    @property
    def fillers(self) -> int:
        return len(self._fillers)

    def close(self) -> None:
        """Close the fillers and the listener. Idempotent."""
        for s in self._fillers:
            try:
                s.close()
            except OSError:
                pass
        self._fillers = []
        try:
            self._lsock.close()
        except OSError:
            pass

    def __enter__(self) -> "HungListener":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
