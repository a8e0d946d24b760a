"""The event loop: dispatch, timers, and containment of a failing handler."""
import errno
import os
import signal
import socket
import threading
import time
import weakref

import pytest

from gateway.loop import READ, SPIN_START, WRITE, Loop, SpinWindow


def test_a_failing_handler_is_reported_and_the_loop_goes_on():
    errors = []
    loop = Loop(on_error=lambda cb, exc: errors.append(exc))
    a, b = socket.socketpair()
    seen = []

    def bad(fd, mask):
        raise RuntimeError("bug")

    loop.add(a.fileno(), READ, bad)
    loop.call_later(0, lambda: seen.append("timer ran"))
    b.sendall(b"x")
    loop.run_once(0.1)
    assert [str(e) for e in errors] == ["bug"]
    assert seen == ["timer ran"]
    loop.remove(a.fileno())
    loop.call_later(0, lambda: 1 / 0)
    loop.run_once(0.01)
    assert isinstance(errors[-1], ZeroDivisionError)
    loop.close()
    a.close()
    b.close()


class Recorder:
    """A callback object, as a relay session is: its class defines `__call__`."""
    __slots__ = ("calls",)

    def __init__(self):
        self.calls = []

    def __call__(self, fd, mask):
        self.calls.append((fd, mask))


def test_functions_bound_methods_and_objects_with_a_call_method_are_all_called_back():
    loop = Loop()
    pairs = [socket.socketpair() for _ in range(3)]
    fds = [a.fileno() for a, _ in pairs]
    by_function, by_method, by_object = [], Recorder(), Recorder()
    loop.add(fds[0], READ, lambda fd, mask: by_function.append((fd, mask)))
    loop.add(fds[1], READ, by_method.__call__)  # a bound method
    loop.add(fds[2], READ, by_object)           # the object itself, as a session is
    for _, b in pairs:
        b.sendall(b"x")
    loop.run_once(0.1)
    assert by_function == [(fds[0], READ)]
    assert by_method.calls == [(fds[1], READ)]
    assert by_object.calls == [(fds[2], READ)]
    loop.close()
    for a, b in pairs:
        a.close()
        b.close()


def test_a_cancelled_timer_lets_go_of_its_callback_at_once():
    loop = Loop()
    held = _Held()
    ref = weakref.ref(held)
    timer = loop.call_later(60, _returning(held))
    del held
    assert ref() is not None, "the pending timer holds its callback"
    timer.cancel()
    assert ref() is None, "the cancelled timer, still in the heap, let go of it"
    loop.close()


def test_a_timer_runs_once_its_deadline_passes_and_not_before():
    loop, ran = Loop(), []
    began = time.monotonic()  # before the timer's deadline is set from the clock
    loop.call_later(0.05, lambda: ran.append(time.monotonic()))
    loop.run_once(0)
    assert ran == []
    loop.run_once(10.0)  # the poll waits for the timer, not for max_wait
    assert len(ran) == 1 and 0.05 <= ran[0] - began < 5.0
    loop.close()


def test_an_overdue_timer_makes_the_next_poll_return_at_once():
    def hung(signum, frame):
        raise TimeoutError("the poll waited for ever: a negative timeout")
    previous = signal.signal(signal.SIGALRM, hung)
    loop, ran = Loop(), []
    loop.call_later(-1.0, lambda: ran.append(True))
    signal.alarm(5)
    try:
        loop.run_once(30.0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert ran == [True]
    loop.close()


def test_error_events_are_reported_as_readable_and_writable():
    loop = Loop()
    a, b = socket.socketpair()
    masks = []
    loop.add(a.fileno(), READ, lambda fd, mask: masks.append(mask))
    b.close()  # the peer hangs up: EPOLLHUP
    loop.run_once(0.1)
    assert masks and masks[0] & READ and masks[0] & 4
    loop.close()
    a.close()


@pytest.fixture
def two_ready():
    """A loop and two socket pairs, `a` and `c` readable (in that order) when it polls:
    one batch with two events, the first one's callback able to act on the second."""
    loop = Loop()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    yield loop, a, c, lambda: (b.sendall(b"x"), d.sendall(b"x"))
    loop.close()
    for s in (a, b, c, d):
        s.close()


def test_a_stale_event_for_a_reused_fd_is_not_delivered_to_the_new_registration(two_ready):
    loop, a, c, send = two_ready
    got = []
    old_fd, victim_fd = a.fileno(), c.fileno()

    def first(fd, mask):
        # close the fd the *second* event is for, and put a new registration on the
        # same number, as a finishing session and a new dial can within one batch
        a.recv(10)
        loop.remove(old_fd)
        loop.remove(victim_fd)
        loop.add(victim_fd, READ, lambda fd, mask: got.append("new"))

    loop.add(old_fd, READ, first)
    loop.add(victim_fd, READ, lambda fd, mask: got.append("old"))
    send()
    loop.run_once(0.1)
    assert got == []           # the batch's event for victim_fd belonged to "old"
    loop.run_once(0.1)
    assert got == ["new"]      # the next poll reports it afresh, to the new owner


def test_an_event_for_an_fd_rebound_earlier_in_the_batch_waits_for_the_next_poll(two_ready):
    loop, a, c, send = two_ready
    got = []

    def first(fd, mask):
        a.recv(10)
        loop.rebind(c.fileno(), lambda fd, mask: (got.append("new"), c.recv(10)))

    loop.add(a.fileno(), READ, first)
    loop.add(c.fileno(), READ, lambda fd, mask: got.append("old"))
    send()
    loop.run_once(0.1)
    assert got in ([], ["old"])  # "old" if its event came first in the batch
    loop.run_once(0.1)
    assert got[-1] == "new"      # level-triggered: reported afresh, to the new owner


def test_a_failing_signal_handler_does_not_swallow_the_next_signal():
    import os
    import signal
    errors, handled = [], []
    loop = Loop(on_error=lambda cb, exc: errors.append(exc))

    def on_signal(signum):
        handled.append(signum)
        if signum == signal.SIGUSR1:
            raise RuntimeError("reopen failed")

    old = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    loop.handle_signals((signal.SIGUSR1, signal.SIGUSR2), on_signal)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR2)
        loop.run_once(0.2)
        assert handled == [signal.SIGUSR1, signal.SIGUSR2]
        assert len(errors) == 1
    finally:
        loop.close()
        for s, h in old.items():
            signal.signal(s, h)


class _Held:
    """Something a timer callback holds (weak-referenceable, unlike a bytearray)."""


def _returning(obj: object):
    return lambda: obj


def test_set_interest_registers_changes_and_removes_an_fd():
    loop = Loop()
    a, b = socket.socketpair()
    got = []
    try:
        def callback(fd, mask):
            got.append(mask)
        fd = a.fileno()
        assert loop.set_interest(fd, 0, WRITE, callback) == WRITE
        loop.run_once(0.5)
        assert got and got[-1] & WRITE
        b.sendall(b"x")
        assert loop.set_interest(fd, WRITE, READ, callback) == READ
        got.clear()
        loop.run_once(0.5)
        assert got == [READ]
        assert loop.set_interest(fd, READ, 0, callback) == 0
        assert callback not in list(loop.registered())
        got.clear()
        loop.run_once(0.05)
        assert got == []
    finally:
        a.close()
        b.close()
        loop.close()


def test_a_forgotten_fd_leaves_epoll_when_closed_so_its_number_can_be_added_again():
    loop = Loop()
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add(fd, READ, lambda fd, mask: None)
    loop.forget(fd)
    a.close()  # the kernel drops the registration with the last reference
    c, d = socket.socketpair()
    try:
        assert c.fileno() == fd  # the lowest free number: the one just closed
        seen = []
        loop.add(fd, READ, lambda fd, mask: seen.append(mask))  # no EEXIST
        d.sendall(b"x")
        loop.run_once(0.5)
        assert seen and seen[0] & READ
    finally:
        loop.close()
        for s in (b, c, d):
            s.close()


def test_a_requeued_fd_keeps_its_callback_and_is_reported_when_ready():
    loop = Loop()
    a, b = socket.socketpair()
    try:
        seen = []
        loop.add(a.fileno(), READ, lambda fd, mask: seen.append(mask))
        b.sendall(b"x")
        loop.requeue(a.fileno(), READ)  # while it is ready: still reported
        loop.run_once(0.5)
        assert seen == [READ]
    finally:
        loop.close()
        a.close()
        b.close()


class _RegisterFails:
    """An epoll whose register fails as at the watch limit (the rest is the real one)."""

    def __init__(self, epoll):
        self._epoll = epoll

    def register(self, fd, mask):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._epoll, name)


def test_a_requeue_the_kernel_refuses_leaves_the_fd_unregistered_and_says_so():
    loop = Loop()
    a, b = socket.socketpair()
    real = loop._epoll
    try:
        loop.add(a.fileno(), READ, lambda fd, mask: None)
        loop._epoll = _RegisterFails(real)  # type: ignore[assignment]
        with pytest.raises(OSError):
            loop.requeue(a.fileno(), READ)
        assert not loop.watching(a.fileno())
        real.register(a.fileno(), READ)  # not in epoll any more: no EEXIST
    finally:
        loop._epoll = real
        loop.close()
        a.close()
        b.close()


# -- busy polling (--busy-poll): the spin adapts as KVM's halt-polling does --------------
@pytest.fixture
def reading_loop():
    """make(busy_poll) -> (a loop that reads one end of a socketpair, the other end);
    all closed after the test."""
    made: list[tuple[Loop, socket.socket, socket.socket]] = []

    def make(busy_poll: float) -> tuple[Loop, socket.socket]:
        loop = Loop(busy_poll=busy_poll)
        a, b = socket.socketpair()
        a.setblocking(False)
        loop.add(a.fileno(), READ, lambda fd, mask: a.recv(64))
        made.append((loop, a, b))
        return loop, b

    yield make
    for loop, a, b in made:
        loop.close()
        a.close()
        b.close()


def _send_later(sock: socket.socket, delay: float) -> threading.Thread:
    sender = threading.Timer(delay, sock.send, args=(b"x",))
    sender.start()
    return sender


def test_a_loop_does_not_spin_before_an_event_follows_a_busy_turn(reading_loop):
    loop, peer = reading_loop(busy_poll=1.0)
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    assert loop.spin == 0.0


def test_the_spin_starts_when_an_event_follows_a_busy_turn_within_the_longest_spin(reading_loop):
    loop, peer = reading_loop(busy_poll=1.0)
    for _ in range(2):
        peer.send(b"x")
        loop.run_once(max_wait=1.0)
    assert loop.spin == SPIN_START


def test_the_spin_doubles_each_time_it_missed_an_event_that_came_within_the_longest_spin(reading_loop):
    loop, peer = reading_loop(busy_poll=1.0)
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    spins = []
    for _ in range(5):  # each event 20 ms after the last turn: past every spin so far
        sender = _send_later(peer, 0.02)
        loop.run_once(max_wait=1.0)
        sender.join()
        spins.append(loop.spin)
    assert spins == [SPIN_START * 2 ** i for i in range(5)]


def test_the_time_spent_spinning_is_counted(reading_loop):
    loop, peer = reading_loop(busy_poll=1.0)
    peer.send(b"x")
    loop.run_once(max_wait=1.0)
    began = time.monotonic()
    for _ in range(5):  # spins of 0, 10, 20, 40 and 80 us, each spent whole
        sender = _send_later(peer, 0.02)
        loop.run_once(max_wait=1.0)
        sender.join()
    assert 150e-6 <= loop.spun < time.monotonic() - began


def test_the_spin_stops_when_the_next_event_comes_later_than_the_longest_spin(reading_loop):
    loop, peer = reading_loop(busy_poll=0.001)
    for _ in range(3):
        peer.send(b"x")
        loop.run_once(max_wait=1.0)
    assert loop.spin > 0
    sender = _send_later(peer, 0.05)
    loop.run_once(max_wait=1.0)
    sender.join()
    assert loop.spin == 0.0


def test_the_spin_stops_when_the_loop_slept_longer_than_the_longest_spin_for_nothing(reading_loop):
    loop, peer = reading_loop(busy_poll=0.001)
    for _ in range(3):
        peer.send(b"x")
        loop.run_once(max_wait=1.0)
    assert loop.spin > 0
    loop.run_once(max_wait=0.01)
    assert loop.spin == 0.0


def test_without_busy_poll_the_loop_never_spins(reading_loop):
    loop, peer = reading_loop(busy_poll=0.0)
    for _ in range(5):
        peer.send(b"x")
        loop.run_once(max_wait=1.0)
    assert loop.spin == 0.0 and loop.spun == 0.0


def test_the_spin_never_exceeds_busy_poll():
    spin = SpinWindow(longest=3 * SPIN_START)
    for _ in range(5):
        spin.slept(waited=SPIN_START, woken=True)
    assert spin.window == 3 * SPIN_START


def test_a_sleep_cut_short_by_a_timer_leaves_the_spin_as_it_was():
    spin = SpinWindow(longest=0.001)
    spin.slept(waited=0.0001, woken=True)
    spin.slept(waited=0.0005, woken=False)  # a timer was due: nothing was ready
    assert spin.window == SPIN_START
