"""The shared-memory endpoint table: roster, health marks and counters for all processes.

design: one anonymous `mmap` made by the master before it forks, so every worker sees
the same bytes with no files, no resource tracker and no locks. Each field has one
writer or tolerates racing writers that write the same kind of value:

- the roster (which slots are in use, their addresses, priority and weight) is written
  only by the master, under a generation counter (a seqlock: odd while writing);
  workers re-read it only when the generation moved;
- `down_at` (0.0 = up, else the CLOCK_MONOTONIC second of the failure, shared by every
  process on the host) is written by any worker that fails to dial and by the master's
  probe; racing writers both write "now", and readmission is compare-and-clear;
- counters live in a [worker slot][column] matrix (columns: one per endpoint slot,
  one for gateway-wide counters, one per listener slot, handed out by the master in
  a cycle like endpoint slots): each worker writes only its own row, so a counter is
  never written by two processes; the master folds a dead worker's row into a
  `retired` row before the slot is reused, so totals never go back. A worker adds to
  its cells in place, through the table's u64 view (`cells`), as each count happens:
  no call and no struct per count, so there is nothing to batch and no count waits
  for a flush (a reader sees it at once);
- load aggregates (see `refresh_load`): least-connections and --max-connections need
  the relayed connections of every worker, but a sum over the matrix per accept would
  cost O(workers x members). So the master, on a short timer (LOAD_REFRESH) that runs
  only while one of those two policies is set (`load_needed`; at 20 wake-ups per
  second it was the idle master's largest cost, about 0.5% of a CPU), sums the
  live workers' `C_ACTIVE` cells per endpoint and their `G_OPEN` cells into one
  aggregate row, and records beside it, per worker, the exact values it summed for
  that worker ("seen"), all under a seqlock. A worker's estimate of a count is then
  `aggregate - seen[own row] + own cell now`: exact for its own connections (its own
  bursts are visible at once), and behind for other workers' by at most what they
  opened or closed since the master's last refresh (one LOAD_REFRESH period, plus the
  master's scheduling delay). So --max-connections can be passed by what other
  workers accepted within that window (exact with one worker), and least-connections
  can send one burst spread over several workers to the same member for that long.
  Reading it costs O(members) per accept (O(1) for the
  gateway-wide count), and the master's refresh O(workers x members) per period,
  with slices, not a Python loop per cell. The limit and the balance policy sit in the
  header, so a reload changes them without replacing workers;
- the member's role, alarms and which check runs for it (`MemberRole`, `MemberAlarm`,
  `CheckKind`) are written only by the master's checks. A learner is never a candidate
  for a client, and a member whose role is not known yet is ordered with the members
  marked down (`in_rotation`): that is the one rule every picker sees;
- the health stamp (`health_stamp`): rewritten by whoever changes a field that decides
  who is a candidate, in rotation or a suspect (a mark down or up, a role, a counted
  timed-out dial, a success that ends a suspicion, a roster or --balance publish), so a
  worker derives its candidates once per change, not once per dial (candidates.py).

The layout of every fixed-size record (the header with its policy, limit and balance
words, an endpoint slot, a worker slot) is written down once, as a `_Record`: fields
in order, offsets computed from their struct formats and checked to fit at import.

An endpoint keeps its slot for as long as it is in the roster, so health marks and
counters of endpoints that survive a reload are kept by construction. A slot freed by
a removed endpoint may still be written by that endpoint's open sessions (their bytes,
their active gauge) and by dials under way when it was removed, so `publish` reuses
it for a newcomer only once no session of it is open and REUSE_GRACE has passed: the
counters of a removed endpoint's sessions stay in its old slot (out of the roster, so
out of the metrics) and are never credited to a newcomer, whoever publishes (a reload,
an SRV refresh, a DNS change). Only when every free slot is still busy (more than
MAX_ENDPOINTS endpoints in play at once) does it take the least busy one.
"""
from __future__ import annotations

import array
import bisect
import enum
import mmap
import struct
import time
from gateway.endpoints import (MAX_ENDPOINTS, MAX_LISTENERS, MAX_WORKER_SLOTS, Endpoint, Order,
                               RosterEntry)

MAGIC = 0xE7CD6A7E
LAYOUT_VERSION = 1
REUSE_GRACE = 10.0  # seconds a freed slot waits before reuse: a dial under way when its
                    # endpoint was removed (bounded by --dial-timeout) may still connect

class _Record:
    """The layout of one fixed-size record of the table, in one place: its fields in
    order, each at the next offset aligned to its own size, computed from its struct
    format. Checked at import: the fields must fit the record's `room`."""

    def __init__(self, room: int, *fields: tuple[str, str]):
        self.room = room
        self.offsets: dict[str, int] = {}
        off = 0
        for name, fmt in fields:
            size = struct.calcsize("<" + fmt)
            align = size if fmt in ("B", "H", "I", "i", "Q", "d") else 1
            off += -off % align
            self.offsets[name] = off
            off += size
        self.used = off
        if off > room:
            raise RuntimeError(f"shared table layout: {off} bytes of fields in a "
                               f"{room}-byte record")

    def __getitem__(self, name: str) -> int:
        return self.offsets[name]


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")

# The header: written by the master, read by everyone.
_HEADER_LAYOUT = _Record(
    64,
    ("magic", "I"),             # MAGIC
    ("version", "I"),           # LAYOUT_VERSION
    ("generation", "Q"),        # the roster's seqlock: odd while the master writes it
    ("rr", "Q"),                # the shared round-robin counter
    ("policy", "I"),            # the roster's endpoints.Order, published with it
    ("balance", "I"),           # --balance, a Balance
    ("max_connections", "Q"),   # --max-connections (0: no limit)
    ("retry_delay", "d"),       # --retry-delay: workers only log it
    ("tls_generation", "Q"),    # bumped when workers must re-read the TLS files
    ("health_stamp", "Q"),      # rewritten after every change of who is dialled first
)
_HEADER_SIZE = _HEADER_LAYOUT.room
_GEN_OFF = _HEADER_LAYOUT["generation"]
_RR_OFF = _HEADER_LAYOUT["rr"]
_POLICY_OFF = _HEADER_LAYOUT["policy"]
_MAX_CONNECTIONS_OFF = _HEADER_LAYOUT["max_connections"]
_BALANCE_OFF = _HEADER_LAYOUT["balance"]
_RETRY_DELAY_OFF = _HEADER_LAYOUT["retry_delay"]
_TLS_GEN_OFF = _HEADER_LAYOUT["tls_generation"]
_STAMP_AT = _HEADER_LAYOUT["health_stamp"] // 8  # a u64 cell index
_RR_AT = _RR_OFF // 8
LOAD_REFRESH = 0.05        # seconds between the master's load aggregate refreshes


class Balance(enum.IntEnum):
    """How a worker orders the healthy members (inside the RFC 2782 class with SRV)."""
    ROUND_ROBIN = 0
    LEAST_CONNECTIONS = 1


# An endpoint slot: the static part (master, under the seqlock), then the dynamic
# health fields (a label holds a whole DNS name, 253 bytes at most, and ":port").
_EP_STATIC = struct.Struct("<BBHHH46s264sH")  # in_use, family, port, prio, weight, ip, label,
                                              # IPv6 scope id (zone; 0 = none)
_EP_ERROR_LEN = 144
_EP_LAYOUT = _Record(
    640,
    ("static", _EP_STATIC.format[1:]),
    ("down_at", "d"),           # 0.0 up, else the CLOCK_MONOTONIC second it failed
    ("changed", "d"),           # wall-clock time of the last state change
    ("error", f"{_EP_ERROR_LEN}s"),  # the last error text
    ("waiting", "d"),           # CLOCK_MONOTONIC start of the oldest dial since the last success
    ("timeout_at", "d"),        # CLOCK_MONOTONIC second the latest counted timeout fired
    ("timeouts", "I"),          # timed-out dials since the last success (note_dial_timeout)
    ("dial_ok", "d"),           # CLOCK_MONOTONIC second of the latest successful dial
    ("role", "I"),              # MemberRole, written by the master's checks
    ("alarms", "I"),            # MemberAlarm flags the member reports
    ("check", "I"),             # CheckKind: which check runs for the member
)
_EP_SIZE = _EP_LAYOUT.room
_EP_DOWN_OFF = _EP_LAYOUT["down_at"]
_EP_CHANGED_OFF = _EP_LAYOUT["changed"]
_EP_ERROR_OFF = _EP_LAYOUT["error"]
_EP_WAITING_OFF = _EP_LAYOUT["waiting"]
_EP_TIMEOUT_AT_OFF = _EP_LAYOUT["timeout_at"]
_EP_TIMEOUTS_OFF = _EP_LAYOUT["timeouts"]
_EP_DIAL_OK_OFF = _EP_LAYOUT["dial_ok"]
_EP_ROLE_OFF = _EP_LAYOUT["role"]
_EP_ALARMS_OFF = _EP_LAYOUT["alarms"]
_EP_CHECK_OFF = _EP_LAYOUT["check"]
# the same fields as cell indexes, for the views the workers' per-dial reads use
_EP_F64 = _EP_SIZE // 8                 # f64 cells per endpoint slot
_DOWN_D = _EP_DOWN_OFF // 8
_WAITING_D = _EP_WAITING_OFF // 8
_DIAL_OK_D = _EP_DIAL_OK_OFF // 8
_TIMEOUTS_W = _EP_TIMEOUTS_OFF // 4     # u32 cell, counted from the slot's first u32
_ROLE_W = _EP_ROLE_OFF // 4
if _EP_SIZE % 8 or _HEADER_SIZE % 8:
    raise RuntimeError("shared table layout: records must keep 8-byte cells aligned")

# A worker slot: pid, then per-worker figures.
_WK = struct.Struct("<Iid")  # pid, state (0 free, 1 live), started (wall clock)
_WK_LAYOUT = _Record(
    32,
    ("id", _WK.format[1:]),
    ("beat", "d"),              # CLOCK_MONOTONIC second of the worker's latest loop tick
)
_WK_SIZE = _WK_LAYOUT.room
_WK_BEAT_OFF = _WK_LAYOUT["beat"]

# counters: one u64 per (row, column, counter). Rows: one per worker slot, then the
# retired totals of dead workers, then the master's own. Columns: one per endpoint
# slot, then one for gateway-wide counters.
N_COUNTERS = 32  # cells per column; room to grow without changing the layout
# C_CONNECTIONS is also the dial histogram's count: a session follows exactly one
# successful dial (`count_connection`); cell 7 is unused
(C_CONNECTIONS, C_ACTIVE, C_DIAL_FAILURES, C_BYTES_SENT, C_BYTES_RECEIVED,
 C_HEALTH_CHECK_FAILURES, C_DIAL_MICROS) = range(7)
C_DIAL_BUCKET0 = 8  # non-cumulative counts of dials that took <= DIAL_BUCKETS[i]
DIAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0)
_N_DIAL_BUCKETS = len(DIAL_BUCKETS)
_FIRST_BOUND = DIAL_BUCKETS[0]
GATEWAY = MAX_ENDPOINTS  # the column of gateway-wide counters
# G_OPEN is a gauge (clients a worker holds now: dialling or relayed); G_LIMITED counts
# the times a worker stopped accepting because --max-connections was reached
G_ACCEPTED, G_REJECTED, G_OPEN, G_LIMITED = range(4)
G_DENIED = 4  # clients closed at accept because --allow-from does not list them
G_SPIN_MICROS = 5  # microseconds the worker spent busy polling (--busy-poll), so far
G_WORKER_TIMEOUTS = 8  # master's row: workers killed by the watchdog (--worker-timeout)
# listener columns (after GATEWAY): per listener counters; the master hands out the
# columns (`claim_listener_slot`) and knows their labels
LISTENER0 = MAX_ENDPOINTS + 1  # the column of listener slot 0
L_ACCEPTED, L_DENIED = range(2)
# TLS handshakes, gateway column: per side (client: the gateway terminates; member: it
# originates) one cell of completed handshakes, then one per failure reason
# (tlsleg.REASONS), from cell 16 on
G_TLS_BASE = 16
TLS_CLIENT, TLS_MEMBER = 0, 1
TLS_SIDES = ("client", "member")


def tls_counter(side: int, reason: int | None = None) -> int:
    """The gateway-column cell of completed handshakes (reason None) or of failures."""
    return G_TLS_BASE + side * 8 + (0 if reason is None else 1 + reason)


_COLUMN_SIZE = N_COUNTERS * 8
_ROW_SIZE = (MAX_ENDPOINTS + 1 + MAX_LISTENERS) * _COLUMN_SIZE
_LOAD_ROW = MAX_ENDPOINTS + 1  # u64 cells per load row: endpoints, then gateway open
_LOAD_ROW_SIZE = _LOAD_ROW * 8


class MemberRole(enum.IntEnum):
    """What the member's checks know of its role in the etcd cluster."""
    UNCHECKED = 0   # an etcd-aware check has not answered yet: ordered as if down
    UNKNOWN = 1     # its check cannot see roles (tcp, none, TLS passed through)
    VOTER = 2
    LEARNER = 3     # refuses clients (etcd 3.4+ `member add --learner`): never a candidate


class MemberAlarm(enum.IntFlag):
    """etcd's alarms (AlarmType), as the member reports them."""
    NONE = 0
    NOSPACE = 1
    CORRUPT = 2


def alarm_names(alarms: MemberAlarm) -> list[str]:
    """["NOSPACE", ...]: the alarms set in `alarms`."""
    return [str(a.name) for a in (MemberAlarm.NOSPACE, MemberAlarm.CORRUPT) if a in alarms]


class CheckKind(enum.IntEnum):
    """Which check runs for a member (shown in /endpoints and `status`)."""
    NONE = 0
    TCP = 1
    ETCD = 2


class EndpointState(enum.Enum):
    """How an endpoint is shown: in rotation, marked down, a learner, or not yet known."""
    UP = "up"
    DOWN = "down"
    LEARNER = "learner"
    UNCHECKED = "unchecked"


class NoWorkerSlot(RuntimeError):
    """Every worker slot is taken (by live and retiring workers): wait for one to exit."""


class HealthTable:
    """Typed access to the shared mapping; construct once in the master, before fork."""

    def __init__(self, max_endpoints: int = MAX_ENDPOINTS, max_workers: int = MAX_WORKER_SLOTS):
        self.max_endpoints = max_endpoints
        self.max_workers = max_workers
        self._ep_base = _HEADER_SIZE
        self._wk_base = self._ep_base + MAX_ENDPOINTS * _EP_SIZE
        self._ctr_base = self._wk_base + max_workers * _WK_SIZE
        # rows 0..max_workers-1: workers; max_workers: retired totals; then the master's
        self.retired_row = max_workers
        self.master_row = max_workers + 1
        # load aggregates: a seqlock word (own cache line), the aggregate row, then one
        # "seen" row per worker slot; a row is one u64 per endpoint slot, then the
        # gateway-wide open count
        self._load_base = self._ctr_base + (max_workers + 2) * _ROW_SIZE
        self._agg_base = self._load_base + 64
        self._seen_base = self._agg_base + _LOAD_ROW_SIZE
        size = self._seen_base + max_workers * _LOAD_ROW_SIZE
        self.buf = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._words = memoryview(self.buf).cast("Q")  # the same bytes as u64 cells
        self._f64 = memoryview(self.buf).cast("d")    # ... as f64 cells
        self._u32 = memoryview(self.buf).cast("I")    # ... as u32 cells
        self._ep_d = self._ep_base // 8               # slot 0's first f64 cell
        _U32.pack_into(self.buf, _HEADER_LAYOUT["magic"], MAGIC)
        _U32.pack_into(self.buf, _HEADER_LAYOUT["version"], LAYOUT_VERSION)
        self._cursor = 0  # master-private: where the next free-slot search starts
        self._listener_slots: set[int] = set()  # master-private: listener columns in use
        self._listener_cursor = 0
        self._freed_at: dict[int, float] = {}  # master-private: slot -> when it was freed

    # -- roster (master writes, everyone reads) -------------------------------------
    @property
    def generation(self) -> int:
        return _U64.unpack_from(self.buf, _GEN_OFF)[0]

    @property
    def policy(self) -> Order:
        """How the workers order the roster (endpoints.Order)."""
        return Order(_U32.unpack_from(self.buf, _POLICY_OFF)[0])

    @property
    def retry_delay(self) -> float:
        """--retry-delay as the master last published it (workers log it)."""
        return _F64.unpack_from(self.buf, _RETRY_DELAY_OFF)[0]

    def set_retry_delay(self, seconds: float) -> None:
        _F64.pack_into(self.buf, _RETRY_DELAY_OFF, seconds)

    def publish(self, endpoints: list[Endpoint], policy: Order = Order.ROUND_ROBIN) -> list[RosterEntry]:
        """Make `endpoints` the roster. Endpoints already present keep their slot (and so
        their health mark and counters); removed ones free theirs. Master only."""
        if len(endpoints) > self.max_endpoints:
            raise ValueError(f"at most {self.max_endpoints} endpoints")
        current = {e.endpoint.sockaddr: e for e in self.roster()}
        wanted = {ep.sockaddr for ep in endpoints}
        gen = self.generation
        _U64.pack_into(self.buf, _GEN_OFF, gen + 1)  # odd: readers retry
        for sockaddr, entry in current.items():
            if sockaddr not in wanted:
                self._write_static(entry.slot, None)
                self._freed_at[entry.slot] = time.monotonic()
        for ep in endpoints:
            old = current.get(ep.sockaddr)
            if old is not None:
                slot = old.slot
            else:
                slot = self._next_free_slot()
                self._reset_dynamic(slot)
            self._write_static(slot, ep)
        _U32.pack_into(self.buf, _POLICY_OFF, policy)
        _U64.pack_into(self.buf, _GEN_OFF, gen + 2)
        self._stamp()
        return self.roster()

    def roster(self) -> list[RosterEntry]:
        """A consistent snapshot of the roster, in slot order."""
        for _ in range(1000):
            gen = self.generation
            if gen & 1:
                time.sleep(0)
                continue
            entries = [RosterEntry(s, ep) for s in range(self.max_endpoints)
                       if (ep := self._read_static(s)) is not None]
            if self.generation == gen:
                return entries
        raise RuntimeError("health table roster kept changing while being read")

    def _next_free_slot(self) -> int:
        """A free slot for a newcomer: one no removed endpoint's session can still write
        (none open, freed over REUSE_GRACE ago, or never used), taken in a cycle so the
        most recently freed are the last reused; failing that, the least busy."""
        now = time.monotonic()
        best: tuple[int, bool, int] | None = None
        rows = list(self.live_workers())
        for step in range(self.max_endpoints):
            slot = (self._cursor + step) % self.max_endpoints
            if self._in_use(slot):
                continue
            freed = self._freed_at.get(slot)
            busy = 0 if freed is None else self.counter(slot, C_ACTIVE, rows=rows)
            rank = (busy, freed is not None and now - freed < REUSE_GRACE, step)
            if rank[:2] == (0, False):
                best = rank
                break
            if best is None or rank < best:
                best = rank
        if best is None:
            raise ValueError(f"at most {self.max_endpoints} endpoints")
        slot = (self._cursor + best[2]) % self.max_endpoints
        self._cursor = (slot + 1) % self.max_endpoints
        self._freed_at.pop(slot, None)
        return slot

    def _slot_off(self, slot: int) -> int:
        return self._ep_base + slot * _EP_SIZE

    def _in_use(self, slot: int) -> bool:
        return self.buf[self._slot_off(slot)] == 1

    def _write_static(self, slot: int, ep: Endpoint | None) -> None:
        off = self._slot_off(slot)
        if ep is None:
            _EP_STATIC.pack_into(self.buf, off, 0, 0, 0, 0, 0, b"", b"", 0)
            return
        _EP_STATIC.pack_into(self.buf, off, 1, ep.family, ep.port, ep.priority, ep.weight,
                             ep.ip.encode()[:46], ep.label.encode()[:264], ep.scope_id)

    def _read_static(self, slot: int) -> Endpoint | None:
        in_use, family, port, prio, weight, ip, label, scope_id = _EP_STATIC.unpack_from(
            self.buf, self._slot_off(slot))
        if in_use != 1:
            return None
        return Endpoint(label.rstrip(b"\0").decode(errors="replace"), family,
                        ip.rstrip(b"\0").decode(), port, prio, weight, scope_id)

    def _reset_dynamic(self, slot: int) -> None:
        off = self._slot_off(slot)
        _F64.pack_into(self.buf, off + _EP_DOWN_OFF, 0.0)
        _F64.pack_into(self.buf, off + _EP_CHANGED_OFF, time.time())
        self.buf[off + _EP_ERROR_OFF:off + _EP_ERROR_OFF + _EP_ERROR_LEN] = bytes(_EP_ERROR_LEN)
        _U32.pack_into(self.buf, off + _EP_TIMEOUTS_OFF, 0)
        _F64.pack_into(self.buf, off + _EP_DIAL_OK_OFF, 0.0)
        _F64.pack_into(self.buf, off + _EP_TIMEOUT_AT_OFF, 0.0)
        _F64.pack_into(self.buf, off + _EP_WAITING_OFF, 0.0)
        for field_off in (_EP_ROLE_OFF, _EP_ALARMS_OFF, _EP_CHECK_OFF):
            _U32.pack_into(self.buf, off + field_off, 0)
        for row in range(self.max_workers + 2):
            base = self._ctr_base + row * _ROW_SIZE + slot * _COLUMN_SIZE
            self.buf[base:base + _COLUMN_SIZE] = bytes(_COLUMN_SIZE)

    # -- health marks --------------------------------------------------------------
    def down_at(self, slot: int) -> float:
        return _F64.unpack_from(self.buf, self._slot_off(slot) + _EP_DOWN_OFF)[0]

    def is_up(self, slot: int) -> bool:
        return self._f64[self._ep_d + slot * _EP_F64 + _DOWN_D] == 0.0

    def mark_down(self, slot: int, error: str, now: float | None = None) -> bool:
        """Record a failure now; True when this call took the endpoint from up to down."""
        off = self._slot_off(slot)
        was_up = _F64.unpack_from(self.buf, off + _EP_DOWN_OFF)[0] == 0.0
        _F64.pack_into(self.buf, off + _EP_DOWN_OFF, now if now is not None else time.monotonic())
        self._set_error(off, error)
        if was_up:
            _F64.pack_into(self.buf, off + _EP_CHANGED_OFF, time.time())
            self._stamp()
        return was_up

    def mark_up(self, slot: int, if_down_at: float | None = None) -> bool:
        """Readmit; with `if_down_at`, only if no newer failure was recorded meanwhile.
        True when this call took the endpoint from down to up."""
        off = self._slot_off(slot)
        current = _F64.unpack_from(self.buf, off + _EP_DOWN_OFF)[0]
        if current == 0.0 or (if_down_at is not None and current != if_down_at):
            return False
        _F64.pack_into(self.buf, off + _EP_DOWN_OFF, 0.0)
        _F64.pack_into(self.buf, off + _EP_CHANGED_OFF, time.time())
        _U32.pack_into(self.buf, off + _EP_TIMEOUTS_OFF, 0)
        _F64.pack_into(self.buf, off + _EP_WAITING_OFF, 0.0)
        self._stamp()
        return True

    def last_error(self, slot: int) -> str:
        off = self._slot_off(slot) + _EP_ERROR_OFF
        return bytes(self.buf[off:off + _EP_ERROR_LEN]).rstrip(b"\0").decode(errors="replace")

    def last_change(self, slot: int) -> float:
        return _F64.unpack_from(self.buf, self._slot_off(slot) + _EP_CHANGED_OFF)[0]

    def _set_error(self, off: int, error: str) -> None:
        raw = error.encode(errors="replace")[:_EP_ERROR_LEN].ljust(_EP_ERROR_LEN, b"\0")
        self.buf[off + _EP_ERROR_OFF:off + _EP_ERROR_OFF + _EP_ERROR_LEN] = raw

    # -- timed-out dials: busy or dead? ------------------------------------------
    # A refused connect proves a member dead; a timed-out one may be a SYN dropped by
    # a full accept queue (busy). A timeout counts only if no dial to the member
    # succeeded since it was started, and only if that dial started after the previous
    # counted timeout fired: dials that waited through the same silence (a storm's
    # hundreds, timing out together) are one piece of evidence, not hundreds. So
    # `fall` counted timeouts need the member silent for `fall` dial timeouts on end;
    # any success clears the count. Racing workers may lose an increment (read-modify-
    # write without a lock): that only delays a mark, it never invents one.
    def note_dial_ok(self, slot: int, now: float, after: float = 0.0) -> bool:
        """A dial to `slot` succeeded at `now` (monotonic): the member is alive. If
        that ends a suspicion (`suspect` with `after`: the caller's), the health stamp
        moves; a success on a member no one suspects writes one cell. True when the
        member is marked down (`is_up`, read in the same visit): the caller readmits
        it (`mark_up`)."""
        f64, at = self._f64, self._ep_d + slot * _EP_F64
        before = f64[at + _DIAL_OK_D]
        f64[at + _DIAL_OK_D] = now
        u32, timeouts = self._u32, 2 * at + _TIMEOUTS_W
        if u32[timeouts]:
            u32[timeouts] = 0
            self._stamp()
        elif (waiting := f64[at + _WAITING_D]) > before and now - waiting > after:
            self._stamp()
        return f64[at + _DOWN_D] != 0.0

    def last_dial_ok(self, slot: int) -> float:
        return _F64.unpack_from(self.buf, self._slot_off(slot) + _EP_DIAL_OK_OFF)[0]

    def note_dial_timeout(self, slot: int, started: float, now: float) -> int:
        """A dial started at `started` timed out at `now`: the count of timed-out dials
        in a row (0 when a dial succeeded meanwhile: the member is busy, not dead)."""
        off = self._slot_off(slot)
        if _F64.unpack_from(self.buf, off + _EP_DIAL_OK_OFF)[0] >= started:
            return 0
        count = _U32.unpack_from(self.buf, off + _EP_TIMEOUTS_OFF)[0]
        if count and started < _F64.unpack_from(self.buf, off + _EP_TIMEOUT_AT_OFF)[0]:
            return count  # it waited through the silence already counted
        _F64.pack_into(self.buf, off + _EP_TIMEOUT_AT_OFF, now)
        _U32.pack_into(self.buf, off + _EP_TIMEOUTS_OFF, count + 1)
        self._stamp()
        return count + 1

    def note_dial_start(self, slot: int, now: float) -> None:
        """A dial to `slot` is under way: remembered if it is the first since the last
        successful dial (see `suspect`). The health stamp does not move: the dial can
        make its member a suspect no sooner than `after` from now, and a reader's cached
        order lasts no longer than that (`suspect_expiry`)."""
        off = self._slot_off(slot)
        if (_F64.unpack_from(self.buf, off + _EP_WAITING_OFF)[0]
                <= _F64.unpack_from(self.buf, off + _EP_DIAL_OK_OFF)[0]):
            _F64.pack_into(self.buf, off + _EP_WAITING_OFF, now)

    def suspect(self, slot: int, now: float, after: float) -> bool:
        """True when the member's latest dials timed out, or a dial to it has waited
        longer than `after` with no dial succeeding since: a black hole is suspected
        before its first timeout, so new clients go elsewhere first. A busy member
        (dials waiting, others succeeding) is not a suspect."""
        off = self._slot_off(slot)
        if _U32.unpack_from(self.buf, off + _EP_TIMEOUTS_OFF)[0]:
            return True
        waiting = _F64.unpack_from(self.buf, off + _EP_WAITING_OFF)[0]
        return (waiting > _F64.unpack_from(self.buf, off + _EP_DIAL_OK_OFF)[0]
                and now - waiting > after)

    def dial_timeouts(self, slot: int) -> int:
        """Timed-out dials in a row (a suspect member when > 0)."""
        return _U32.unpack_from(self.buf, self._slot_off(slot) + _EP_TIMEOUTS_OFF)[0]

    def clear_dial_timeouts(self, slot: int) -> None:
        """The suspicion is over (marked down, or a check passed)."""
        off = self._slot_off(slot)
        if (_U32.unpack_from(self.buf, off + _EP_TIMEOUTS_OFF)[0]
                or _F64.unpack_from(self.buf, off + _EP_WAITING_OFF)[0]):
            _U32.pack_into(self.buf, off + _EP_TIMEOUTS_OFF, 0)
            _F64.pack_into(self.buf, off + _EP_WAITING_OFF, 0.0)
            self._stamp()

    def suspect_expiry(self, slot: int, now: float, after: float) -> float:
        """The earliest time after `now` at which `suspect(slot, t, after)` could turn
        true with no write to the table (a dial already waiting; or one started from
        now on): a cached order is good until then."""
        f64, at = self._f64, self._ep_d + slot * _EP_F64
        waiting = f64[at + _WAITING_D]
        if waiting > f64[at + _DIAL_OK_D] and waiting + after > now:
            return waiting + after
        return now + after

    # -- role, alarms and check kind (the master's checks write them) ----------------
    def role(self, slot: int) -> MemberRole:
        return MemberRole(_U32.unpack_from(self.buf, self._slot_off(slot) + _EP_ROLE_OFF)[0])

    def set_role(self, slot: int, role: MemberRole) -> bool:
        """True when the role changed."""
        if self.role(slot) == role:
            return False
        _U32.pack_into(self.buf, self._slot_off(slot) + _EP_ROLE_OFF, role)
        _F64.pack_into(self.buf, self._slot_off(slot) + _EP_CHANGED_OFF, time.time())
        self._stamp()
        return True

    def alarms(self, slot: int) -> MemberAlarm:
        return MemberAlarm(_U32.unpack_from(self.buf, self._slot_off(slot) + _EP_ALARMS_OFF)[0])

    def set_alarms(self, slot: int, alarms: MemberAlarm) -> bool:
        """True when the set of alarms changed."""
        if self.alarms(slot) == alarms:
            return False
        _U32.pack_into(self.buf, self._slot_off(slot) + _EP_ALARMS_OFF, alarms)
        return True

    def check_kind(self, slot: int) -> CheckKind:
        return CheckKind(_U32.unpack_from(self.buf, self._slot_off(slot) + _EP_CHECK_OFF)[0])

    def set_check_kind(self, slot: int, kind: CheckKind) -> None:
        _U32.pack_into(self.buf, self._slot_off(slot) + _EP_CHECK_OFF, kind)

    def is_candidate(self, slot: int) -> bool:
        """May a new client be sent to it at all? Never to a learner, even when every
        other member is down: it would refuse the client's requests."""
        return self.role(slot) != MemberRole.LEARNER

    def in_rotation(self, slot: int) -> bool:
        """Up, and known not to be a learner (or its check cannot tell)."""
        return self.is_up(slot) and self.role(slot) in (MemberRole.VOTER, MemberRole.UNKNOWN)

    def state(self, slot: int) -> EndpointState:
        if not self.is_up(slot):
            return EndpointState.DOWN
        role = self.role(slot)
        if role == MemberRole.LEARNER:
            return EndpointState.LEARNER
        if role == MemberRole.UNCHECKED:
            return EndpointState.UNCHECKED
        return EndpointState.UP

    # -- TLS generation ------------------------------------------------------------
    @property
    def tls_generation(self) -> int:
        return _U64.unpack_from(self.buf, _TLS_GEN_OFF)[0]

    def bump_tls_generation(self) -> None:
        """Master: the TLS files were re-read; workers load them again."""
        _U64.pack_into(self.buf, _TLS_GEN_OFF, self.tls_generation + 1)

    # -- the health stamp ----------------------------------------------------------
    @property
    def health_stamp(self) -> int:
        """Moves after every write that can change which members are candidates, in
        rotation or suspects (and after a roster or --balance change): a reader that
        reads it first, then those fields, may reuse what it derived from them for as
        long as the stamp reads the same (and no suspect expiry passed). The value is
        the writer's CLOCK_MONOTONIC nanoseconds, not a count: racing writers need no
        read-modify-write, and a late writer cannot bring back a value a reader
        already holds (a count could go back to it)."""
        return self._words[_STAMP_AT]

    def _stamp(self) -> None:
        """After a write of the health fields (see `health_stamp`)."""
        self._words[_STAMP_AT] = time.monotonic_ns()

    # -- round robin ---------------------------------------------------------------
    def next_rr(self) -> int:
        """A counter shared by all workers (races only repeat a value: harmless)."""
        words = self._words
        value = words[_RR_AT]
        words[_RR_AT] = (value + 1) & 0xFFFFFFFFFFFFFFFF
        return value

    # -- worker slots --------------------------------------------------------------
    def _wk_off(self, index: int) -> int:
        return self._wk_base + index * _WK_SIZE

    def claim_worker_slot(self, pid: int) -> int:
        """Master: a free worker slot for a new child (its counter row starts at zero)."""
        for index in range(self.max_workers):
            _, state, _ = _WK.unpack_from(self.buf, self._wk_off(index))
            if state == 0:
                _WK.pack_into(self.buf, self._wk_off(index), pid, 1, time.time())
                _F64.pack_into(self.buf, self._wk_off(index) + _WK_BEAT_OFF, 0.0)
                return index
        raise NoWorkerSlot(f"no free worker slot (at most {self.max_workers} workers)")

    def set_worker_pid(self, index: int, pid: int) -> None:
        _WK.pack_into(self.buf, self._wk_off(index), pid, 1, time.time())

    def release_worker_slot(self, index: int) -> None:
        """Master, after reaping: fold the row into the retired totals, then free it.
        Gauges (active connections) are not carried: the dead worker's are gone."""
        row = self._row_off(index)
        retired = self._row_off(self.retired_row)
        for column in [*range(self.max_endpoints), GATEWAY,
                       *range(LISTENER0, LISTENER0 + MAX_LISTENERS)]:
            for c in range(N_COUNTERS):
                if c == (G_OPEN if column == GATEWAY else C_ACTIVE):
                    continue  # a gauge
                off = column * _COLUMN_SIZE + c * 8
                value = _U64.unpack_from(self.buf, row + off)[0]
                if value:
                    total = _U64.unpack_from(self.buf, retired + off)[0]
                    _U64.pack_into(self.buf, retired + off, total + value)
        self.buf[row:row + _ROW_SIZE] = bytes(_ROW_SIZE)
        _WK.pack_into(self.buf, self._wk_off(index), 0, 0, 0.0)
        seen = self._seen_base + index * _LOAD_ROW_SIZE  # read by no one until reused
        self.buf[seen:seen + _LOAD_ROW_SIZE] = bytes(_LOAD_ROW_SIZE)
        self.refresh_load()  # the dead worker's connections leave the aggregates now

    def beat(self, index: int, now: float) -> None:
        """Worker: show progress (its loop's tick); the master's watchdog reads it."""
        _F64.pack_into(self.buf, self._wk_off(index) + _WK_BEAT_OFF, now)

    def last_beat(self, index: int) -> float:
        """The worker's latest tick (monotonic seconds), 0.0 before its first."""
        return _F64.unpack_from(self.buf, self._wk_off(index) + _WK_BEAT_OFF)[0]

    def live_workers(self) -> dict[int, int]:
        """{worker slot: pid} of every slot in use."""
        out = {}
        for index in range(self.max_workers):
            pid, state, _ = _WK.unpack_from(self.buf, self._wk_off(index))
            if state == 1:
                out[index] = pid
        return out

    # -- listener columns (master) -------------------------------------------------
    def claim_listener_slot(self) -> int:
        """A listener column for a new listener, its counters at zero. Taken in a
        cycle, so a column freed by a reload is the last to be reused."""
        for step in range(MAX_LISTENERS):
            slot = (self._listener_cursor + step) % MAX_LISTENERS
            if slot not in self._listener_slots:
                self._listener_slots.add(slot)
                self._listener_cursor = (slot + 1) % MAX_LISTENERS
                for row in range(self.max_workers + 2):
                    base = self._ctr_base + row * _ROW_SIZE + (LISTENER0 + slot) * _COLUMN_SIZE
                    self.buf[base:base + _COLUMN_SIZE] = bytes(_COLUMN_SIZE)
                return slot
        raise ValueError(f"at most {MAX_LISTENERS} listeners")

    def release_listener_slot(self, slot: int) -> None:
        self._listener_slots.discard(slot)

    # -- counters ------------------------------------------------------------------
    def _row_off(self, row: int) -> int:
        return self._ctr_base + row * _ROW_SIZE

    def counter_offset(self, row: int, column: int, counter: int) -> int:
        """Byte offset of one counter cell (`add_at`, `set_at`). `row` is a worker
        slot (or `master_row`); `column` an endpoint slot or GATEWAY."""
        return self._row_off(row) + column * _COLUMN_SIZE + counter * 8

    def cell(self, row: int, column: int, counter: int) -> int:
        """Index of one counter cell in `cells`; a column's counters are consecutive,
        and so are the columns of a row (N_COUNTERS cells each)."""
        return self.counter_offset(row, column, counter) // 8

    @property
    def cells(self) -> memoryview:
        """The table as u64 cells, for a worker's per-connection counts: it adds to the
        cells of its own row in place (`cells[i] += n`, a gauge kept from going below
        zero), with no call per count. The same cells as `add_at`'s offsets."""
        return self._words

    def add_at(self, offset: int, delta: int) -> None:
        """Add to a counter cell the caller owns (one writer per cell). A gauge never
        goes below zero, even if its slot was recycled under an open session."""
        words, at = self._words, offset // 8
        words[at] = max(0, words[at] + delta)

    def set_at(self, offset: int, value: int) -> None:
        """Set a gauge cell the caller owns to an absolute value."""
        self._words[offset // 8] = value

    def total_rows(self) -> list[int]:
        """The rows a total adds up: live workers, the retired totals, the master. A
        caller reading many counters at once (a scrape) can pass them to `counter`."""
        return [*self.live_workers(), self.retired_row, self.master_row]

    def counter(self, column: int, counter: int, worker: int | None = None,
                rows: list[int] | None = None) -> int:
        """One counter of an endpoint slot (or GATEWAY): a worker's own, or the total
        over `rows` (by default `total_rows()`)."""
        if worker is not None:
            return _U64.unpack_from(self.buf, self.counter_offset(worker, column, counter))[0]
        if rows is None:
            rows = self.total_rows()
        return sum(_U64.unpack_from(self.buf, self.counter_offset(r, column, counter))[0]
                   for r in rows)

    def count_connection(self, at: int, seconds: float) -> None:
        """A session began, its dial having taken `seconds`, in a worker's cells: `at`
        is the cell index (`cells`) of the column, `cell(worker, slot, 0)`. One count
        serves both the connections counter and the dial histogram's count; then the
        histogram's sum and bucket (a dial to a member on this host takes well under
        the first bound: that bucket needs no search)."""
        words = self._words
        words[at + C_CONNECTIONS] += 1
        words[at + C_DIAL_MICROS] += int(seconds * 1e6)  # a monotonic span: >= 0
        index = 0 if seconds <= _FIRST_BOUND else bisect.bisect_left(DIAL_BUCKETS, seconds)
        if index < _N_DIAL_BUCKETS:
            words[at + C_DIAL_BUCKET0 + index] += 1

    def dial_histogram(self, slot: int, rows: list[int] | None = None
                       ) -> tuple[list[tuple[float, int]], float, int]:
        """([(upper bound, cumulative count), ...], sum of seconds, count) for a slot."""
        rows = self.total_rows() if rows is None else rows
        cumulative, buckets = 0, []
        for i, bound in enumerate(DIAL_BUCKETS):
            cumulative += self.counter(slot, C_DIAL_BUCKET0 + i, rows=rows)
            buckets.append((bound, cumulative))
        return (buckets, self.counter(slot, C_DIAL_MICROS, rows=rows) / 1e6,
                self.counter(slot, C_CONNECTIONS, rows=rows))


    # -- load aggregates (design: see the module comment) ---------------------------
    @property
    def max_connections(self) -> int:
        """--max-connections across all workers; 0: no limit."""
        return _U64.unpack_from(self.buf, _MAX_CONNECTIONS_OFF)[0]

    @property
    def balance(self) -> Balance:
        return Balance(_U32.unpack_from(self.buf, _BALANCE_OFF)[0])

    def set_load_policy(self, max_connections: int, balance: Balance) -> None:
        """Master: the limit and the balance policy every worker applies from now on."""
        _U64.pack_into(self.buf, _MAX_CONNECTIONS_OFF, max_connections)
        _U32.pack_into(self.buf, _BALANCE_OFF, int(balance))
        self._stamp()

    def load_needed(self) -> bool:
        """True while a policy reads the load aggregates: --max-connections set, or
        least-connections balance (else the master need not refresh them)."""
        return bool(self.max_connections) or self.balance == Balance.LEAST_CONNECTIONS

    def refresh_load(self) -> None:
        """Master, every LOAD_REFRESH: sum the live workers' gauges into the aggregate
        row, and record per worker what was summed for it."""
        words = self._words
        seq_at = self._load_base // 8
        agg_at = self._agg_base // 8
        totals = [0] * _LOAD_ROW
        rows: list[tuple[int, array.array]] = []
        for index in self.live_workers():
            row = self._row_off(index) // 8
            cells = array.array("Q", words[row + C_ACTIVE:row + MAX_ENDPOINTS * N_COUNTERS:
                                           N_COUNTERS])
            cells.append(words[row + GATEWAY * N_COUNTERS + G_OPEN])
            rows.append((index, cells))
            totals = [a + b for a, b in zip(totals, cells)]
        seq = words[seq_at]  # even: the master is the only writer
        words[seq_at] = seq + 1  # odd: readers retry
        words[agg_at:agg_at + _LOAD_ROW] = array.array("Q", totals)
        for index, cells in rows:
            at = self._seen_base // 8 + index * _LOAD_ROW
            words[at:at + _LOAD_ROW] = cells
        words[seq_at] = seq + 2

    def _others(self, worker: int, cells: list[int]) -> list[int]:
        """aggregate - seen[worker] for `cells` (load-row indexes): what the other
        workers held at the master's last refresh. A consistent read (seqlock)."""
        words = self._words
        seq_at = self._load_base // 8
        agg_at = self._agg_base // 8
        seen_at = self._seen_base // 8 + worker * _LOAD_ROW
        for _ in range(1000):
            seq = words[seq_at]
            if not seq & 1:
                out = [words[agg_at + c] - words[seen_at + c] for c in cells]
                if words[seq_at] == seq:
                    return out
        return [0] * len(cells)  # the master is stuck mid-write: count only our own

    def open_connections(self, worker: int, own: int) -> int:
        """Clients held across all workers, as `worker` sees it, `own` being its own
        count now. O(1)."""
        return max(0, self._others(worker, [MAX_ENDPOINTS])[0]) + own

    def relayed_per_endpoint(self, worker: int, slots: list[int]) -> list[int]:
        """Connections relayed to each endpoint slot across all workers, as `worker`
        sees them (its own cells read now). O(len(slots))."""
        words = self._words
        row = self._row_off(worker) // 8
        others = self._others(worker, slots)
        return [max(0, other) + words[row + slot * N_COUNTERS + C_ACTIVE]
                for other, slot in zip(others, slots)]
