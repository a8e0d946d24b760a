"""Medians, ratios, goals; the markdown table, the JSON file and the optional plots.

design: the bench hands over samples[peer][metric] = [one value per round]
(None or absent when the peer failed that round).  Everything shown is derived
here: the median of the rounds with min-max, the ratios etcd-gatewayd/Go,
/HAProxy, /direct (and /c-splice, the C reference splice relay, when it ran), and
each goal of the issue evaluated on those medians.
"""
import statistics

from peers import C_SPLICE, DIRECT, GO, HAPROXY, OURS, PEERS

# (metric key, label, goal) ; goal: None | ("go", op, x) | ("abs", op, x) | ("true",)
ROWS = [
    ("bulk.p1.gbps", "bulk 1 stream: Gbit/s", ("go", ">=", 1.0)),
    ("bulk.p1.cpu_s_per_gb", "bulk 1 stream: proxy CPU s/GB", ("go", "<=", 0.7)),
    ("bulk.p1.machine_cpu_s_per_gb", "bulk 1 stream: machine CPU s/GB", None),
    ("bulk.p8.gbps", "bulk 8 streams: Gbit/s", ("go", ">=", 1.0)),
    ("bulk.p8.cpu_s_per_gb", "bulk 8 streams: proxy CPU s/GB", ("go", "<=", 0.7)),
    ("bulk.p8.machine_cpu_s_per_gb", "bulk 8 streams: machine CPU s/GB", None),
    ("rr.c1.rps", "req/resp c=1: requests/s", ("go", ">=", 1.0)),
    ("rr.c1.p50_us", "req/resp c=1: p50 µs", None),
    ("rr.c1.p99_us", "req/resp c=1: p99 µs", None),
    ("rr.c1.cpu_us_per_req", "req/resp c=1: proxy CPU µs/request", None),
    ("rr.c64.rps", "req/resp c=64: requests/s", ("go", ">=", 1.0)),
    ("rr.c64.p50_us", "req/resp c=64: p50 µs", None),
    ("rr.c64.p99_us", "req/resp c=64: p99 µs", ("go", "<=", 1.2)),
    ("rr.c64.cpu_us_per_req", "req/resp c=64: proxy CPU µs/request", None),
    ("churn.c1.cps", "churn c=1: connections/s", ("go", ">=", 1.0)),
    ("churn.c1.p50_us", "churn c=1: p50 µs", None),
    ("churn.c1.p99_us", "churn c=1: p99 µs", None),
    ("churn.c1.cpu_us_per_conn", "churn c=1: proxy CPU µs/connection", None),
    ("churn.c64.cps", "churn c=64: connections/s", ("go", ">=", 1.0)),
    ("churn.c64.p50_us", "churn c=64: p50 µs", None),
    ("churn.c64.p99_us", "churn c=64: p99 µs", None),
    ("churn.c64.cpu_us_per_conn", "churn c=64: proxy CPU µs/connection", None),
    ("etcd.put.c1.ops", "etcd put c=1: ops/s", ("go", ">=", 1.0)),
    ("etcd.put.c1.p99_us", "etcd put c=1: p99 µs", None),
    ("etcd.put.c1.cpu_us_per_op", "etcd put c=1: proxy CPU µs/op", None),
    ("etcd.put.c64.ops", "etcd put c=64: ops/s", ("go", ">=", 1.0)),
    ("etcd.put.c64.p99_us", "etcd put c=64: p99 µs", None),
    ("etcd.put.c64.cpu_us_per_op", "etcd put c=64: proxy CPU µs/op", None),
    ("etcd.range.c1.ops", "etcd range c=1: ops/s", ("go", ">=", 1.0)),
    ("etcd.range.c1.p99_us", "etcd range c=1: p99 µs", None),
    ("etcd.range.c1.cpu_us_per_op", "etcd range c=1: proxy CPU µs/op", None),
    ("etcd.range.c64.ops", "etcd range c=64: ops/s", ("go", ">=", 1.0)),
    ("etcd.range.c64.p99_us", "etcd range c=64: p99 µs", None),
    ("etcd.range.c64.cpu_us_per_op", "etcd range c=64: proxy CPU µs/op", None),
    ("idle.3000.survives", "idle 3,000: survives", None),
    ("idle.3000.fds_per_conn", "idle 3,000: proxy fds/conn", None),
    ("idle.3000.rss_kib_per_conn", "idle 3,000: proxy RSS KiB/conn", None),
    ("idle.9000.survives", "idle 9,000: survives", ("true",)),
    ("idle.9000.fds_per_conn", "idle 9,000: proxy fds/conn", ("abs", "<=", 2.0)),
    ("idle.9000.rss_kib_per_conn", "idle 9,000: proxy RSS KiB/conn", ("abs", "<=", 1.5)),
    ("tls-bulk.p1.gbps", "TLS origination, bulk 1 stream: Gbit/s", ("haproxy", ">=", 0.8)),
    ("tls-bulk.p1.cpu_s_per_gb", "TLS origination, bulk 1 stream: proxy CPU s/GB", None),
    ("tls-rr.c64.rps", "TLS origination, req/resp c=64: requests/s", ("haproxy", ">=", 0.8)),
    ("tls-rr.c64.p99_us", "TLS origination, req/resp c=64: p99 µs", None),
    ("tls-rr.c64.cpu_us_per_req", "TLS origination, req/resp c=64: proxy CPU µs/request", None),
    ("tls-churn.c64.cps", "TLS origination, new TLS connections/s (c=64)", ("haproxy", ">=", 0.8)),
    ("tls-churn.c64.p99_us", "TLS origination, new TLS connections: p99 µs", None),
    ("tls-churn.c64.cpu_us_per_conn", "TLS origination, new TLS connections: proxy CPU µs/connection",
     None),
]

# throughput rows used to show that the load generator is not the bottleneck
HEADROOM_ROWS = ["bulk.p1.gbps", "bulk.p8.gbps", "rr.c1.rps", "rr.c64.rps", "churn.c1.cps",
                 "churn.c64.cps", "etcd.put.c1.ops", "etcd.put.c64.ops", "etcd.range.c1.ops",
                 "etcd.range.c64.ops"]

FDS_TOLERANCE = 0.01  # "2 fds per connection" allows 1 % of stray descriptors


def workload_of(key):
    return key.split(".", 1)[0]


def summarize(samples, peers, rounds):
    """{metric: {peer: {median, min, max, n, values}}} for every row and extra metric."""
    out = {}
    keys = {k for p in samples.values() for k in p}
    for key in sorted(keys):
        out[key] = {}
        for peer in peers:
            vals = samples.get(peer, {}).get(key, [])
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            if isinstance(vals[0], bool):
                out[key][peer] = {"all": all(vals), "n_true": sum(vals), "n": len(vals), "rounds": rounds,
                                  "values": vals}
            else:
                out[key][peer] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                                  "n": len(vals), "values": vals}
    return out


def _med(summary, key, peer):
    s = summary.get(key, {}).get(peer)
    if not s:
        return None
    return s.get("median", s.get("all"))


def ratio(summary, key, num, den):
    a, b = _med(summary, key, num), _med(summary, key, den)
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or b == 0:
        return None
    if a < 0 or b < 0:  # -1 = no sample (no request completed)
        return None
    return a / b


def evaluate(goal, summary, key):
    """'met', 'missed' or 'n/a' for one goal on the medians."""
    if goal is None:
        return ""
    ours = _med(summary, key, OURS)
    if ours is None:
        return "n/a"
    kind = goal[0]
    if kind == "true":
        return "met" if ours is True else "missed"
    if kind in ("go", "haproxy"):
        r = ratio(summary, key, OURS, GO if kind == "go" else HAPROXY)
        if r is None:
            return "n/a"
        _, op, x = goal
        return "met" if (r >= x if op == ">=" else r <= x) else "missed"
    if kind == "abs":
        _, op, x = goal
        if key.endswith("fds_per_conn"):
            x = x * (1 + FDS_TOLERANCE)
        return "met" if (ours >= x if op == ">=" else ours <= x) else "missed"
    return "n/a"


def goal_text(goal):
    if goal is None:
        return ""
    if goal[0] == "true":
        return "yes"
    op = "≥" if goal[1] == ">=" else "≤"
    if goal[0] in ("go", "haproxy"):
        return f"{op} {goal[2]}x {goal[0]}"
    return f"{op} {goal[2]}"


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if v < 0:
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100000:
        return f"{v / 1000:.0f}k"
    if a >= 10000:
        return f"{v / 1000:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(summary, key, peer, failed):
    s = summary.get(key, {}).get(peer)
    if not s:
        return "failed" if failed else "-"
    if "all" in s:
        return f"{'yes' if s['all'] else 'no'} ({s['n_true']}/{s['n']})"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"])
    return f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"


def fmt_ratio(r):
    return "-" if r is None else f"{r:.2f}x"


def markdown(summary, peers, workloads, failed, errors):
    reference = C_SPLICE in peers and "bulk" in workloads
    cols = ["metric"] + peers + ["ours/go", "ours/haproxy", "ours/direct"] + (["ours/c-splice"] if reference else [])
    cols += ["goal", "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for key, label, goal in ROWS:
        if workload_of(key) not in workloads:
            continue
        row = [label] + [cell(summary, key, p, workload_of(key) in failed.get(p, ())) for p in peers]
        row += [fmt_ratio(ratio(summary, key, OURS, GO)), fmt_ratio(ratio(summary, key, OURS, HAPROXY)),
                fmt_ratio(ratio(summary, key, OURS, DIRECT))]
        if reference:
            row.append(fmt_ratio(ratio(summary, key, OURS, C_SPLICE)))
        row += [goal_text(goal), evaluate(goal, summary, key)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def headroom(summary, workloads):
    """direct / best proxy for each throughput row: > 1 means the generator outran every proxy."""
    out = {}
    for key in HEADROOM_ROWS:
        if workload_of(key) not in workloads:
            continue
        d = _med(summary, key, DIRECT)
        best = [(_med(summary, key, p), p) for p in PEERS[1:] if _med(summary, key, p) is not None]
        best = [b for b in best if b[0] is not None and b[0] > 0]
        if d is None or not best:
            continue
        v, p = max(best)
        out[key] = {"direct": d, "best_proxy": p, "best_proxy_value": v, "direct_over_best": d / v if v else None}
    return out


def plot(summary, peers, workloads, prefix):
    """One PNG bar chart per workload (median, min-max whiskers); needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    files = []
    for w in workloads:
        rows = [(k, lbl) for k, lbl, _ in ROWS if workload_of(k) == w and not k.endswith("survives")]
        rows = [(k, lbl) for k, lbl in rows if summary.get(k)]
        if not rows:
            continue
        ncol = 2 if len(rows) > 1 else 1
        nrow = (len(rows) + ncol - 1) // ncol
        fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 3.2 * nrow), squeeze=False)
        for ax, (k, lbl) in zip(axes.flat, rows):
            names, meds, lo, hi = [], [], [], []
            for p in peers:
                s = summary[k].get(p)
                if not s or "median" not in s or s["median"] < 0:
                    continue
                names.append(p)
                meds.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            colors = ["#888888" if n == DIRECT else "#d62728" if n == OURS else "#1f77b4" if n == GO
                      else "#2ca02c" for n in names]
            ax.bar(names, meds, yerr=[lo, hi], color=colors, capsize=3)
            ax.set_title(lbl, fontsize=10)
            ax.tick_params(axis="x", labelsize=8, rotation=20)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle(f"{w}: median of rounds, whiskers min-max")
        fig.tight_layout()
        path = f"{prefix}-{w}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(path)
    return files
