"""The worker's handling of sessions, on real sockets, without forking."""
import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator

from gateway import log as gwlog
from gateway.addresses import HostPort
from gateway.endpoints import Endpoint
from gateway.health import C_ACTIVE, HealthTable
from gateway.listeners import open_listener
from gateway.relay import Session
from gateway.accept import ACCEPT_PAUSE
from gateway.worker import (REQUEUE_MARGIN, YIELD_PAUSE, YIELD_UNUSED, Accepting, State,
                            Worker, WorkerSettings)

SETTINGS = WorkerSettings(dial_timeout=1.0, dial_total_timeout=10.0, timeout_fall=2,
                          shutdown_timeout=5.0,
                          log=gwlog.Settings("error", "json", ""))


class Exploding(Session):
    __slots__ = ()

    def __call__(self, fd, mask):
        raise RuntimeError("a bug in the relay")


def test_a_session_whose_handler_fails_is_closed_and_the_worker_goes_on():
    table = HealthTable()
    slot = table.publish([Endpoint("e", socket.AF_INET, "127.0.0.1", 1)])[0].slot
    index = table.claim_worker_slot(os.getpid())
    listener = open_listener(HostPort("127.0.0.1", 0), 0o660, "")
    listener.slot = table.claim_listener_slot()
    worker = Worker(index, [listener], table, SETTINGS, os.getppid())
    app, client = socket.socketpair()
    upstream, member = socket.socketpair()
    for sock in (client, upstream):
        sock.setblocking(False)
    session = Exploding(client.detach(), upstream.detach(), worker.pool, worker._sync_session)
    session.slot = slot
    worker.session_count = 1
    table.add_at(table.counter_offset(index, slot, C_ACTIVE), 1)
    worker._sync(session)
    app.sendall(b"boom")
    worker.loop.run_once(0.5)
    assert session.client == -1                      # closed
    assert worker.session_count == 0
    assert table.counter(slot, C_ACTIVE, worker=index) == 0
    assert worker.state == State.SERVING
    try:                                             # the client sees its connection end
        assert app.recv(10) == b""
    except ConnectionResetError:
        pass
    assert session not in list(worker.loop.registered())  # unregistered
    for sock in (app, member, listener):
        sock.close()
    worker.loop.close()


class _RegisterFailsOnce:
    """The worker loop's epoll, whose next register of `fd` fails as at the watch
    limit."""

    def __init__(self, epoll, fd: int):
        self._epoll = epoll
        self._fd = fd
        self.failed = False

    def register(self, fd, mask):
        if fd == self._fd and not self.failed:
            self.failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._epoll.register(fd, mask)

    def __getattr__(self, name):
        return getattr(self._epoll, name)


@contextlib.contextmanager
def _worker_beside_another(held: int) -> Iterator[Worker]:
    """A worker holding `held` clients, beside another worker that holds none, and a
    client that has connected to its listener and spoken (not yet accepted)."""
    table = HealthTable()
    member = socket.create_server(("127.0.0.1", 0))  # the kernel completes its handshakes
    table.publish([Endpoint("m", socket.AF_INET, "127.0.0.1", member.getsockname()[1])])
    index = table.claim_worker_slot(os.getpid())
    table.claim_worker_slot(os.getppid())  # another worker, holding no client
    listener = open_listener(HostPort("127.0.0.1", 0), 0o660, "")
    listener.slot = table.claim_listener_slot()
    worker = Worker(index, [listener], table, SETTINGS, os.getppid())
    worker._find_peers()
    worker._resume_accepting()
    worker.session_count = held
    client = socket.create_connection(listener.sock.getsockname(), timeout=5)
    try:
        client.sendall(b"x")
        yield worker
    finally:
        client.close()
        worker._close_all()
        worker.loop.close()
        member.close()


def _accepts_one_holding(held: int) -> list[int]:
    """A worker holding `held` clients (another worker holds none), its pauses of this
    tick already spent (see the pause tests below), accepts one more: the fds it
    stepped back in line for."""
    with _worker_beside_another(held) as worker:
        worker._unused = YIELD_UNUSED
        requeued: list[int] = []
        requeue = worker.loop.requeue
        worker.loop.requeue = (  # type: ignore[method-assign]
            lambda fd, mask: (requeued.append(fd), requeue(fd, mask)))
        worker.loop.run_once(0.5)
        assert worker.session_count == held + 1
        return requeued


def test_a_worker_one_client_ahead_of_another_keeps_its_place_in_the_listeners_line():
    # a script's short connections overlap by one (the last still closing as the
    # next arrives): stepping back would hand every other one to a sleeping worker
    assert _accepts_one_holding(1) == []


def test_a_worker_two_clients_ahead_of_another_steps_to_the_back_of_the_line():
    requeued = _accepts_one_holding(2)
    assert len(requeued) == 1


def test_a_listener_the_kernel_cannot_take_back_pauses_accepting_then_is_registered_again():
    # it holds REQUEUE_MARGIN more than the other: it requeues after accepting
    with _worker_beside_another(REQUEUE_MARGIN) as worker:
        worker._unused = YIELD_UNUSED  # its pauses of this tick spent: it requeues
        listener_fd = worker.listeners[0].fileno()
        epoll = worker.loop._epoll
        worker.loop._epoll = _RegisterFailsOnce(epoll, listener_fd)  # type: ignore[assignment]
        try:
            worker.loop.run_once(0.5)
            assert worker.loop._epoll.failed  # type: ignore[attr-defined]
            assert worker._accepting == Accepting.NO_FDS
            assert not worker.loop.watching(listener_fd)
            deadline = time.monotonic() + ACCEPT_PAUSE + 5
            while worker._accepting != Accepting.OPEN:
                assert time.monotonic() < deadline, "accepting never resumed"
                worker.loop.run_once(0.05)
            assert worker.loop.watching(listener_fd)
        finally:
            worker.loop._epoll = epoll


def _run_until_accepting(worker: Worker, within: float) -> None:
    deadline = time.monotonic() + within
    while worker._accepting != Accepting.OPEN:
        assert time.monotonic() < deadline, f"still {worker._accepting} after {within}s"
        worker.loop.run_once(0.05)


def test_a_worker_that_comes_to_hold_three_clients_beside_one_holding_none_pauses_accepting():
    # a burst of long-lived clients (a pool opening its connections) would otherwise
    # pile up on the one worker that is awake
    with _worker_beside_another(2) as worker:
        listener_fd = worker.listeners[0].fileno()
        worker.loop.run_once(0.5)
        assert worker.session_count == 3
        assert worker._accepting == Accepting.YIELDED
        assert not worker.loop.watching(listener_fd)  # the other worker takes the next


def test_a_paused_worker_accepts_again_after_the_pause():
    with _worker_beside_another(2) as worker:
        listener_fd = worker.listeners[0].fileno()
        worker.loop.run_once(0.5)
        assert worker._accepting == Accepting.YIELDED
        _run_until_accepting(worker, YIELD_PAUSE + 1.0)
        assert worker.loop.watching(listener_fd)


def test_a_worker_pauses_at_most_yield_unused_times_a_tick_when_no_other_worker_takes_clients():
    # a peer that holds few clients because it is stopped, or not accepting, must not
    # hold this one's accepts back more than a few pauses a tick
    with _worker_beside_another(2) as worker:
        pauses = 0
        while worker._may_pause():  # no other worker takes a client meanwhile
            worker._yield_accepting(3)
            _run_until_accepting(worker, YIELD_PAUSE + 1.0)
            pauses += 1
            assert pauses <= YIELD_UNUSED
        assert pauses == YIELD_UNUSED
        worker._find_peers()  # the next tick
        assert worker._may_pause()


def test_a_worker_holding_two_clients_beside_one_holding_none_does_not_pause():
    with _worker_beside_another(1) as worker:
        worker.loop.run_once(0.5)
        assert worker.session_count == 2
        assert worker._accepting == Accepting.OPEN


def test_a_worker_already_past_the_threshold_does_not_pause():
    # an uneven spread that came earlier (long-lived clients) is the requeue's to
    # work on, and a draining peer, still counted, never accepting, meets no pause
    with _worker_beside_another(3) as worker:
        worker.loop.run_once(0.5)
        assert worker.session_count == 4
        assert worker._accepting == Accepting.OPEN


def test_listeners_the_kernel_cannot_take_back_after_a_pause_wait_then_are_registered_again():
    with _worker_beside_another(2) as worker:
        listener_fd = worker.listeners[0].fileno()
        worker.loop.run_once(0.5)
        assert worker._accepting == Accepting.YIELDED
        epoll = worker.loop._epoll
        worker.loop._epoll = _RegisterFailsOnce(epoll, listener_fd)  # type: ignore[assignment]
        try:
            deadline = time.monotonic() + YIELD_PAUSE + 5
            while not worker.loop._epoll.failed:  # type: ignore[attr-defined]
                assert time.monotonic() < deadline, "the pause never ended"
                worker.loop.run_once(0.05)
            assert worker._accepting == Accepting.NO_FDS
            assert not worker.loop.watching(listener_fd)
            _run_until_accepting(worker, ACCEPT_PAUSE + 5)
            assert worker.loop.watching(listener_fd)
        finally:
            worker.loop._epoll = epoll


def test_a_worker_whose_pause_another_worker_used_may_pause_again():
    # a burst larger than one pause's worth: the workers take turns up to each
    # other's thresholds, rather than the first to resume taking all that is left
    with _worker_beside_another(2) as worker:
        worker.loop.run_once(0.5)
        assert worker._accepting == Accepting.YIELDED
        worker._cells[worker._peer_open_at[0]] = 2  # the other worker took two meanwhile
        _run_until_accepting(worker, YIELD_PAUSE + 1.0)
        another = socket.create_connection(worker.listeners[0].sock.getsockname(), timeout=5)
        try:
            another.sendall(b"x")
            worker.loop.run_once(0.5)
            assert worker.session_count == 4  # 2 + REQUEUE_MARGIN: the new threshold
            assert worker._accepting == Accepting.YIELDED
        finally:
            another.close()
