"""scripts/soak: a chaos soak of the gateway in front of a local three-member etcd cluster.

design: the soak owns a cluster (tests/support/etcd_cluster.py) and one gateway
(tests/support/gateway_proc.py, the real bin/etcd-gatewayd with a config file),
runs the same client load through the gateway and directly against the members,
side by side (load.py), while the fault schedule (chaos.py) runs for --duration
seconds; then it restores the cluster and the first configuration, lets the load
settle, samples the gateway's footprint, stops the clients, settles what every
watch was owed against the store's history (verify.py), prints the table and the
verdict (report.py) and stops what it started, by pid. Exit 0 only on PASS.

Timeline: cluster + gateway start (~5 s), warm-up (WARMUP), footprint sample,
faults for --duration, restore + settle (SETTLE, after old workers are gone),
footprint sample, stop clients, sentinels, watch catch-up, history check.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import NoReturn

from scripts.soaklib.chaos import Chaos, GatewayConfig
from scripts.soaklib.etcdhttp import EtcdError, KvClient
from scripts.soaklib.gauge import footprint
from scripts.soaklib.load import Clock, Lane, Load
from scripts.soaklib.report import LaneFigures, table, verdict
from scripts.soaklib.verify import history, sentinel, wait_caught_up
from tests.support.etcd_cluster import EtcdCluster
from tests.support.gateway_proc import GatewayProcess
from tests.support.ports import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]

WARMUP = 5.0
SETTLE = 5.0
WRITERS, READERS, RATE = 2, 2, 10.0   # per lane; RATE: operations per second per thread
BURST = 1000
GAP_SHARE = 0.05                      # settle gap between faults, share of the duration
GAP_MIN, GAP_MAX = 2.5, 10.0
FIRST_WORKERS = 2


class Interrupted(Exception):
    pass


class Usage(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"soak: {message}", file=sys.stderr)
        raise SystemExit(2)


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: seconds, a number") from None
    if not 10 <= value <= 7 * 86400:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: between 10 and 604800")
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    p = Usage(prog="scripts/soak", description="Chaos soak: the gateway in front of a "
              "local three-member etcd cluster, with the same load directly as baseline.")
    p.add_argument("--duration", type=_duration, default=600.0, metavar="SECONDS",
                   help="how long faults are staged (default 600); the whole run takes "
                        "about 30 s more")
    p.add_argument("--workdir", type=pathlib.Path, default=None,
                   help="where cluster data and logs go (default: a new temporary "
                        "directory, removed after a PASS)")
    p.add_argument("--keep", action="store_true", help="keep the workdir after a PASS")
    return p.parse_args(argv)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.workdir: pathlib.Path = args.workdir or pathlib.Path(
            tempfile.mkdtemp(prefix="etcd-gatewayd-soak-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster = EtcdCluster(self.workdir / "etcd", size=3)
        self.gw: GatewayProcess | None = None
        self.chaos: Chaos | None = None
        self.header = _header(args.duration)   # now: the commit may move while it runs

    def say(self, text: str) -> None:
        print(f"[soak +{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def run(self) -> list[str]:
        """The whole soak; the reasons to fail (empty: PASS)."""
        self.cluster.start(timeout=60)
        members = self.cluster.client_endpoints()
        names = self.cluster.member_name_by_id()
        index = {mid: next(i for i, m in enumerate(self.cluster.members) if m.name == name)
                 for mid, name in names.items()}
        self.say(f"etcd cluster up: {','.join(members)}")
        listen = f"127.0.0.1:{free_port()}"
        config = GatewayConfig(self.workdir / "gateway.conf", {
            "listen-addr": listen,
            "endpoints": ",".join(members),
            "workers": str(FIRST_WORKERS),
            "dial-timeout": "1s",
            "retry-delay": "2s",
            "health-check": "etcd",
            "health-check-interval": "1s",
            "shutdown-timeout": "5s",
            "max-connections": "256",     # the burst of 1,000 meets the limit: served, not reset
            "log-level": "info",
            "log-format": "json",
        })
        self.gw = GatewayProcess(["-c", str(config.path)], workdir=self.workdir / "gateway")
        self.gw.start(timeout=30)
        self.say(f"gateway up on {listen} (pid {self.gw.pid}), config {config.path}")

        start_revision = self._current_revision(members) + 1
        clock = Clock()
        gateway_lane = Lane("gateway", [listen], b"/soak/gateway/", clock)
        direct_lane = Lane("direct", members, b"/soak/direct/", clock)
        load = Load([gateway_lane, direct_lane], WRITERS, READERS, RATE, start_revision)
        load.start()
        self.say(f"load: {WRITERS} writers, {READERS} linearizable readers, 1 watcher per "
                 f"lane, {RATE:.0f} ops/s per client; warming up {WARMUP:.0f}s")
        time.sleep(WARMUP)
        start = footprint(self.gw.pid or 0)
        self.say(f"gateway footprint: {start.processes} processes, {start.fds} fds, "
                 f"{start.rss_mib:.1f} MiB")

        gap = min(GAP_MAX, max(GAP_MIN, GAP_SHARE * self.args.duration))
        chaos = self.chaos = Chaos(self.cluster, self.gw, config, gateway_lane, direct_lane,
                                   index, gap, BURST, self.say)
        chaos.start(self.args.duration)
        problems: list[str] = []
        if not chaos.join(self.args.duration + 300):
            problems.append("the fault schedule did not finish within 300 s of its end")
        problems += chaos.record.problems
        self.say("faults over; settling")
        self._wait_workers(FIRST_WORKERS, timeout=30)
        time.sleep(SETTLE)
        end = footprint(self.gw.pid or 0)

        if not load.stop_clients(timeout=30):
            problems.append("client threads did not stop within 30 s")
        figures = []
        for lane in (gateway_lane, direct_lane):
            until = sentinel(members, lane.prefix, timeout=30)
            if not wait_caught_up(lane.last_seen, until, timeout=30):
                problems.append(f"the {lane.name} lane's watch did not reach revision "
                                f"{until} within 30 s (at {lane.stats.last_seen})")
            owed = history(members, lane.prefix, start_revision, until, timeout=30)
            figures.append(self._figures(lane, owed, until, chaos))
        if not load.stop_watchers(timeout=10):
            problems.append("watch threads did not stop within 10 s")
        if not self.gw.running():
            problems.append(f"gateway exited ({self.gw.returncode})")
        gw_fig, direct_fig = figures
        warnings: dict[str, int] = {}
        errors: list[str] = []
        for entry in self.gw.logs():
            level, msg = entry.get("level"), str(entry.get("msg", ""))
            if level in ("warn", "error", "fatal"):
                warnings[msg] = warnings.get(msg, 0) + 1
            if level in ("error", "fatal"):
                errors.append(msg)
        print()
        print(self.header)
        print(table(gw_fig, direct_fig, start, end, chaos.record.counts, warnings))
        for fig in figures:
            for err in fig.errors[:4]:
                print(f"  sample error ({fig.name}): {err[:160]}")
        return verdict(gw_fig, direct_fig, start, end, problems, errors)

    @staticmethod
    def _current_revision(members: list[str]) -> int:
        client = KvClient(timeout=5.0)
        try:
            for addr in members:
                try:
                    return client.get(addr, b"/soak/").revision
                except EtcdError:
                    continue
        finally:
            client.close()
        raise RuntimeError("no member answers a range")

    def _wait_workers(self, workers: int, timeout: float) -> None:
        """Old workers drain for --shutdown-timeout after a reload: wait them out."""
        assert self.gw is not None
        deadline = time.monotonic() + timeout
        while len(self.gw.worker_pids()) > workers and time.monotonic() < deadline:
            time.sleep(0.2)

    @staticmethod
    def _figures(lane: Lane, owed: set[int], until: int, chaos: Chaos) -> LaneFigures:
        """The lane's figures; the history ends at the sentinel ``until``, so only what
        the watch saw up to it can be checked against it."""
        s = lane.stats
        seen = {r for r in s.seen if r <= until}
        burst = chaos.record.bursts.get(lane.name)
        return LaneFigures(
            name=lane.name, puts=s.puts, gets=s.gets, failed=s.failed,
            attempt_errors=s.attempt_errors, stale_reads=s.stale_reads,
            owed=len(owed), lost=len(owed - seen), unexpected=len(seen - owed),
            out_of_order=s.out_of_order, acked_missing=len(s.acked - owed),
            reconnects=s.watch_reconnects, stalls=s.watch_stalls,
            burst_served=burst.served if burst else 0,
            burst_failed=burst.failed if burst else 0, errors=list(s.errors))

    def stop(self) -> None:
        if self.chaos is not None:
            self.chaos.abort(timeout=60)  # no member restarted behind cluster.stop()
        if self.gw is not None:
            self.gw.stop()
        self.cluster.stop()


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10,
                              cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _git(*args: str) -> str:
    return _run(["git", *args])


def _header(duration: float) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    etcd = (_run(["etcd", "--version"]).splitlines() or ["etcd ?"])[0]
    return (f"soak: commit {commit}, duration {duration:.0f}s, {os.cpu_count()} CPUs, "
            f"Linux {platform.release()}, Python {platform.python_version()}, {etcd}")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * BURST + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str]) -> int:
    args = parse(argv)
    _raise_fd_limit()
    signal.signal(signal.SIGTERM, _interrupt)
    soak = Soak(args)
    soak.say(f"workdir {soak.workdir}; faults for {args.duration:.0f}s")
    try:
        reasons = soak.run()
    except (Interrupted, KeyboardInterrupt) as exc:
        reasons = [f"interrupted ({exc or 'SIGINT'})"]
    except Exception as exc:  # noqa: BLE001 - the soak could not run: one line, FAIL
        reasons = [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        soak.stop()
    for why in reasons[1:]:
        print(f"also: {why}")
    if reasons:
        print(f"logs and data kept in {soak.workdir}")
        more = f" (and {len(reasons) - 1} more above)" if len(reasons) > 1 else ""
        print(f"soak: FAIL {reasons[0]}{more}", flush=True)
        return 1
    if not args.keep and args.workdir is None:
        shutil.rmtree(soak.workdir, ignore_errors=True)
    print("soak: PASS", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
