"""A worker process: accepts clients, dials members with failover, relays sessions.

design: everything here happens after fork, in one thread, on the worker's own loop.
The listeners (TCP and unix, from listeners.py) are shared with the other workers (the
kernel hands each connection to one of them, and wakes only one worker that waits for
it: EPOLLEXCLUSIVE; one queue for all, so a stopped or busy worker strands no client,
unlike a SO_REUSEPORT listener per worker, except one woken and stopped before it
accepted: each tick every worker also accepts unbidden, see _sweep_listeners; the
kernel wakes the first idle waiter in line, so a worker that holds two clients more
than another steps to the back after it accepts, see _ahead_of_another); one
accept path serves them all, in
bounded batches (accept.py, shared with the metrics server), and counts accepts per
listener. A client of a unix listener has no TCP options: nothing here sets or assumes
one on a client socket. For each client the worker asks the picker for an ordered list
of members and dials them in turn with a non-blocking connect bounded by
`dial_timeout`, and the next candidate is tried for the same client when one fails. A
refused or unreachable member is marked down in the shared table at once (every worker
sees it); a timed-out connect is a weaker signal (a member whose accept queue
overflows drops SYNs): it counts toward marking the member down only if no dial to it
succeeded meanwhile, and `timeout_fall` in a row are needed (health.py); until then
the member is a suspect, offered after the others. When every candidate failed and one
of them timed out, the client is dialled round again until its total wait
(`dial_total_timeout`) is over; only then, or when all refused, is it closed (and
counted as rejected). A learner is never a candidate (`HealthTable.is_candidate`),
whatever the picker.

Accepting is a small state machine (`Accepting`): OPEN (every listener registered),
FULL (--max-connections reached across all workers: listeners unregistered, so new
clients wait in the kernel's backlog; re-checked every LIMIT_RECHECK and whenever one
of this worker's clients goes), NO_FDS (EMFILE, or a listener the kernel could not
take back, then or at a resume: resumed after ACCEPT_PAUSE), YIELDED (a worker
whose accepts take it to half as many clients again as another holds leaves the rest
of a burst to it: resumed after YIELD_PAUSE; see _yield_at) and CLOSED
(draining). The count is checked before each accept: the worker's own clients
(dialling or relayed) exactly, the other workers' as of the master's last load refresh
(health.py). With --balance least-connections the candidates are ordered by the
members' relayed connections read the same way, plus this worker's dials in flight.

TLS is a step inside the same paths, not a second engine. A `Dial` is the accepted
client's state machine, `DialPhase`:
  [client-handshake: the gateway terminates TLS; no member is dialled until the client
   completed it, so a failing client costs no member a connection]
  -> [sniff: the gateway originates TLS for a plain client; its first bytes say h2
      (gRPC) or HTTP/1.1, the ALPN the member leg must offer: etcd serves gRPC only
      over h2]
  -> connecting -> [member-handshake: within the same dial deadline: the handshake is
      part of the dial, and a failed one fails over like a refused connect]
  -> a Session whose TLS legs use the copy path (relay.py, tlsleg.py).
The client phases are bounded by CLIENT_HELLO_TIMEOUT. New TLS files are loaded when
the master bumps the table's TLS generation (checked each tick); open sessions keep
the contexts they were made with.

States: serving -> draining (listener closed, sessions finish, bounded by the
shutdown timeout) -> stopped. A worker whose master is gone stops within a second.
"""
from __future__ import annotations

import enum
import fcntl
import functools
import os
import random
import signal
import _socket
import socket
import ssl
import termios
import time
from dataclasses import dataclass

from gateway import keepalive
from gateway.accept import ACCEPT_BATCH, ACCEPT_PAUSE, FD_EXHAUSTED, accept_batch
from gateway import log as gwlog
from gateway import tls as gwtls
from gateway import dial as dial_tcp
from gateway.addresses import join_host_port
from gateway.config import ConfigError
from gateway.endpoints import MAX_ENDPOINTS, Order, RosterEntry
from gateway import picker
from gateway.allowlist import AllowList
from gateway.candidates import Candidates, View
from gateway.health import (C_ACTIVE, C_BYTES_RECEIVED, C_BYTES_SENT,
                            C_DIAL_FAILURES, G_ACCEPTED, G_DENIED, G_LIMITED, G_OPEN,
                            G_REJECTED, G_SPIN_MICROS, GATEWAY, L_ACCEPTED, L_DENIED, LISTENER0,
                            N_COUNTERS, TLS_CLIENT, TLS_MEMBER, Balance, HealthTable,
                            tls_counter)
from gateway.listeners import Kind, Listener
from gateway.loop import EXCLUSIVE, READ, WRITE, Loop, Timer
from gateway.relay import (FRESH, ChannelPool, End, Session, close_fd, socket_for,
                           splice_works)
from gateway.tlsleg import TlsLeg, describe_failure, failure_reason, server_name

CLIENT_HELLO_TIMEOUT = 10.0  # seconds for a client's TLS handshake, or its first bytes
MIN_DIAL = 0.1           # the shortest dial of a later round (see _dial_bound)
SUSPECT_FRACTION = 0.25  # of the dial timeout: see Worker._suspect_after
SNIFF_RETRY = 0.005      # seconds before the first look again at a partial first word,
SNIFF_RETRY_MAX = 0.5    # doubled at each look up to this (a client that stalls there
                         # costs a few looks, not one every 5 ms until its timeout)
LIMIT_RECHECK = 0.05     # seconds between checks while --max-connections is reached
TICK = 0.5               # parent check and counter flush period
REQUEUE_MARGIN = 2       # clients more than another worker holds: step to the back
YIELD_FROM = 3           # clients held before a worker may yield (see _yield_at)
YIELD_PAUSE = 0.005      # seconds a worker far ahead of another stops accepting
YIELD_UNUSED = 3         # pauses a tick that no other worker used, at most
_NONBLOCKING_ON = b"\x01\0\0\0"  # FIONBIO's int argument: non-blocking on
_H2_PREFACE = b"PRI "    # how an HTTP/2 client (gRPC) starts: "PRI * HTTP/2.0"

class State(enum.Enum):
    """The worker's life (see the module comment)."""
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class Accepting(enum.Enum):
    """Whether the worker reads its listeners, and if not, why."""
    OPEN = "open"
    FULL = "full"            # --max-connections reached
    NO_FDS = "no_fds"        # EMFILE/ENFILE: a short pause
    YIELDED = "yielded"      # far ahead of another worker: a short pause (_yield_at)
    CLOSED = "closed"        # draining: the listeners are closed

logger = gwlog.get("worker")


@dataclass(frozen=True)
class WorkerSettings:
    dial_timeout: float
    dial_total_timeout: float   # a client whose dials time out is tried again until this
    timeout_fall: int           # timed-out dials in a row that mark a member down
    shutdown_timeout: float
    log: gwlog.Settings
    keepalive: float = 15.0     # --keepalive (0: the kernel's defaults)
    idle_timeout: float = 0.0   # --idle-timeout (0: never)
    busy_poll: float = 0.0      # --busy-poll (0: sleep as soon as nothing is ready)
    allow_from: AllowList = AllowList(())  # --allow-from (empty: everyone), TCP listeners
    tls: gwtls.TlsOptions = gwtls.NO_TLS


class DialPhase(enum.Enum):
    CLIENT_HANDSHAKE = "client-handshake"
    SNIFF = "sniff"
    CONNECTING = "connecting"
    MEMBER_HANDSHAKE = "member-handshake"


# the members the per-connection paths name, as module constants (see relay.py: a
# member read through its enum class costs about 180 ns on Python 3.11)
_SERVING, _DRAINING, _STOPPED = State.SERVING, State.DRAINING, State.STOPPED
_OPEN, _FULL = Accepting.OPEN, Accepting.FULL
_NEVER = 1 << 62         # a count of clients no worker reaches (_yield_at off)
_CONNECTING, _MEMBER_HANDSHAKE = DialPhase.CONNECTING, DialPhase.MEMBER_HANDSHAKE
_UNIX = Kind.UNIX
_FRESH_CLIENT, _FRESH_MEMBER = FRESH
_LEAST_CONNECTIONS, _RFC2782 = Balance.LEAST_CONNECTIONS, Order.RFC2782


class Dial:
    """One client (its fd) on its way to a member: its phase, the candidates left and
    the attempt under way; `ctls`/`utls` are its TLS legs once they exist. It lives
    only while the client waits for a member, so its fields start as class
    defaults: a dial that connects at once sets only what it uses."""
    candidates: list[RosterEntry]   # set by _start_dial; read-only (maybe a view's own list)
    next = 0
    sock: _socket.socket | None = None
    entry: RosterEntry | None = None
    timer: Timer | None = None
    started = 0.0
    ctls: TlsLeg | None = None
    utls: TlsLeg | None = None
    cmask = 0          # the client fd's registration while in a client phase
    umask = 0          # the member socket's registration while dialling
    protocol = gwtls.HTTP11  # the ALPN the member leg offers (originating)
    deadline = 0.0     # monotonic: no new round of dials after this
    busy = False       # a connect of this round timed out (rather than refused)
    sniff_wait = 0.0   # seconds until the next look at a partial first word
    rounds = 0

    def __init__(self, client: int, peer: tuple | str, phase: DialPhase):
        self.client = client
        self.peer = peer
        self.phase = phase


class Worker:
    def __init__(self, index: int, listeners: list[Listener], table: HealthTable,
                 settings: WorkerSettings, master_pid: int,
                 tls: gwtls.Material | None = None):
        self.index = index
        self.tls = tls if tls is not None else gwtls.Material(settings.tls)
        self._tls_gen = table.tls_generation
        self.listeners = listeners
        # counts go straight into this worker's row of the table's cells (health.py
        # `cells`); the per-connection ones (_connected, _finish, _flush_bytes) index
        # it inline, an endpoint slot's counters starting at _row + slot * N_COUNTERS;
        # the rarer ones ask the table (`cell`)
        self._cells = table.cells
        self._row = table.cell(index, 0, 0)
        # fd -> (listener, cells of its accepted and denied counters, the allow-list
        # that applies to it or None): what the accept path looks up per event
        self._doors = {lst.fileno(): (
            lst, table.cell(index, LISTENER0 + lst.slot, L_ACCEPTED),
            table.cell(index, LISTENER0 + lst.slot, L_DENIED),
            None if lst.kind == Kind.UNIX or not settings.allow_from else settings.allow_from)
            for lst in listeners}
        self._denied_at = table.cell(index, GATEWAY, G_DENIED)
        self._deny_log = gwlog.Throttle()
        self.table = table
        self.settings = settings
        self.master_pid = master_pid
        self.state = State.SERVING
        # made here, after fork: an inherited epoll fd would share the master's list
        self.loop = Loop(on_error=self._handler_failed, busy_poll=settings.busy_poll)
        self.use_splice = splice_works()
        self.pool = ChannelPool(self.use_splice, call_later=self.loop.call_later)
        self.session_count = 0  # live sessions are the poller's Session callbacks
        # the dials that wait for an event (a client phase, a connect under way): one
        # that connects at once never waits, so it never enters (no set add and discard)
        self.dials: set[Dial] = set()
        self._sync_session = self._sync  # one bound method shared by every session
        self._debug = settings.log.debug
        # FIONBIO's argument as a writable buffer: fcntl.ioctl tries a writable buffer
        # first, and an immutable one costs it a failed parse (a TypeError built with
        # four snprintf calls, then cleared) on every accepted client: about 4,400 of
        # the 128,000 instructions a connection runs (callgrind, `loadgen churn -c 4`)
        self._nonblocking_on = bytearray(_NONBLOCKING_ON)
        self._dial_options = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
                              *keepalive.dial_options(settings.keepalive))
        self._accepting = Accepting.NO_FDS  # until run() opens it
        self._registered = False
        self._recheck: Timer | None = None
        self._dialling = [0] * MAX_ENDPOINTS  # endpoint slot -> this worker's dials under way
        self._drain_deadline = 0.0
        self._accepted_at = table.cell(index, GATEWAY, G_ACCEPTED)
        self._rejected_at = table.cell(index, GATEWAY, G_REJECTED)
        self._open_at = table.cell(index, GATEWAY, G_OPEN)
        self._limited_at = table.cell(index, GATEWAY, G_LIMITED)
        self._spin_at = table.cell(index, GATEWAY, G_SPIN_MICROS)
        self._peer_open_at: list[int] = []  # the other workers' G_OPEN cells (_find_peers)
        self._peers_before = 0   # the other workers' clients when the pause began
        self._unused = 0         # pauses this tick that no other worker used (_may_pause)
        self._emfile_log = gwlog.Throttle()
        self._limit_log = gwlog.Throttle()
        self._reject_log = gwlog.Throttle()
        self._all_down_log = gwlog.Throttle()
        self._tls_reload_log = gwlog.Throttle()
        self._timeout_log = gwlog.Throttle()
        # a dial unanswered for this long, with no other succeeding, makes its member a
        # suspect before it times out (a quarter of the dial timeout)
        self._suspect_after = settings.dial_timeout * SUSPECT_FRACTION
        self._members = Candidates(table, self._suspect_after)

    # -- life ------------------------------------------------------------------------
    def run(self) -> int:
        """The worker's whole life after fork; returns its exit status."""
        gwlog.setup(self.settings.log)
        self.loop.handle_signals((signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1),
                                 self._on_signal)
        # SIGINT from a terminal reaches the whole group: the master turns it into a
        # drain and tells the workers (SIGTERM), so workers need not act on it twice
        for ignored in (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU,
                        signal.SIGUSR2):
            signal.signal(ignored, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for lst in self.listeners:
            lst.sock.setblocking(False)  # keepalive: set by the master (inherited at accept)
        self._find_peers()
        self._resume_accepting()
        self.table.beat(self.index, time.monotonic())
        self.loop.call_later(TICK, self._tick)
        logger.debug("worker started", extra=gwlog.fields(worker=self.index,
                                                           splice=self.use_splice))
        run_once = self.loop.run_once
        while self.state is not _STOPPED:
            run_once(TICK)
        self._close_all()
        self._flush_spin()
        return 0

    def _flush_spin(self) -> None:
        """The loop's busy-polling time so far, into the table (a per-worker total)."""
        self._cells[self._spin_at] = int(self.loop.spun * 1e6)

    def _handler_failed(self, callback: object, exc: BaseException) -> None:
        """A bug in an event handler: log it; if it was a session's, close that session
        (its state is unknown), and keep serving every other connection."""
        session = callback if isinstance(callback, Session) else None
        where = {"session": repr(session)} if session is not None else {}
        logger.error("event handler failed", exc_info=exc,
                     extra=gwlog.fields(worker=self.index,
                                        handler=gwlog.handler_name(callback), **where))
        if session is not None and session.client >= 0:
            session.end(End.FAILED, repr(exc))
            try:
                self._finish(session)
            except Exception:  # noqa: BLE001 - the session is beyond saving
                logger.exception("cannot close a failed session")

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGTERM:
            self.begin_drain()
        elif signum == signal.SIGQUIT:
            self.state = State.STOPPED
        elif signum == signal.SIGUSR1:
            try:
                gwlog.setup(self.settings.log)
            except OSError as exc:
                logger.error("cannot reopen the log file; still writing to the old one",
                             extra=gwlog.fields(path=self.settings.log.path,
                                                error=exc.strerror))

    def _tick(self) -> None:
        self.table.beat(self.index, time.monotonic())  # the master's watchdog reads it
        self._flush_spin()
        if os.getppid() != self.master_pid:
            logger.warning("master is gone; worker exits",
                           extra=gwlog.fields(worker=self.index, master=self.master_pid))
            self.state = State.STOPPED
            return
        idle_limit = self.settings.idle_timeout
        now = time.monotonic()
        for session in self._live_sessions():
            moved = self._flush_bytes(session)
            if idle_limit:
                self._close_if_idle(session, moved, now, idle_limit)
        if self.table.tls_generation != self._tls_gen:
            self._reload_tls()
        self.pool.trim()
        self._find_peers()
        self._sweep_listeners()
        if self.state == State.DRAINING:
            if time.monotonic() >= self._drain_deadline:
                logger.warning("shutdown timeout: closing connections still open",
                               extra=gwlog.fields(worker=self.index,
                                                  connections=self.session_count))
                self.state = State.STOPPED
                return
            self._stop_if_drained()
        self.loop.call_later(TICK, self._tick)

    def _reload_tls(self) -> None:
        """The master re-read the TLS files: load them here too, for new connections.
        A file that broke in between keeps the contexts in use."""
        self._tls_gen = self.table.tls_generation
        try:
            self.tls = gwtls.load(self.settings.tls)
        except ConfigError as exc:
            logger.error("cannot re-read TLS files; keeping the ones in use",
                         extra=gwlog.fields(worker=self.index, error=str(exc)))
            return
        logger.debug("TLS files re-read", extra=gwlog.fields(worker=self.index))

    def begin_drain(self) -> None:
        """Stop accepting (close this worker's copies of the listeners) and let open
        sessions finish, for at most the shutdown timeout."""
        if self.state != State.SERVING:
            return
        self.state = State.DRAINING
        self._drain_deadline = time.monotonic() + self.settings.shutdown_timeout
        self._set_accepting(Accepting.CLOSED)
        self._close_listeners()
        logger.debug("worker draining", extra=gwlog.fields(
            worker=self.index, connections=self.session_count + len(self.dials)))
        self._stop_if_drained()

    def _stop_if_drained(self) -> None:
        if self.state is _DRAINING and not self.session_count and not self.dials:
            self.state = State.STOPPED

    def _close_all(self) -> None:
        for dial in list(self.dials):
            self._abandon_dial(dial)
        for session in self._live_sessions():
            session.end(End.SHUTDOWN)
            self._finish(session)
        self.pool.close()
        self._close_listeners()

    def _close_listeners(self) -> None:
        """Close this worker's copies (the socket files are the master's to remove)."""
        for lst in self.listeners:
            lst.sock.close()

    # -- accepting -------------------------------------------------------------------
    def _set_accepting(self, state: Accepting) -> None:
        """Enter `state`: listeners registered in OPEN only."""
        want = state == Accepting.OPEN
        if want != self._registered:
            if want:
                added: list[int] = []
                try:
                    for fd in self._doors:  # EXCLUSIVE: one waker per connection (loop.py)
                        self.loop.add(fd, READ | EXCLUSIVE, self._on_acceptable)
                        added.append(fd)
                except OSError:  # all or none: the caller waits and tries them all again
                    for fd in added:
                        self.loop.remove(fd)
                    raise
            else:
                for fd in self._doors:
                    if self.loop.watching(fd):  # not if a requeue lost it (_on_acceptable)
                        self.loop.remove(fd)
            self._registered = want
        self._accepting = state

    def _resume_accepting(self) -> None:
        """Open the listeners again, unless draining or still at the limit; if the
        kernel will not take them back (ENOMEM, ENOSPC: the watch limit), wait as for
        EMFILE and try again."""
        if self.state != State.SERVING:
            return
        if self._at_limit():
            self._limit_reached()
            return
        try:
            self._set_accepting(Accepting.OPEN)
        except OSError as exc:
            self._wait_to_accept(exc, "cannot wait on the listeners again: pausing accept")

    def _open_count(self) -> int:
        """Clients this worker holds: dialling or relayed."""
        return self.session_count + len(self.dials)

    def _at_limit(self) -> bool:
        limit = self.table.max_connections
        return bool(limit) and self.table.open_connections(
            self.index, self._open_count()) >= limit

    def _limit_reached(self) -> None:
        """--max-connections reached: stop reading the listeners (new clients wait in
        the kernel's backlog), look again shortly and whenever a client of ours goes."""
        if self._accepting != Accepting.FULL:
            self._cells[self._limited_at] += 1
            suppressed = self._limit_log.allow()
            if suppressed is not None:
                logger.warning("connection limit reached: pausing accept", extra=gwlog.fields(
                    worker=self.index, limit=self.table.max_connections,
                    connections=self._open_count(), repeats=suppressed))
        self._set_accepting(Accepting.FULL)
        if self._recheck is None:
            self._recheck = self.loop.call_later(LIMIT_RECHECK, self._limit_recheck)

    def _limit_recheck(self) -> None:
        self._recheck = None
        if self._accepting == Accepting.FULL:
            self._resume_accepting()

    def _client_gone(self) -> None:
        """A client of ours was closed: publish the count, maybe accept again."""
        self._cells[self._open_at] = self._open_count()
        if self._accepting is _FULL:
            self._resume_accepting()
        self._stop_if_drained()

    def _on_acceptable(self, fd: int, mask: int) -> None:
        # _accept() is socket.accept() without the socket object: the session keeps
        # raw fds (see relay.py), so building one per client would only be thrown away
        door, accepted_at, denied_at, allow = self._doors[fd]
        unix = door.kind is _UNIX
        accepted = 0
        nonblocking_on = self._nonblocking_on
        held = self._open_count()  # before this batch (see _ahead_of_another, _yield_at)
        # --max-connections: the other workers' clients as of the master's last refresh
        # (they do not change within this batch), this worker's own counted exactly
        limit = self.table.max_connections
        others = self.table.open_connections(self.index, 0) if limit else 0
        if limit and others + self._open_count() >= limit:
            self._limit_reached()
            return
        yield_at = self._yield_at(held) if self._may_pause() else _NEVER
        for client, addr in accept_batch(door.sock._accept,  # type: ignore[attr-defined]
                                         ACCEPT_BATCH, self._out_of_descriptors,
                                         self._accept_failed):
            if allow is not None and not allow.allows(addr[0]):
                self._deny(client, addr, door, denied_at)
                continue
            accepted += 1
            fcntl.ioctl(client, termios.FIONBIO, nonblocking_on)
            self._admit(client, door.label if unix else addr)
            if held + accepted >= yield_at and self._accepting is _OPEN:
                self._yield_accepting(yield_at)
            if self.state is not _SERVING or self._accepting is not _OPEN:
                break
            if limit and others + self._open_count() >= limit:
                self._limit_reached()
                break
        if accepted:
            cells = self._cells
            cells[self._accepted_at] += accepted
            cells[accepted_at] += accepted
            cells[self._open_at] = self._open_count()
            if held >= REQUEUE_MARGIN and self._registered and self._ahead_of_another(held):
                try:
                    self.loop.requeue(fd, READ | EXCLUSIVE)
                except OSError as exc:  # the listener is out of epoll: as for EMFILE
                    self._pause_accepting(exc, "cannot wait on a listener again: pausing accept")

    def _ahead_of_another(self, held: int) -> bool:
        """True when another worker holds at least REQUEUE_MARGIN clients fewer than the
        `held` this one had before its latest accepts: then it goes to the back of the
        listener's line (`Loop.requeue`), so the next client arriving while both wait
        wakes that one. The kernel wakes the first waiter in line, always the same one
        when all are idle: without this, long-lived clients opened one after another
        (etcd's gRPC connections, a pool) would all land on one worker, and the others
        would idle. One client ahead is not enough: a short connection still closing
        when the client's next one arrives (a script's commands, one after another)
        would send every other connection to a sleeping worker, each paying a wake-up
        (churn c=1: 2026-2524 connections/s with a margin of one, 2454-2813 with two).
        So a worker that held no client, or one, keeps its place: short connections
        that come and go leave it first in line, warm (its busy polling catches the
        next one; alternating would wake a sleeping worker for each)."""
        fewer = held - REQUEUE_MARGIN
        cells = self._cells
        return any(cells[at] <= fewer for at in self._peer_open_at)

    def _find_peers(self) -> None:
        """The other live workers' open-client cells (refreshed each tick: a worker
        replaced in between reads as 0 until then, which only moves this one back);
        and a pause of this tick allowed again (_yield_at)."""
        table = self.table
        self._peer_open_at = [table.cell(index, GATEWAY, G_OPEN)
                              for index in table.live_workers() if index != self.index]
        self._unused = 0

    def _may_pause(self) -> bool:
        """A pause is allowed now (_yield_at): there is another worker to leave
        clients to, and fewer than YIELD_UNUSED pauses went unused this tick."""
        return self._unused < YIELD_UNUSED and bool(self._peer_open_at)

    def _yield_at(self, held: int) -> int:
        """The count of clients at which this worker, holding `held`, stops accepting
        for a moment: half as many again as the other worker holding fewest holds
        (`floor`), at least REQUEUE_MARGIN more, and at least YIELD_FROM; only when
        this batch's accepts would cross it (_NEVER if `held` is there already: a
        spread that is uneven and steady, long-lived clients that came earlier, is the
        requeue's to work on). A burst of clients that connect together (a pool
        opening its connections, iperf3's streams) finds one worker awake, busy
        polling or relaying, and the kernel's line orders only the workers asleep:
        that one would take the whole burst in a batch or two, and long-lived
        connections would stay piled there (bulk 8 streams all on one worker cost
        0.39-0.49 s of CPU per GB, split 0.20-0.39). Past the threshold, it
        unregisters its listeners for YIELD_PAUSE (YIELDED), and the other worker,
        which the kernel told of the same clients, takes them, up to its own
        threshold. After a pause during which another worker took clients
        (_end_yield), the next is allowed at once; pauses no other worker used
        (YIELD_UNUSED a tick, _find_peers: two workers whose pauses overlap, or a
        peer that is stopped, draining or not accepting) are bounded: such a peer
        delays this one's accepts by YIELD_UNUSED x YIELD_PAUSE a tick at most;
        steady traffic, which keeps the workers within a few clients of each other,
        seldom crosses it."""
        floor = _NEVER
        cells = self._cells
        for at in self._peer_open_at:
            if cells[at] < floor:
                floor = cells[at]
        margin = floor >> 1  # max() by hand: see Loop._timeout
        if margin < REQUEUE_MARGIN:
            margin = REQUEUE_MARGIN
        threshold = floor + margin
        if threshold < YIELD_FROM:
            threshold = YIELD_FROM
        return threshold if held < threshold else _NEVER

    def _peers_open(self) -> int:
        """Clients the other workers hold, as their cells say now."""
        cells = self._cells
        return sum([cells[at] for at in self._peer_open_at])

    def _yield_accepting(self, threshold: int) -> None:
        """Past the threshold (_yield_at): pause accepting for YIELD_PAUSE."""
        self._peers_before = self._peers_open()
        self._set_accepting(Accepting.YIELDED)
        self.loop.call_later(YIELD_PAUSE, self._end_yield)
        if self._debug:
            logger.debug("far ahead of another worker: pausing accept", extra=gwlog.fields(
                worker=self.index, connections=self._open_count(), threshold=threshold,
                pause=YIELD_PAUSE))

    def _end_yield(self) -> None:
        """The pause is over: accept again; another pause is allowed at once if
        another worker took clients meanwhile (the pause worked), or if fewer than
        YIELD_UNUSED went unused this tick (the other may have been paused too)."""
        if self._accepting is Accepting.YIELDED:
            if self._peers_open() <= self._peers_before:
                self._unused += 1
            self._resume_accepting()

    def _sweep_listeners(self) -> None:
        """Accept what waits, once a tick, without being woken. With EPOLLEXCLUSIVE a
        new client wakes one waiting worker only; if that one is stopped or killed
        between its wake-up and its accept (SIGSTOP, the watchdog), no other worker
        was told, and the client would wait for the next client's wake-up. This
        bounds that wait to one TICK, for one accept(2) per listener per tick."""
        if self._accepting == Accepting.OPEN:
            for fd in self._doors:
                self._on_acceptable(fd, READ)
                if self._accepting != Accepting.OPEN:
                    return

    def _accept_failed(self, exc: OSError) -> None:
        logger.warning("accept failed", extra=gwlog.fields(error=str(exc)))

    def _deny(self, client: int, addr: tuple, door: Listener, denied_at: int) -> None:
        """A client outside --allow-from: closed at once, before any member is dialled;
        counted, and logged at most once a second with its address. Counted and logged
        before the close, so whoever sees the close also sees the count and the line."""
        cells = self._cells
        cells[self._denied_at] += 1
        cells[denied_at] += 1
        suppressed = self._deny_log.allow()
        if suppressed is not None:
            logger.warning("refused client: not in --allow-from", extra=gwlog.fields(
                client=_address(addr), listener=door.label, repeats=suppressed))
        os.close(client)

    def _out_of_descriptors(self, exc: OSError) -> None:
        """EMFILE/ENFILE: stop reading the listener for a moment (or the loop would
        spin on it), say so at most once a second, and carry on serving."""
        self._pause_accepting(exc, "out of file descriptors: pausing accept")

    def _pause_accepting(self, exc: OSError, message: str) -> None:
        """A kernel resource ran short: stop accepting for ACCEPT_PAUSE (NO_FDS), then
        register every listener again; say `message` at most once a second."""
        if self._accepting != Accepting.OPEN:
            return  # already paused (or closed): one pause at a time
        self._wait_to_accept(exc, message)

    def _wait_to_accept(self, exc: OSError, message: str) -> None:
        """NO_FDS for ACCEPT_PAUSE, then every listener registered again (the one
        timer that resumes: callers are OPEN, or resuming from a pause)."""
        self._set_accepting(Accepting.NO_FDS)
        self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
        suppressed = self._emfile_log.allow()
        if suppressed is not None:
            logger.warning(message, extra=gwlog.fields(
                worker=self.index, error=exc.strerror, pause=ACCEPT_PAUSE,
                connections=self.session_count, repeats=suppressed))

    def _candidates(self, view: View) -> list[RosterEntry]:
        """The view's candidates in the order its policies choose for one dial (a new
        list): RFC 2782, or least connections (round robin: the view's `rotations`)."""
        table = self.table
        if view.balance is _LEAST_CONNECTIONS:
            roster, up = view.entries, view.up
            load = table.relayed_per_endpoint(self.index, [e.slot for e in roster])
            dialling = self._dialling
            load = [n + dialling[e.slot] for n, e in zip(load, roster)]
            if view.order is _RFC2782:
                return picker.least_connections(roster, up, load, table.next_rr(),
                                                _priority, _weight)
            return picker.least_connections(roster, up, load, table.next_rr())
        return picker.rfc2782(view.entries, view.up, _priority, _weight, random.random)

    # -- the client's phases before any dial: TLS handshake, first bytes ------------
    def _admit(self, client: int, addr: tuple | str) -> None:
        """An accepted client: straight to dialling, or first through its phases."""
        tls = self.tls
        if tls.server is not None:
            dial = Dial(client, addr, DialPhase.CLIENT_HANDSHAKE)
            try:
                dial.ctls = TlsLeg.server(tls.server, client)
            except (OSError, ValueError) as exc:
                self._client_failed(dial, exc)
                return
            self.dials.add(dial)
            self._client_hello_timer(dial)
            self._client_step(dial)
        elif tls.options.originate:
            dial = Dial(client, addr, DialPhase.SNIFF)
            self.dials.add(dial)
            self._client_hello_timer(dial)
            self._watch_client(dial, READ)
        else:
            self._start_dial(Dial(client, addr, _CONNECTING))

    def _client_hello_timer(self, dial: Dial) -> None:
        dial.timer = self.loop.call_later(CLIENT_HELLO_TIMEOUT,
                                          functools.partial(self._client_timeout, dial))

    def _watch_client(self, dial: Dial, mask: int) -> None:
        dial.cmask = self.loop.set_interest(dial.client, dial.cmask, mask,
                                  functools.partial(self._on_client_ready, dial))

    def _on_client_ready(self, dial: Dial, fd: int, mask: int) -> None:
        self._client_step(dial)

    def _client_step(self, dial: Dial) -> None:
        """Advance a client phase; on to dialling when it is complete."""
        if dial.phase == DialPhase.CLIENT_HANDSHAKE:
            assert dial.ctls is not None
            try:
                want = dial.ctls.handshake()
            except (ssl.SSLError, OSError) as exc:
                self._client_failed(dial, exc)
                return
            if want:
                self._watch_client(dial, want)
                return
            self._count_handshake(TLS_CLIENT)
            dial.protocol = dial.ctls.protocol or gwtls.HTTP11
        elif dial.phase == DialPhase.SNIFF:
            sock = socket_for(dial.client)
            try:
                head = sock.recv(4, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._client_left(dial, exc.strerror or str(exc))
                return
            finally:
                sock.detach()
            if not head:
                self._client_left(dial, "closed before speaking")
                return
            if len(head) < 4 and _H2_PREFACE.startswith(head):
                # the rest of the preface's first word is not here yet; the bytes stay
                # in the socket (peeked), so a level-triggered READ would fire at once
                # again: look again a moment later instead
                self._watch_client(dial, 0)
                dial.sniff_wait = (min(dial.sniff_wait * 2, SNIFF_RETRY_MAX)
                                   if dial.sniff_wait else SNIFF_RETRY)
                self.loop.call_later(dial.sniff_wait,
                                     functools.partial(self._sniff_again, dial))
                return
            dial.protocol = gwtls.H2 if head == _H2_PREFACE else gwtls.HTTP11
        self._end_client_phase(dial)
        self._start_dial(dial)

    def _sniff_again(self, dial: Dial) -> None:
        if dial.phase == DialPhase.SNIFF and dial.client >= 0:
            self._client_step(dial)

    def _end_client_phase(self, dial: Dial) -> None:
        if dial.cmask:
            self.loop.remove(dial.client)
            dial.cmask = 0
        if dial.timer is not None:
            dial.timer.cancel()
            dial.timer = None
        dial.phase = DialPhase.CONNECTING

    def _client_timeout(self, dial: Dial) -> None:
        dial.timer = None
        if dial.phase == DialPhase.CLIENT_HANDSHAKE:
            self._client_failed(dial, None)
        else:
            self._client_left(dial, f"sent nothing within {CLIENT_HELLO_TIMEOUT:g}s")

    def _client_failed(self, dial: Dial, exc: BaseException | None) -> None:
        """A client's TLS handshake failed (or timed out): count it, close it."""
        self._count_handshake(TLS_CLIENT, failure_reason(exc))
        if self._debug:
            logger.debug("client TLS handshake failed", extra=gwlog.fields(
                client=_address(dial.peer), error=describe_failure(exc)))
        self._drop_client(dial)

    def _count_handshake(self, side: int, reason: int | None = None) -> None:
        """Count a TLS handshake of `side` (TLS_CLIENT, TLS_MEMBER): completed (no
        reason), or failed for `reason` (tlsleg.failure_reason)."""
        self._cells[self.table.cell(self.index, GATEWAY, tls_counter(side, reason))] += 1

    def _client_left(self, dial: Dial, why: str) -> None:
        if self._debug:
            logger.debug("client left before a member was dialled", extra=gwlog.fields(
                client=_address(dial.peer), reason=why))
        self._drop_client(dial)

    def _drop_client(self, dial: Dial) -> None:
        self._end_client_phase(dial)
        self._close_client(dial, reset=False)
        self.dials.discard(dial)
        self._client_gone()

    def _close_client(self, dial: Dial, reset: bool) -> None:
        if dial.ctls is not None:
            dial.ctls.close(reset)
            dial.ctls = None
        else:
            close_fd(dial.client, reset)
        dial.client = -1

    # -- dialing ---------------------------------------------------------------------
    def _start_dial(self, dial: Dial) -> None:
        now = time.monotonic()
        view, dial.candidates = self._dial_candidates(now)
        dial.deadline = now + self.settings.dial_total_timeout
        if not view.any_up and view.entries:
            suppressed = self._all_down_log.allow()
            if suppressed is not None:
                logger.warning("all endpoints are down: trying each once for a new client",
                               extra=gwlog.fields(
                                   endpoints=[e.endpoint.address for e in view.entries],
                                   repeats=suppressed))
        self._dial_next(dial)

    def _dial_candidates(self, now: float) -> tuple[View, list[RosterEntry]]:
        """(the candidates as they stand, in dial order) for one round of dials.
        Suspect members (their latest dials timed out; not yet marked down) go after
        the other healthy ones: a black-holed member among live ones costs the clients
        that meet it first one dial timeout each, and the others nothing."""
        # the one rule (health.py): a learner is never a candidate (the view leaves
        # them out); a member whose role is not known yet is ordered with the members
        # marked down
        view = self._members.view(now)
        rotations = view.rotations
        if rotations:  # round robin: the view's own orders, already ranked (read-only)
            return view, rotations[self.table.next_rr() % len(rotations)]
        return view, view.ranked(self._candidates(view))

    def _next_round(self, dial: Dial) -> bool:
        """Every candidate failed. If one of them timed out (busy, or a lost SYN) and
        the client's total wait (--dial-total-timeout) is not over, start another
        round at once (a timeout has already waited); False: the client is rejected."""
        if not dial.busy or time.monotonic() >= dial.deadline:
            return False
        dial.candidates = self._dial_candidates(time.monotonic())[1]
        dial.next, dial.busy = 0, False
        dial.rounds += 1
        return bool(dial.candidates)

    def _dial_bound(self, dial: Dial) -> float:
        """The first round dials each candidate for a full dial timeout (as the original
        does); later rounds stop at the client's total deadline."""
        if dial.rounds == 0:
            return self.settings.dial_timeout
        return min(self.settings.dial_timeout, max(MIN_DIAL, dial.deadline - dial.started))

    def _dial_next(self, dial: Dial) -> None:
        """Try candidates until one connects or is in progress; when none is left, go
        round again while the client may still wait (see _next_round), else reject."""
        while dial.next < len(dial.candidates) or self._next_round(dial):
            entry = dial.candidates[dial.next]
            dial.next += 1
            ep = entry.endpoint
            dial.started = time.monotonic()
            dial.phase = _CONNECTING
            try:
                sock, connected = dial_tcp.start(ep, self._dial_options)
            except dial_tcp.DialError as exc:
                self._dial_failed(entry, str(exc))
                continue
            except OSError as exc:
                if exc.errno in FD_EXHAUSTED:
                    self._out_of_descriptors(exc)
                self._reject(dial, f"cannot open a socket: {exc.strerror}")
                return
            if connected and not self.tls.options.originate:
                # the usual case on a member's own host: a session at once; never an
                # attempt under way, so never counted toward the member's dial load
                self._connected(dial, sock, entry)
                return
            self._attempt(dial, sock, entry)
            if connected:
                self._start_member_handshake(dial)
            else:
                self.table.note_dial_start(entry.slot, dial.started)
                self._watch_member(dial, WRITE)
                self._dial_deadline(dial)
            return
        self._reject(dial, "no endpoint could be reached" if not dial.rounds else
                     f"no endpoint could be reached in {dial.rounds + 1} rounds of dials")

    def _attempt(self, dial: Dial, sock: _socket.socket, entry: RosterEntry) -> None:
        """A connect to `entry` is under way (it counts toward the member's load until
        `_attempt_connected` or `_drop_attempt`)."""
        dial.sock, dial.entry = sock, entry
        self._dialling[entry.slot] += 1
        self.dials.add(dial)  # it waits now (already in, after a client phase)

    def _attempt_connected(self, dial: Dial) -> None:
        """The connect under way (and its TLS handshake) completed: it no longer counts
        as a dial in flight; a session begins."""
        sock, entry = dial.sock, dial.entry
        assert sock is not None and entry is not None
        self._undial(entry)
        dial.sock = dial.entry = None  # the session owns them now
        self._connected(dial, sock, entry)

    def _dial_deadline(self, dial: Dial) -> None:
        if dial.timer is None:
            dial.timer = self.loop.call_later(
                max(0.0, dial.started + self._dial_bound(dial) - time.monotonic()),
                functools.partial(self._on_dial_timeout, dial))

    def _watch_member(self, dial: Dial, mask: int) -> None:
        assert dial.sock is not None
        dial.umask = self.loop.set_interest(dial.sock.fileno(), dial.umask, mask,
                                            functools.partial(self._on_dial_ready, dial))

    def _on_dial_ready(self, dial: Dial, fd: int, mask: int) -> None:
        sock, entry = dial.sock, dial.entry
        assert sock is not None and entry is not None
        if dial.phase is _MEMBER_HANDSHAKE:
            self._member_handshake_step(dial)
            return
        error = dial_tcp.outcome(sock, entry.endpoint.address)
        if error is not None:
            self._attempt_failed(dial, error)
        elif self.tls.options.originate:
            self._start_member_handshake(dial)
        else:
            self._attempt_connected(dial)

    def _start_member_handshake(self, dial: Dial) -> None:
        """Connected to a member dialled with TLS: the handshake is part of the dial
        (same deadline, same failover)."""
        sock, entry = dial.sock, dial.entry
        assert sock is not None and entry is not None
        fd = sock.fileno()
        try:
            dial.utls = TlsLeg.client(self.tls.member_context(dial.protocol), sock,
                                      server_name(entry.endpoint.label))
        except (OSError, ValueError) as exc:
            if dial.umask:  # the leg closed the fd (it left epoll): drop the callback
                self.loop.forget(fd)
                dial.umask = 0
            self._attempt_failed(dial, f"TLS with {entry.endpoint.address}: {exc}")
            return
        dial.sock = dial.utls.sock  # the wrapped socket now owns the fd
        dial.phase = DialPhase.MEMBER_HANDSHAKE
        self._dial_deadline(dial)
        self._member_handshake_step(dial)

    def _member_handshake_step(self, dial: Dial) -> None:
        leg, entry = dial.utls, dial.entry
        assert leg is not None and entry is not None
        try:
            want = leg.handshake()
        except (ssl.SSLError, OSError) as exc:
            self._member_handshake_failed(dial, exc)
            return
        if want:
            self._watch_member(dial, want)
            return
        self._count_handshake(TLS_MEMBER)
        self._attempt_connected(dial)

    def _member_handshake_failed(self, dial: Dial, exc: BaseException | None) -> None:
        assert dial.entry is not None
        self._count_handshake(TLS_MEMBER, failure_reason(exc))
        # a handshake that ran out of time is as weak a signal as a connect that did
        self._attempt_failed(dial, f"TLS handshake with {dial.entry.endpoint.address}: "
                                   f"{describe_failure(exc)}", timed_out=exc is None)

    def _on_dial_timeout(self, dial: Dial) -> None:
        dial.timer = None
        if dial.sock is None or dial.entry is None:
            return
        if dial.phase == DialPhase.MEMBER_HANDSHAKE:
            self._member_handshake_failed(dial, None)
            return
        self._attempt_failed(dial, dial_tcp.timeout_error(dial.entry.endpoint.address,
                                                          self.settings.dial_timeout),
                             timed_out=True)

    def _drop_attempt(self, dial: Dial) -> None:
        """Forget the connect (or handshake) under way: its registration, its timer
        and its socket."""
        if dial.umask:
            assert dial.sock is not None
            self.loop.remove(dial.sock.fileno())
            dial.umask = 0
        if dial.timer is not None:
            dial.timer.cancel()
            dial.timer = None
        if dial.sock is not None:
            dial.sock.close()
        dial.sock = None
        dial.utls = None
        if dial.entry is not None:
            self._undial(dial.entry)
            dial.entry = None

    def _attempt_failed(self, dial: Dial, error: str, timed_out: bool = False) -> None:
        """The connect under way failed: drop its socket, judge the member, go on."""
        entry = dial.entry
        assert entry is not None
        self._drop_attempt(dial)
        if timed_out:
            dial.busy = True
            self._dial_timed_out(entry, dial.started, error)
        else:
            self._dial_failed(entry, error)
        self._dial_next(dial)

    def _dial_timed_out(self, entry: RosterEntry, started: float, error: str) -> None:
        """A timeout is a weak signal (a full accept queue drops SYNs too): the member
        is marked down only after `timeout_fall` timed-out dials in a row, none of
        them overtaken by a successful dial (health.py), or when a check agrees."""
        table = self.table
        slot = entry.slot
        self._cells[table.cell(self.index, slot, C_DIAL_FAILURES)] += 1
        in_a_row = table.note_dial_timeout(slot, started, time.monotonic())
        if in_a_row >= self.settings.timeout_fall:
            table.clear_dial_timeouts(slot)
            if table.mark_down(slot, error):
                logger.warning("deactivated endpoint", extra=gwlog.fields(
                    address=entry.endpoint.address, interval=table.retry_delay, error=error,
                    reason=f"{in_a_row} dials in a row timed out"))
            return
        suppressed = self._timeout_log.allow()
        if suppressed is not None:
            logger.info("dial timed out; member kept in rotation", extra=gwlog.fields(
                address=entry.endpoint.address, error=error, timeouts_in_a_row=in_a_row,
                busy=in_a_row == 0, repeats=suppressed))

    def _dial_failed(self, entry: RosterEntry, error: str) -> None:
        table = self.table
        self._cells[table.cell(self.index, entry.slot, C_DIAL_FAILURES)] += 1
        if table.mark_down(entry.slot, error):
            logger.warning("deactivated endpoint", extra=gwlog.fields(
                address=entry.endpoint.address, interval=table.retry_delay, error=error))

    def _reject(self, dial: Dial, reason: str) -> None:
        self.dials.discard(dial)
        self._cells[self._rejected_at] += 1
        suppressed = self._reject_log.allow()
        if suppressed is not None:
            logger.warning("rejected client: no endpoint could be reached", extra=gwlog.fields(
                client=_address(dial.peer), reason=reason, tried=dial.next,
                repeats=suppressed))
        self._close_client(dial, reset=True)
        self._client_gone()

    def _undial(self, entry: RosterEntry) -> None:
        """A dial in flight to `entry` ended (it counted toward its load)."""
        self._dialling[entry.slot] -= 1

    def _abandon_dial(self, dial: Dial) -> None:
        self._end_client_phase(dial)
        self._drop_attempt(dial)
        self._close_client(dial, reset=True)
        self.dials.discard(dial)

    def _connected(self, dial: Dial, sock: _socket.socket, entry: RosterEntry) -> None:
        """`sock` is connected to `entry` (and its TLS handshake done; no longer
        counted as a dial in flight): a session begins."""
        registered = dial.umask
        if dial.timer is not None:
            dial.timer.cancel()
            dial.timer = None
        self.dials.discard(dial)
        slot = entry.slot
        upstream = sock.fileno() if dial.utls is not None else sock.detach()
        session = Session(dial.client, upstream, self.pool, self._sync_session,
                          dial.ctls, dial.utls, slot, registered)
        if self._debug:
            session.peer, session.started = dial.peer, dial.started
        cells, at = self._cells, self._row + slot * N_COUNTERS
        cells[at + C_ACTIVE] += 1
        now = time.monotonic()
        # alive: timed-out dials started before it are void; one marked down is back
        table = self.table
        if table.note_dial_ok(slot, now, self._suspect_after) and table.mark_up(slot):
            logger.info("activated", extra=gwlog.fields(address=entry.endpoint.address))
        table.count_connection(at, now - dial.started)
        self.session_count += 1
        if registered:
            # the upstream is registered for WRITE under the dial's callback: rebind it
            # (begin's registration below, or its own sync, sets the interest it wants)
            self.loop.rebind(upstream, session)
        if session.begin():  # it wants FRESH (else it has synced itself)
            loop = self.loop
            session.cmask = loop.set_interest(session.client, 0, _FRESH_CLIENT, session)
            session.umask = loop.set_interest(upstream, registered, _FRESH_MEMBER, session)

    # -- sessions --------------------------------------------------------------------
    def _sync(self, session: Session) -> None:
        """Called by a session after each event: register what it now wants."""
        if session.ended:
            self._finish(session)
            return
        cwant, uwant = session.interest()
        if cwant != session.cmask:  # (set_interest checks too: this saves its call)
            session.cmask = self.loop.set_interest(session.client, session.cmask, cwant,
                                                   session)
        if uwant != session.umask:
            session.umask = self.loop.set_interest(session.upstream, session.umask, uwant,
                                                   session)

    def _finish(self, session: Session) -> None:
        """Tear a session down: close both sockets (which removes them from epoll:
        only the callbacks are dropped here), count it."""
        if session.client < 0:
            return  # already finished
        loop = self.loop
        if session.cmask:
            loop.forget(session.client)
            session.cmask = 0
        if session.umask:
            loop.forget(session.upstream)
            session.umask = 0
        self.session_count -= 1
        self._flush_bytes(session)
        session.close()
        cells, active = self._cells, self._row + session.slot * N_COUNTERS + C_ACTIVE
        if cells[active]:  # a gauge: never below zero (health.py `add_at`)
            cells[active] -= 1
        if self._debug:
            logger.debug("connection closed", extra=gwlog.fields(
                client=_address(session.peer), endpoint=self._address_of(session.slot),
                sent_bytes=session.up.moved, received_bytes=session.down.moved,
                duration=round(time.monotonic() - session.started, 6), end=session.end_text))
        self._client_gone()

    def _live_sessions(self) -> list[Session]:
        """Every open session, from the poller (each is registered for at least one of
        its sockets while it lives): no separate set to keep per connection."""
        seen: dict[int, Session] = {}
        for callback in self.loop.registered():
            if isinstance(callback, Session):  # a session registers itself
                seen[id(callback)] = callback
        return list(seen.values())

    def _flush_bytes(self, session: Session) -> bool:
        """Add the bytes moved since the last flush to the shared counters; True if
        any moved."""
        cells, at = self._cells, self._row + session.slot * N_COUNTERS
        up = session.up.moved - session.flushed_up
        if up:
            cells[at + C_BYTES_SENT] += up
            session.flushed_up += up
        down = session.down.moved - session.flushed_down
        if down:
            cells[at + C_BYTES_RECEIVED] += down
            session.flushed_down += down
        return bool(up or down)

    def _close_if_idle(self, session: Session, moved: bool, now: float, limit: float) -> None:
        """--idle-timeout, checked on the tick from the byte counts the tick flushes
        anyway: no timer and no clock read per event. A quiet period starts at the
        first tick that saw no byte move either way (the last byte moved before it),
        so a session is closed only after at least `limit` of silence both ways."""
        if moved:
            session.quiet_since = 0.0
        elif not session.quiet_since:
            session.quiet_since = now
        elif now - session.quiet_since >= limit:
            session.end(End.IDLE, f"no byte either way for {limit:g}s")
            self._finish(session)

    def _address_of(self, slot: int) -> str:
        for entry in self._members.roster:
            if entry.slot == slot:
                return entry.endpoint.address
        return f"slot {slot}"


def _priority(entry: RosterEntry) -> int:
    return entry.endpoint.priority


def _weight(entry: RosterEntry) -> int:
    return entry.endpoint.weight


def _address(addr: tuple | str | None) -> str:
    """A client's address: host:port, or a unix listener's label."""
    if isinstance(addr, str):
        return addr
    return join_host_port(addr[0], addr[1]) if addr else "-"


