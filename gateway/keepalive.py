"""TCP keepalive on both legs at the Go original's cadence, set as few times as can be.

design: Go's dialer and listener turn keepalive on with 15 s for both the idle time
and the probe interval (the kernel's 9 probes), so a peer that vanished without a FIN
(host crash, NAT entry dropped) is dropped about 2.5 minutes later; Linux's own
default is 2 hours 11 minutes. `socket_options(seconds)` is the list of options for
`--keepalive`: TCP_KEEPIDLE = TCP_KEEPINTVL = seconds, TCP_KEEPCNT = PROBES; with 0 the
kernel's defaults (its sysctls, read here, so a reload from a value back to 0 really
restores them). The master sets them on each TCP listener before it forks workers,
and again when a reload is applied (before the new workers start), and every
accepted socket inherits them (Linux copies them when it completes the handshake,
which can be before any worker looks), so the client leg costs nothing per
connection; a dialled socket has no parent to inherit from and gets them at each dial:
`dial_options(seconds)` is that list built once per worker (its settings), without the
timers a new socket already has (those equal to the kernel's defaults: every timer
with 0, TCP_KEEPCNT with the default 15 s), so a dial makes only the calls that change
something. Listeners keep the full list: a reload back to 0 must restore the defaults
on a socket that had other values.
"""
from __future__ import annotations

import socket

PROBES = 9          # probes before the kernel gives up (Go leaves the kernel's 9)
MAX_SECONDS = 32767  # the kernel's bound for TCP_KEEPIDLE and TCP_KEEPINTVL
_SYSCTLS = (("/proc/sys/net/ipv4/tcp_keepalive_time", "TCP_KEEPIDLE", 7200),
            ("/proc/sys/net/ipv4/tcp_keepalive_intvl", "TCP_KEEPINTVL", 75),
            ("/proc/sys/net/ipv4/tcp_keepalive_probes", "TCP_KEEPCNT", 9))

SocketOption = tuple[int, int, int]


def socket_options(seconds: float) -> tuple[SocketOption, ...]:
    """(level, option, value) triples that turn keepalive on at `seconds` (0: the
    kernel's defaults)."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    if seconds:
        whole = int(seconds)
        options += [(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, whole),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, whole),
                    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PROBES)]
    else:
        for path, name, fallback in _SYSCTLS:
            options.append((socket.IPPROTO_TCP, getattr(socket, name), _sysctl(path, fallback)))
    return tuple(options)


def dial_options(seconds: float) -> tuple[SocketOption, ...]:
    """`socket_options(seconds)` for a new socket: SO_KEEPALIVE, and only the timers
    that differ from the kernel's defaults (which a new socket has already)."""
    defaults = {getattr(socket, name): _sysctl(path, fallback)
                for path, name, fallback in _SYSCTLS}
    return tuple(opt for opt in socket_options(seconds)
                 if opt[0] != socket.IPPROTO_TCP or defaults.get(opt[1]) != opt[2])


def apply(sock: socket.socket, options: tuple[SocketOption, ...]) -> None:
    """Set `options` on a TCP socket (a Unix socket has no keepalive: left alone)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, name, value in options:
        sock.setsockopt(level, name, value)


def parse_seconds(seconds: float) -> float:
    """Validate a `--keepalive` duration: whole seconds, 0 or 1 to MAX_SECONDS."""
    if seconds < 0:
        raise ValueError("must not be negative")
    if seconds != int(seconds):
        raise ValueError("want whole seconds (the kernel counts keepalive in seconds)")
    if seconds > MAX_SECONDS:
        raise ValueError(f"at most {MAX_SECONDS}s (the kernel's bound)")
    return seconds


def _sysctl(path: str, fallback: int) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return fallback
