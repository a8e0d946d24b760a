"""Which members a new client should be offered to, in order: pure choice, no I/O.

design: the worker asks for an ordered list of candidates and dials them in turn, so
failover for one client is "try the next in the list". Healthy members come first in
round-robin order (the counter is shared by every worker through the health table, so
sequential connections spread evenly whichever worker accepts them); members marked
down come last, so that when every member is down each gets one bounded attempt and
service resumes as soon as one is back.

Static endpoints use plain round robin; endpoints found by DNS SRV use RFC 2782
(`rfc2782`): the lowest priority class that has a healthy member takes every new
client, shared inside the class by weight.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def round_robin(entries: Sequence[T], up: Sequence[bool], counter: int) -> list[T]:
    """Healthy entries rotated by `counter`, then the unhealthy ones in roster order."""
    healthy = [e for e, ok in zip(entries, up) if ok]
    down = [e for e, ok in zip(entries, up) if not ok]
    if healthy:
        start = counter % len(healthy)
        healthy = healthy[start:] + healthy[:start]
    return healthy + down


ZERO_WEIGHT_SHARE = 0.01  # all weight-0 records of a class together, when others weigh


def rfc2782(entries: Sequence[T], up: Sequence[bool], priority: Callable[[T], int],
            weight: Callable[[T], int], rand: Callable[[], float]) -> list[T]:
    """RFC 2782 order: healthy entries by priority class, lowest first; inside a class a
    weighted random order in which each entry comes first with a probability
    proportional to its weight (3 and 1 give 75% and 25%: the RFC's inclusive integer
    draw would give 80/20). Weight-0 records share ZERO_WEIGHT_SHARE of a class whose
    other records have weight, and split it evenly when every weight is 0. Then the
    unhealthy entries, for failover."""
    healthy = [e for e, ok in zip(entries, up) if ok]
    down = [e for e, ok in zip(entries, up) if not ok]
    classes: dict[int, list[T]] = {}
    for entry in healthy:
        classes.setdefault(priority(entry), []).append(entry)
    ordered: list[T] = []
    for prio in sorted(classes):
        ordered.extend(_weighted_order(classes[prio], weight, rand))
    return ordered + down


def _weighted_order(entries: list[T], weight: Callable[[T], int],
                    rand: Callable[[], float]) -> list[T]:
    """Weighted random order without replacement."""
    positive = sum(weight(e) for e in entries)
    zeros = sum(1 for e in entries if weight(e) == 0)
    zero_weight = (positive * ZERO_WEIGHT_SHARE / zeros) if positive and zeros else 1.0
    left = [(e, float(weight(e)) or zero_weight) for e in entries]
    out: list[T] = []
    while left:
        target = rand() * sum(w for _, w in left)
        running = 0.0
        for i, (entry, w) in enumerate(left):
            running += w
            if running > target or i == len(left) - 1:
                out.append(entry)
                del left[i]
                break
    return out
