"""The master process: owns the listeners, the health table and the workers.

design: single-threaded, on its own small loop. Signal handlers only record (see
loop.py); `on_signal` changes the desired state and one `manage_workers()` makes
reality match it (gunicorn's arbiter). The master never accepts or touches a client
socket; it forks workers, reaps and replaces them, probes members marked down, and
re-reads its configuration on SIGHUP. Endpoint lookups after start (SRV records, host
names in --endpoints) run in a child (gateway/resolver.py); `_publish_roster` is the one
place a new roster reaches the table while running, and it logs what changed. Every
child is reaped: a worker is replaced, a lookup child is the resolver's, and a child
the master did not start is logged.

TLS files (gateway/tls.py) are loaded before anything binds, again on SIGHUP, and
whenever their signature (inode, size, mtime) changed at a `--tls-reload-interval`
tick; a load that fails is one error line and the material in use stays. A new load
bumps the table's TLS generation: each worker then loads the files itself for its new
connections (open ones are untouched). Workers forked later inherit the material.

Signals are dispatched by a table (`_SIGNAL_HANDLERS`) to one small handler each.
Signals that arrived during start-up (earlysignals.py) are acted on once the loop
runs. States: running -> draining (listener closed, workers finishing their sessions,
bounded by the shutdown timeout) -> stopped. A second SIGTERM/SIGINT, or SIGQUIT,
stops at once.
"""
from __future__ import annotations

import collections
import enum
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway import config as gwconfig
from gateway import tls as gwtls
from gateway import __version__, discovery, keepalive, listeners, resolver, sysd
from gateway.addresses import ListenAddr
from gateway import log as gwlog
from gateway.endpoints import MAX_WORKERS, Endpoint, Order, order_for
from gateway.health import (G_WORKER_TIMEOUTS, GATEWAY, LOAD_REFRESH, Balance, HealthTable,
                            NoWorkerSlot)
from gateway.httpd import HttpServer, bind_http
from gateway.loop import Loop, Timer
from gateway.metrics import GatewayInfo, MetricsApp
from gateway.checks import Checker, CheckMode, CheckPolicy
from gateway import earlysignals
from gateway.earlysignals import EarlySignals
from gateway.worker import Worker, WorkerSettings

logger = gwlog.get("master")

class State(enum.Enum):
    """The master's life (see the module comment)."""
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


CRASH_WINDOW = 10.0      # seconds
CRASH_LIMIT = 5          # worker deaths within the window that make the master give up
KILL_GRACE = 5.0         # after the shutdown timeout, before SIGKILL
QUIT_GRACE = 2.0         # after SIGQUIT to the workers, before SIGKILL
FORK_RETRY = 1.0         # after a failed fork, once the service is up
WATCH_PERIOD = 1.0       # how often the watchdog reads the workers' heartbeats
HANDLED = earlysignals.HANDLED  # every signal the master handles, before and after start


class FatalError(Exception):
    """The master cannot go on (message: one line for the operator)."""


@dataclass
class WorkerRecord:
    pid: int
    index: int
    started: float
    settings: WorkerSettings
    listener_gen: int        # which listener it was forked with
    retiring: bool = False
    beat: float = 0.0        # the worker's latest heartbeat seen by the watchdog...
    beat_seen: float = 0.0   # ...and when the master saw it change (master's clock)
    timed_out: bool = False  # killed by the watchdog


class Arbiter:
    """The master. A plain class on purpose: it holds the configuration, the command
    line and the environment, so its repr() names only safe things (a log line that
    shows a handler must never carry credentials passed by environment)."""

    def __init__(self, config: gwconfig.Config, argv: list[str],
                 environ: dict[str, str], early_signals: EarlySignals | None = None) -> None:
        self.config = config
        self.argv = argv
        self.environ = environ
        self.early_signals = early_signals  # start-up's handlers, until the loop's
        self.state = State.RUNNING
        self.workers: dict[int, WorkerRecord] = {}
        self.exit_status = 0
        self.pid = os.getpid()
        self.loop = Loop(on_error=self._handler_failed)
        self.table = HealthTable()
        self.listeners: list[listeners.Listener] = []
        self._socket_activated = False  # listeners from systemd: --listen-addr not used
        self.tls = gwtls.Material(gwtls.NO_TLS)
        self._tls_signature: tuple = ()
        self._tls_failed_signature: tuple | None = None
        self._tls_timer: Timer | None = None
        self._listens: discovery.Listens = []  # resolved at start, kept by reloads
        self.checker = Checker(self.loop, self.table, _check_policy(self.config))
        self.desired_workers = self.config.workers
        self._deaths: collections.deque[float] = collections.deque()
        self._stop_deadline = 0.0
        self._quitting = False
        self._listener_gen = 0
        self._fork_retry: Timer | None = None
        self._load_timer: Timer | None = None  # the next load refresh (`_refresh_load`)
        self._no_slot_log = gwlog.Throttle(10.0)
        self._last_watch = 0.0
        self.resolver = resolver.Resolver(self.loop, self.table, self.config,
                                          self._lookup_done, HANDLED)
        self._unresolved: set[str] = set()       # names now kept at their last addresses
        self.resolution_failures: dict[str, int] = {}   # name -> failed lookups
        self.http: HttpServer | None = None
        self.reloads = 0
        self.cpu_offsets: dict[int, float] = {}  # CPU seconds of dead workers, per index

    def _handler_failed(self, callback: object, exc: BaseException) -> None:
        """FatalError ends the master on purpose; anything else is a bug in one handler
        (a check, an HTTP request): logged, and the master keeps supervising."""
        if isinstance(exc, FatalError):
            raise exc
        logger.error("event handler failed", exc_info=exc,
                     extra=gwlog.fields(handler=gwlog.handler_name(callback)))

    def __repr__(self) -> str:
        return (f"<Arbiter pid={self.pid} state={self.state.value} "
                f"workers={len(self.workers)}>")

    # -- start -----------------------------------------------------------------------
    def run(self) -> int:
        """Start, serve until stopped, and return the exit status."""
        self._raise_nofile_limit()
        tls_options = gwtls.options_from(self.config)  # ConfigError: exit 2, nothing bound
        self._tls_signature = gwtls.signature(tls_options)
        self._install_tls(gwtls.load(tls_options))
        try:
            roster = discovery.resolve(self.config)
        except discovery.DiscoveryError as exc:
            raise FatalError(str(exc)) from None
        endpoints = roster.endpoints
        self._listens = discovery.listens_at_start(self.config)
        self.listeners = self._open_listeners()
        self._set_listener_keepalive(self.config.keepalive)
        try:
            return self._serve(endpoints, roster.policy)
        finally:
            self._close_listeners()  # unix socket files are removed on every way out

    def _serve(self, endpoints: list, policy: Order) -> int:
        self.http = self._open_metrics(self.config.metrics_addr)
        self.table.publish(endpoints, policy)
        self.resolver.remember_marks()
        self._set_load_policy(self.config)
        self.table.set_retry_delay(self.config.retry_delay)
        self._first_checks()  # still start-up: signals are held (earlysignals.py)
        self.loop.handle_signals(HANDLED, self._on_signal)
        during_startup = self.early_signals.handover() if self.early_signals else []
        self.manage_workers()
        logger.info("ready to proxy client requests", extra=gwlog.fields(
            endpoints=[ep.address for ep in endpoints],
            **{"listen-addr": ",".join(lst.label for lst in self.listeners),
               "workers": self.desired_workers}))
        sysd.notify("READY=1\nMAINPID=%d" % self.pid)
        self.checker.start()
        self._last_watch = time.monotonic()
        self.loop.call_later(WATCH_PERIOD, self._watch_workers)
        self.resolver.start()
        self._act_on_startup_signals(during_startup)
        self._schedule_tls_watch()
        try:
            while self.state != State.STOPPED:
                self.loop.run_once(1.0)
                self._check_deadlines()
        except FatalError as exc:
            logger.error(str(exc))
            self._kill_workers(signal.SIGKILL)
            self.exit_status = 1
        self.checker.close()
        if self.http is not None:
            self.http.close()
        self.resolver.close()
        logger.info("stopped", extra=gwlog.fields(status=self.exit_status))
        return self.exit_status

    def _act_on_startup_signals(self, signums: list[int]) -> None:
        """Signals that arrived while starting (see earlysignals.py), acted on now."""
        for signum in signums:
            logger.info("acting on a signal received during start-up",
                        extra=gwlog.fields(signal=signal.Signals(signum).name))
            self._on_signal(signum)
    def _first_checks(self) -> None:
        """One round of member checks before serving (bounded by the dial timeout), so
        roles are known before the first client; then say which check runs where."""
        self.checker.first_round()
        logger.info("member checks", extra=gwlog.fields(**{
            "health-check": self.config.health_check, **self.checker.kinds()}))

    def _raise_nofile_limit(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                logger.info("raised open-files limit", extra=gwlog.fields(
                    **{"from": soft, "to": hard}))
            except (ValueError, OSError) as exc:
                logger.warning("cannot raise open-files limit", extra=gwlog.fields(
                    soft=soft, hard=hard, error=str(exc)))

    # -- listeners ---------------------------------------------------------------------
    def _open_listeners(self) -> list[listeners.Listener]:
        """systemd's sockets when socket-activated (all of them, as they are), else one
        listener per --listen-addr; FatalError (having closed what it opened) if one
        cannot be bound."""
        try:
            adopted = listeners.systemd_listeners(self.environ)
            for lst in adopted:
                self._claim_listener_slot(lst)
                logger.info("adopted listener from systemd",
                            extra=gwlog.fields(address=lst.label))
        except listeners.ListenError as exc:
            raise FatalError(str(exc)) from None
        if adopted:
            self._socket_activated = True
            if "listen-addr" in self.config.sources:
                logger.info("ignoring --listen-addr: listening where systemd's socket unit "
                            "says (socket activation)")
            return adopted
        opened: list[listeners.Listener] = []
        try:
            for addr in self.config.listen_addr:
                opened.append(self._bind(addr, self.config))
        except listeners.ListenError as exc:
            for lst in opened:
                self._close_listener(lst)
            raise FatalError(str(exc)) from None
        return opened

    def _bind(self, addr: ListenAddr, config: gwconfig.Config) -> listeners.Listener:
        lst = listeners.open_listener(addr, int(config.listen_socket_mode, 8),
                                      config.listen_socket_group)
        try:
            self._claim_listener_slot(lst)
        except listeners.ListenError:
            lst.close()
            raise
        return lst

    def _claim_listener_slot(self, lst: listeners.Listener) -> None:
        try:
            lst.slot = self.table.claim_listener_slot()
        except ValueError as exc:
            raise listeners.ListenError(f"option --listen-addr: {exc}") from None

    def _close_listener(self, lst: listeners.Listener) -> None:
        lst.close()
        if lst.slot >= 0:
            self.table.release_listener_slot(lst.slot)
            lst.slot = -1

    def _close_listeners(self) -> None:
        """Stop listening everywhere (idempotent): new connects are refused."""
        for lst in self.listeners:
            self._close_listener(lst)

    def _open_metrics(self, addr) -> HttpServer | None:
        """The HTTP server for /metrics, /health, /endpoints, or None when off."""
        if addr is None:
            return None
        try:
            sock = bind_http(addr)
        except listeners.ListenError as exc:
            raise FatalError(str(exc)) from None
        logger.info("serving metrics", extra=gwlog.fields(address=str(addr)))
        return HttpServer(self.loop, sock, MetricsApp(self.table, self.gateway_info).handle)

    def gateway_info(self) -> GatewayInfo:
        """What the metrics need from the master (called at each scrape)."""
        return GatewayInfo(workers={r.index: pid for pid, r in self.workers.items()},
                           listeners={lst.slot: lst.label for lst in self.listeners},
                           desired_workers=self.desired_workers, reloads_total=self.reloads,
                           cpu_offsets=dict(self.cpu_offsets), version=__version__,
                           draining=self.state != State.RUNNING,
                           certificates=[c.as_json() for c in self.tls.certificates],
                           resolution_failures=dict(self.resolution_failures))

    def _set_load_policy(self, config: gwconfig.Config) -> None:
        """Publish the limit and the balance policy, the load aggregates refreshed
        first: a policy that starts reading them now (a reload) must not read old
        ones, not even between the two writes. A policy that reads them starts the
        refresh timer (`_refresh_load`) if it is not running."""
        self.table.refresh_load()
        self.table.set_load_policy(config.max_connections, _BALANCES[config.balance])
        if self._load_timer is None and self.table.load_needed():
            self._load_timer = self.loop.call_later(LOAD_REFRESH, self._refresh_load)

    def _refresh_load(self) -> None:
        """The load aggregates the workers read per accept (health.py), every
        LOAD_REFRESH while a policy reads them (`load_needed`). Without one the timer
        lapses, and an idle master does not wake 20 times a second for nothing; a
        reload that sets such a policy starts it again (`_set_load_policy`)."""
        self._load_timer = None
        if self.table.load_needed():
            self.table.refresh_load()
            self._load_timer = self.loop.call_later(LOAD_REFRESH, self._refresh_load)

    def _worker_settings(self) -> WorkerSettings:
        c = self.config
        return WorkerSettings(dial_timeout=c.dial_timeout,
                              dial_total_timeout=c.dial_total_timeout,
                              timeout_fall=c.health_check_fall,
                              shutdown_timeout=c.shutdown_timeout, keepalive=c.keepalive,
                              idle_timeout=c.idle_timeout, busy_poll=c.busy_poll,
                              log=c.log_settings,
                              allow_from=c.allow_from, tls=self.tls.options)

    # -- workers -----------------------------------------------------------------------
    def manage_workers(self) -> None:
        """Make the serving workers match the desired count, settings and listener.
        Workers forked with older settings or an older listener are replaced: the new
        ones are started first, then the old ones drain, so accepting never pauses."""
        if self.state != State.RUNNING:
            return
        settings = self._worker_settings()
        serving = sorted((w for w in self.workers.values() if not w.retiring),
                         key=lambda w: w.started)
        current = [w for w in serving
                   if w.settings == settings and w.listener_gen == self._listener_gen]
        stale = [w for w in serving if w not in current]
        started = sum(self._spawn() for _ in range(self.desired_workers - len(current)))
        if started < self.desired_workers - len(current):
            return  # keep the stale workers serving until their replacements exist
        for record in stale + current[:max(0, len(current) - self.desired_workers)]:
            self._retire(record)

    def _spawn(self) -> bool:
        """Fork one worker; False (and a retry scheduled) when the fork failed."""
        try:
            index = self.table.claim_worker_slot(0)
        except NoWorkerSlot:
            # every slot is held by a serving or a retiring worker (a burst of reloads
            # while connections stay open): the old ones keep serving, and the
            # replacement is started when a retiring worker exits (or on the retry)
            suppressed = self._no_slot_log.allow()
            if suppressed is not None:
                logger.warning("no free worker slot: waiting for a retiring worker to exit",
                               extra=gwlog.fields(workers=len(self.workers),
                                                  retry=FORK_RETRY, repeats=suppressed))
            self._schedule_spawn_retry()
            return False
        settings = self._worker_settings()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            pid = os.fork()
        except OSError as exc:
            self.table.release_worker_slot(index)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            if not self.workers:
                raise FatalError(f"cannot fork a worker: {exc.strerror}") from None
            # the service is up: keep it, and try again shortly
            logger.error("cannot fork a worker; retrying", extra=gwlog.fields(
                error=exc.strerror, retry=FORK_RETRY))
            self._schedule_spawn_retry()
            return False
        if pid == 0:
            self._become_worker(index, settings)  # never returns
        self.table.set_worker_pid(index, pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        now = time.monotonic()
        self.workers[pid] = WorkerRecord(pid, index, now, settings, self._listener_gen,
                                         beat_seen=now)
        logger.info("started worker", extra=gwlog.fields(worker=index, worker_pid=pid))
        return True

    def _schedule_spawn_retry(self) -> None:
        if self._fork_retry is None:
            self._fork_retry = self.loop.call_later(FORK_RETRY, self._retry_spawn)

    def _retry_spawn(self) -> None:
        self._fork_retry = None
        self.manage_workers()

    def _become_worker(self, index: int, settings: WorkerSettings) -> None:
        status = 1
        try:
            if self.http is not None:
                self.http.close_after_fork()
            self.checker.close_after_fork()
            self.resolver.close_after_fork()
            self.loop.close()
            for signum in HANDLED:
                signal.signal(signum, signal.SIG_DFL)
            status = Worker(index, self.listeners, self.table, settings, self.pid,
                            self.tls).run()
        except BaseException:  # noqa: B902 - a worker must never return into the master
            logger.exception("worker failed", extra=gwlog.fields(worker=index))
        finally:
            os._exit(status)

    def _retire(self, record: WorkerRecord) -> None:
        record.retiring = True
        self._send(record.pid, signal.SIGTERM)
        logger.info("retiring worker", extra=gwlog.fields(worker=record.index,
                                                          worker_pid=record.pid))

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            record = self.workers.pop(pid, None)
            if record is None:
                if not self.resolver.reaped(pid):
                    logger.warning("reaped an unknown child process", extra=gwlog.fields(
                        pid=pid, status=_describe_status(status)))
                continue
            self.cpu_offsets[record.index] = (self.cpu_offsets.get(record.index, 0.0)
                                              + usage.ru_utime + usage.ru_stime)
            self.table.release_worker_slot(record.index)
            self._worker_exited(record, status)
        # not reached

    def _worker_exited(self, record: WorkerRecord, status: int) -> None:
        how = _describe_status(status)
        if record.timed_out:
            # wedged, not crashing: replaced without counting towards giving up
            logger.info("worker exited", extra=gwlog.fields(
                worker=record.index, worker_pid=record.pid, status=how,
                reason="worker timeout"))
        elif record.retiring or self.state != State.RUNNING:
            logger.info("worker exited", extra=gwlog.fields(
                worker=record.index, worker_pid=record.pid, status=how))
        elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            # stopped on purpose (e.g. a SIGTERM sent to it or to the whole group): not
            # a crash; replaced, and drained with the others if the master is next
            logger.info("worker stopped; replacing it", extra=gwlog.fields(
                worker=record.index, worker_pid=record.pid, status=how))
        else:
            logger.warning("worker died; replacing it", extra=gwlog.fields(
                worker=record.index, worker_pid=record.pid, status=how))
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and now - self._deaths[0] > CRASH_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) >= CRASH_LIMIT:
                raise FatalError(f"workers keep dying ({len(self._deaths)} in "
                                 f"{CRASH_WINDOW:g}s, last: {how}); giving up")
        if self.state == State.RUNNING:
            self.manage_workers()
        elif not self.workers:
            self.state = State.STOPPED

    # -- watchdog ----------------------------------------------------------------------
    def _watch_workers(self) -> None:
        """--worker-timeout: every worker stamps a heartbeat in the shared table on its
        loop's tick; one whose stamp has not moved for the timeout (stopped, spinning,
        blocked in a call) is killed with SIGKILL and replaced. Time is measured on
        the master's clock from when it last saw the stamp change, and a master that
        was itself stopped (a gap in its own ticks) gives every worker a fresh start."""
        self.loop.call_later(WATCH_PERIOD, self._watch_workers)
        now = time.monotonic()
        stalled = now - self._last_watch > 3 * WATCH_PERIOD
        self._last_watch = now
        timeout = self.config.worker_timeout
        for record in list(self.workers.values()):
            beat = self.table.last_beat(record.index)
            if beat != record.beat or stalled:
                record.beat, record.beat_seen = beat, now
            elif timeout and not record.timed_out and now - record.beat_seen >= timeout:
                self._kill_wedged(record, now - record.beat_seen)

    def _kill_wedged(self, record: WorkerRecord, silent: float) -> None:
        record.timed_out = True
        self._send(record.pid, signal.SIGKILL)
        table = self.table
        table.add_at(table.counter_offset(table.master_row, GATEWAY, G_WORKER_TIMEOUTS), 1)
        logger.error("worker timeout", extra=gwlog.fields(
            worker=record.index, worker_pid=record.pid, silent=round(silent, 1),
            timeout=self.config.worker_timeout, action="SIGKILL; replacing it"))

    def _send(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _kill_workers(self, signum: int) -> None:
        for pid in list(self.workers):
            self._send(pid, signum)

    # -- signals -----------------------------------------------------------------------
    def _on_signal(self, signum: int) -> None:
        """The loop's one entry for a signal: dispatched by `_SIGNAL_HANDLERS`."""
        _SIGNAL_HANDLERS[signum](self, signal.Signals(signum).name)

    def _handle_chld(self, name: str) -> None:
        self._reap()

    def _handle_term(self, name: str) -> None:
        """SIGTERM/SIGINT: drain; the second one stops at once."""
        if self.state == State.RUNNING:
            self.begin_drain(name)
        else:
            self.quit_now(name + " again")

    def _handle_quit(self, name: str) -> None:
        self.quit_now(name)

    def _handle_hup(self, name: str) -> None:
        self.reload()

    def _handle_usr1(self, name: str) -> None:
        """Reopen the log file (after rotation): the workers first, each its own."""
        settings = self.config.log_settings
        self._kill_workers(signal.SIGUSR1)
        try:
            gwlog.setup(settings)
        except OSError as exc:
            logger.error("cannot reopen the log file; still writing to the old one",
                         extra=gwlog.fields(path=settings.path, error=exc.strerror))
            return
        logger.info("reopened log file", extra=gwlog.fields(path=settings.destination))

    def _handle_ttin(self, name: str) -> None:
        self._change_worker_count(name, min(self.desired_workers + 1, MAX_WORKERS))

    def _handle_ttou(self, name: str) -> None:
        self._change_worker_count(name, max(self.desired_workers - 1, 1))

    def _change_worker_count(self, name: str, workers: int) -> None:
        if self.state != State.RUNNING:
            logger.info("worker count unchanged: draining", extra=gwlog.fields(
                signal=name, workers=len(self.workers)))
            return
        self.desired_workers = workers
        logger.info("worker count changed", extra=gwlog.fields(workers=self.desired_workers))
        self.manage_workers()

    def begin_drain(self, why: str) -> None:
        """Stop accepting at once (every copy of the listener is closed), let the
        workers finish their sessions within the shutdown timeout, then exit 0."""
        self.state = State.DRAINING
        sysd.notify("STOPPING=1")
        self._close_listeners()
        self.resolver.close()  # no lookups while draining: the roster no longer matters
        self._kill_workers(signal.SIGTERM)
        self._stop_deadline = time.monotonic() + self.config.shutdown_timeout + KILL_GRACE
        logger.info("draining connections", extra=gwlog.fields(
            signal=why, timeout=self.config.shutdown_timeout, workers=len(self.workers)))
        if not self.workers:
            self.state = State.STOPPED

    def quit_now(self, why: str) -> None:
        """Stop at once: workers close every connection and exit."""
        if self._quitting:
            return
        self._quitting = True
        self.state = State.DRAINING
        self._close_listeners()
        self.resolver.close()
        self._kill_workers(signal.SIGQUIT)
        self._stop_deadline = time.monotonic() + QUIT_GRACE
        logger.info("stopping now", extra=gwlog.fields(signal=why, workers=len(self.workers)))
        if not self.workers:
            self.state = State.STOPPED

    def _check_deadlines(self) -> None:
        if self.state == State.DRAINING and self.workers and time.monotonic() >= self._stop_deadline:
            logger.warning("workers did not stop in time: killing them",
                           extra=gwlog.fields(workers=sorted(self.workers)))
            self._kill_workers(signal.SIGKILL)
            self._stop_deadline = time.monotonic() + QUIT_GRACE

    # -- reload ------------------------------------------------------------------------
    def reload(self) -> None:
        """Re-read the configuration (same command line and environment); on any error
        keep running exactly as before. Everything that can fail (parsing, resolving,
        binding a new listen or metrics address) is done first, into a plan; only then
        is the plan applied. Endpoint changes reach every worker at once through the
        table; open connections are untouched."""
        if self.state != State.RUNNING:
            logger.info("reload ignored: draining", extra=gwlog.fields(signal="SIGHUP"))
            return
        sysd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            try:
                plan = self._prepare_reload()
            except (gwconfig.ConfigError, FatalError, listeners.ListenError) as exc:
                logger.error("reload failed; keeping the running configuration",
                             extra=gwlog.fields(error=str(exc)))
            except (OSError, ValueError) as exc:  # e.g. EMFILE, a NUL byte in a path
                logger.error("reload failed; keeping the running configuration",
                             extra=gwlog.fields(error=f"{type(exc).__name__}: {exc}"))
            else:
                self._apply_reload(plan)
        finally:
            sysd.notify("READY=1")  # whatever happened, RELOADING=1 is always answered

    def _prepare_reload(self) -> "_ReloadPlan":
        """Parse, resolve, and bind what changed; raise (having closed whatever it
        opened) if anything is wrong. Changes nothing the running gateway uses."""
        new = gwconfig.load(self.argv, self.environ, earlier=self.config.config_text)
        tls_options = gwtls.options_from(new)
        tls_signature = gwtls.signature(tls_options)
        tls_material = gwtls.load(tls_options)  # SIGHUP re-reads every TLS file
        # names and SRV records are looked up later, in a child: for now the IP
        # literals and the addresses the names still configured have
        listens = discovery.listens_for_reload(new, self._listens)  # no DNS query here
        if new.metrics_addr is not None and new.metrics_addr != self.config.metrics_addr:
            discovery.refuse_new_name("metrics-addr", new.metrics_addr)
        endpoints = None if new.discovery_srv else discovery.provisional(
            new, self.table.roster(), listens)
        _refuse_tls_switch_without_members(new, self.tls.options, tls_options, endpoints)
        gwconfig.check_log_file(new.log_file)
        plan = _ReloadPlan(new, endpoints)
        plan.listens = listens
        plan.tls, plan.tls_signature = tls_material, tls_signature
        old = self.config
        try:
            if new.log_settings != old.log_settings:  # opened now: applying cannot fail
                plan.log = gwlog.open_handler(new.log_settings)
            if new.metrics_addr != old.metrics_addr:
                plan.http = self._open_metrics(new.metrics_addr)
                plan.http_changed = True
            if not self._socket_activated:
                # bind first: the new listeners exist before the dropped ones close
                kept = {lst.addr for lst in self.listeners}
                for addr in new.listen_addr:
                    if addr not in kept:
                        plan.added.append(self._bind(addr, new))
                plan.dropped = [lst for lst in self.listeners
                                if lst.addr not in new.listen_addr]
            self._change_socket_permissions(old, new)  # last: nothing after it can fail
        except BaseException:
            plan.discard(self._close_listener)
            raise
        return plan

    def _apply_reload(self, plan: "_ReloadPlan") -> None:
        new, old = plan.config, self.config
        if plan.http_changed:
            if self.http is not None:
                self.http.close()
            self.http = plan.http
        self._apply_listeners(plan, old, new)
        self.reloads += 1
        old_addresses = [e.endpoint.address for e in self.table.roster()]
        self.config = new
        self._listens = plan.listens
        if plan.endpoints:  # empty: only new names, published when they resolve
            self._publish_roster(plan.endpoints, order_for(new.discovery_srv), "SIGHUP")
        self._set_load_policy(new)
        self.table.set_retry_delay(new.retry_delay)  # workers only log it: not a setting
        self._tls_signature, self._tls_failed_signature = plan.tls_signature, None
        assert plan.tls is not None
        self._install_tls(plan.tls)
        self.checker.configure(_check_policy(new))
        if new.workers != old.workers:
            self.desired_workers = new.workers
        if plan.log is not None:
            gwlog.install(plan.log, new.log_settings)
        logger.info("reloaded", extra=gwlog.fields(
            changed=_changed_options(old, new),
            endpoints=[e.endpoint.address for e in self.table.roster()],
            previous_endpoints=old_addresses))
        self.manage_workers()
        self.resolver.configure(new)
        self.resolver.lookup_now()
        self._schedule_tls_watch()

    # -- TLS files ---------------------------------------------------------------------
    def _install_tls(self, material: gwtls.Material) -> None:
        """Use `material` from now on: for the master's checks, for workers forked from
        now on, and (through the table's TLS generation) for the running workers."""
        self.tls = material
        self.checker.set_tls(material.member_context(gwtls.HTTP11)
                             if material.options.originate else None)
        self.table.bump_tls_generation()

    def _schedule_tls_watch(self) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        interval = self.config.tls_reload_interval
        if interval > 0 and self.tls.options.enabled:
            self._tls_timer = self.loop.call_later(interval, self._tls_tick)

    def _tls_tick(self) -> None:
        """Re-read the TLS files when any of them changed on disk; a bad set is logged
        once (until it changes again) and the material in use stays."""
        self._tls_timer = None
        self._schedule_tls_watch()
        if self.state != State.RUNNING:
            return
        options = self.tls.options
        signature = gwtls.signature(options)
        if signature in (self._tls_signature, self._tls_failed_signature):
            return
        try:
            material = gwtls.load(options)
        except gwconfig.ConfigError as exc:
            self._tls_failed_signature = signature
            logger.error("TLS files changed but cannot be used; keeping the ones in use",
                         extra=gwlog.fields(error=str(exc)))
            return
        self._tls_signature, self._tls_failed_signature = signature, None
        self._install_tls(material)
        logger.info("TLS files changed: re-read", extra=gwlog.fields(
            files=[path for _, path in options.files()]))

    def _set_listener_keepalive(self, seconds: float) -> None:
        """--keepalive on every TCP listener, before any worker is forked: accepted
        sockets inherit it when the kernel completes their handshake, which may be
        before a worker first looks at the listener."""
        options = keepalive.socket_options(seconds)
        for lst in self.listeners:
            keepalive.apply(lst.sock, options)

    def _apply_listeners(self, plan: _ReloadPlan, old: gwconfig.Config,
                         new: gwconfig.Config) -> None:
        """Install the listeners a reload bound and close the dropped ones. Dropped ones
        are closed before forking, or the new workers would inherit them and keep the
        old address open; retiring workers close their own copies when they drain.
        Connections already accepted on a dropped listener are untouched."""
        if plan.added or plan.dropped:
            for lst in plan.dropped:
                self._close_listener(lst)
                logger.info("stopped listening", extra=gwlog.fields(address=lst.label))
            for lst in plan.added:
                logger.info("listening", extra=gwlog.fields(address=lst.label))
            self.listeners = [lst for lst in self.listeners
                              if lst not in plan.dropped] + plan.added
            self._listener_gen += 1
        self._set_listener_keepalive(new.keepalive)
        if self._socket_activated and new.listen_addr != old.listen_addr:
            logger.warning("ignoring --listen-addr: listening where systemd's socket unit "
                           "says (socket activation)")

    def _change_socket_permissions(self, old: gwconfig.Config, new: gwconfig.Config) -> None:
        """A reload's new --listen-socket-mode/-group on the unix socket files that stay;
        if one cannot be changed, those already changed go back and ListenError refuses
        the reload whole."""
        if (new.listen_socket_mode, new.listen_socket_group) == (
                old.listen_socket_mode, old.listen_socket_group):
            return
        done: list[listeners.Listener] = []
        for lst in self.listeners:
            try:
                lst.set_permissions(int(new.listen_socket_mode, 8), new.listen_socket_group)
            except (OSError, ValueError) as exc:
                for back in done:
                    try:
                        back.set_permissions(int(old.listen_socket_mode, 8),
                                             old.listen_socket_group)
                    except (OSError, ValueError):
                        pass  # it was set before: setting it back cannot fail
                raise listeners.ListenError(
                    f"option --listen-socket-mode/--listen-socket-group: cannot change "
                    f"{lst.label}: {getattr(exc, 'strerror', None) or exc}") from None
            done.append(lst)

    # -- lookups and the roster --------------------------------------------------------
    def _lookup_done(self, config: gwconfig.Config, answer: discovery.Answer) -> None:
        """A lookup's answer (from the resolver's child): publish it. An empty or failed
        one keeps the last good set; a name that did not resolve kept its addresses."""
        if self.state != State.RUNNING or config is not self.config:
            return  # stale: the configuration changed since it was asked
        if answer.endpoints or answer.unresolved:  # else the lookup itself failed
            self._note_unresolved(answer)
        if config.discovery_srv and not answer.endpoints:
            logger.warning("SRV refresh found nothing usable; keeping the last good set",
                           extra=gwlog.fields(**{"srv-server": config.discovery_srv,
                                                 "errors": answer.errors}))
            return
        if not answer.endpoints:
            logger.warning("no endpoint name resolved; keeping the current endpoints",
                           extra=gwlog.fields(errors=answer.errors))
            return
        source = f"SRV {config.discovery_srv}" if config.discovery_srv else "DNS"
        self._publish_roster(answer.endpoints, answer.policy, source)

    def _note_unresolved(self, answer: discovery.Answer) -> None:
        """Count every failed name; log when a name stops and starts resolving again."""
        now = set(answer.unresolved)
        for name in answer.unresolved:
            self.resolution_failures[name] = self.resolution_failures.get(name, 0) + 1
        for name in sorted(now - self._unresolved):
            errors = [e for e in answer.errors if repr(name) in e]
            logger.warning("endpoint name does not resolve; keeping its last known "
                           "addresses", extra=gwlog.fields(
                               name=name, error=errors[0] if errors else "",
                               addresses=[ep.address for ep in answer.endpoints
                                          if ep.label == name]))
        for name in sorted(self._unresolved - now):
            logger.info("endpoint name resolves again", extra=gwlog.fields(name=name))
        self._unresolved = now

    def _publish_roster(self, endpoints: list[Endpoint], policy: Order, source: str) -> None:
        """Make `endpoints` the roster, if it differs. Addresses that stay keep their
        slot (health mark, counters); new ones are published down and checked before
        they take clients (when a check is configured); vanished ones take no new
        clients and their open connections are left alone. Logged once."""
        before = {e.endpoint.sockaddr: e.endpoint for e in self.table.roster()}
        if set(before.values()) == set(endpoints) and self.table.policy == policy:
            return
        entries = self.table.publish(endpoints, policy)
        self.checker.show_kinds()  # new members' roles: unknown at once where no check sees them
        wanted = {ep.sockaddr for ep in endpoints}
        added = [e for e in entries if e.endpoint.sockaddr not in before]
        removed = [ep for sockaddr, ep in before.items() if sockaddr not in wanted]
        if self.config.health_check != "none":
            for entry in added:
                self.table.mark_down(entry.slot, "new address: waiting for its first check")
                self.checker.check_first(entry.slot, entry.endpoint.sockaddr)
        self.resolver.remember_marks()
        if added or removed:
            logger.info("endpoints changed", extra=gwlog.fields(
                endpoints=[ep.address for ep in endpoints],
                previous=[ep.address for ep in before.values()],
                added=[_named(e.endpoint) for e in added],
                removed=[_named(ep) for ep in removed], source=source))


class _ReloadPlan:
    """What a reload will install, prepared before anything running is touched."""

    def __init__(self, config: gwconfig.Config, endpoints: list | None):
        self.config = config
        self.endpoints = endpoints
        self.added: list[listeners.Listener] = []    # bound for this reload
        self.dropped: list[listeners.Listener] = []  # to close when it is applied
        self.http: HttpServer | None = None
        self.http_changed = False
        self.tls: gwtls.Material | None = None
        self.tls_signature: tuple = ()
        self.listens: discovery.Listens = []  # the TCP listen addresses, resolved
        self.log: logging.Handler | None = None     # the new log settings' handler

    def discard(self, close_listener: Callable[[listeners.Listener], None]) -> None:
        """Close what was opened for a plan that will not be applied."""
        for lst in self.added:
            close_listener(lst)
        if self.http is not None:
            self.http.close()
        if self.log is not None:
            self.log.close()


_SIGNAL_HANDLERS: dict[int, Callable[[Arbiter, str], None]] = {
    signal.SIGCHLD: Arbiter._handle_chld,
    signal.SIGTERM: Arbiter._handle_term,
    signal.SIGINT: Arbiter._handle_term,
    signal.SIGQUIT: Arbiter._handle_quit,
    signal.SIGHUP: Arbiter._handle_hup,
    signal.SIGUSR1: Arbiter._handle_usr1,
    signal.SIGTTIN: Arbiter._handle_ttin,
    signal.SIGTTOU: Arbiter._handle_ttou,
}
assert set(_SIGNAL_HANDLERS) == set(HANDLED), "every handled signal has its handler"

_BALANCES = {"round-robin": Balance.ROUND_ROBIN,
             "least-connections": Balance.LEAST_CONNECTIONS}


def _refuse_tls_switch_without_members(new: gwconfig.Config, running: gwtls.TlsOptions,
                                       wanted: gwtls.TlsOptions,
                                       endpoints: list | None) -> None:
    """Whether members are dialled with TLS is one mode for the whole roster: a reload
    that switches it must replace the roster at once. When none of the new members is
    known yet (names and SRV records are looked up later, in a child), the running
    members would stay and be dialled in the new mode (TLS to a plain member, or plain
    to a TLS one): such a reload is refused whole, with one line."""
    if running.originate == wanted.originate or endpoints:
        return
    to, frm = ("TLS", "plain") if wanted.originate else ("plain", "TLS")
    if new.discovery_srv:
        option, later, other = "discovery-srv-tls", "SRV records are", "restart the gateway"
    else:
        option, later = "endpoints", "names are"
        other = "restart the gateway, or name a new member by its IP address"
    raise gwconfig.ConfigError(
        f"option --{option}: the reload switches members from {frm} to {to}, but no new "
        f"member is known yet ({later} looked up later) and the running {frm} members "
        f"cannot be dialled as {to}: {other}")


def _named(ep: Endpoint) -> str:
    """An endpoint for the log: its address, and the name it came from if any."""
    return ep.address if ep.label == ep.address else f"{ep.address} ({ep.label})"


def _check_policy(config: gwconfig.Config) -> CheckPolicy:
    return CheckPolicy(mode=CheckMode(config.health_check),
                       interval=config.health_check_interval,
                       fall=config.health_check_fall, rise=config.health_check_rise,
                       dial_timeout=config.dial_timeout, retry_delay=config.retry_delay,
                       tls_members=bool(config.discovery_srv) and not config.insecure_discovery)


def _changed_options(old: gwconfig.Config, new: gwconfig.Config) -> dict[str, list[str]]:
    """{option: [old, new]} for every option whose effective value changed."""
    return {name: [old.describe(name), new.describe(name)]
            for name in gwconfig.option_names()
            if old.describe(name) != new.describe(name)}


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"
