"""The client load: writers, linearizable readers and a watcher per lane.

design: a `Lane` is one side of the comparison, "gateway" (one address: the
gateway's) or "direct" (the three members' addresses, used the way an etcd client
uses an endpoint list: stay on one, move to the next after a failed attempt). Both
lanes run the same threads, side by side, under the same faults, each on its own
key prefix. Every operation gets `OP_BUDGET` seconds of attempts (each bounded by
`ATTEMPT_TIMEOUT`, with a short backoff); it fails only when the budget is spent.
Correctness is checked as the load runs:
- a linearizable get must answer a revision at least as new as every put
  acknowledged (in either lane) before it was sent, or it is a stale read;
- the watcher resumes from its last seen revision + 1 after any break (stream
  closed, error, or a stall: revisions owed for `STALL` seconds with nothing
  arriving), and any revision at or below the last one seen is counted as out of
  order. Which revisions it was owed is settled at the end against the store's own
  history (verify.py), which also holds every put a writer saw acknowledged.
Counters live in `LaneStats`, guarded by one lock per lane.
"""
from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scripts.soaklib.etcdhttp import Answer, EtcdError, KvClient, WatchStream

OP_BUDGET = 10.0        # seconds an operation may take, all attempts included
ATTEMPT_TIMEOUT = 2.0   # one HTTP attempt (connect, request, answer)
STALL = 3.0             # owed revisions with nothing arriving: reconnect the watch
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 0.5
KEYS_PER_WRITER = 32    # writers cycle over a few keys: every put is a new revision
ERROR_SAMPLES = 8       # first distinct attempt errors kept for the report


class Clock:
    """The newest revision acknowledged by any writer (both lanes: one store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._max = 0

    def acked(self, revision: int) -> None:
        with self._lock:
            self._max = max(self._max, revision)

    def now(self) -> int:
        with self._lock:
            return self._max


@dataclass
class LaneStats:
    puts: int = 0
    gets: int = 0
    failed_puts: int = 0
    failed_gets: int = 0
    attempt_errors: int = 0
    stale_reads: int = 0
    acked: set[int] = field(default_factory=set)        # revisions of acknowledged puts
    seen: set[int] = field(default_factory=set)         # revisions the watcher delivered
    out_of_order: int = 0
    watch_reconnects: int = 0
    watch_stalls: int = 0
    last_seen: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.puts + self.gets

    @property
    def failed(self) -> int:
        return self.failed_puts + self.failed_gets


class Lane:
    """One side of the comparison: its addresses, key prefix and counters."""

    def __init__(self, name: str, addrs: list[str], prefix: bytes, clock: Clock) -> None:
        self.name = name
        self.addrs = addrs
        self.prefix = prefix
        self.clock = clock
        self.stats = LaneStats()
        self.lock = threading.Lock()
        self.max_acked = 0                 # newest acknowledged revision of this lane
        self.watch_member_id = ""          # member serving the watch now ("" between)

    def last_seen(self) -> int:
        """The newest revision the lane's watch has delivered."""
        with self.lock:
            return self.stats.last_seen

    def note_error(self, text: str) -> None:
        with self.lock:
            self.stats.attempt_errors += 1
            if len(self.stats.errors) < ERROR_SAMPLES and text not in self.stats.errors:
                self.stats.errors.append(text)


class Endpoints:
    """A client's position in its lane's address list: moves on after a failure."""

    def __init__(self, addrs: list[str], start: int) -> None:
        self.addrs = addrs
        self.i = start % len(addrs)

    def current(self) -> str:
        return self.addrs[self.i]

    def failed(self) -> None:
        self.i = (self.i + 1) % len(self.addrs)


def _attempts(lane: Lane, eps: Endpoints, stop: threading.Event,
              call: Callable[[str], Answer]) -> Answer | None:
    """Run ``call(addr)`` until it answers or the operation budget is spent (None)."""
    deadline = time.monotonic() + OP_BUDGET
    backoff = BACKOFF_FIRST
    while True:
        try:
            return call(eps.current())
        except EtcdError as exc:
            lane.note_error(f"{eps.current()}: {exc}")
            eps.failed()
        if time.monotonic() + backoff >= deadline or stop.is_set():
            return None
        time.sleep(backoff)
        backoff = min(BACKOFF_MAX, backoff * 2)


def writer(lane: Lane, n: int, rate: float, stop: threading.Event) -> None:
    """Puts at about ``rate`` per second, each to the next of a few keys."""
    client = KvClient(ATTEMPT_TIMEOUT)
    eps = Endpoints(lane.addrs, n)
    seq = 0
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            key = lane.prefix + f"w{n}/{seq % KEYS_PER_WRITER}".encode()
            value = f"{seq}".encode()
            answer = _attempts(lane, eps, stop, functools.partial(client.put, key=key, value=value))
            with lane.lock:
                if answer is None:
                    if not stop.is_set():
                        lane.stats.failed_puts += 1
                else:
                    lane.stats.puts += 1
                    lane.stats.acked.add(answer.revision)
                    lane.max_acked = max(lane.max_acked, answer.revision)
            if answer is not None:
                lane.clock.acked(answer.revision)
            seq += 1
            _pace(t0, rate, stop)
    finally:
        client.close()


def reader(lane: Lane, n: int, rate: float, stop: threading.Event) -> None:
    """Linearizable gets at about ``rate`` per second, checked against the clock."""
    client = KvClient(ATTEMPT_TIMEOUT)
    eps = Endpoints(lane.addrs, n + 1)
    rng = random.Random(n)
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            key = lane.prefix + f"w0/{rng.randrange(KEYS_PER_WRITER)}".encode()
            floor = lane.clock.now()
            answer = _attempts(lane, eps, stop, functools.partial(client.get, key=key))
            with lane.lock:
                if answer is None:
                    if not stop.is_set():
                        lane.stats.failed_gets += 1
                else:
                    lane.stats.gets += 1
                    if answer.revision < floor:
                        lane.stats.stale_reads += 1
            _pace(t0, rate, stop)
    finally:
        client.close()


def _pace(t0: float, rate: float, stop: threading.Event) -> None:
    stop.wait(max(0.0, 1.0 / rate - (time.monotonic() - t0)))


def watcher(lane: Lane, start_revision: int, stop: threading.Event) -> None:
    """Watch the lane's prefix from ``start_revision``; resume after every break."""
    eps = Endpoints(lane.addrs, 2)
    with lane.lock:
        lane.stats.last_seen = start_revision - 1
    backoff = BACKOFF_FIRST
    while not stop.is_set():
        try:
            stream = WatchStream(eps.current(), lane.prefix, lane.stats.last_seen + 1,
                                 ATTEMPT_TIMEOUT)
        except EtcdError as exc:
            lane.note_error(f"{eps.current()}: {exc}")
            eps.failed()
            stop.wait(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)
            continue
        try:
            _follow(lane, stream, stop)
            backoff = BACKOFF_FIRST
        except EtcdError as exc:
            lane.note_error(f"{eps.current()}: {exc}")
            eps.failed()
            with lane.lock:
                lane.stats.watch_reconnects += 1
        finally:
            stream.close()
            lane.watch_member_id = ""


def _follow(lane: Lane, stream: WatchStream, stop: threading.Event) -> None:
    progress = time.monotonic()
    while not stop.is_set():
        events = stream.poll(0.25)
        now = time.monotonic()
        if stream.created and not lane.watch_member_id:
            lane.watch_member_id = stream.member_id
        if events:
            progress = now
            with lane.lock:
                for ev in events:
                    if ev.revision <= lane.stats.last_seen:
                        lane.stats.out_of_order += 1
                    else:
                        lane.stats.seen.add(ev.revision)
                        lane.stats.last_seen = ev.revision
        with lane.lock:
            owed = lane.max_acked > lane.stats.last_seen
        if not owed:
            progress = now
        elif now - progress > STALL:
            with lane.lock:
                lane.stats.watch_stalls += 1
            raise EtcdError(f"watch stalled: revisions owed for {STALL:.0f}s")


class Load:
    """Every client thread of both lanes; `start()`, then `stop_clients()` and
    `stop_watchers()` (watchers last, once they have caught up)."""

    def __init__(self, lanes: list[Lane], writers: int, readers: int, rate: float,
                 start_revision: int) -> None:
        self.lanes = lanes
        self._clients_stop = threading.Event()
        self._watch_stop = threading.Event()
        self._clients: list[threading.Thread] = []
        self._watchers: list[threading.Thread] = []
        for lane in lanes:
            for n in range(writers):
                self._clients.append(self._thread(f"{lane.name}-writer{n}", writer,
                                                  lane, n, rate, self._clients_stop))
            for n in range(readers):
                self._clients.append(self._thread(f"{lane.name}-reader{n}", reader,
                                                  lane, n, rate, self._clients_stop))
            self._watchers.append(self._thread(f"{lane.name}-watcher", watcher, lane,
                                               start_revision, self._watch_stop))

    @staticmethod
    def _thread(name: str, target: Callable[..., None], *args: object) -> threading.Thread:
        return threading.Thread(target=target, args=args, name=name, daemon=True)

    def start(self) -> None:
        for t in self._watchers + self._clients:
            t.start()

    def stop_clients(self, timeout: float) -> bool:
        """Stop writers and readers; True when every one has returned in time."""
        self._clients_stop.set()
        return _join(self._clients, timeout)

    def stop_watchers(self, timeout: float) -> bool:
        self._watch_stop.set()
        return _join(self._watchers, timeout)


def _join(threads: list[threading.Thread], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)
