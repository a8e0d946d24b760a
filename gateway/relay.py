"""One relayed connection: two directions moving bytes between a client and a member.

design: a `Session` owns two non-blocking sockets and two `Direction`s (client->member
"up", member->client "down"). A direction moves bytes through a channel borrowed from a
per-worker `ChannelPool` only while it has bytes in flight, so an idle session holds
just its two sockets. Channels are a buffer used with readv/write, or a pipe used with
`os.splice` (zero copy). Splice pays only for bulk: a small message costs two calls
either way, but through a pipe each moves page references and pipe buffers where a
copy of a few hundred bytes is cheaper, as HAProxy found. So each direction is a
`Mode`: it starts SMALL, copying (etcd's requests and responses, and a new
connection's first bytes), and becomes BULK, spliced, for good, once one read fills a
whole buffer; a direction with a TLS leg is TLS, copied through the leg. Where splice
or pipes are unavailable, every direction copies.

A BULK source read behind by BULK_LOWAT (that much waiting at one read: it streams
faster than it is read) gets SO_RCVLOWAT = BULK_LOWAT, so the kernel wakes the worker
for it once that much waits: fewer wake-ups, reads and ACKs per GB. EOF and errors
still wake at once; a tail below the mark is never stranded: the pool's check
(`ChannelPool.arm_lowat`) takes the mark back to 1 once a source was neither read nor
fed for LOWAT_CHECK, which wakes the poller (a tail after a pause waits a few ms).

A SMALL or TLS direction's readiness event is the one that etcd's traffic repeats, so
it has its own short path (`_relay_small`): one read into the pool's scratch buffer
(readv, or the TLS leg's whole records), one write of what came (or its encryption),
and, when all of it went (the usual case), nothing else: no channel borrowed and
returned, no interest to register (it did not change). Only what the destination did
not take is copied into a borrowed buffer, to wait for WRITE.

Invariants (as Go's splice_linux.go and sshuttle's ssnet.py learnt them):
- a direction reads its source only while its channel is empty, so EAGAIN on a read
  means "nothing to read" and 0 means EOF; EAGAIN on a write means "destination full",
  and the source is not read again until the channel drains (backpressure, bounded
  memory: at most one channel's capacity per direction);
- EOF on the source becomes `shutdown(SHUT_WR)` on the destination once drained
  (half-close); the session is finished only when both directions are;
- any other error (reset, broken pipe) ends the session: both sockets are closed with
  SO_LINGER 0, so the peer of a reset sees a reset too.

The session never touches the poller: after each event it calls `sync(session)`, and
the worker registers the two masks of `interest()` where they changed, with
the session itself as the callback for both fds (`session(fd, mask)`); a session that
`begin` left as every new one is (`FRESH`) is registered by the worker directly. It holds raw
file descriptors, not socket objects, so an idle connection costs as little memory as
it can: a temporary socket object is made only for the rare shutdown or linger.

A leg that speaks TLS (the gateway originates or terminates it) is a `TlsLeg` (see
tlsleg.py) on that fd: the directions reading or writing it use a copy channel (no
splice through TLS) and the leg's `read_into`/`write_from` instead of the raw fd;
everything else (interest, backpressure, half-close, teardown) is the same code.
"""
from __future__ import annotations

import enum
import fcntl
import os
import socket
import _socket
import struct
import sys
import termios
from typing import TYPE_CHECKING, Callable

from gateway.loop import READ, WRITE

if TYPE_CHECKING:
    from gateway.tlsleg import TlsLeg

PIPE_SIZE = 1 << 16        # a new pipe: the kernel's default, enough for requests
PIPE_SIZE_BULK = 1 << 20   # a pipe a direction filled is grown to this (bulk transfers):
                           # 1 MiB moves a GB for 0.23-0.27 CPU s against 0.6-0.7 at 64 KiB
BUFFER_SIZE = 1 << 16      # copy-mode buffer
ROUNDS_PER_EVENT = 8       # fill/drain rounds per readiness event before yielding
BULK_LOWAT = 1 << 19       # SO_RCVLOWAT of a streaming bulk source (see ChannelPool.arm_lowat)
LOWAT_CHECK = 0.001        # period of the check that takes a stalled source's mark back to 1
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
LINGER_RESET = struct.pack("ii", 1, 0)


class SpliceChannel:
    """A pipe: socket -> pipe -> socket with os.splice, no copy through user space."""
    __slots__ = ("r", "w", "size")

    def __init__(self, r: int, w: int, size: int):
        self.r, self.w, self.size = r, w, size

    def grow(self, size: int) -> None:
        """Ask for a bigger pipe (for a bulk direction); keep the old size if refused
        (an unprivileged user past the pipe-memory limits, or above pipe-max-size)."""
        try:
            self.size = fcntl.fcntl(self.w, _F_SETPIPE_SZ, size)
        except OSError:
            pass

    def fill(self, src: int) -> int:
        return os.splice(src, self.w, self.size, flags=_SPLICE_FLAGS)

    def drain(self, dst: int, count: int) -> int:
        return os.splice(self.r, dst, count, flags=_SPLICE_FLAGS)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class CopyChannel:
    """A buffer: recv into it, send from it (small messages, TLS legs, and every
    direction where splice is unavailable)."""
    __slots__ = ("buf", "view", "iov", "start", "size")

    def __init__(self, size: int = BUFFER_SIZE):
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.iov = (self.view,)  # readv's argument, made once
        self.start = 0
        self.size = size

    def grow(self, size: int) -> None:
        """Buffers stay at BUFFER_SIZE: copying costs the same per byte at any size."""

    def fill(self, src: int) -> int:
        self.start = 0
        return os.readv(src, self.iov)

    def drain(self, dst: int, count: int) -> int:
        n = os.write(dst, self.view[self.start:self.start + count])
        self.start += n
        return n

    def close(self) -> None:
        self.view.release()


def _pipe_max_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return PIPE_SIZE


def splice_works() -> bool:
    """True when os.splice can move bytes between sockets here (checked once per worker)."""
    if not hasattr(os, "splice"):
        return False
    a, b = socket.socketpair()
    try:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        a.close()
        b.close()
        return False
    try:
        a.sendall(b"x")
        return (os.splice(b.fileno(), w, 1, flags=_SPLICE_FLAGS) == 1
                and os.splice(r, a.fileno(), 1, flags=_SPLICE_FLAGS) == 1)
    except OSError:
        return False
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


class ChannelPool:
    """Per-worker free list of empty channels. Pipes are made on demand and kept up to
    `keep` idle; if a pipe cannot be made (EMFILE, or splice disabled) a copy buffer is
    lent instead, so a session never fails for want of a pipe. `trim()`, called
    periodically, closes the idle ones when none was lent since the last call, so a
    burst does not leave its pipes (2 fds each) behind."""

    def __init__(self, use_splice: bool, keep: int = 64,
                 call_later: Callable[[float, Callable[[], None]], object] | None = None):
        self.use_splice = use_splice
        self._call_later = call_later  # the worker loop's timers; None: no low-water marks
        self._armed: list[Direction] = []  # sources whose SO_RCVLOWAT is BULK_LOWAT
        self.keep = keep
        self.bulk_size = min(PIPE_SIZE_BULK, _pipe_max_size())
        self._pipes: list[SpliceChannel] = []
        self._buffers: list[CopyChannel] = []
        self.pipes_open = 0  # pipes in existence (lent + idle), for figures and tests
        self._lent_since_trim = False
        # the one buffer every SMALL or TLS direction reads into and writes from at once
        # (Session._relay_small): never lent, never holds bytes between events
        self.scratch = CopyChannel()

    def get_buffer(self) -> CopyChannel:
        """A copy channel, whatever the mode (a direction not yet bulk, or with a TLS
        leg)."""
        self._lent_since_trim = True
        if self._buffers:
            return self._buffers.pop()
        return CopyChannel()

    def get(self) -> SpliceChannel | CopyChannel:
        self._lent_since_trim = True
        if self.use_splice:
            if self._pipes:
                return self._pipes.pop()
            try:
                r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                pass
            else:
                self.pipes_open += 1
                try:
                    size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    size = 1 << 16
                return SpliceChannel(r, w, size)
        return self.get_buffer()

    def put(self, chan: SpliceChannel | CopyChannel) -> None:
        """Give back an empty channel."""
        if isinstance(chan, SpliceChannel):
            if len(self._pipes) < self.keep:
                self._pipes.append(chan)
                return
            self.discard(chan)
        elif len(self._buffers) < self.keep:
            self._buffers.append(chan)

    def discard(self, chan: SpliceChannel | CopyChannel) -> None:
        """Destroy a channel that may still hold bytes (its session ended abruptly)."""
        if isinstance(chan, SpliceChannel):
            self.pipes_open -= 1
        chan.close()

    def idle(self) -> int:
        return len(self._pipes)

    def trim(self) -> None:
        """Close every idle channel if none was lent since the previous trim."""
        if not self._lent_since_trim:
            while self._pipes:
                self.discard(self._pipes.pop())
            self._buffers.clear()
        self._lent_since_trim = False

    def arm_lowat(self, d: "Direction") -> None:
        """A bulk source had BULK_LOWAT bytes or more waiting at one read: it streams
        faster than it is read. Have the kernel wake the worker for it only once
        BULK_LOWAT bytes wait (or at EOF, or an error): fewer wake-ups, reads and ACKs
        per GB. A tail smaller than the mark must never stall, so while any source is
        armed a check runs every LOWAT_CHECK: a source that was not read, and whose
        receive queue did not change, over a whole period (a tail, or a pause) goes
        back to a mark of 1, and the kernel wakes the poller at once if bytes wait
        (tcp_set_rcvlowat). A tail waits at most about 3 x LOWAT_CHECK. The queue is
        looked at only when nothing was read: a stream slower than the mark per period
        is still filling its queue, and keeps its mark."""
        if self._call_later is None:
            return
        try:
            _set_rcvlowat(d.src, BULK_LOWAT)
        except OSError:
            return
        d.lowat = True
        d.seen = d.moved
        d.queued = -1
        self._armed.append(d)
        if len(self._armed) == 1:
            self._call_later(LOWAT_CHECK, self._check_lowat)

    def _check_lowat(self) -> None:
        still = []
        for d in self._armed:
            if d.done:  # EOF carried, or the session closed (its fds may be reused)
                d.lowat = False
                continue
            if d.moved == d.seen:  # not read for a whole period: stalled, or filling?
                try:
                    queued = queued_bytes(d.src)
                    if queued == d.queued:  # nothing came either: wake for any byte
                        d.lowat = False
                        _set_rcvlowat(d.src, 1)
                        continue
                except OSError:  # a dead socket: its next read reports it
                    d.lowat = False
                    continue
                d.queued = queued
            d.seen = d.moved
            still.append(d)
        self._armed = still
        if still and self._call_later is not None:
            self._call_later(LOWAT_CHECK, self._check_lowat)

    def close(self) -> None:
        for d in self._armed:
            d.lowat = False
        self._armed.clear()
        for chan in self._pipes + self._buffers:
            self.discard(chan)
        self._pipes.clear()
        self._buffers.clear()
        self.scratch.close()


def socket_for(fd: int) -> _socket.socket:
    """A temporary object for a socket option call on a raw fd; `detach()` it after.
    The C-level class, for it has no Python-level constructor to run (once or twice per
    connection). Family and type are given, but CPython still checks the fd with one
    getsockname(2): a shutdown costs two system calls this way (strace -c)."""
    return _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)


def queued_bytes(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (SIOCINQ). The kernel writes the
    count into a writable buffer: fcntl.ioctl tries one first, and given bytes it
    fails that parse (a TypeError built and cleared) before copying them (1.56 against
    1.21 µs a call, timeit; a TLS leg asks once per small record)."""
    count = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return int.from_bytes(count, sys.byteorder, signed=True)


def _set_rcvlowat(fd: int, size: int) -> None:
    setsockopt_fd(fd, socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)


def setsockopt_fd(fd: int, level: int, option: int, value: int | bytes) -> None:
    """setsockopt(2) on a raw fd (OSError as the call raises it)."""
    sock = socket_for(fd)
    try:
        sock.setsockopt(level, option, value)
    finally:
        sock.detach()


def shutdown_write(fd: int) -> None:
    sock = socket_for(fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    finally:
        sock.detach()


def close_fd(fd: int, reset: bool) -> None:
    """Close a socket fd; with `reset`, SO_LINGER 0 first, so the peer sees an RST."""
    if reset:
        try:
            setsockopt_fd(fd, socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
    os.close(fd)


class Mode(enum.Enum):
    """How a direction moves its bytes."""
    SMALL = "small"   # plain sockets, copied: the scratch-buffer fast path (Session._relay_small)
    BULK = "bulk"     # plain sockets, a read filled a whole buffer: spliced from then on
    TLS = "tls"       # a TLS leg on either end: copied through the leg, always (the
    #                   short path too, _relay_small, while nothing is in flight)


class Direction:
    """Bytes from `src` to `dst` (fds). `pending` bytes sit in `chan`; `done` once EOF
    has been carried to `dst` (or the session died). `rleg`/`wleg`: the TLS legs on
    `src`/`dst`, if they speak TLS."""
    __slots__ = ("src", "dst", "chan", "pending", "done", "moved", "rleg", "wleg", "mode",
                 "lowat", "seen", "queued")
    seen: int      # `moved` at the pool's last low-water check (set by arm_lowat)
    queued: int    # bytes its source held at that check, if it had read nothing

    def __init__(self, src: int, dst: int, rleg: "TlsLeg | None", wleg: "TlsLeg | None",
                 mode: Mode):
        self.src = src
        self.dst = dst
        self.rleg = rleg
        self.wleg = wleg
        self.chan: SpliceChannel | CopyChannel | None = None
        self.pending = 0
        self.done = False
        self.moved = 0
        self.mode = mode
        self.lowat = False  # its source's SO_RCVLOWAT is BULK_LOWAT (ChannelPool.arm_lowat)
        # `seen` and `queued` are set by arm_lowat, and read only while armed


class End(enum.Enum):
    """How a session ended (the value is how a log line says it). A hard end (RESET,
    FAILED: `Session.close` tells them by identity) closes both sockets with SO_LINGER
    0, so each peer sees a reset; the others with a FIN."""
    CLOSED = "closed"                      # both directions done
    RESET = "reset"                        # an error on one side (reset, broken pipe)
    FAILED = "reset: internal error"       # a bug in its handler: its state is unknown
    IDLE = "idle timeout"                  # --idle-timeout
    SHUTDOWN = "closed at shutdown"        # the worker stopped with it open
    GATEWAY = "closed by gateway"          # closed before any of the above


# The members that the per-event and per-connection paths name, as module constants:
# on Python 3.11 reading a member through its class costs about 180 ns (EnumType's
# __getattr__ sends every attribute read of an enum class through a slow hook; 3.12
# dropped it), a module constant about 10 ns; and a set of members would hash each
# with a Python-level __hash__. Comparisons stay by identity.
_SMALL, _BULK, _TLS = Mode.SMALL, Mode.BULK, Mode.TLS
_CLOSED, _RESET, _FAILED, _GATEWAY = End.CLOSED, End.RESET, End.FAILED, End.GATEWAY


FRESH = (READ, READ)  # `Session.interest()` while no direction has bytes in flight or is done


class Session:
    """A client connection relayed to one member, over two socket fds it owns.
    States: relaying (`ended` None) -> ended (an `End`, and `why` in words): finished
    (both directions done: closed cleanly) | reset (an error: closed hard) | closed by
    the worker (idle, shutdown, a failed handler)."""
    __slots__ = ("client", "upstream", "up", "down", "pool", "sync", "ended", "why",
                 "cmask", "umask", "slot", "started", "flushed_up", "flushed_down", "peer",
                 "quiet_since", "ctls", "utls")
    why: str                  # the detail of how it ended: set with `ended` (`end`)
    peer: tuple | str | None  # the client's address and the monotonic second it
    started: float            # began: set by the worker only when it logs at debug level

    def __init__(self, client: int, upstream: int, pool: ChannelPool,
                 sync: Callable[["Session"], None], ctls: "TlsLeg | None" = None,
                 utls: "TlsLeg | None" = None, slot: int = -1, umask: int = 0):
        self.client = client
        self.upstream = upstream
        self.ctls = ctls       # the client leg when the gateway terminates TLS
        self.utls = utls       # the member leg when the gateway originates TLS
        mode = _SMALL if ctls is None and utls is None else _TLS
        self.up = Direction(client, upstream, ctls, utls, mode)
        self.down = Direction(upstream, client, utls, ctls, mode)
        self.pool = pool
        self.sync = sync
        self.ended: End | None = None  # how the session ended; None while it relays
        self.cmask = 0         # interest registered for the client (worker-owned)
        self.umask = umask     # interest registered for the upstream (worker-owned)
        self.slot = slot       # the member's slot in the health table (worker-owned)
        self.flushed_up = 0    # bytes already added to the shared counters
        self.flushed_down = 0
        self.quiet_since = 0.0  # monotonic second a quiet period began (worker-owned)

    # -- interest ------------------------------------------------------------------
    def interest(self) -> tuple[int, int]:
        """(the client's, the upstream's) interest now: READ a source while its
        direction is open with nothing in flight, WRITE a destination while bytes
        wait for it."""
        up, down = self.up, self.down
        return (((READ if not up.done and not up.pending else 0)
                 | (WRITE if down.pending else 0)),
                ((READ if not down.done and not down.pending else 0)
                 | (WRITE if up.pending else 0)))

    @property
    def finished(self) -> bool:
        return self.up.done and self.down.done

    # -- events --------------------------------------------------------------------
    def __call__(self, fd: int, mask: int) -> None:
        """The poller's callback for both sockets."""
        if fd == self.client:
            outgoing, incoming = self.up, self.down
        else:
            outgoing, incoming = self.down, self.up
        if (mask & READ and outgoing.chan is None and outgoing.mode is not _BULK
                and not outgoing.done and (mask == READ or not incoming.pending)):
            # the common event of etcd's traffic: a small message to pass on; or an
            # EOF or an error (a hang-up comes as READ|WRITE) with nothing to write
            if not self._relay_small(outgoing):
                self._settle()
        else:
            self._event(mask, outgoing, incoming)

    def begin(self) -> bool:
        """The member is connected: pass on what the client has already sent (it
        usually has spoken: this saves a wake-up). True when that left the session
        wanting what every new session wants, `FRESH` (nothing in flight, neither
        direction done: the worker registers it, no `interest()` to compute);
        otherwise it has settled itself (`sync`)."""
        if self._relay_small(self.up):  # a new direction is SMALL (or TLS), never BULK
            return True
        self._settle()
        return False

    def _relay_small(self, d: Direction) -> bool:
        """READ on a SMALL or TLS direction with nothing in flight: one read into the
        pool's scratch buffer and one write of what came, no channel borrowed (a TLS
        leg reads and writes whole records through the same buffer). True when the
        session's interest is unchanged (nothing came, or all of a short read was
        written): nothing to register. Otherwise (EOF, a partial write, a full
        buffer, an error, or one held by the TLS leg) the state moved and the caller
        settles it."""
        scratch = self.pool.scratch
        rleg, wleg = d.rleg, d.wleg
        try:
            n = os.readv(d.src, scratch.iov) if rleg is None else rleg.read_into(scratch)
        except BlockingIOError:
            return True
        except OSError as exc:
            self.end(_RESET, exc.strerror or str(exc))
            return False
        try:
            if n == 0:
                self._carry_eof(d)
                return False
            d.moved += n
            try:
                if wleg is None:
                    written = os.write(d.dst, scratch.view[:n])
                else:
                    scratch.start = 0
                    written = wleg.write_from(scratch, n)
            except BlockingIOError:
                written = 0
            held = rleg is not None and rleg.failed  # an error behind these bytes
            if written == n and n < scratch.size and not held:
                return True
            if written < n:
                # the destination is full: keep the rest, wait for WRITE (a TLS write
                # is retried with the same bytes, from the borrowed buffer)
                chan = d.chan = self.pool.get_buffer()
                chan.buf[:n - written] = scratch.view[written:n]
                chan.start = 0
                d.pending = n - written
            if n == scratch.size or held:
                if d.mode is _SMALL:
                    d.mode = _BULK  # a read filled a whole buffer: splice from now on
                if not d.pending:
                    self._pump(d)  # read on (or meet the held error) on the usual path
        except OSError as exc:
            self.end(_RESET, exc.strerror or str(exc))
        return False

    def _event(self, mask: int, outgoing: Direction, incoming: Direction) -> None:
        """`outgoing` reads from the ready socket, `incoming` writes to it."""
        if self.ended:
            return
        try:
            if mask & WRITE and incoming.pending:
                self._drain(incoming)
                if not incoming.pending and not incoming.done:
                    self._pump(incoming)
            if mask & READ and not outgoing.done and not outgoing.pending:
                self._pump(outgoing)
        except OSError as exc:
            self.end(_RESET, exc.strerror or str(exc))
        self._settle()

    def _settle(self) -> None:
        """After an event: end the session if both directions are done, and have the
        worker register what it now wants (or finish it)."""
        if self.up.done and self.down.done:  # `finished`, without a property call
            self.end(_CLOSED)
        self.sync(self)

    def _pump(self, d: Direction) -> None:
        chan = d.chan
        rleg = d.rleg
        if chan is None:
            if d.mode is _BULK:
                chan = d.chan = self.pool.get()
            else:
                chan = d.chan = self.pool.get_buffer()
        size = chan.size
        for _ in range(ROUNDS_PER_EVENT):
            try:
                n = chan.fill(d.src) if rleg is None else rleg.read_into(chan)
            except BlockingIOError:
                break
            if n == 0:
                self._carry_eof(d)
                break
            d.pending = n
            d.moved += n
            if n >= BULK_LOWAT and not d.lowat:  # only a pipe holds that much at once
                self.pool.arm_lowat(d)
            self._drain(d)
            if d.pending:
                return  # destination full: keep the channel, wait for WRITE
            if n < size and (rleg is None or not rleg.failed):
                break  # a short read emptied the socket: epoll says when there is more
            if d.mode is _SMALL:
                d.mode = _BULK  # it filled a copy buffer: a bulk direction, splice it
                self.pool.put(chan)
                chan = d.chan = self.pool.get()
                size = chan.size
                continue
            if size < self.pool.bulk_size:
                chan.grow(self.pool.bulk_size)  # it filled the pipe: a bulk direction
                size = chan.size
        d.chan = None
        self.pool.put(chan)

    def _drain(self, d: Direction) -> None:
        chan = d.chan
        assert chan is not None  # a direction with bytes pending holds its channel
        wleg = d.wleg
        while d.pending:
            try:
                if wleg is None:
                    d.pending -= chan.drain(d.dst, d.pending)
                else:
                    d.pending -= wleg.write_from(chan, d.pending)
            except BlockingIOError:
                return

    def _carry_eof(self, d: Direction) -> None:
        d.done = True
        if d.wleg is None:
            if not (self.down if d is self.up else self.up).done:
                shutdown_write(d.dst)
            # else the last EOF: the session is finished and close() follows in this
            # event; `dst` has read its own EOF (its receive queue is empty), so the
            # close sends the FIN that a shutdown would have sent, one call sooner
        else:  # a close_notify only once the other direction has read its EOF too
            d.wleg.shutdown_write(close_notify=(self.down if d is self.up else self.up).done)

    # -- teardown ------------------------------------------------------------------
    def close(self) -> None:
        """Release everything: channels back to the pool (or destroyed if they still
        hold bytes), both sockets closed; hard (SO_LINGER 0) when a reset ended it, so
        the peer of a reset sees a reset; otherwise with a FIN.
        Idempotent. The worker unregisters the sockets before calling this."""
        up, down = self.up, self.down
        if up.chan is not None or down.chan is not None:
            for d in (up, down):
                if d.chan is not None:
                    if d.pending:
                        self.pool.discard(d.chan)
                    else:
                        self.pool.put(d.chan)
                    d.chan = None
        up.done = down.done = True
        ended = self.ended
        if ended is None:
            ended = self.ended = _GATEWAY
            self.why = ""
        hard = ended is _RESET or ended is _FAILED  # the hard ends (see End)
        client, upstream, ctls, utls = self.client, self.upstream, self.ctls, self.utls
        if ctls is None and utls is None:  # plain sockets: the usual case, and at once
            if client >= 0:  # (client and upstream are set, and cleared, together)
                if hard:
                    close_fd(client, True)
                    close_fd(upstream, True)
                else:
                    os.close(client)
                    os.close(upstream)
        else:
            for fd, leg in ((client, ctls), (upstream, utls)):
                if leg is not None:
                    leg.close(hard)
                elif fd >= 0:
                    close_fd(fd, hard)
            self.ctls = self.utls = None
            up.rleg = up.wleg = down.rleg = down.wleg = None
        self.client = self.upstream = -1

    def end(self, how: End, why: str = "") -> None:
        """Record how the session ended; the first end recorded is the one kept."""
        if self.ended is None:
            self.ended, self.why = how, why

    @property
    def end_text(self) -> str:
        """How it ended, for a log line ("reset: Connection reset by peer")."""
        if self.ended is None:
            return "relaying"
        return f"{self.ended.value}: {self.why}" if self.why else self.ended.value

    def __repr__(self) -> str:
        """Enough to tell one failing session from another in a log line: its fds, its
        member's slot, the bytes moved each way and its state (no payload, no peer)."""
        state = f"ended ({self.end_text})" if self.ended else "relaying"
        tls = "".join(name for name, leg in (("+ctls", self.ctls), ("+utls", self.utls))
                      if leg is not None)
        return (f"<Session client_fd={self.client} member_fd={self.upstream}{tls} "
                f"member_slot={self.slot} up={self.up.moved}B down={self.down.moved}B "
                f"{state}>")
