"""Endpoint lookups off the master's loop: one short-lived child per lookup, and when.

design: the master never resolves a name on its loop (a slow DNS server would stall
supervision, checks and the metrics page) and workers never resolve at all. A lookup
(`discovery.lookup`: SRV records with --discovery-srv, else the host names of
--endpoints) runs in a forked child that writes one JSON `Answer` up a pipe and exits;
the master reads it from its loop and hands it to `on_answer`, which publishes. One
`Resolver` serves both kinds and decides when a lookup runs:

- periodically (`discovery.refresh_period`: --discovery-srv-refresh or
  --endpoints-refresh; none when every endpoint is an IP literal); a lookup still
  running when the next is due is left to finish, not restarted;
- at once when a member reached by name is marked down (by a worker's failed dial or
  a check: the mark is in the shared table, the master sees it within WATCH), at most
  once per FAILURE_GAP; a failure seen while a lookup runs asks for one more after it;
- on demand (`lookup_now`, SIGHUP): a running lookup is cancelled, its question may be
  stale.
A child that takes longer than LOOKUP_BOUND is killed and counts as a failed lookup.
"""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Callable

from gateway import discovery
from gateway import log as gwlog
from gateway.config import Config
from gateway.endpoints import Endpoint, order_for
from gateway.health import HealthTable
from gateway.loop import READ, Loop, Timer

logger = gwlog.get("resolver")

LOOKUP_BOUND = 60.0      # a lookup child that takes longer is killed
WATCH = 0.25             # how often the master looks for members reached by name marked down
FAILURE_GAP = 2.0        # at most one failure-triggered lookup per this many seconds


def _failed(config: Config, why: str) -> discovery.Answer:
    """A lookup that produced nothing: an empty answer with the reason."""
    return discovery.Answer([], order_for(config.discovery_srv), [why])


def _log_fds() -> set[int]:
    """The descriptors the gateway's log handlers write to (a --log-file, stderr)."""
    fds = set()
    for handler in gwlog.get().handlers:
        try:
            fds.add(handler.stream.fileno())  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            continue
    return fds


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor from 3 up, except `keep`."""
    low = 3
    for fd in sorted(f for f in keep if f >= 3):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


class LookupChild:
    """One `discovery.lookup` in a child process; `on_done(Answer)` is called once,
    from the master's loop, with the result or with the reason it failed."""

    def __init__(self, loop: Loop, config: Config, known: dict[str, list[Endpoint]],
                 on_done: Callable[[discovery.Answer], None], blocked_signals: tuple[int, ...]):
        self.loop = loop
        self.config = config
        self.known = known
        self.on_done = on_done
        self.blocked = blocked_signals
        self.pid = 0
        self._fd = -1
        self._data = b""
        self._timer: Timer | None = None

    @property
    def running(self) -> bool:
        return self._fd >= 0

    def start(self) -> None:
        try:
            r, w = os.pipe()
        except OSError as exc:
            self.on_done(_failed(self.config, f"cannot start the lookup: {exc.strerror}"))
            return
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, self.blocked)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(r)
            os.close(w)
            self.on_done(_failed(self.config, f"cannot fork the lookup: {exc.strerror}"))
            return
        if pid == 0:
            self._child(w)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        os.close(w)
        os.set_blocking(r, False)
        self.pid, self._fd = pid, r
        self.loop.add(r, READ, self._readable)
        self._timer = self.loop.call_later(LOOKUP_BOUND, self._timeout)

    def _child(self, w: int) -> None:
        status = 1
        try:
            for signum in self.blocked:
                signal.signal(signum, signal.SIG_DFL)
            # nothing of the master's stays open here (the listeners, the epoll fd, the
            # wake-up pair...) but the pipe and the log: the inherited logger writes on
            _close_all_but({w, *_log_fds()})
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            payload = discovery.lookup(self.config, self.known).to_json().encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view):]
            status = 0
        except BaseException:  # noqa: B902 - a child must never return into the master
            logger.exception("endpoint lookup failed")
        finally:
            os._exit(status)

    def _readable(self, fd: int, mask: int) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            self._data += chunk
            return
        try:
            result = discovery.Answer.from_json(self._data.decode())
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            result = _failed(self.config, "the lookup ended without a result")
        self._finish(result)

    def _timeout(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._finish(_failed(self.config, f"the lookup took over {LOOKUP_BOUND:g}s"))

    def _finish(self, result: discovery.Answer) -> None:
        if self._fd < 0:
            return
        self.loop.remove(self._fd)
        os.close(self._fd)
        self._fd = -1
        if self._timer is not None:
            self._timer.cancel()
        self.on_done(result)

    def close_after_fork(self) -> None:
        """In a new worker: close the inherited copy of the result pipe."""
        if self._fd >= 0:
            os.close(self._fd)

    def cancel(self) -> None:
        """Stop waiting; the child is killed, its result ignored."""
        if self._fd >= 0:
            self.on_done = lambda result: None
            self._timeout()


class Resolver:
    """When lookups run (see the module comment); one child at a time."""

    def __init__(self, loop: Loop, table: HealthTable, config: Config,
                 on_answer: Callable[[Config, discovery.Answer], None],
                 blocked_signals: tuple[int, ...]):
        self.loop = loop
        self.table = table
        self.config = config
        self.on_answer = on_answer
        self.blocked = blocked_signals
        self._child: LookupChild | None = None
        self._period_timer: Timer | None = None
        self._watch_timer: Timer | None = None
        self._failure_timer: Timer | None = None
        self._last_failure_lookup = float("-inf")
        self._again = False             # a member failed while a lookup was running
        self._seen_down: dict[int, tuple[tuple, float]] = {}  # slot -> (address, down_at)
        self._closed = False
        self._children: set[int] = set()  # lookup children forked and not yet reaped

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def watching(self) -> bool:
        """True while the watch for members reached by name runs (`_schedule_watch`)."""
        return self._watch_timer is not None

    def start(self) -> None:
        """Begin the periodic lookups and the watch for members reached by name."""
        self._schedule_period()
        self._schedule_watch()

    def configure(self, config: Config) -> None:
        """A new configuration (reload): its period applies from now, and the watch
        runs if it names members."""
        self.config = config
        self._schedule_period()
        self._schedule_watch()

    def lookup_now(self) -> None:
        """Look up at once (SIGHUP); a lookup still running is cancelled first."""
        if self.running:
            assert self._child is not None
            self._child.cancel()
        self._start()

    def remember_marks(self) -> None:
        """The roster was just published (and new addresses marked down, waiting for
        their first check): the marks of new addresses are not failures."""
        seen = {}
        for entry in self.table.roster():
            before = self._seen_down.get(entry.slot)
            if before is not None and before[0] == entry.endpoint.sockaddr:
                seen[entry.slot] = before  # stays: a newer failure still counts
            else:
                seen[entry.slot] = (entry.endpoint.sockaddr, self.table.down_at(entry.slot))
        self._seen_down = seen

    def close_after_fork(self) -> None:
        if self._child is not None:
            self._child.close_after_fork()

    def close(self) -> None:
        """At drain or stop: no more lookups; a running one is killed. Idempotent."""
        self._closed = True
        for timer in (self._period_timer, self._watch_timer, self._failure_timer):
            if timer is not None:
                timer.cancel()
        if self._child is not None:
            self._child.cancel()

    # -- when ------------------------------------------------------------------------
    def _schedule_period(self) -> None:
        if self._period_timer is not None:
            self._period_timer.cancel()
            self._period_timer = None
        period = discovery.refresh_period(self.config)
        if period is not None and not self._closed:
            self._period_timer = self.loop.call_later(period, self._periodic)

    def _periodic(self) -> None:
        self._period_timer = None
        self._schedule_period()  # first: whatever happens below, the next one comes
        if not self.running:
            self._start()  # a slow lookup is left to finish, not restarted

    def _schedule_watch(self) -> None:
        """Run the watch (`_watch`) every WATCH while the configuration names members;
        with IP literals or SRV only, it has nothing to look for and does not run (an
        idle master does not wake for it). A watch that starts again counts only the
        failures from then on."""
        if self._watch_timer is None and not self._closed and discovery.names(self.config):
            self.remember_marks()
            self._watch_timer = self.loop.call_later(WATCH, self._watch)

    def _watch(self) -> None:
        """Look for a member reached by name newly marked down."""
        self._watch_timer = None
        named = set(discovery.names(self.config))
        if not named:
            return  # a reload left only IP literals (or SRV): see _schedule_watch
        self._watch_timer = self.loop.call_later(WATCH, self._watch)
        seen: dict[int, tuple[tuple, float]] = {}
        failed = []
        for entry in self.table.roster():
            down_at = self.table.down_at(entry.slot)
            seen[entry.slot] = (entry.endpoint.sockaddr, down_at)
            before = self._seen_down.get(entry.slot)
            if before is None or before[0] != entry.endpoint.sockaddr:
                continue  # published since the last look, without `remember_marks`
            if down_at and down_at != before[1] and entry.endpoint.label in named:
                failed.append(entry.endpoint)
        self._seen_down = seen
        if failed:
            self._member_failed(failed)

    def _member_failed(self, failed: list[Endpoint]) -> None:
        if self._failure_timer is not None:
            return  # one is already coming
        logger.info("member reached by name failed: resolving its name again",
                    extra=gwlog.fields(endpoints=[f"{ep.address} ({ep.label})"
                                                  for ep in failed]))
        self._schedule_failure_lookup()

    def _schedule_failure_lookup(self) -> None:
        """A lookup for a failed member, at most one every FAILURE_GAP."""
        if self._failure_timer is None:
            delay = max(0.0, self._last_failure_lookup + FAILURE_GAP - time.monotonic())
            self._failure_timer = self.loop.call_later(delay, self._failure_lookup)

    def _failure_lookup(self) -> None:
        self._failure_timer = None
        if self.running:
            self._again = True
            return
        self._last_failure_lookup = time.monotonic()
        self._start()

    # -- how -------------------------------------------------------------------------
    def _start(self) -> None:
        if self._closed or not (self.config.discovery_srv or discovery.names(self.config)):
            return  # nothing to look up: IP literals only
        config = self.config
        known = discovery.known_addresses(self.table.roster())
        self._child = LookupChild(self.loop, config, known,
                                  lambda answer: self._done(config, answer), self.blocked)
        self._child.start()
        if self._child.pid:
            self._children.add(self._child.pid)

    def reaped(self, pid: int) -> bool:
        """The master reaped `pid`: True if it was one of the lookup children."""
        if pid in self._children:
            self._children.discard(pid)
            return True
        return False

    def _done(self, config: Config, answer: discovery.Answer) -> None:
        self.on_answer(config, answer)
        if self._again and not self._closed:
            self._again = False
            self._schedule_failure_lookup()
