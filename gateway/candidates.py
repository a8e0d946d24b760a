"""Which members a worker may offer a new client, and how each stands: read from the
shared table once per change, not once per dial.

design: every dial needs the roster without its learners (the one rule: a learner is
never a candidate), each candidate's mark (in rotation or not, health.py
`in_rotation`) and which members in rotation are suspects (health.py `suspect`). Those
change seldom (a member marked down or up, a check's verdict on its role, a timed-out
dial, a roster or --balance published), and every such write moves the table's health
stamp. So `Candidates` derives a `View` once and hands the same one out for as long as
the stamp reads the same. Only the suspect rule also moves with time (a dial waiting
longer than `after` makes its member a suspect with no write at all): a view expires at
the earliest time that could happen (health.py `suspect_expiry`), then it is derived
again. The order itself (RFC 2782, least connections) is still chosen per dial, by
picker.py, from the view, except round robin's: with n members in rotation it has only
n orders (each rotation of them, then the members out of rotation, suspects moved as
`rank` says), so a round-robin view makes them once (`rotations`) and a dial takes one
by the shared counter, read-only: no lists built and no sort per dial.
"""
from __future__ import annotations

import math

from gateway import picker
from gateway.endpoints import Order, RosterEntry
from gateway.health import Balance, HealthTable

# a suspect's place in a dial's order: after the members in rotation, before those out
IN_ROTATION, SUSPECT, OUT_OF_ROTATION = range(3)


class View:
    """The candidates as they stand: `entries` (roster order, learners left out), their
    `up` marks (in rotation), `rank` (slot -> IN_ROTATION, SUSPECT or OUT_OF_ROTATION;
    None when no candidate is a suspect), and the policies published with the roster.
    `rotations`: round robin's orders, ranked (empty under any other policy)."""
    __slots__ = ("entries", "up", "any_up", "healthy", "down", "rank", "order", "balance",
                 "rotations")

    def __init__(self, entries: list[RosterEntry], up: list[bool],
                 rank: dict[int, int] | None, order: Order, balance: Balance):
        self.entries = entries
        self.up = up
        self.any_up = any(up)
        self.healthy, self.down = picker.split(entries, up)  # for picker.rotate
        self.rank = rank
        self.order = order
        self.balance = balance
        self.rotations: list[list[RosterEntry]] = []
        if order is Order.ROUND_ROBIN and balance is Balance.ROUND_ROBIN:
            healthy, down = self.healthy, self.down
            self.rotations = [self.ranked(picker.rotate(healthy, down, start))
                              for start in range(max(1, len(healthy)))]

    def ranked(self, candidates: list[RosterEntry]) -> list[RosterEntry]:
        """`candidates` (in place) with suspects moved after the other members in
        rotation, before those out of it: the pickers put members out of rotation
        last; only suspects (health.py `suspect`) move, stably within a rank."""
        rank = self.rank
        if rank is not None:
            candidates.sort(key=lambda e: rank[e.slot])
        return candidates


class Candidates:
    """One worker's cached `View` of the table (see the module comment); `after` is
    its suspect delay (health.py `suspect`)."""

    def __init__(self, table: HealthTable, after: float):
        self._table = table
        self._after = after
        self._stamp = -1            # the health stamp `_view` was derived under
        self._expiry = 0.0          # ... and the monotonic second it is good until
        self._view = View([], [], None, Order.ROUND_ROBIN, Balance.ROUND_ROBIN)
        self._generation = -1       # the roster generation `roster` was read at
        self.roster: list[RosterEntry] = []  # the whole roster, learners too

    def view(self, now: float) -> View:
        """The candidates at `now` (monotonic)."""
        stamp = self._table.health_stamp
        if stamp != self._stamp or now >= self._expiry:
            self._derive(stamp, now)
        return self._view

    def _derive(self, stamp: int, now: float) -> None:
        table = self._table
        order = self._view.order
        generation = table.generation
        if generation != self._generation:
            self.roster = table.roster()
            order = table.policy
            self._generation = generation
        entries = [e for e in self.roster if table.is_candidate(e.slot)]
        up = [table.in_rotation(e.slot) for e in entries]
        rank: dict[int, int] | None = None
        expiry = math.inf
        if len(entries) > 1:  # with one candidate, no member goes after another
            after = self._after
            suspects = set()
            for entry, ok in zip(entries, up):
                if ok:
                    if table.suspect(entry.slot, now, after):
                        suspects.add(entry.slot)
                    expiry = min(expiry, table.suspect_expiry(entry.slot, now, after))
            if suspects:
                rank = {e.slot: SUSPECT if e.slot in suspects
                        else IN_ROTATION if ok else OUT_OF_ROTATION
                        for e, ok in zip(entries, up)}
        self._view = View(entries, up, rank, order, table.balance)
        self._stamp, self._expiry = stamp, expiry
