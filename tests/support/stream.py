"""A continuous stream of short client connections, counting every failure.

design: one thread; each round connects, sends a numbered payload, half-closes,
reads the echo to EOF and checks it. Bounded: it stops when asked or after
`max_seconds`. Failures keep their error text so a test can show what broke.
"""
from __future__ import annotations

import socket
import threading
import time


class ConnectionStream(threading.Thread):
    def __init__(self, sockaddr: tuple[str, int], interval: float = 0.005,
                 max_seconds: float = 120.0, timeout: float = 5.0):
        super().__init__(daemon=True, name="connection-stream")
        self.sockaddr = sockaddr
        self.interval = interval
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.ok = 0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        n = 0
        while not self._stop_event.is_set() and time.monotonic() < deadline:
            n += 1
            payload = b"stream-%d" % n
            try:
                with socket.create_connection(self.sockaddr, timeout=self.timeout) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    got = b""
                    while True:
                        data = s.recv(4096)
                        if not data:
                            break
                        got += data
                if got == payload:
                    self.ok += 1
                else:
                    self.failures.append(f"#{n}: got {got!r}")
            except OSError as exc:
                self.failures.append(f"#{n}: {exc!r}")
            self._stop_event.wait(self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def __enter__(self) -> "ConnectionStream":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
