"""The master's member checks: active health checks and re-admission after failures.

design: one `Checker` on the master's loop, non-blocking, never a thread. Each check is
a small state machine (connecting -> [etcd: request sent -> reading] -> done) bounded
by the dial timeout as a whole. Results go to the shared table, so every worker acts
on them at once.

Policy, per endpoint:
- up: checked every `interval` (modes tcp and etcd); `fall` consecutive failures mark
  it down (`deactivated endpoint`, reason "health check");
- down (by a worker's failed dial or by checks): it stays out for `retry_delay` after
  its latest failure; then it is checked back to back until `rise` consecutive checks
  pass (`activated`), or one fails (`failed to activate endpoint ...`, and it stays out
  for another retry delay). Readmission is compare-and-clear: a worker's newer failure
  wins over a probe that started before it.
- mode none: no checks of up endpoints; re-admission by one TCP connect, as the original.
- a worker's timed-out dial makes an up endpoint a suspect (health.py): tcp and etcd
  modes check it at once, and if that check fails it is marked down without waiting
  for `fall` (the check agrees); if it passes the suspicion is lifted. A check whose
  connect timed out while clients' dials to the same member succeeded gives no
  verdict: the member is busy (its accept queue drops SYNs), not dead.
- a new address (a name that now resolves to one more) is published down and marked
  `unproven` by the master: it is checked at once, without waiting for the retry
  delay, and takes clients after `rise` good checks, like a readmitted member.

`etcd` mode asks the member's own view: `GET /health` must answer 200 with
`"health":"true"` within the dial timeout, so a member that is hung (SIGSTOP: the kernel
still completes the handshake) or has lost quorum is taken out. Against members the
gateway dials with TLS (https:// endpoints) the check is HTTPS with the same context as
relayed connections (CA, name, client certificate; ALPN http/1.1): a handshake step
between connecting and sending, within the same deadline. Members whose TLS the
gateway only passes through are checked with `tcp`.
"""
from __future__ import annotations

import errno
import functools
import socket
import ssl
import time
from dataclasses import dataclass

from gateway import log as gwlog
from gateway.dial import connect_error
from gateway.endpoints import RosterEntry
from gateway.health import C_HEALTH_CHECK_FAILURES, HealthTable
from gateway.loop import READ, WRITE, Loop, Timer
from gateway.tlsleg import TlsLeg, describe_failure, server_name

logger = gwlog.get("checks")

TICK = 0.25
MAX_RESPONSE = 16384


@dataclass
class CheckPolicy:
    mode: str            # none | tcp | etcd
    interval: float
    fall: int
    rise: int
    dial_timeout: float
    retry_delay: float


class _SlotState:
    __slots__ = ("key", "fails", "oks", "next_due", "inflight", "confirming")

    def __init__(self, key: tuple):
        self.key = key
        self.fails = 0
        self.oks = 0
        self.next_due = 0.0
        self.inflight: _Check | None = None
        self.confirming = False  # a check started because a worker's dial timed out


CONNECTING, HANDSHAKE, SENDING, READING = "connecting", "handshake", "sending", "reading"


class _Check:
    """One check of one endpoint: connecting -> [etcd: [handshake ->] sending ->
    reading] -> finished."""
    __slots__ = ("entry", "sock", "timer", "down_at", "http", "phase", "request",
                 "response", "registered", "leg", "started")

    def __init__(self, entry: RosterEntry, sock: socket.socket, down_at: float, http: bool):
        self.entry = entry
        self.sock = sock
        self.down_at = down_at
        self.http = http
        self.phase = CONNECTING
        self.timer: Timer | None = None
        self.request = b""
        self.response = b""
        self.registered = 0
        self.started = time.monotonic()
        self.leg: TlsLeg | None = None


class Checker:
    def __init__(self, loop: Loop, table: HealthTable, policy: CheckPolicy):
        self.loop = loop
        self.table = table
        self.policy = policy
        self._states: dict[int, _SlotState] = {}
        self._timer: Timer | None = None
        self._tls: ssl.SSLContext | None = None
        self._unproven: dict[int, tuple] = {}   # slot -> address, checked before clients

    def configure(self, policy: CheckPolicy) -> None:
        self.policy = policy

    def set_tls(self, ctx: ssl.SSLContext | None) -> None:
        """The context for members dialled with TLS (None: they are not)."""
        self._tls = ctx

    def check_first(self, slot: int, sockaddr: tuple) -> None:
        """`slot` holds a new address, published down: check it now, not after the
        retry delay (the master, right after publishing it)."""
        self._unproven[slot] = sockaddr

    def start(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)

    def close_after_fork(self) -> None:
        """In a new worker: close the inherited copies of in-flight check sockets
        (without touching the master's epoll), so the master's close ends them."""
        for state in self._states.values():
            if state.inflight is not None:
                state.inflight.sock.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for state in self._states.values():
            if state.inflight is not None:
                self._teardown(state.inflight)
        self._states.clear()

    # -- scheduling ------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)
        now = time.monotonic()
        roster = self.table.roster()
        live = set()
        for entry in roster:
            state = self._state_for(entry)
            live.add(entry.slot)
            if state.inflight is not None:
                continue
            down_at = self.table.down_at(entry.slot)
            if down_at:
                unproven = self._unproven.get(entry.slot) == entry.endpoint.sockaddr
                if unproven or now - down_at >= self.policy.retry_delay:
                    self._start(entry, state, down_at)
            elif self._suspect(entry, state):
                state.next_due = now + self.policy.interval
                self._start(entry, state, 0.0)
            elif self.policy.mode != "none" and now >= state.next_due:
                state.next_due = now + self.policy.interval
                self._start(entry, state, 0.0)
        for slot in [s for s in self._unproven if s not in live]:
            del self._unproven[slot]
        for slot in [s for s in self._states if s not in live]:
            state = self._states.pop(slot)
            if state.inflight is not None:
                self._teardown(state.inflight)

    def _suspect(self, entry: RosterEntry, state: _SlotState) -> bool:
        """True once per suspicion: a worker's dial to this up member timed out (tcp
        and etcd modes check it at once; a failing check then agrees, see _failed)."""
        if not self.table.dial_timeouts(entry.slot):
            state.confirming = False
            return False
        if state.confirming or self.policy.mode == "none":
            return False
        state.confirming = True
        return True

    def _state_for(self, entry: RosterEntry) -> _SlotState:
        key = entry.endpoint.sockaddr
        state = self._states.get(entry.slot)
        if state is None or state.key != key:
            if state is not None and state.inflight is not None:
                self._teardown(state.inflight)
            state = self._states[entry.slot] = _SlotState(key)
        return state

    # -- one check -------------------------------------------------------------------
    def _start(self, entry: RosterEntry, state: _SlotState, down_at: float) -> None:
        ep = entry.endpoint
        try:
            sock = socket.socket(ep.family, socket.SOCK_STREAM)
        except OSError as exc:
            logger.warning("cannot check endpoint", extra=gwlog.fields(
                address=ep.address, error=exc.strerror))
            return
        sock.setblocking(False)
        check = _Check(entry, sock, down_at, http=self.policy.mode == "etcd")
        state.inflight = check
        err = sock.connect_ex(ep.sockaddr)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._finish(check, connect_error(ep.address, err))
            return
        check.timer = self.loop.call_later(self.policy.dial_timeout,
                                           functools.partial(self._timeout, check))
        self._watch(check, WRITE)

    def _watch(self, check: _Check, mask: int) -> None:
        check.registered = self.loop.set_interest(check.sock.fileno(), check.registered, mask,
                                                  functools.partial(self._ready, check))

    def _ready(self, check: _Check, fd: int, mask: int) -> None:
        ep = check.entry.endpoint
        try:
            if check.phase == CONNECTING:
                err = check.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self._finish(check, connect_error(ep.address, err))
                    return
                if not check.http:
                    self._finish(check, None)
                    return
                check.request = (f"GET /health HTTP/1.1\r\nHost: {ep.address}\r\n"
                                 "Connection: close\r\nUser-Agent: etcd-gatewayd\r\n\r\n"
                                 ).encode()
                check.phase = SENDING
                if self._tls is not None:
                    check.leg = TlsLeg.client(self._tls, check.sock, server_name(ep.label))
                    check.sock = check.leg.sock  # the same fd, now speaking TLS
                    check.phase = HANDSHAKE
            if check.phase == HANDSHAKE:
                assert check.leg is not None
                try:
                    want = check.leg.handshake()
                except (ssl.SSLError, OSError) as exc:
                    self._finish(check, f"TLS handshake with {ep.address}: "
                                        f"{describe_failure(exc)}")
                    return
                if want:
                    self._watch(check, want)
                    return
                check.phase = SENDING
                self._watch(check, WRITE)
                return
            if check.phase == SENDING:
                check.request = check.request[check.sock.send(check.request):]
                if not check.request:
                    check.phase = READING
                    self._watch(check, READ)
                return
            data = check.sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError as exc:
            self._finish(check, f"GET {self._scheme}://{ep.address}/health: "
                                f"{exc.strerror or exc}")
            return
        check.response += data
        if data and len(check.response) < MAX_RESPONSE:
            return  # read until the member closes (Connection: close)
        self._finish(check, _judge_health(f"{self._scheme}://{ep.address}", check.response))

    @property
    def _scheme(self) -> str:
        return "http" if self._tls is None else "https"

    def _timeout(self, check: _Check) -> None:
        ep = check.entry.endpoint
        if check.phase == CONNECTING and self.table.last_dial_ok(check.entry.slot) >= check.started:
            # the member accepted a client's dial while this connect waited: busy (a
            # full accept queue drops SYNs), not dead; no verdict either way
            self._teardown(check)
            state = self._states.get(check.entry.slot)
            if state is not None and state.inflight is check:
                state.inflight = None
            logger.debug("health check connect timed out while dials succeed: no verdict",
                         extra=gwlog.fields(address=ep.address))
            return
        what = (f"dial tcp {ep.address}: i/o timeout" if check.phase == CONNECTING
                else f"TLS handshake with {ep.address}: no answer" if check.phase == HANDSHAKE
                else f"GET {self._scheme}://{ep.address}/health: no answer")
        self._finish(check, f"{what} within {self.policy.dial_timeout:g}s")

    def _teardown(self, check: _Check) -> None:
        if check.registered:
            self.loop.remove(check.sock.fileno())
            check.registered = 0
        if check.timer is not None:
            check.timer.cancel()
        check.sock.close()

    def _finish(self, check: _Check, error: str | None) -> None:
        self._teardown(check)
        slot = check.entry.slot
        state = self._states.get(slot)
        if state is None or state.inflight is not check:
            return
        state.inflight = None
        if error is None:
            self._passed(check, state)
        else:
            self._failed(check, state, error)

    # -- verdicts --------------------------------------------------------------------
    def _passed(self, check: _Check, state: _SlotState) -> None:
        state.fails = 0
        if state.confirming:  # the suspicion of a timed-out dial is lifted
            self.table.clear_dial_timeouts(check.entry.slot)
        if not check.down_at:
            return
        state.oks += 1
        needed = 1 if self.policy.mode == "none" else self.policy.rise
        if state.oks < needed:
            return  # checked again at the next tick, back to back
        state.oks = 0
        state.next_due = time.monotonic() + self.policy.interval
        self._unproven.pop(check.entry.slot, None)
        if self.table.mark_up(check.entry.slot, if_down_at=check.down_at):
            logger.info("activated", extra=gwlog.fields(address=check.entry.endpoint.address))

    def _failed(self, check: _Check, state: _SlotState, error: str) -> None:
        table, slot = self.table, check.entry.slot
        table.add_at(table.counter_offset(table.master_row, slot, C_HEALTH_CHECK_FAILURES), 1)
        address = check.entry.endpoint.address
        state.oks = 0
        if check.down_at:
            self._unproven.pop(slot, None)
            table.mark_down(slot, error)
            logger.warning("failed to activate endpoint (stay inactive for another interval)",
                           extra=gwlog.fields(address=address,
                                              interval=self.policy.retry_delay, error=error))
            return
        if state.confirming and table.dial_timeouts(slot):
            # a client's dial timed out and this check agrees: dead, not busy
            table.clear_dial_timeouts(slot)
            state.fails = 0
            if table.mark_down(slot, error):
                logger.warning("deactivated endpoint", extra=gwlog.fields(
                    address=address, interval=self.policy.retry_delay, error=error,
                    reason=f"a dial timed out and the health check ({self.policy.mode}) "
                           "agrees"))
            return
        state.fails += 1
        if state.fails >= self.policy.fall and table.mark_down(slot, error):
            state.fails = 0
            logger.warning("deactivated endpoint", extra=gwlog.fields(
                address=address, interval=self.policy.retry_delay, error=error,
                reason=f"health check ({self.policy.mode}) failed {self.policy.fall} times"))


def _judge_health(base: str, response: bytes) -> str | None:
    """None when etcd says it is healthy; else why not, in one line. `base` is
    scheme://host:port."""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        return f"GET {base}/health: not an HTTP answer"
    if parts[1] != "200":
        return f"GET {base}/health: status {' '.join(parts[1:])}"
    compact = body.replace(b" ", b"")
    if b'"health":"true"' not in compact:
        return f"GET {base}/health: {body[:80].decode(errors='replace').strip()}"
    return None


