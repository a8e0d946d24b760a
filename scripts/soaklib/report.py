"""The soak's table and its verdict (pure functions of the figures).

design: `LaneFigures` is everything one lane ended with; `verdict()` turns both
lanes, the gateway's footprint and the schedule's problems into a list of reasons
to fail (empty: PASS); `table()` prints them side by side. The bounds are here,
named, with why they are what they are:

- FAILURE_SLACK: the gateway lane may fail at most max(FAILURE_SLACK_MIN,
  FAILURE_SLACK_SHARE x its operations) more operations (and burst connections)
  than the direct lane. Failures after a 10 s budget of retries are rare events in
  both lanes (usually 0 to a few); which lane happens to have a request in flight
  when a member is SIGKILLed or SIGSTOPped is chance, and a gateway worker SIGKILL
  is a fault only the gateway lane meets (an in-flight request on it is lost, no
  proxy can save it). A systematic gateway problem (a stuck worker, a member kept
  in rotation while dead, resets under a burst) costs tens to hundreds.
- Error lines in the gateway's own log (`level` error or fatal): 0. Every one
  of them means the gateway met something it did not expect (a failed handler, a
  refused reload, a worker timeout); none is part of a fault it is built to absorb.
- Watch events lost, out of order, unexpected; stale reads; acknowledged puts
  missing from history: 0 in both lanes. In the direct lane these mean the soak's
  own checks (or etcd) are wrong, which must not pass either.
- FDS_SLACK: descriptors at the end may exceed the start by this much. Both
  samples are taken under the same steady load with the first configuration in
  force; a handful of connections (a watch reconnecting, a check in flight) moves
  the count by 2 each, while a leak per connection or per reload shows as
  hundreds after 1,000-connection bursts and several reloads.
- RSS_SLACK_SHARE, RSS_SLACK_MIB: RSS may grow by this share plus this much.
  Replaced workers start as copies of the master and grow as they serve, and the
  allocator keeps some of what a burst used; a leak of per-connection state over a
  burst of 1,000 (or of per-reload state) shows beyond it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from scripts.soaklib.gauge import Footprint

FAILURE_SLACK_MIN = 3
FAILURE_SLACK_SHARE = 0.001
FDS_SLACK = 24
RSS_SLACK_SHARE = 0.25
RSS_SLACK_MIB = 16.0


@dataclass
class LaneFigures:
    name: str
    puts: int = 0
    gets: int = 0
    failed: int = 0
    attempt_errors: int = 0
    stale_reads: int = 0
    owed: int = 0              # revisions in the store's history of the lane's prefix
    lost: int = 0              # owed and never delivered by the lane's watch
    unexpected: int = 0        # delivered but not in the history
    out_of_order: int = 0      # delivered at or below a revision already seen
    acked_missing: int = 0     # acknowledged puts absent from the history
    reconnects: int = 0
    stalls: int = 0
    burst_served: int = 0
    burst_failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.puts + self.gets


def failure_slack(ops: int) -> int:
    return max(FAILURE_SLACK_MIN, math.ceil(FAILURE_SLACK_SHARE * ops))


def rss_bound(start: Footprint) -> float:
    """Largest RSS (MiB) the end sample may show."""
    return start.rss_mib * (1 + RSS_SLACK_SHARE) + RSS_SLACK_MIB


def verdict(gw: LaneFigures, direct: LaneFigures, start: Footprint, end: Footprint,
            problems: list[str], gateway_errors: list[str]) -> list[str]:
    """Reasons to fail, most important first; empty means PASS. ``gateway_errors``:
    the msg of every error or fatal line the gateway logged."""
    reasons = list(problems)
    if gateway_errors:
        reasons.append(f"the gateway logged {len(gateway_errors)} error lines "
                       f"(first: {gateway_errors[0]!r})")
    slack = failure_slack(gw.done)
    if gw.failed > direct.failed + slack:
        reasons.append(f"{gw.failed} operations failed through the gateway, "
                       f"{direct.failed} directly (allowed: {slack} more)")
    burst_slack = failure_slack(gw.burst_served + gw.burst_failed)
    if gw.burst_failed > direct.burst_failed + burst_slack:
        reasons.append(f"{gw.burst_failed} burst connections failed through the gateway, "
                       f"{direct.burst_failed} directly (allowed: {burst_slack} more)")
    for lane in (gw, direct):
        for count, what in ((lane.lost, "watch events lost"),
                            (lane.out_of_order, "watch events out of order"),
                            (lane.unexpected, "watch events not in the history"),
                            (lane.stale_reads, "stale linearizable reads"),
                            (lane.acked_missing, "acknowledged puts missing from history")):
            if count:
                reasons.append(f"{count} {what} ({lane.name})")
        if lane.done == 0:
            reasons.append(f"no operation completed ({lane.name})")
    if end.processes == 0:
        reasons.append("the gateway is gone at the end")
    else:
        if end.fds > start.fds + FDS_SLACK:
            reasons.append(f"gateway fds grew from {start.fds} to {end.fds} "
                           f"(allowed: +{FDS_SLACK})")
        if end.rss_mib > rss_bound(start):
            reasons.append(f"gateway RSS grew from {start.rss_mib:.1f} to "
                           f"{end.rss_mib:.1f} MiB (allowed: {rss_bound(start):.1f})")
    return reasons


def table(gw: LaneFigures, direct: LaneFigures, start: Footprint, end: Footprint,
          faults: dict[str, int], warnings: dict[str, int]) -> str:
    """``warnings``: how many warn/error/fatal lines the gateway logged, per msg."""
    rows: list[tuple[str, str, str]] = [
        ("operations done (puts + linearizable gets)", f"{gw.done}", f"{direct.done}"),
        ("  puts / gets", f"{gw.puts} / {gw.gets}", f"{direct.puts} / {direct.gets}"),
        ("operations failed (10 s of retries spent)", f"{gw.failed}", f"{direct.failed}"),
        ("attempts that errored (then retried)", f"{gw.attempt_errors}",
         f"{direct.attempt_errors}"),
        ("burst connections served / failed", f"{gw.burst_served} / {gw.burst_failed}",
         f"{direct.burst_served} / {direct.burst_failed}"),
        ("stale linearizable reads", f"{gw.stale_reads}", f"{direct.stale_reads}"),
        ("watch events owed (store history)", f"{gw.owed}", f"{direct.owed}"),
        ("watch events lost", f"{gw.lost}", f"{direct.lost}"),
        ("watch events out of order / not in history",
         f"{gw.out_of_order} / {gw.unexpected}", f"{direct.out_of_order} / {direct.unexpected}"),
        ("acknowledged puts missing from history", f"{gw.acked_missing}",
         f"{direct.acked_missing}"),
        ("watch reconnects (of which stalls)", f"{gw.reconnects} ({gw.stalls})",
         f"{direct.reconnects} ({direct.stalls})"),
        ("gateway processes start / end", f"{start.processes} / {end.processes}", "-"),
        ("gateway fds start / end", f"{start.fds} / {end.fds}", "-"),
        ("gateway RSS MiB start / end", f"{start.rss_mib:.1f} / {end.rss_mib:.1f}", "-"),
    ]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len("gateway"), *(len(r[1]) for r in rows))
    w2 = max(len("direct"), *(len(r[2]) for r in rows))
    lines = [f"{'':<{w0}}  {'gateway':>{w1}}  {'direct':>{w2}}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
    lines.append("faults: " + (", ".join(f"{k} {v}" for k, v in faults.items()) or "none"))
    lines.append("gateway warnings: " + (", ".join(
        f"{k!r} {v}" for k, v in sorted(warnings.items(), key=lambda kv: -kv[1])) or "none"))
    lines.append(f"bounds: failures gateway <= direct + {failure_slack(gw.done)}; "
                 f"lost/out-of-order/stale 0; fds end <= start + {FDS_SLACK}; "
                 f"RSS end <= {rss_bound(start):.1f} MiB")
    return "\n".join(lines)
