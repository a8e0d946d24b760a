"""systemd's notify protocol: datagrams to $NOTIFY_SOCKET (no libsystemd dependency).

design: `notify("READY=1")` is a no-op outside systemd; failures are reported to the
caller as False and never raised, since a lost notification must not stop the gateway.
"""
from __future__ import annotations

import os
import socket


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False
