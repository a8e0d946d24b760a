"""Which members a new client should be offered to, in order: pure choice, no I/O.

design: the worker asks for an ordered list of candidates and dials them in turn, so
failover for one client is "try the next in the list". Healthy members come first in
round-robin order (the counter is shared by every worker through the health table, so
sequential connections spread evenly whichever worker accepts them); members marked
down come last, so that when every member is down each gets one bounded attempt and
service resumes as soon as one is back.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def round_robin(entries: Sequence[T], up: Sequence[bool], counter: int) -> list[T]:
    """Healthy entries rotated by `counter`, then the unhealthy ones in roster order."""
    healthy = [e for e, ok in zip(entries, up) if ok]
    down = [e for e, ok in zip(entries, up) if not ok]
    if healthy:
        start = counter % len(healthy)
        healthy = healthy[start:] + healthy[:start]
    return healthy + down
