"""A member that is busy, not dead: a small listen backlog and a slow accept loop.

design: a separate process (`python -m tests.support.slow_backend PORT BACKLOG DELAY`),
so its descriptors and its GIL are its own, as a real member's are. It listens with a
small backlog and accepts one connection every DELAY seconds, writes a greeting
(`hello <n>\\n`) and closes. Under a burst of connects its accept queue overflows and
the kernel drops SYNs (they are retransmitted after the initial RTO, 1 s), exactly as
an etcd member under a reconnect storm does; one event loop accepts and answers, so
a slow client never stops the accepting (as in a real member). `SlowBackend` starts it, waits until it
listens, and stops it by PID.
"""
from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time

from .gateway_proc import REPO


def serve(port: int, backlog: int, delay: float) -> None:
    """One event loop, as a real member's: accept (one connection per `delay`), and
    answer each connection when its first message arrives; reading never blocks the
    accepting."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(backlog)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    print("listening", flush=True)
    n = 0
    while True:
        for key, _ in sel.select():
            if key.fileobj is lsock:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                n += 1
                sel.register(conn, selectors.EVENT_READ, n)
                if delay:
                    time.sleep(delay)
                continue
            conn = key.fileobj
            sel.unregister(conn)
            try:
                conn.send(b"hello %d %s" % (key.data, conn.recv(64)))
            except OSError:
                pass
            conn.close()


class SlowBackend:
    def __init__(self, port: int, backlog: int, delay: float):
        self.addr = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.slow_backend", str(port), str(backlog),
             str(delay)], cwd=REPO, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded: the child prints at once or dies
        if line.strip() != b"listening":
            self.stop()
            raise RuntimeError("slow backend did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> "SlowBackend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
