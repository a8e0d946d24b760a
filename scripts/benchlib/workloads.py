"""The workloads.  Each takes (ctx, peer, port) and returns {metric: value}.

design: one measurement = one run of an external load generator (iperf3, or
the C `loadgen` built from loadgen.c) against `port`, which is either the
backend itself (direct) or a fresh proxy in front of it.  Every subprocess
has a timeout; every wait is bounded.  Proxy resources are read from /proc
over the proxy's whole process tree (master + workers).

The tls-* workloads measure TLS origination, the work a gateway in front of a TLS
cluster does: the load generator speaks plain TCP to the proxy, and the proxy
dials the backend with TLS (verifying its certificate, a full handshake per
connection: no session reuse) through a shared TLS terminator (an HAProxy started
by the bench, the same for every peer) in front of the iperf3 or echo backend.
Only peers that can originate TLS take part (TLS_PEERS).
"""
import json
import os
import select
import subprocess
import time

from procs import StartError, system_busy_s, tree_stats

WORKLOADS = ["bulk", "rr", "churn", "etcd", "idle", "tls-bulk", "tls-rr", "tls-churn"]
TLS_WORKLOADS = ("tls-bulk", "tls-rr", "tls-churn")

CLIENTS = {
    "bulk": "iperf3 -c 127.0.0.1 -p PORT -t D -P 1|8 -Z (Debian iperf3; -Z = sendfile, to spare the "
            "generator's CPU), server iperf3 -s; "
            "Gbit/s = end.sum_received; proxy CPU = utime+stime of all its processes (/proc) "
            "around the run / GB received",
    "rr": "loadgen pingpong (C, one epoll thread): C persistent connections, 64-byte request, "
          "wait for the 64-byte echo, repeat; backend: loadgen server (C epoll echo)",
    "churn": "loadgen churn (C, one epoll thread): C slots each doing non-blocking connect, "
             "64-byte request, 64-byte echo, close; latency from connect() to reply; "
             "backend: loadgen server",
    "etcd": "loadgen http (C, one epoll thread): C persistent HTTP/1.1 keep-alive connections "
            "to etcd's JSON gRPC gateway, POST /v3/kv/put (48-byte values, 256 keys per "
            "connection) or /v3/kv/range (linearizable, one key); one etcd member started by the "
            "bench (default --snapshot-count, fsync on; its data on /dev/shm where that is a tmpfs, "
            "unless --etcd-on-disk)",
    "tls-bulk": "iperf3 -P 1 as in bulk; the proxy dials a TLS terminator (HAProxy, bind ssl, "
                "EC P-256 certificate, TLS 1.3) in front of the iperf3 server",
    "tls-rr": "loadgen pingpong c=64 as in rr; the proxy dials the TLS terminator in front of the "
              "echo backend (each connection: one TLS session, reused for every request)",
    "tls-churn": "loadgen churn c=64 as in churn; every client connection makes the proxy do a new "
                 "TLS connection (full handshake with verification) to the terminator",
    "idle": "loadgen idle (C), a fresh proxy instance per N, warmed by 128 connections used once and "
            "closed: opens N connections (256 in flight), exchanges 1 byte on each, "
            "waits 1 s, reads RSS and fd counts of all proxy processes (/proc) minus the "
            "baseline before opening, divided by N; then 1 byte on every connection again: "
            "'survives' = all echo and no proxy process died; backend: loadgen server "
            "(a separate process)",
}


class Durations:
    def __init__(self, quick):
        if quick:
            self.bulk, self.rr, self.warm = 2.0, 1.5, 0.3
        else:
            self.bulk, self.rr, self.warm = 4.0, 3.0, 0.5


def _loadgen(ctx, args, timeout):
    argv = [ctx.loadgen] + [str(a) for a in args]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"loadgen {' '.join(map(str, args))} failed: {p.stderr.strip()[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _rr_like(ctx, peer, port, mode, conc_list, extra=()):
    """One loadgen run per concurrency; each result gains "cpu_us_per_op": the proxy's
    CPU (utime+stime of all its processes, /proc) around the run divided by every
    exchange the run completed, warm-up included (loadgen's "all"), so efficiency
    shows where throughput is bound by the shared CPUs. Absent for direct."""
    out = {}
    d = ctx.durations
    for c in conc_list:
        before = tree_stats(peer.root_pid) if peer.root_pid else None
        r = _loadgen(ctx, [mode, "-a", f"127.0.0.1:{port}", "-c", c, "-d", d.rr, "-w", d.warm, *extra],
                     timeout=d.rr + d.warm + 30)
        after = tree_stats(peer.root_pid) if peer.root_pid else None
        if before is not None and after is not None and r.get("all"):
            r["cpu_us_per_op"] = (after["cpu_s"] - before["cpu_s"]) * 1e6 / r["all"]
        out[f"c{c}"] = r
    return out


def bulk(ctx, peer, port, streams_list=(1, 8), name="bulk", restart=None):
    res = {}
    d = ctx.durations
    for streams in streams_list:
        r = None
        for _attempt in range(2):
            before = tree_stats(peer.root_pid) if peer.root_pid else None
            busy_before = system_busy_s()
            argv = [ctx.iperf3_bin, "-c", "127.0.0.1", "-p", str(port), "-t", str(d.bulk), "-P", str(streams),
                    "-Z", "-J", "--connect-timeout", "3000"]
            try:
                p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   timeout=d.bulk + 30)
                j = json.loads(p.stdout) if p.stdout.strip() else {"error": p.stderr.strip()}
            except (subprocess.TimeoutExpired, ValueError) as e:
                j = {"error": repr(e)}
            after = tree_stats(peer.root_pid) if peer.root_pid else None
            busy = system_busy_s() - busy_before
            if "error" not in j and "end" in j:
                rx = j["end"]["sum_received"]
                r = {"gbps": rx["bits_per_second"] / 1e9, "bytes": rx["bytes"], "seconds": rx["seconds"]}
                if rx["bytes"]:
                    # the whole machine's busy CPU per GB moved (both iperf3 ends, the
                    # proxy, and the loopback softirq work wherever the kernel billed it);
                    # minus direct's, it is what the proxy costs the host
                    r["machine_cpu_s_per_gb"] = busy / (rx["bytes"] / 1e9)
                if before is not None and after is not None:
                    cpu = after["cpu_s"] - before["cpu_s"]
                    r["proxy_cpu_s"] = cpu
                    r["cpu_s_per_gb"] = cpu / (rx["bytes"] / 1e9) if rx["bytes"] else None
                break
            ctx.note(f"iperf3 through {peer.name} (-P {streams}) failed: {j.get('error')}; restarting iperf3 server")
            if restart is None:
                ctx.restart_iperf3()
            else:
                port = restart(peer)
        key = f"p{streams}"
        if r is None:
            res[f"{name}.{key}.error"] = True
            continue
        res[f"{name}.{key}.gbps"] = r["gbps"]
        if "cpu_s_per_gb" in r:
            res[f"{name}.{key}.cpu_s_per_gb"] = r["cpu_s_per_gb"]
            res[f"{name}.{key}.proxy_cpu_s"] = r["proxy_cpu_s"]
        if "machine_cpu_s_per_gb" in r:
            res[f"{name}.{key}.machine_cpu_s_per_gb"] = r["machine_cpu_s_per_gb"]
        res[f"{name}.{key}.gbytes"] = r["bytes"] / 1e9
    return res


def _restart_tls_iperf3(ctx):
    def restart(peer):
        """A fresh iperf3 server and terminator, and the peer in front of them again."""
        ctx.restart_iperf3()
        ctx.restart_backend("tls-iperf3")
        peer.stop()
        return peer.start(ctx.backends["tls-iperf3"], tls=ctx.tls)
    return restart


def tls_bulk(ctx, peer, port):
    return bulk(ctx, peer, port, streams_list=(1,), name="tls-bulk",
                restart=_restart_tls_iperf3(ctx))


def tls_rr(ctx, peer, port):
    res = {}
    for c, r in _rr_like(ctx, peer, port, "pingpong", (64,), ("-s", 64)).items():
        res[f"tls-rr.{c}.rps"] = r["rate"]
        res[f"tls-rr.{c}.p99_us"] = r["p99_us"]
        res[f"tls-rr.{c}.errors"] = r["errors"]
        if "cpu_us_per_op" in r:
            res[f"tls-rr.{c}.cpu_us_per_req"] = r["cpu_us_per_op"]
    return res


def tls_churn(ctx, peer, port):
    res = {}
    for c, r in _rr_like(ctx, peer, port, "churn", (64,), ("-s", 64)).items():
        res[f"tls-churn.{c}.cps"] = r["rate"]
        res[f"tls-churn.{c}.p99_us"] = r["p99_us"]
        res[f"tls-churn.{c}.errors"] = r["errors"]
        if "cpu_us_per_op" in r:
            res[f"tls-churn.{c}.cpu_us_per_conn"] = r["cpu_us_per_op"]
    return res


def rr(ctx, peer, port):
    res = {}
    for c, r in _rr_like(ctx, peer, port, "pingpong", (1, 64), ("-s", 64)).items():
        res[f"rr.{c}.rps"] = r["rate"]
        res[f"rr.{c}.p50_us"] = r["p50_us"]
        res[f"rr.{c}.p99_us"] = r["p99_us"]
        res[f"rr.{c}.errors"] = r["errors"]
        if "cpu_us_per_op" in r:
            res[f"rr.{c}.cpu_us_per_req"] = r["cpu_us_per_op"]
    return res


def churn(ctx, peer, port):
    res = {}
    for c, r in _rr_like(ctx, peer, port, "churn", (1, 64), ("-s", 64)).items():
        res[f"churn.{c}.cps"] = r["rate"]
        res[f"churn.{c}.p50_us"] = r["p50_us"]
        res[f"churn.{c}.p99_us"] = r["p99_us"]
        res[f"churn.{c}.errors"] = r["errors"]
        if "cpu_us_per_op" in r:
            res[f"churn.{c}.cpu_us_per_conn"] = r["cpu_us_per_op"]
    return res


def etcd(ctx, peer, port):
    res = {}
    for op in ("put", "range"):
        for c, r in _rr_like(ctx, peer, port, "http", (1, 64), ("-o", op)).items():
            res[f"etcd.{op}.{c}.ops"] = r["rate"]
            res[f"etcd.{op}.{c}.p50_us"] = r["p50_us"]
            res[f"etcd.{op}.{c}.p99_us"] = r["p99_us"]
            res[f"etcd.{op}.{c}.errors"] = r["errors"]
            if "cpu_us_per_op" in r:
                res[f"etcd.{op}.{c}.cpu_us_per_op"] = r["cpu_us_per_op"]
    return res


def _readline(proc, timeout):
    """One line from proc.stdout within timeout (bounded), or None."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], min(0.5, max(0.0, deadline - time.monotonic())))
        if not r:
            if proc.poll() is not None:
                return None
            continue
        ch = os.read(fd, 1)
        if not ch:
            return None
        if ch == b"\n":
            return buf.decode()
        buf += ch
    return None


def _kv(line):
    return {k: float(v) for k, v in (tok.split("=") for tok in line.split()[1:])}


IDLE_COUNTS = (3000, 9000)
WARM_CONNS = 128


def idle(ctx, peer, port):
    res = {}
    for i, n in enumerate(IDLE_COUNTS):
        key = f"idle.{n}"
        if i > 0:
            # a fresh instance for each count, so memory kept from the previous
            # count (allocator pools, Go heap) does not flatter the next one
            try:
                port = peer.restart()
            except StartError as e:
                ctx.note(f"idle {n}: {peer.name} failed to restart: {str(e)[:300]}")
                res[f"{key}.survives"] = False
                continue
        # warm-up: WARM_CONNS connections opened, used once and closed, so one-time
        # lazy set-up in the proxy (first accept, buffer pools) is not charged per connection
        try:
            subprocess.run([ctx.loadgen, "idle", "-a", f"127.0.0.1:{port}", "-n", str(WARM_CONNS), "-T", "30",
                            "-W", "10"], input=b"quit\n", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=40)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.5)
        pids_before = set(peer.pids())
        base = tree_stats(peer.root_pid) if peer.root_pid else None
        lg = subprocess.Popen([ctx.loadgen, "idle", "-a", f"127.0.0.1:{port}", "-n", str(n), "-T", "300", "-W", "60"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        try:
            line = _readline(lg, 75)
            opened = _kv(line) if line and line.startswith("OPEN") else {"ok": 0, "fail": n}
            time.sleep(1.0)
            after = tree_stats(peer.root_pid) if peer.root_pid else None
            alive_mid = peer.alive()
            lg.stdin.write(b"check\n")
            lg.stdin.flush()
            line = _readline(lg, 45)
            checked = _kv(line) if line and line.startswith("CHECK") else {"ok": 0, "fail": n}
            lg.stdin.write(b"quit\n")
            lg.stdin.flush()
        except (BrokenPipeError, OSError):
            opened = locals().get("opened", {"ok": 0, "fail": n})
            checked = {"ok": 0, "fail": n}
            after, alive_mid = None, peer.alive()
        finally:
            try:
                lg.wait(timeout=20)
            except subprocess.TimeoutExpired:
                lg.kill()
                lg.wait(timeout=5)
        pids_after = set(peer.pids())
        workers_kept = pids_before <= pids_after if peer.root_pid else True
        survives = (alive_mid and peer.alive() and workers_kept and opened["fail"] == 0
                    and checked["fail"] == 0 and checked["ok"] == n)
        res[f"{key}.survives"] = bool(survives)
        res[f"{key}.opened"] = int(opened["ok"])
        res[f"{key}.echoed_at_end"] = int(checked["ok"])
        if base and after and alive_mid and after["pids"] and opened["ok"] > 0:
            res[f"{key}.rss_kib_per_conn"] = (after["rss"] - base["rss"]) / opened["ok"] / 1024
            res[f"{key}.fds_per_conn"] = (after["fds"] - base["fds"]) / opened["ok"]
            res[f"{key}.rss_total_mib"] = after["rss"] / 1048576
            res[f"{key}.processes"] = len(after["pids"])
    return res


RUNNERS = {"bulk": bulk, "rr": rr, "churn": churn, "etcd": etcd, "idle": idle,
           "tls-bulk": tls_bulk, "tls-rr": tls_rr, "tls-churn": tls_churn}
BACKEND_OF = {"bulk": "iperf3", "rr": "echo", "churn": "echo", "etcd": "etcd", "idle": "echo",
              "tls-bulk": "tls-iperf3", "tls-rr": "tls-echo", "tls-churn": "tls-echo"}
