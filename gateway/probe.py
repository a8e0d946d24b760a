"""The master's re-admission probes: a member marked down is tried again after
`retry_delay`, with a TCP connect bounded by the dial timeout.

design: non-blocking connects on the master's loop (no threads, never blocks the
master). Each endpoint stays out for `retry_delay` after its *own* latest failure
(not on one global ticker, as the original). Success clears the mark only if no worker
recorded a newer failure meanwhile (compare-and-clear on `down_at`).
"""
from __future__ import annotations

import errno
import functools
import os
import socket
import time

from gateway import log as gwlog
from gateway.health import HealthTable, RosterEntry
from gateway.loop import Loop, Timer
from gateway.relay import WRITE

logger = gwlog.get("probe")


class _Probe:
    __slots__ = ("entry", "sock", "timer", "down_at")

    def __init__(self, entry: RosterEntry, sock: socket.socket, down_at: float):
        self.entry = entry
        self.sock = sock
        self.down_at = down_at
        self.timer: Timer | None = None


class Prober:
    def __init__(self, loop: Loop, table: HealthTable, dial_timeout: float, retry_delay: float):
        self.loop = loop
        self.table = table
        self.dial_timeout = dial_timeout
        self.retry_delay = retry_delay
        self._inflight: dict[int, _Probe] = {}

    def configure(self, dial_timeout: float, retry_delay: float) -> None:
        self.dial_timeout = dial_timeout
        self.retry_delay = retry_delay

    def tick(self) -> None:
        """Start a probe for every endpoint whose retry delay has passed."""
        now = time.monotonic()
        for entry in self.table.roster():
            down_at = self.table.down_at(entry.slot)
            if down_at and now - down_at >= self.retry_delay and entry.slot not in self._inflight:
                self._start(entry, down_at)

    def _start(self, entry: RosterEntry, down_at: float) -> None:
        ep = entry.endpoint
        try:
            sock = socket.socket(ep.family, socket.SOCK_STREAM)
        except OSError as exc:
            logger.warning("cannot probe endpoint", extra=gwlog.fields(
                address=ep.address, error=exc.strerror))
            return
        sock.setblocking(False)
        probe = _Probe(entry, sock, down_at)
        err = sock.connect_ex(ep.sockaddr)
        if err == 0:
            self._finish(probe, None)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self._inflight[entry.slot] = probe
            self.loop.selector.register(sock.fileno(), WRITE, functools.partial(self._ready, probe))
            probe.timer = self.loop.call_later(self.dial_timeout,
                                               functools.partial(self._timeout, probe))
        else:
            self._finish(probe, f"dial tcp {ep.address}: connect: {os.strerror(err).lower()}")

    def _ready(self, probe: _Probe, mask: int) -> None:
        err = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        ep = probe.entry.endpoint
        self._finish(probe, None if err == 0 else
                     f"dial tcp {ep.address}: connect: {os.strerror(err).lower()}")

    def _timeout(self, probe: _Probe) -> None:
        self._finish(probe, f"dial tcp {probe.entry.endpoint.address}: i/o timeout")

    def _finish(self, probe: _Probe, error: str | None) -> None:
        slot = probe.entry.slot
        if self._inflight.get(slot) is probe:
            del self._inflight[slot]
            self.loop.selector.unregister(probe.sock.fileno())
        if probe.timer is not None:
            probe.timer.cancel()
        probe.sock.close()
        address = probe.entry.endpoint.address
        if error is None:
            if self.table.mark_up(slot, if_down_at=probe.down_at):
                logger.info("activated", extra=gwlog.fields(address=address))
        else:
            self.table.mark_down(slot, error)
            logger.warning("failed to activate endpoint (stay inactive for another interval)",
                           extra=gwlog.fields(address=address, interval=self.retry_delay,
                                              error=error))

    def close(self) -> None:
        for probe in list(self._inflight.values()):
            self.loop.selector.unregister(probe.sock.fileno())
            probe.sock.close()
            if probe.timer is not None:
                probe.timer.cancel()
        self._inflight.clear()
