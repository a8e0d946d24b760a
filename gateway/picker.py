"""Which members a new client should be offered to, in order: pure choice, no I/O.

design: the worker asks for an ordered list of candidates and dials them in turn, so
failover for one client is "try the next in the list". Healthy members come first in
round-robin order (the counter is shared by every worker through the health table, so
sequential connections spread evenly whichever worker accepts them); members marked
down come last, so that when every member is down each gets one bounded attempt and
service resumes as soon as one is back. The worker hands over only candidates (never a
learner) and counts a member whose role is not known yet as unhealthy (health.py), so
every order below follows the same rule.

Static endpoints use plain round robin; endpoints found by DNS SRV use RFC 2782
(`rfc2782`): the lowest priority class that has a healthy member takes every new
client, shared inside the class by weight.

With --balance least-connections (`least_connections`), the healthy members are
ordered by their relayed connections across all workers (an estimate the worker reads
from the health table in O(members)), divided by their weight, fewest first; ties go
round robin by the shared counter. With SRV the priority classes keep their order and
this replaces the weighted draw inside each class; static endpoints are one class of
equal weights.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def round_robin(entries: Sequence[T], up: Sequence[bool], counter: int) -> list[T]:
    """Healthy entries rotated by `counter`, then the unhealthy ones in roster order."""
    return rotate(*split(entries, up), counter)


def split(entries: Sequence[T], up: Sequence[bool]) -> tuple[list[T], list[T]]:
    """(healthy, unhealthy) entries, each in roster order: `rotate`'s input, which a
    caller that orders the same entries for many clients can keep."""
    return ([e for e, ok in zip(entries, up) if ok],
            [e for e, ok in zip(entries, up) if not ok])


def rotate(healthy: list[T], down: list[T], counter: int) -> list[T]:
    """`round_robin` of entries already `split`: a new list each call."""
    if not healthy:
        return list(down)
    start = counter % len(healthy)
    return healthy[start:] + healthy[:start] + down


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
    left = list(zip(entries, _effective_weights([weight(e) for e in entries])))
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


def least_connections(entries: Sequence[T], up: Sequence[bool], load: Sequence[int],
                      counter: int, priority: Callable[[T], int] = lambda e: 0,
                      weight: Callable[[T], int] = lambda e: 0) -> list[T]:
    """Healthy entries by priority class, lowest first; inside a class fewest
    connections relative to weight first ((load + 1) / weight, HAProxy's leastconn;
    weight-0 records weigh as in `rfc2782`), ties rotated by `counter`. Then the
    unhealthy ones in roster order."""
    classes: dict[int, list[tuple[T, int]]] = {}
    for entry, ok, count in zip(entries, up, load):
        if ok:
            classes.setdefault(priority(entry), []).append((entry, count))
    ordered: list[T] = []
    for prio in sorted(classes):
        members = classes[prio]
        weights = _effective_weights([weight(e) for e, _ in members])
        scored = sorted(((count + 1) / w, i)
                        for i, ((_, count), w) in enumerate(zip(members, weights)))
        start = 0
        while start < len(scored):  # each run of equal scores, rotated by `counter`
            end = start
            while end < len(scored) and scored[end][0] == scored[start][0]:
                end += 1
            run = [members[i][0] for _, i in scored[start:end]]
            turn = counter % len(run)
            ordered.extend(run[turn:] + run[:turn])
            start = end
    return ordered + [e for e, ok in zip(entries, up) if not ok]


def _effective_weights(weights: list[int]) -> list[float]:
    """Weights as `_weighted_order` uses them: weight-0 records share ZERO_WEIGHT_SHARE
    of a class whose other records weigh, and are equal when every weight is 0."""
    positive = sum(weights)
    zeros = weights.count(0)
    zero_weight = (positive * ZERO_WEIGHT_SHARE / zeros) if positive and zeros else 1.0
    return [float(w) or zero_weight for w in weights]
