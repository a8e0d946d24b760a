"""A small event loop: a level-triggered epoll poller, monotonic timers, a signal wake-up fd.

design: the loop's own API is `add` / `modify` / `remove` an fd with an interest mask
and a callback, `set_interest` to move an fd between masks (0 = not registered), and
`requeue` to put a shared fd's registration at the back of its wait queue;
the poller behind it is private: `select.epoll` with one dict from fd to callback,
called as `callback.__call__(fd, mask)`. It replaces `selectors` on purpose: a
relayed connection registers its session object itself for both of its sockets, so
an idle connection costs two dict entries instead of two SelectorKey tuples and two
bound methods (about 0.3 KiB less per connection), and each ready event is one dict
lookup instead of a key object and a result tuple. The call goes through `__call__`
for the sessions' sake: for an object whose class defines `__call__` in Python the
interpreter then finds that function on the class and calls it with the object
first, as a method (45 ns, timeit), where calling the object itself goes through the
type's call slot with an argument tuple built per event (210 ns); and no bound method
per session is kept to avoid that (one cost 64 bytes per session, tracemalloc). A
bound method (the worker's own callbacks, a few per connection at most) pays about
120 ns more this way. EPOLLERR/EPOLLHUP are reported as READ|WRITE, as selectors
does, so errors are learnt from the next read or write.
An event goes to the registration it was reported for: an fd whose registration an
earlier callback of the same batch dropped or rebound (`_changed`) gets none of the
batch's events; level-triggered, a still-ready fd is reported afresh by the next poll,
to whoever holds it then (a closed fd's number can be reused within one batch).
Timers are a heap of `Timer` objects cancelled by flag (no heap surgery). With
`busy_poll` (--busy-poll), a turn that handled events is followed by polls that do not
sleep, before the usual sleeping poll: the next event of a connection that answers
fast is taken without a wake-up. How long it spins adapts as KVM's halt-polling does
(`SpinWindow`): from none, it grows while events come within `busy_poll` of a busy
turn and drops to none when one does not, so sparse traffic costs no spin; an empty
poll yields the CPU (sched_yield), so a process ready to run on the same CPU goes
first. Signal handlers only record: the
C-level handler writes the signal number to a non-blocking socketpair
(`signal.set_wakeup_fd`), the loop reads it like any other fd and hands each number to
`on_signal` in normal context, where logging, reaping and exiting are safe. Nothing
here knows about proxying; the master and the workers each make their own loop (a
worker makes its own after fork: an inherited epoll fd would share its interest list).
"""
from __future__ import annotations

import heapq
import logging
import os
import select
import signal
import socket
import time
from typing import Callable, Iterable

from gateway.log import handler_name


class Timer:
    __slots__ = ("deadline", "callback", "cancelled")

    def __init__(self, deadline: float, callback: Callable[[], None]):
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        """Cancel, and let go of the callback (and all it holds) at once: the Timer
        itself stays in the heap until its deadline passes."""
        self.cancelled = True
        self.callback = _nothing

    def __lt__(self, other: "Timer") -> bool:
        return self.deadline < other.deadline


class SpinWindow:
    """How long the turn after a busy one spins (--busy-poll), adapted as KVM's
    halt-polling is: `window` grows (from SPIN_START, doubling, up to `longest`) when
    the worker slept and an event woke it within `longest` of the busy turn (a longer
    spin would have caught it), and goes back to none when the wait was longer (spinning
    does not pay for this traffic now). A wait cut short by a timer, with nothing ready,
    says nothing about the traffic: the window stays."""
    __slots__ = ("longest", "window")

    def __init__(self, longest: float):
        self.longest = longest
        self.window = 0.0

    def slept(self, waited: float, woken: bool) -> None:
        """After a spin that caught nothing (or none), the sleep that followed: woken
        by an event, or not, `waited` seconds after the busy turn."""
        if waited > self.longest:
            self.window = 0.0
        elif woken:  # double, from SPIN_START, up to `longest` (no min/max: see _timeout)
            window = self.window * 2 if self.window else SPIN_START
            self.window = window if window < self.longest else self.longest


READ = select.EPOLLIN
WRITE = select.EPOLLOUT
# with READ on a listener shared by several processes: each connection wakes one of
# them that waits (not every one), and never one that is not waiting (stopped, busy)
EXCLUSIVE = select.EPOLLEXCLUSIVE
_ERROR = select.EPOLLERR | select.EPOLLHUP

Callback = Callable[[int, int], None]
_monotonic = time.monotonic  # one global read per turn, not a module's attribute too
_MAX_EVENTS = 256  # events taken per poll (select.epoll's default allocates room for 1023)
SPIN_START = 10e-6  # seconds: the first spin once spinning pays (KVM's halt_poll_ns_grow_start)


class Loop:
    """`on_error(callback, exc)` is called when a callback raises (a bug, not an I/O
    error: those are handled where they happen); by default it logs, and the loop goes
    on, so one bad event cannot take a whole process and its connections down."""

    def __init__(self, on_error: Callable[[object, BaseException], None] | None = None,
                 busy_poll: float = 0.0) -> None:
        self._epoll = select.epoll()
        self._spin = SpinWindow(busy_poll)  # --busy-poll: the spin after a busy turn
        self._spins = busy_poll > 0   # a busy turn is followed by a spin
        self.spun = 0.0               # seconds spent spinning so far (a counter)
        self._busy = False            # the last turn handled events
        self._callbacks: dict[int, Callback] = {}
        self._changed: set[int] = set()  # fds dropped or rebound since the last poll
        self.on_error = on_error or _log_error
        self._timers: list[Timer] = []
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._on_signal: Callable[[int], None] | None = None

    # -- file descriptors --------------------------------------------------------------
    def add(self, fd: int, mask: int, callback: Callback) -> None:
        """Call `callback(fd, mask)` when `fd` is ready for `mask` (READ, WRITE)."""
        self._epoll.register(fd, mask)
        self._callbacks[fd] = callback

    def modify(self, fd: int, mask: int, callback: Callback) -> None:
        self._epoll.modify(fd, mask)
        self._rebound(fd, callback)

    def rebind(self, fd: int, callback: Callback) -> None:
        """Give a registered fd another callback, its interest unchanged: no kernel call."""
        self._rebound(fd, callback)

    def _rebound(self, fd: int, callback: Callback) -> None:
        if self._callbacks[fd] is not callback:
            self._callbacks[fd] = callback
            self._changed.add(fd)  # the batch's events were for the one before

    def requeue(self, fd: int, mask: int) -> None:
        """Register `fd` again with `mask` (its interest: the caller's), callback
        unchanged, at the back of the line: epoll waits on a file through an entry in
        that file's wait queue, and an EXCLUSIVE wake-up goes to the first entry whose
        process is sleeping in epoll_wait; a new entry goes last. Two kernel calls. If
        the kernel cannot take it back (ENOMEM, ENOSPC: the watch limit), `fd` is left
        unregistered, its callback dropped, and the error raised."""
        self._epoll.unregister(fd)
        try:
            self._epoll.register(fd, mask)
        except OSError:
            del self._callbacks[fd]
            self._changed.add(fd)
            raise

    def watching(self, fd: int) -> bool:
        """True while `fd` is registered."""
        return fd in self._callbacks

    def remove(self, fd: int) -> None:
        self._epoll.unregister(fd)
        del self._callbacks[fd]
        self._changed.add(fd)

    def forget(self, fd: int) -> None:
        """Drop `fd`'s callback without asking the kernel: only for an fd its owner
        closes next, and that no other process or descriptor shares (a client or
        member socket of a worker): closing it removes the registration."""
        del self._callbacks[fd]
        self._changed.add(fd)

    def set_interest(self, fd: int, old: int, new: int, callback: Callback) -> int:
        """Move `fd` from interest `old` to `new` (0 = not registered), touching the
        kernel only when it changed; returns `new`."""
        if new != old:  # add, remove and modify inline: this runs for every connection
            if old == 0:
                self._epoll.register(fd, new)
                self._callbacks[fd] = callback
            elif new == 0:
                self._epoll.unregister(fd)
                del self._callbacks[fd]
                self._changed.add(fd)
            else:
                self._epoll.modify(fd, new)
                self._rebound(fd, callback)
        return new

    def registered(self) -> Iterable[Callback]:
        """The callbacks registered now (one per fd: an object registered for two fds
        appears twice)."""
        return self._callbacks.values()

    # -- timers ----------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def _run_timers(self) -> None:
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0].deadline <= now:
            timer = heapq.heappop(timers)
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception as exc:  # noqa: BLE001 - see on_error
                    self.on_error(timer.callback, exc)

    def _timeout(self, max_wait: float) -> float:
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        if not timers:
            return max_wait
        # no min() or max(): on 3.11 each builds an argument tuple and parses keywords,
        # together about 2,000 instructions a turn, 13% of a request/response exchange
        # at c=1 (callgrind)
        left = timers[0].deadline - _monotonic()
        return max_wait if left > max_wait else left if left > 0.0 else 0.0

    # -- one turn --------------------------------------------------------------------
    @property
    def spin(self) -> float:
        """How long the turn after a busy one polls without sleeping (seconds; 0:
        it sleeps at once), as adapted so far."""
        return self._spin.window

    def run_once(self, max_wait: float = 1.0) -> None:
        callbacks = self._callbacks
        if self._busy:
            events = self._spin_then_poll(max_wait)
        else:
            events = self._epoll.poll(self._timeout(max_wait), _MAX_EVENTS)
        self._busy = self._spins if events else False  # (no bool(): see _timeout)
        changed = self._changed
        if changed:
            changed.clear()  # what changed before this poll, this poll has seen
        for fd, mask in events:
            callback = callbacks.get(fd)
            if callback is None or fd in changed:
                continue  # dropped or rebound by an earlier callback of this batch
            if mask & _ERROR:
                mask |= READ | WRITE
            try:
                callback.__call__(fd, mask)  # type: ignore[operator]  # see the module comment
            except Exception as exc:  # noqa: BLE001 - see on_error
                self.on_error(callback, exc)
        timers = self._timers
        if timers and timers[0].deadline <= _monotonic():  # most turns: none is due
            self._run_timers()

    def _spin_then_poll(self, max_wait: float) -> list[tuple[int, int]]:
        """The turn after a busy one, with --busy-poll: spin for the window, then
        sleep as usual; the wait seen adapts the window for the next time."""
        began = _monotonic()
        events = self._spin_for(began) if self._spin.window else None
        if not events:
            events = self._epoll.poll(self._timeout(max_wait), _MAX_EVENTS)
            self._spin.slept(_monotonic() - began, True if events else False)
        return events

    def _spin_for(self, began: float) -> list[tuple[int, int]]:
        """Poll without sleeping until something is ready or the window is spent
        (then the caller sleeps as usual). A due timer ends the spin. Each empty poll
        yields the CPU: a process ready to run on this CPU (the client, the member)
        runs first; an idle CPU stays with the spin and is not put to sleep."""
        poll, monotonic, yield_cpu = self._epoll.poll, time.monotonic, os.sched_yield
        until = began + self._spin.window
        timers = self._timers
        if timers and timers[0].deadline < until:
            until = timers[0].deadline
        while True:
            events = poll(0, _MAX_EVENTS)
            now = monotonic()
            if events or now >= until:
                self.spun += now - began
                return events
            yield_cpu()

    # -- signals ---------------------------------------------------------------------
    def handle_signals(self, signums: Iterable[int], on_signal: Callable[[int], None]) -> None:
        """Route `signums` to `on_signal(signum)`, called from the loop, not the handler."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self.add(self._wake_r.fileno(), READ, self._drain_wakeups)
        self._on_signal = on_signal
        for signum in signums:
            signal.signal(signum, _record_only)

    def _drain_wakeups(self, fd: int, mask: int) -> None:
        assert self._wake_r is not None
        while True:
            try:
                data = self._wake_r.recv(512)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                if self._on_signal is not None:
                    try:  # one failing signal must not swallow the ones after it
                        self._on_signal(signum)
                    except Exception as exc:  # noqa: BLE001 - see on_error
                        self.on_error(self._on_signal, exc)

    def close(self) -> None:
        """Release the poller and the wake-up pair (also used by a child after fork
        to drop the parent's loop without touching the parent's registrations)."""
        if self._wake_r is not None:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass
            self._wake_r.close()
            assert self._wake_w is not None
            self._wake_w.close()
            self._wake_r = self._wake_w = None
        self._epoll.close()
        self._callbacks.clear()
        self._changed.clear()
        self._timers.clear()


def _log_error(callback: object, exc: BaseException) -> None:
    logging.getLogger("etcd-gatewayd.loop").error(
        "event handler failed", exc_info=exc,
        extra={"fields": {"handler": handler_name(callback)}})


def _nothing() -> None:
    """What a cancelled timer calls (never, in fact: it is skipped)."""


def _record_only(signum: int, frame: object) -> None:
    """The Python-level handler: the wake-up fd already carries the signal number."""
