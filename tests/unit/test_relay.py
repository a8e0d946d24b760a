"""The relay on real sockets: integrity, half-close, resets, backpressure, idle cost.

Each test runs with both pools: splice for bulk directions (small messages are copied),
and the recv/send copy fallback everywhere. The session is driven by a Loop here, as a worker drives it.
"""
import hashlib
import os
import select
import socket
import struct
import threading
import time

import fcntl
import termios

import pytest

from gateway import relay
from gateway.loop import READ, Loop
from gateway.relay import (BULK_LOWAT, FRESH, PIPE_SIZE, ChannelPool, CopyChannel, End, Mode, Session,
                           SpliceChannel, splice_works)
from tests.support.clients import wait_until

MODES = ["splice", "copy"]
_SO_RCVBUFFORCE = 33  # Linux (asm-generic/socket.h); the socket module does not name it


class Driver:
    """Runs sessions the way a worker does: on a Loop, registering what each wants."""

    def __init__(self, mode: str, call_later=None):
        self.loop = Loop()
        self.pool = ChannelPool(use_splice=(mode == "splice"),
                                call_later=call_later or self.loop.call_later)
        self.ended: list[Session] = []
        self.live: list[Session] = []

    def start(self, client: socket.socket, upstream: socket.socket) -> Session:
        """The session takes over both sockets' fds and registers what it wants."""
        session = self.make(client, upstream)
        self.sync(session)
        return session

    def make(self, client: socket.socket, upstream: socket.socket) -> Session:
        """The session takes over both sockets' fds (the objects are detached); nothing
        is read or registered yet."""
        client.setblocking(False)
        upstream.setblocking(False)
        session = Session(client.detach(), upstream.detach(), self.pool, self.sync)
        self.live.append(session)
        return session

    def sync(self, s: Session) -> None:
        if s.ended:
            if s.cmask:
                self.loop.remove(s.client)
            if s.umask:
                self.loop.remove(s.upstream)
            s.cmask = s.umask = 0
            s.close()
            self.ended.append(s)
            return
        cwant, uwant = s.interest()
        s.cmask = self.loop.set_interest(s.client, s.cmask, cwant, s)
        s.umask = self.loop.set_interest(s.upstream, s.umask, uwant, s)

    def run_until(self, condition, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            self.loop.run_once(0.02)

    def settle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.loop.run_once(0.02)

    def close(self) -> None:
        for s in self.live:
            if not s.ended:
                s.end(End.SHUTDOWN)
                self.sync(s)
        self.loop.close()


class CheckClock:
    """Stands in for the loop's timer under the pool's low-water check: a test fires the
    due checks when it chooses, so none runs behind its back on a loaded machine."""

    def __init__(self) -> None:
        self.due: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback) -> None:
        self.due.append((delay, callback))

    def fire(self) -> None:
        due, self.due = self.due, []
        for _, callback in due:
            callback()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname(), timeout=5)
        b, _ = server.accept()
    return a, b


def read_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = []
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return b"".join(chunks)
        chunks.append(data)
        assert sum(map(len, chunks)) <= limit


@pytest.fixture(params=MODES)
def mode(request):
    if request.param == "splice" and not splice_works():
        pytest.fail("os.splice is expected to work on this Linux machine")
    return request.param


def _rig(mode: str, started: bool):
    """app <-> [client | session | upstream] <-> member, on loopback TCP; the session
    registered (`Driver.start`) or not yet begun (`Driver.make`)."""
    app, client = tcp_pair()
    upstream, member = tcp_pair()
    driver = Driver(mode)
    session = (driver.start if started else driver.make)(client, upstream)
    yield driver, session, app, member
    driver.close()
    for sock in (app, member):
        sock.close()


@pytest.fixture
def wired(mode):
    """app <-> [client | session | upstream] <-> member, on loopback TCP."""
    yield from _rig(mode, started=True)


def test_splice_is_available_here():
    assert splice_works()


def test_bytes_arrive_intact_in_both_directions(wired):
    driver, session, app, member = wired
    up_data, down_data = os.urandom(6 << 20), os.urandom(5 << 20)
    got = {}

    def app_side():
        sender = threading.Thread(target=lambda: (app.sendall(up_data),
                                                  app.shutdown(socket.SHUT_WR)))
        sender.start()
        got["down"] = read_all(app)
        sender.join()

    def member_side():
        sender = threading.Thread(target=lambda: (member.sendall(down_data),
                                                  member.shutdown(socket.SHUT_WR)))
        sender.start()
        got["up"] = read_all(member)
        sender.join()

    threads = [threading.Thread(target=app_side), threading.Thread(target=member_side)]
    for t in threads:
        t.start()
    driver.run_until(lambda: session.ended, timeout=30)
    for t in threads:
        t.join(10)
    assert hashlib.sha256(got["up"]).digest() == hashlib.sha256(up_data).digest()
    assert hashlib.sha256(got["down"]).digest() == hashlib.sha256(down_data).digest()
    assert session.ended is End.CLOSED
    assert (session.up.moved, session.down.moved) == (len(up_data), len(down_data))


def test_half_close_is_carried_and_the_other_direction_keeps_working(wired):
    driver, session, app, member = wired
    app.sendall(b"request")
    app.shutdown(socket.SHUT_WR)
    member.settimeout(5)
    driver.run_until(lambda: session.up.done)
    assert read_all(member) == b"request"   # EOF reached the member
    assert not session.finished              # the reply direction is still open
    member.sendall(b"reply after the client's EOF")
    member.shutdown(socket.SHUT_WR)
    driver.run_until(lambda: session.ended)
    app.settimeout(5)
    assert read_all(app) == b"reply after the client's EOF"
    assert session.ended is End.CLOSED


def test_session_ends_only_when_both_directions_are_done(wired):
    driver, session, app, member = wired
    member.shutdown(socket.SHUT_WR)
    driver.run_until(lambda: session.down.done)
    driver.settle(0.1)
    assert not session.ended
    app.sendall(b"still flowing")
    member.settimeout(5)
    driver.run_until(lambda: session.up.moved == 13)
    assert member.recv(100) == b"still flowing"


def test_a_reset_from_the_member_resets_the_client(wired):
    driver, session, app, member = wired
    app.sendall(b"x")
    driver.run_until(lambda: session.up.moved == 1)
    member.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    member.close()
    driver.run_until(lambda: session.ended)
    assert session.ended is End.RESET
    app.settimeout(5)
    with pytest.raises(ConnectionResetError):
        read_all(app)


def test_a_reset_from_the_client_resets_the_member(wired):
    driver, session, app, member = wired
    app.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    app.close()
    driver.run_until(lambda: session.ended)
    member.settimeout(5)
    with pytest.raises(ConnectionResetError):
        read_all(member)


def test_a_destination_that_reads_nothing_stops_the_source_being_read(wired):
    driver, session, app, member = wired
    app.setblocking(False)
    sent = 0
    block = b"z" * 65536
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # fill until the app's own buffer is full too
        try:
            sent += app.send(block)
        except BlockingIOError:
            driver.settle(0.05)
            try:
                sent += app.send(block)
            except BlockingIOError:
                break
    driver.settle(0.2)
    assert session.up.pending > 0               # bytes wait in the channel
    assert not session.interest()[0] & 1    # the client is not read meanwhile
    in_flight = session.up.pending
    assert in_flight <= max(PIPE_SIZE, 1 << 20)
    assert session.up.moved < sent              # the rest stays in kernel buffers
    assert not session.ended


def test_an_idle_session_holds_no_channel(wired):
    driver, session, app, member = wired
    app.sendall(b"ping")
    member.settimeout(5)
    driver.run_until(lambda: session.up.moved == 4)
    assert member.recv(10) == b"ping"
    member.sendall(b"pong")
    driver.run_until(lambda: session.down.moved == 4)
    assert session.up.chan is None and session.down.chan is None
    assert driver.pool.pipes_open == driver.pool.idle()


def test_closing_with_bytes_in_flight_destroys_the_channel(mode):
    pool = ChannelPool(use_splice=(mode == "splice"))
    chan = pool.get()
    a, b = socket.socketpair()
    a.sendall(b"left over")
    assert chan.fill(b.fileno()) == 9
    pool.discard(chan)
    assert pool.idle() == 0
    assert pool.pipes_open == 0
    a.close()
    b.close()


def test_pool_lends_copy_buffers_when_splice_is_off():
    assert isinstance(ChannelPool(use_splice=False).get(), CopyChannel)
    pool = ChannelPool(use_splice=True)
    chan = pool.get()
    assert isinstance(chan, SpliceChannel)
    pool.discard(chan)


def test_pool_falls_back_to_copying_when_no_pipe_can_be_made():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pool = ChannelPool(use_splice=True)
    hoard = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        try:
            while True:
                hoard.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        chan = pool.get()
    finally:
        for fd in hoard:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(chan, CopyChannel)


def test_trim_closes_idle_pipes_only_after_a_quiet_period():
    pool = ChannelPool(use_splice=True)
    chans = [pool.get() for _ in range(3)]
    for chan in chans:
        pool.put(chan)
    pool.trim()                      # lent since the last trim: kept
    assert pool.idle() == 3
    pool.trim()                      # a quiet period: closed
    assert pool.idle() == 0 and pool.pipes_open == 0


def test_a_session_repr_names_its_fds_member_bytes_and_state(wired):
    driver, session, app, member = wired
    app.sendall(b"hello")
    driver.run_until(lambda: session.up.moved == 5)
    session.slot = 3
    text = repr(session)
    assert f"client_fd={session.client} member_fd={session.upstream}" in text
    assert "member_slot=3 up=5B down=0B relaying" in text
    member.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    member.close()
    driver.run_until(lambda: session.ended)
    assert f"ended (reset: {session.why})" in repr(session)


def test_small_messages_are_copied_without_a_pipe(wired):
    driver, session, app, member = wired
    member.settimeout(5)
    app.settimeout(5)
    sent = 0
    for i in range(20):
        app.sendall(b"request %d" % i)
        sent += len(b"request %d" % i)
        driver.run_until(lambda total=sent: session.up.moved == total)
        assert member.recv(64) == b"request %d" % i
        member.sendall(b"response %d" % i)
        driver.run_until(lambda: app.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                         if _readable(app) else False)
        assert app.recv(64) == b"response %d" % i
    assert session.up.mode is Mode.SMALL and session.down.mode is Mode.SMALL
    assert driver.pool.pipes_open == 0  # not one pipe made, in either mode


def test_a_direction_that_fills_a_buffer_switches_to_splice_and_the_other_does_not(wired):
    driver, session, app, member = wired
    payload = os.urandom(4 << 20)
    sender = threading.Thread(target=member.sendall, args=(payload,))
    sender.start()
    app.settimeout(5)
    got = bytearray()
    deadline = time.monotonic() + 20
    while len(got) < len(payload):
        assert time.monotonic() < deadline
        driver.loop.run_once(0.01)
        while _readable(app):
            got += app.recv(1 << 20)
    sender.join(5)
    assert bytes(got) == payload
    assert session.down.mode is Mode.BULK and session.up.mode is Mode.SMALL
    if driver.pool.use_splice:
        assert driver.pool.pipes_open >= 1  # the bulk direction went through a pipe


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0)[0])


def test_a_session_with_nothing_in_flight_wants_fresh(wired):
    driver, session, app, member = wired
    assert session.interest() == FRESH


@pytest.fixture
def unstarted(mode):
    """app <-> [client | session | upstream] <-> member, as `wired`, but the session
    has not begun: nothing read, nothing registered."""
    yield from _rig(mode, started=False)


def test_begin_passes_on_what_the_client_sent_and_leaves_the_registering_to_the_caller(
        unstarted):
    """A new session's first read: the client's request goes to the member at once;
    `begin` then says the session wants FRESH, and has registered nothing itself."""
    driver, session, app, member = unstarted
    calls = []
    session.sync = lambda s: calls.append(s)  # type: ignore[assignment]
    app.sendall(b"first request")
    time.sleep(0.05)  # the bytes are in the client socket before the first read
    assert session.begin() is True
    assert calls == []
    member.settimeout(5)
    assert member.recv(64) == b"first request"


def test_begin_after_the_client_already_left_settles_the_session_itself(unstarted):
    """EOF at the first read is carried at once (the member's side is shut for
    writing), and the session registers what it wants then: not FRESH."""
    driver, session, app, member = unstarted
    app.shutdown(socket.SHUT_WR)
    time.sleep(0.05)  # the FIN is in the client socket before the first read
    assert session.begin() is False
    assert session.up.done
    assert (session.cmask, session.umask) == (0, READ)  # synced: the member may still answer
    member.settimeout(5)
    assert member.recv(64) == b""


def test_a_small_message_relayed_whole_changes_no_registration(wired):
    driver, session, app, member = wired
    member.settimeout(5)
    calls = []
    session.sync = lambda s: (calls.append(s), driver.sync(s))  # type: ignore[assignment]
    for i in range(10):
        app.sendall(b"put key%d" % i)
        driver.run_until(lambda total=(i + 1) * 8: session.up.moved == total)
        assert member.recv(64) == b"put key%d" % i
    assert calls == []  # interest unchanged: nothing registered again
    assert session.up.chan is None


def test_a_small_message_the_destination_cannot_take_whole_waits_and_arrives_in_order(mode):
    app, client = tcp_pair()
    upstream, member = tcp_pair()
    upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    member.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    driver = Driver(mode)
    session = driver.start(client, upstream)
    try:
        sent = bytearray()
        for i in range(20000):  # small messages, each passed on alone, until one sticks
            message = b"%06d" % i + b"." * 994
            app.sendall(message)
            sent += message
            driver.loop.run_once(0.05)
            if session.up.pending:
                break
        assert session.up.pending                  # the member's buffers are full
        assert session.up.mode is Mode.SMALL       # small messages: still copied
        assert isinstance(session.up.chan, CopyChannel)
        assert not session.interest()[0] & select.EPOLLIN  # the client waits
        app.shutdown(socket.SHUT_WR)
        got = bytearray()
        member.setblocking(False)
        deadline = time.monotonic() + 10
        while len(got) < len(sent):
            assert time.monotonic() < deadline, "not every byte arrived"
            driver.loop.run_once(0.01)
            try:
                got += member.recv(1 << 16)
            except BlockingIOError:
                pass
        assert bytes(got) == bytes(sent)
        assert session.up.mode is Mode.SMALL
    finally:
        driver.close()
        for sock in (app, member):
            sock.close()


def _rcvlowat(fd: int) -> int:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
    finally:
        sock.close()


def _queued(fd: int) -> int:
    """Bytes waiting in a socket's receive queue (SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def _relay_until(driver: Driver, receive, got: bytearray, total: int, timeout: float,
                 what: str) -> None:
    """Turn the loop and read the member's side until `got` holds `total` bytes."""
    deadline = time.monotonic() + timeout
    while len(got) < total:
        assert time.monotonic() < deadline, what
        driver.loop.run_once(0.01)
        receive()


@pytest.fixture
def streaming():
    """A splice session whose client has sent 3 MiB (all of it queued) before the gateway
    read any of it, more than BULK_LOWAT at one read, relayed to a member reading it all.
    The pool's low-water checks run only when a test fires them (`clock`)."""
    app, client = tcp_pair()
    upstream, member = tcp_pair()
    try:  # as root, past net.core.rmem_max: the whole burst must fit in the queue
        client.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, 8 << 20)
    except PermissionError:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    clock = CheckClock()
    driver = Driver("splice", call_later=clock.call_later)
    session = driver.start(client, upstream)
    try:
        burst = os.urandom(3 << 20)
        app.settimeout(10)
        app.sendall(burst)
        wait_until(lambda: _queued(session.client) == len(burst), 10,  # no tail can come late
                   "the 3 MiB burst did not fit in the client's receive queue "
                   "(net.core.rmem_max too small without root?)", interval=0.005)
        member.setblocking(False)
        got = bytearray()

        def receive() -> None:
            try:
                while True:
                    chunk = member.recv(1 << 20)
                    if not chunk:
                        return
                    got.extend(chunk)
            except BlockingIOError:
                pass

        _relay_until(driver, receive, got, len(burst), 10, "the burst did not arrive")
        assert bytes(got) == burst
        yield driver, session, app, member, got, receive, clock
    finally:
        driver.close()
        for sock in (app, member):
            sock.close()


def test_a_bulk_source_read_behind_by_more_than_the_mark_wakes_only_at_the_mark(streaming):
    driver, session, app, member, got, receive, clock = streaming
    assert session.up.lowat
    assert _rcvlowat(session.client) == BULK_LOWAT
    assert not session.down.lowat and _rcvlowat(session.upstream) == 1


def test_a_marked_source_is_checked_every_lowat_check(streaming):
    driver, session, app, member, got, receive, clock = streaming
    assert [delay for delay, _ in clock.due] == [relay.LOWAT_CHECK]
    clock.fire()
    assert [delay for delay, _ in clock.due] == [relay.LOWAT_CHECK]


def test_a_marked_source_read_between_two_checks_keeps_its_mark(streaming):
    driver, session, app, member, got, receive, clock = streaming
    clock.fire()
    clock.fire()  # idle since the burst: its (empty) queue is noted
    assert session.up.lowat
    start, more = len(got), BULK_LOWAT + 4096
    app.sendall(os.urandom(more))  # at the mark: the kernel wakes the worker, it reads
    _relay_until(driver, receive, got, start + more, 5, "bytes at the mark were not read")
    clock.fire()  # the queue is empty again, as at the last check, but it was read
    assert session.up.lowat and _rcvlowat(session.client) == BULK_LOWAT


def test_a_marked_source_whose_queue_grows_between_checks_keeps_its_mark_until_it_stops(
        streaming):
    driver, session, app, member, got, receive, clock = streaming
    clock.fire()
    clock.fire()  # idle since the burst: its (empty) queue is noted
    app.sendall(b"slow" * 250)
    wait_until(lambda: _queued(session.client) == 1000, 5, "the bytes did not arrive", interval=0.005)
    clock.fire()
    assert session.up.lowat  # still filling (a stream slower than the mark per period)
    clock.fire()
    assert not session.up.lowat and _rcvlowat(session.client) == 1  # it stopped


def test_a_tail_below_the_mark_after_a_pause_waits_at_most_three_checks(streaming):
    driver, session, app, member, got, receive, clock = streaming
    start = len(got)
    app.sendall(b"tail" * 100)
    wait_until(lambda: _queued(session.client) == 400, 5, "the tail did not arrive", interval=0.005)
    driver.settle(0.1)
    receive()
    assert len(got) == start  # below the mark: the kernel does not wake the worker
    checks = 0
    while session.up.lowat:
        assert checks < 3, "the check left a stalled source marked"
        clock.fire()
        checks += 1
    assert _rcvlowat(session.client) == 1  # back to any byte: the kernel wakes us now
    _relay_until(driver, receive, got, start + 400, 5, "a tail below the low-water mark stalled")
    assert bytes(got[start:]) == b"tail" * 100


def test_a_tail_below_the_mark_then_eof_arrive_in_order_and_end_the_session(streaming):
    driver, session, app, member, got, receive, clock = streaming
    start = len(got)
    app.sendall(b"last" * 50)
    app.shutdown(socket.SHUT_WR)
    member.shutdown(socket.SHUT_WR)
    driver.run_until(lambda: session.ended, timeout=5)
    receive()
    assert bytes(got[start:]) == b"last" * 50
    assert session.ended is End.CLOSED


def test_a_session_closed_with_its_source_marked_is_dropped_by_the_check(streaming):
    driver, session, app, member, got, receive, clock = streaming
    assert session.up.lowat
    session.end(End.SHUTDOWN)
    driver.sync(session)
    clock.fire()
    assert not session.up.lowat
    assert driver.pool._armed == []
    assert clock.due == []  # nothing left to check: no timer


def test_queued_bytes_counts_what_waits_unread_in_a_socket():
    a, b = socket.socketpair()
    with a, b:
        b.sendall(b"x" * 10)
        assert relay.queued_bytes(a.fileno()) == 10
        a.recv(4)
        assert relay.queued_bytes(a.fileno()) == 6


def test_a_session_registers_itself_for_both_sockets_and_holds_no_callback_of_its_own(wired):
    """The poller holds the session object itself (loop.py calls it through its class's
    `__call__`): an idle connection costs no bound method per session."""
    driver, session, app, member = wired
    assert list(driver.loop.registered()) == [session, session]
    assert not hasattr(session, "handler") and not hasattr(session, "__dict__")
