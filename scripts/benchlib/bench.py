#!/usr/bin/env python3
"""etcd-gatewayd benchmark: direct vs etcd-gatewayd vs `etcd gateway start` vs HAProxy.

design: one run starts the backends once (an iperf3 server, a C echo server,
one etcd member), then for each round, for each workload, for each peer (the
order rotated every round so drift hits all alike) starts a fresh proxy in
front of the workload's backend, measures, and stops it by PID.  Results:
medians of the rounds with min-max, ratios to the Go gateway and to direct,
a markdown table on stdout, JSON (and with --plot PNGs) in the results folder.
Run it through scripts/bench, which installs the Debian packages first.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
REPO = os.path.dirname(os.path.dirname(HERE))

import procs  # noqa: E402
import report  # noqa: E402
from peers import C_SPLICE, GO, OURS, PEERS, TLS_PEERS, TlsBackend, make_peer  # noqa: E402
from procs import Managed, StartError, free_port, listening, wait_until  # noqa: E402
from workloads import BACKEND_OF, CLIENTS, RUNNERS, TLS_WORKLOADS, WORKLOADS, Durations  # noqa: E402

GIVE_UP_AFTER = 2  # consecutive start failures before a peer is skipped for the rest of the run
FOREIGN_WARN = 0.10  # flag measurements during which other processes used more than this share of the CPUs


class Context:
    def __init__(self, args):
        self.repo = REPO
        self.results = os.path.abspath(args.results)
        self.stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.rundir = os.path.join(self.results, f"run-{self.stamp}")
        self.logdir = os.path.join(self.rundir, "logs")
        os.makedirs(self.logdir, exist_ok=True)
        self.durations = Durations(args.quick)
        self.notes = []
        self.backends = {}
        self.procs = {}
        self.etcd_dir = None
        # etcd's data on a tmpfs unless asked otherwise: on a VM's disk the swings of fsync
        # swamp the few tens of microseconds a proxy adds per op (benchlib/README.md)
        self.etcd_parent = None if args.etcd_on_disk else tmpfs_dir(SHM)
        self.etcd_data = f"tmpfs ({SHM})" if self.etcd_parent else "disk (the temp folder)"
        if self.etcd_parent is None and not args.etcd_on_disk:
            self.note(f"no writable tmpfs at {SHM}: etcd's data is on disk, so the etcd rows measure "
                      f"its fsync as much as the proxies")
        self.etcd_bin = need("etcd")
        self.haproxy_bin = need("haproxy")
        self.iperf3_bin = need("iperf3")
        self.loadgen = build_c("loadgen", self.results)
        self.splicerelay = build_c("splicerelay", self.results)
        self.tls = None  # TlsBackend, made when a tls-* workload runs

    def note(self, msg):
        self.notes.append(msg)
        print(f"bench: {msg}", file=sys.stderr, flush=True)

    # ---- backends -------------------------------------------------------
    def _start(self, name, argv, port, timeout=20.0):
        m = Managed(name, argv, os.path.join(self.logdir, f"backend-{name}.log"))
        if not wait_until(lambda: listening(port) or not m.alive(), timeout) or not m.alive():
            tail = m.log_tail()
            m.stop()
            raise RuntimeError(f"backend {name} did not start: {tail}")
        self.procs[name] = m
        self.backends[name] = port

    def start_echo(self):
        port = free_port()
        self._start("echo", [self.loadgen, "server", "-p", port, "-T", 2 * 3600], port)

    def start_iperf3(self):
        port = free_port()
        self._start("iperf3", [self.iperf3_bin, "-s", "-B", "127.0.0.1", "-p", port], port)

    def restart_iperf3(self):
        m = self.procs.pop("iperf3", None)
        if m:
            m.stop(grace=3)
        self.start_iperf3()

    def start_etcd(self):
        if self.etcd_dir is None:
            self.etcd_dir = tempfile.mkdtemp(prefix="bench-etcd-", dir=self.etcd_parent)
        cport, pport = free_port(), free_port()
        argv = [
            self.etcd_bin, "--name", "bench", "--data-dir", os.path.join(self.etcd_dir, "data"),
            "--listen-client-urls", f"http://127.0.0.1:{cport}",
            "--advertise-client-urls", f"http://127.0.0.1:{cport}",
            "--listen-peer-urls", f"http://127.0.0.1:{pport}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{pport}",
            "--initial-cluster", f"bench=http://127.0.0.1:{pport}",
            "--initial-cluster-state", "new",
            "--quota-backend-bytes", str(8 * 1024 ** 3),
            "--logger", "zap", "--log-level", "warn",
        ]
        self._start("etcd", argv, cport, timeout=30.0)

        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{cport}/health", timeout=1) as r:
                    return b'"true"' in r.read()
            except OSError:
                return False

        if not wait_until(healthy, 30.0, interval=0.2):
            raise RuntimeError("etcd did not become healthy: " + self.procs["etcd"].log_tail())

    def start_tls_front(self, name):
        """An HAProxy ending TLS in front of a plain backend: `tls-iperf3`, `tls-echo`."""
        plain = self.ensure_backend(name[len("tls-"):])
        if self.tls is None:
            self.tls = TlsBackend(os.path.join(self.rundir, "tls"))
        port = free_port()
        cfg = os.path.join(self.logdir, f"backend-{name}.cfg")
        with open(cfg, "w") as f:
            f.write(self.tls.terminator_config(port, plain))
        self._start(name, [self.haproxy_bin, "-db", "-f", cfg], port)

    def restart_backend(self, name):
        m = self.procs.pop(name, None)
        if m:
            m.stop(grace=3)
        return self.ensure_backend(name)

    def ensure_backend(self, name):
        m = self.procs.get(name)
        if m and m.alive():
            return self.backends[name]
        if m:
            self.note(f"backend {name} had died ({m.log_tail(3)!r}); restarting it")
            m.stop(grace=3)
        if name.startswith("tls-"):
            self.start_tls_front(name)
        else:
            {"echo": self.start_echo, "iperf3": self.start_iperf3, "etcd": self.start_etcd}[name]()
        return self.backends[name]

    def stop_backends(self):
        for m in self.procs.values():
            m.stop(grace=10)
        self.procs.clear()
        if self.etcd_dir:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)


SHM = "/dev/shm"


def tmpfs_dir(path):
    """`path` when it is a writable tmpfs mount point (/proc/mounts), else None."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounted = any(line.split()[1:3] == [path, "tmpfs"] for line in f)
    except OSError:
        return None
    return path if mounted and os.access(path, os.W_OK) else None


def need(cmd):
    path = shutil.which(cmd) or (f"/usr/sbin/{cmd}" if os.access(f"/usr/sbin/{cmd}", os.X_OK) else None)
    if not path:
        sys.exit(f"bench: {cmd} not found (scripts/bench installs it; run that, as root)")
    return path


def build_c(name, results):
    """scripts/benchlib/<name>.c built into <results>/build/<name> (again when the source is newer)."""
    src = os.path.join(HERE, f"{name}.c")
    out_dir = os.path.join(results, "build")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, name)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        cc = shutil.which("gcc") or shutil.which("cc")
        if not cc:
            sys.exit("bench: gcc not found (scripts/bench installs it)")
        subprocess.run([cc, "-O2", "-Wall", "-o", out + ".tmp", src], check=True, timeout=120)
        os.replace(out + ".tmp", out)
    return out


def version(argv):
    try:
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=10)
        return p.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "?"


# the gateway's interpreter, timed: its speed moves every per-connection figure (a
# build without PGO/LTO, or as a shared library, runs Python calls at about half the
# speed of a distribution's optimized build on the same machine); the fastest of 20
# short samples, as a burst of steal or of another process inflates the others
_CALL_PROBE = ("import sys, timeit\n"
               "t = min(timeit.repeat('f(1, 2)', 'def f(a, b): return a', number=50000, repeat=20))\n"
               "print(sys.version.split()[0], round(t / 50000 * 1e9, 1))")


def interpreter(python):
    """(path behind any venv link, version, ns per Python function call) of `python`."""
    try:
        out = subprocess.run([python, "-c", _CALL_PROBE], capture_output=True, text=True,
                             timeout=60).stdout.split()
        return {"path": os.path.realpath(python), "version": out[0], "ns_per_call": float(out[1])}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {"path": os.path.realpath(python), "version": "?", "ns_per_call": None}


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "gateway", "bin"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else "? (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "?"


def parse_list(value, known, what):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in known]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {what}: {', '.join(bad)} (known: {', '.join(known)})")
    return [k for k in known if k in items]  # canonical order


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark etcd-gatewayd against direct, `etcd gateway start` and HAProxy on loopback.",
    )
    ap.add_argument("--quick", action="store_true", help="1 round, short measurements (about 2-3 minutes)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 3; --quick: 1)")
    ap.add_argument("--only", type=lambda v: parse_list(v, WORKLOADS, "workload"), default=list(WORKLOADS),
                    metavar="WORKLOAD[,..]", help=f"workloads to run: {','.join(WORKLOADS)} (default all)")
    ap.add_argument("--peers", type=lambda v: parse_list(v, PEERS, "peer"), default=list(PEERS),
                    metavar="PEER[,..]", help=f"peers to compare: {','.join(PEERS)} (default all)")
    ap.add_argument("--results", default=os.path.join(REPO, "results"), metavar="DIR",
                    help="folder for JSON, logs, plots and the built load generator (default results/)")
    ap.add_argument("--etcd-on-disk", action="store_true",
                    help="keep etcd's data in the temp folder, on disk (default: /dev/shm, a tmpfs, so the "
                         "etcd rows measure the proxies, not the disk's fsync)")
    ap.add_argument("--plot", action="store_true", help="also write one PNG bar chart per workload (needs matplotlib)")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    return args


def brief(res):
    keys = [k for k in res if k.endswith((".gbps", ".rps", ".cps", ".ops", ".survives", "rss_kib_per_conn",
                                           "fds_per_conn", "cpu_us_per_req", "cpu_us_per_conn",
                                           "cpu_us_per_op"))]
    return " ".join(f"{k}={report.fmt(res[k])}" for k in keys)


def shown(path):
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def main(argv=None):
    args = parse_args(argv if argv is not None else sys.argv[1:])
    procs.install_signal_handlers()
    atexit.register(procs.stop_all)
    ctx = Context(args)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    t_start = time.monotonic()
    peers = {name: make_peer(name, ctx) for name in args.peers}
    gateway_python = interpreter(peers[OURS].python) if OURS in peers else None
    samples = {name: {} for name in args.peers}
    failed = {name: set() for name in args.peers}
    start_fail_streak = {name: 0 for name in args.peers}
    given_up = set()
    errors = []
    needed = sorted({BACKEND_OF[w] for w in args.only})
    foreign = {}  # (round, workload, peer) -> share of the CPUs used by other processes
    stolen = {}   # (round, workload, peer) -> share of the CPUs the hypervisor gave away
    probe = procs.ForeignLoad()
    time.sleep(1.0)
    before_start = probe.fraction()
    if before_start > FOREIGN_WARN:
        ctx.note(f"before the run, other processes used {before_start:.0%} of the CPUs: expect noisy figures")
    try:
        for b in needed:
            ctx.ensure_backend(b)
        print(f"bench: backends up: {ctx.backends}; results in {ctx.rundir}", file=sys.stderr, flush=True)
        for rnd in range(args.rounds):
            order = args.peers[rnd % len(args.peers):] + args.peers[:rnd % len(args.peers)]
            for w in args.only:
                for name in order:
                    peer = peers[name]
                    if name in given_up:
                        failed[name].add(w)
                        continue
                    tls = w in TLS_WORKLOADS
                    if tls and name not in TLS_PEERS:
                        continue  # cannot dial TLS: no row for it (not a failure)
                    if peer.only and w not in peer.only:
                        continue  # a reference for some workloads only (c-splice: bulk)
                    backend = ctx.ensure_backend(BACKEND_OF[w])
                    t0 = time.monotonic()
                    load = procs.ForeignLoad()
                    try:
                        port = peer.start(backend, tls=ctx.tls if tls else None)
                    except StartError as e:
                        failed[name].add(w)
                        start_fail_streak[name] += 1
                        ctx.note(f"round {rnd + 1} {w}: {name} failed to start: {str(e)[:400]}")
                        if start_fail_streak[name] >= GIVE_UP_AFTER:
                            given_up.add(name)
                            ctx.note(f"{name}: failed to start {GIVE_UP_AFTER} times in a row; skipped from now on")
                        continue
                    start_fail_streak[name] = 0
                    died = False
                    try:
                        res = RUNNERS[w](ctx, peer, port)
                        died = bool(peer.root_pid) and not peer.alive()
                    except Exception as e:  # noqa: BLE001 - a broken peer must not stop the bench
                        res = {}
                        ctx.note(f"round {rnd + 1} {w}: {name}: {type(e).__name__}: {str(e)[:300]}")
                    finally:
                        rc = peer.stop()
                    if died:
                        ctx.note(f"round {rnd + 1} {w}: {name} exited during the measurement (status {rc}); "
                                 f"its log ends: {peer.log_tail()[-400:]}")
                    foreign[(rnd + 1, w, name)] = load.fraction()
                    stolen[(rnd + 1, w, name)] = load.stolen()
                    for k, v in res.items():
                        samples[name].setdefault(k, []).append(v)
                        if k.endswith(".errors") and v:
                            errors.append(f"round {rnd + 1}: {name} {k[:-7]}: {v} failed requests/connections")
                    print(f"[round {rnd + 1}/{args.rounds}] {w:5s} {name:14s} {time.monotonic() - t0:5.1f}s "
                          f"other load {foreign[(rnd + 1, w, name)]:4.0%} steal {stolen[(rnd + 1, w, name)]:4.0%}  "
                          f"{brief(res)}", file=sys.stderr, flush=True)
    finally:
        for p in peers.values():
            p.stop()
        ctx.stop_backends()
        procs.stop_all()

    summary = report.summarize(samples, args.peers, args.rounds)
    head = report.headroom(summary, args.only)
    table = report.markdown(summary, args.peers, args.only, failed, errors)
    goals = {}
    for key, label, goal in report.ROWS:
        if goal and report.workload_of(key) in args.only:
            goals[key] = {"label": label, "goal": report.goal_text(goal),
                          "ratio_to_go": report.ratio(summary, key, OURS, GO),
                          "status": report.evaluate(goal, summary, key)}
    elapsed = time.monotonic() - t_start
    info = {
        "started": started,
        "elapsed_s": round(elapsed, 1),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                 "machine": platform.machine(), "gateway_python": gateway_python},
        "versions": {"etcd": version([ctx.etcd_bin, "--version"]), "haproxy": version([ctx.haproxy_bin, "-v"]),
                     "iperf3": version([ctx.iperf3_bin, "--version"]), "gcc": version(["gcc", "--version"]),
                     "etcd-gatewayd": git_rev()},
        "config": {"rounds": args.rounds, "quick": args.quick, "workloads": args.only, "peers": args.peers,
                   "durations_s": vars(ctx.durations), "etcd_data": ctx.etcd_data},
        "clients": {w: CLIENTS[w] for w in args.only},
        "peers": {n: peers[n].describe for n in args.peers},
        "failed_to_start": {n: sorted(v) for n, v in failed.items() if v},
        "samples": samples,
        "summary": summary,
        "ratios": {k: {"ours/go": report.ratio(summary, k, OURS, GO),
                       "ours/haproxy": report.ratio(summary, k, OURS, "haproxy"),
                       "ours/direct": report.ratio(summary, k, OURS, "direct"),
                       "ours/c-splice": report.ratio(summary, k, OURS, C_SPLICE)} for k in summary},
        "goals": goals,
        "headroom": head,
        "other_load": {"before_start": before_start,
                       "per_measurement": [{"round": r, "workload": w, "peer": p, "cpu_share": v,
                                            "steal_share": stolen.get((r, w, p), 0.0)}
                                           for (r, w, p), v in foreign.items()]},
        "errors": errors,
        "notes": ctx.notes,
        "markdown": table,
    }
    os.makedirs(ctx.results, exist_ok=True)
    json_path = os.path.join(ctx.results, f"bench-{ctx.stamp}.json")
    with open(json_path, "w") as f:
        json.dump(info, f, indent=1, default=str)

    out = []
    out.append(f"## etcd-gatewayd bench, {started} ({elapsed / 60:.1f} min)")
    out.append("")
    out.append(f"{os.cpu_count()} CPUs, Linux {platform.release()}; {args.rounds} round(s), peers interleaved "
               f"(order rotated each round); cells: median (min–max) over rounds; "
               f"{info['versions']['etcd']}"
               + (f" (its data on {ctx.etcd_data})" if "etcd" in args.only else "")
               + f", {info['versions']['haproxy'].split(' - ')[0]}, {info['versions']['iperf3']}; "
               f"etcd-gatewayd at {info['versions']['etcd-gatewayd']}"
               + (f" on Python {gateway_python['version']} ({gateway_python['path']}: "
                  f"{gateway_python['ns_per_call']} ns per function call)." if gateway_python else "."))
    out.append("")
    out.append(table)
    out.append("")
    if head:
        out.append("Load generator headroom: direct ÷ fastest proxy (> 1: generator and backend outran every "
                   "proxy). Generator, backend and proxy share the same CPUs, so direct is the machine's "
                   "ceiling for each workload, not the generator's alone.")
        out.append(", ".join(f"{k} {v['direct_over_best']:.2f}x ({v['best_proxy']})" for k, v in head.items()
                             if v["direct_over_best"]))
        low = [k for k, v in head.items() if v["direct_over_best"] is not None and v["direct_over_best"] < 1.2]
        if low:
            out.append(f"Below 1.2x (the ceiling is near; compare proxies with each other there): {', '.join(low)}")
        out.append("")
    if foreign:
        vals = sorted(foreign.values())
        busy = [f"{w}/{p} r{r} {v:.0%}" for (r, w, p), v in foreign.items() if v > FOREIGN_WARN]
        out.append(f"Other load (CPU share used by processes the bench did not start, per measurement): "
                   f"median {statistics.median(vals):.0%}, max {vals[-1]:.0%}; before the run {before_start:.0%}.")
        if busy:
            out.append(f"Disturbed (> {FOREIGN_WARN:.0%}): " + ", ".join(busy))
        steal = sorted(stolen.values())
        out.append(f"Steal (CPU time the hypervisor gave to other guests, per measurement: a shared host's "
                   f"load, which 'other load' cannot see): median {statistics.median(steal):.0%}, "
                   f"max {steal[-1]:.0%}.")
        robbed = [f"{w}/{p} r{r} {v:.0%}" for (r, w, p), v in stolen.items() if v > FOREIGN_WARN]
        if robbed:
            out.append(f"Stolen from (> {FOREIGN_WARN:.0%}): " + ", ".join(robbed))
        out.append("")
    out.append("Clients:")
    for w in args.only:
        out.append(f"- {w}: {CLIENTS[w]}")
    out.append("")
    out.append("Peers: " + "; ".join(f"{n}: {peers[n].describe}" for n in args.peers))
    if any(failed.values()):
        out.append("")
        out.append("Failed to start: " + "; ".join(f"{n} ({', '.join(sorted(v))})" for n, v in failed.items() if v))
    if errors:
        out.append("")
        out.append("Errors during measurements:")
        out.extend(f"- {e}" for e in errors[:40])
    if ctx.notes:
        out.append("")
        out.append("Notes:")
        out.extend(f"- {n}" for n in ctx.notes[:40])
    if args.plot:
        files = report.plot(summary, args.peers, args.only, os.path.join(ctx.results, f"bench-{ctx.stamp}"))
        out.append("")
        if files is None:
            out.append("--plot: matplotlib is not installed (pip install 'etcd-gatewayd[plot]', or apt-get install "
                       "python3-matplotlib); no charts written")
        else:
            out.append("Charts: " + ", ".join(shown(f) for f in files))
    out.append("")
    out.append(f"JSON: {shown(json_path)}; logs: {shown(ctx.logdir)}")
    print("\n".join(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
