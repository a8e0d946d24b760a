"""The fault schedule: what happens to the cluster and the gateway while the load runs.

design: one thread walks a fixed cycle of steps, again and again until the soak's
duration is spent, with a settle gap between steps; then `restore()` brings back
the starting state (every member running, the first configuration reloaded). Only
one member is ever out at a time, so the cluster keeps its quorum and any failure
is the path's, not etcd's. A cycle:

  1. SIGHUP: worker settings change (one worker more, a longer dial timeout);
  2. SIGKILL the member serving the gateway lane's watch; restart it a while later;
  3. SIGKILL one gateway worker (it is replaced by the master);
  4. SIGHUP: endpoints change (one member left out);
  5. SIGSTOP the member serving the gateway lane's watch for a while; SIGCONT;
  6. SIGHUP: back to the starting configuration;
  7. a burst of connections, through the gateway and directly, at the same time;
  8. SIGKILL one gateway worker.

Every process is signalled by the pid this soak started. A step that does not take
effect (a reload refused or never logged, a worker never replaced, a member that
does not come back) is recorded as a problem: the soak then fails with it.
"""
from __future__ import annotations

import os
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from scripts.soaklib.burst import BurstResult, burst
from scripts.soaklib.load import Lane
from tests.support.etcd_cluster import EtcdCluster
from tests.support.gateway_proc import GatewayProcess

RELOAD_WAIT = 15.0
REPLACE_WAIT = 15.0
RESTART_WAIT = 30.0


class GatewayConfig:
    """The gateway's config file: written whole (atomically), applied by SIGHUP."""

    def __init__(self, path: pathlib.Path, settings: dict[str, str]) -> None:
        self.path = path
        self.first = dict(settings)
        self.settings = dict(settings)
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k} = {v}\n" for k, v in self.settings.items()))
        os.replace(tmp, self.path)

    def reload(self, gw: GatewayProcess, changes: dict[str, str]) -> str | None:
        """Write ``changes`` and SIGHUP; None once `reloaded` is logged, else the problem."""
        self.settings.update(changes)
        self.write()
        done = gw.count_log("reloaded")
        refused = gw.count_log("reload failed; keeping the running configuration")
        gw.signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline:
            if gw.count_log("reloaded") > done:
                return None
            failed = gw.find_logs("reload failed; keeping the running configuration")
            if len(failed) > refused:
                return f"reload refused: {str(failed[-1].get('error', ''))[:200]}"
            if not gw.running():
                return f"gateway exited ({gw.returncode}) after SIGHUP"
            time.sleep(0.1)
        return f"no `reloaded` within {RELOAD_WAIT:.0f}s of SIGHUP"


@dataclass
class ChaosRecord:
    """What the schedule did, and what went wrong with it."""

    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    bursts: dict[str, BurstResult] = field(default_factory=dict)

    def did(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def add_burst(self, results: dict[str, BurstResult]) -> None:
        for name, r in results.items():
            total = self.bursts.setdefault(name, BurstResult())
            total.served += r.served
            total.failed += r.failed
            for why, n in r.errors.items():
                total.errors[why] = total.errors.get(why, 0) + n


class Chaos:
    """Runs the cycle in a thread until ``deadline``, then restores the first state."""

    def __init__(self, cluster: EtcdCluster, gw: GatewayProcess, config: GatewayConfig,
                 gateway_lane: Lane, direct_lane: Lane, member_index: dict[str, int],
                 gap: float, burst_size: int, say: Callable[[str], None]) -> None:
        self.cluster = cluster
        self.gw = gw
        self.config = config
        self.gateway_lane = gateway_lane
        self.direct_lane = direct_lane
        self.member_index = member_index          # member id -> index in the cluster
        self.gap = gap
        self.burst_size = burst_size
        self.say = say
        self.record = ChaosRecord()
        self._cycle = 0
        self._thread: threading.Thread | None = None
        self._deadline = 0.0
        self._abort = threading.Event()

    # -- running -----------------------------------------------------------------------
    def start(self, duration: float) -> None:
        self._deadline = time.monotonic() + duration
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abort(self, timeout: float) -> None:
        """Stop between steps (the soak was interrupted): no restore, nothing restarted."""
        self._abort.set()
        self.join(timeout)

    def _run(self) -> None:
        try:
            while (self._cycle == 0 or self._time_left()) and not self._abort.is_set():
                for step in self._steps():
                    if self._abort.is_set() or not self._gateway_alive() or (
                            self._cycle and not self._time_left()):
                        break
                    step()
                    self._settle()
                self._cycle += 1
        except Exception as exc:  # noqa: BLE001 - a fault that could not be staged: a FAIL
            self.record.problems.append(f"chaos step failed: {type(exc).__name__}: {exc}")
        finally:
            if not self._abort.is_set():
                self.restore()

    def _steps(self) -> list[Callable[[], None]]:
        return [self.reload_workers, self.kill_member, self.kill_worker,
                self.reload_endpoints, self.stop_member, self.reload_first,
                self.connection_burst, self.kill_worker]

    def _time_left(self) -> bool:
        return time.monotonic() < self._deadline and not self._abort.is_set()

    def _settle(self) -> None:
        self._abort.wait(self.gap)

    def _gateway_alive(self) -> bool:
        if self.gw.running():
            return True
        problem = f"gateway exited ({self.gw.returncode})"
        if problem not in self.record.problems:
            self.record.problems.append(problem)
        return False

    # -- steps -------------------------------------------------------------------------
    def _reload(self, what: str, changes: dict[str, str]) -> None:
        self.say(f"SIGHUP: {what}")
        problem = self.config.reload(self.gw, changes)
        if problem is None:
            self.record.did("reloads")
        else:
            self.record.problems.append(problem)

    def reload_workers(self) -> None:
        workers = int(self.config.first["workers"]) + 1
        self._reload(f"workers {workers}, dial-timeout 2s",
                     {"workers": str(workers), "dial-timeout": "2s"})

    def reload_endpoints(self) -> None:
        members = self.cluster.client_endpoints()
        left_out = members[(self._watched_member() + 1) % len(members)]
        kept = [m for m in members if m != left_out]
        self._reload(f"endpoints without {left_out}", {"endpoints": ",".join(kept)})

    def reload_first(self) -> None:
        self._reload("the first configuration again", dict(self.config.first))

    def _watched_member(self) -> int:
        """Index of the member serving the gateway lane's watch (member 0 if unknown)."""
        return self.member_index.get(self.gateway_lane.watch_member_id, 0)

    def kill_member(self) -> None:
        i = self._watched_member()
        name = self.cluster.members[i].name
        self.say(f"SIGKILL member {name} (serves the gateway lane's watch)")
        self.cluster.kill(i)
        self.record.did("member kills")
        if self._abort.wait(self.gap):
            return
        self.say(f"restart member {name}")
        try:
            self.cluster.restart(i, timeout=RESTART_WAIT)
        except RuntimeError as exc:
            self.record.problems.append(f"member {name} did not come back: "
                                        f"{str(exc).splitlines()[0]}")

    def stop_member(self) -> None:
        i = self._watched_member()
        name = self.cluster.members[i].name
        self.say(f"SIGSTOP member {name} (serves the gateway lane's watch) "
                 f"for {2 * self.gap:.0f}s")
        self.cluster.pause(i)
        self.record.did("member SIGSTOPs")
        try:
            self._abort.wait(2 * self.gap)
        finally:
            self.cluster.resume(i)
        self.say(f"SIGCONT member {name}")

    def kill_worker(self) -> None:
        logged = self.gw.find_logs("started worker")
        started = {e.get("worker_pid") for e in logged}
        workers = [pid for pid in self.gw.worker_pids() if pid in started]
        if not workers:
            self.record.problems.append("no gateway worker to kill")
            return
        victim = workers[self._cycle % len(workers)]
        before = len(logged)
        self.say(f"SIGKILL gateway worker pid {victim}")
        os.kill(victim, signal.SIGKILL)
        self.record.did("worker SIGKILLs")
        deadline = time.monotonic() + REPLACE_WAIT
        while self.gw.count_log("started worker") <= before:
            if time.monotonic() > deadline or not self.gw.running():
                self.record.problems.append(f"worker {victim} killed and not replaced")
                return
            time.sleep(0.1)

    def connection_burst(self) -> None:
        self.say(f"burst: {self.burst_size} connections through the gateway and "
                 f"{self.burst_size} directly, at once")
        results = burst({"gateway": self.gateway_lane.addrs,
                         "direct": self.direct_lane.addrs},
                        self.burst_size, self.gateway_lane.prefix + b"w0/0", timeout=60)
        self.record.add_burst(results)
        self.record.did("bursts")
        self.say("burst: " + ", ".join(f"{name} {r.served} served, {r.failed} failed"
                                       for name, r in results.items()))

    # -- the end -----------------------------------------------------------------------
    def restore(self) -> None:
        """Every member running and resumed, the first configuration in force."""
        for i, m in enumerate(self.cluster.members):
            try:
                if m.running() and m.paused:
                    self.cluster.resume(i)
                elif not m.running():
                    self.say(f"restart member {m.name}")
                    self.cluster.restart(i, timeout=RESTART_WAIT)
            except (RuntimeError, OSError) as exc:
                self.record.problems.append(f"member {m.name} not restored: "
                                            f"{str(exc).splitlines()[0]}")
        if self.config.settings != self.config.first and self.gw.running():
            self.reload_first()
