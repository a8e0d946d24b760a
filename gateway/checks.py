"""The master's member checks: active health checks, member roles and re-admission.

design: one `Checker` on the master's loop, non-blocking, never a thread. Each check is
a small state machine (connecting -> [etcd: request sent -> reading, one step per HTTP
request, each on its own connection] -> done) bounded by the dial timeout as a whole.
Results go to the shared table, so every worker acts on them at once.

Policy, per endpoint:
- up: checked every `interval` (modes tcp, etcd and auto); `fall` consecutive failures
  mark it down (`deactivated endpoint`, reason "health check");
- down (by a worker's failed dial or by checks): it stays out for `retry_delay` after
  its latest failure; then it is checked back to back until `rise` consecutive checks
  pass (`activated`), or one fails (`failed to activate endpoint ...`, and it stays out
  for another retry delay). Readmission is compare-and-clear: a worker's newer failure
  wins over a probe that started before it.
- mode none: no checks of up endpoints; re-admission by one TCP connect, as the original.
- a worker's timed-out dial makes an up endpoint a suspect (health.py): the other modes
  check it at once, and if that check fails it is marked down without waiting for
  `fall` (the check agrees); if it passes the suspicion is lifted. A check whose
  connect timed out while clients' dials to the same member succeeded gives no
  verdict: the member is busy (its accept queue drops SYNs), not dead.
- a new address (a name that now resolves to one more) is published down and marked
  `unproven` by the master: it is checked at once, without waiting for the retry
  delay, and takes clients after `rise` good checks, like a readmitted member.

Which check runs for a member (`CheckKind`, in the table): `tcp` is a connect; `etcd`
asks the member itself: `POST /v3/maintenance/status` (its role, its leader, the
cluster's alarms), and in mode etcd also `GET /health` (200 with "health":"true").
Against members the gateway dials with TLS (https:// endpoints, --discovery-srv-tls)
each request is HTTPS with the same context as relayed connections (CA, name, client
certificate; ALPN http/1.1): a handshake phase between connecting and sending, within
the same deadline. Mode auto (the default) runs the etcd check wherever the gateway can
speak to the member (plain, or TLS it originates) and tcp where it only passes TLS
through: SRV discovery without --insecure-discovery or --discovery-srv-tls finds only
such members, and a plain member whose client port closes a plain request unanswered
(a TLS port) is checked with tcp from then on (until a reload).

What the status says (`judge_status`): a learner is recorded as such and is never
offered a client; no leader known to the member, or a CORRUPT alarm naming the member,
fail the check (out of rotation, through `fall` as any failure); a NOSPACE alarm is
recorded and the member stays in rotation (etcd's alarms are cluster-wide: every member
refuses writes alike, and reads, deletes, compaction and defragmentation, which are how
an operator recovers, still work). A 404 (etcd before 3.4, which has no learners) is a
member whose role cannot be seen.
"""
from __future__ import annotations

import enum
import errno
import functools
import json
import re
import _socket
import ssl
import time
from dataclasses import dataclass

from gateway import log as gwlog
from gateway import dial as dial_tcp
from gateway.endpoints import RosterEntry
from gateway.health import (C_HEALTH_CHECK_FAILURES, CheckKind, HealthTable, MemberAlarm,
                            MemberRole, alarm_names)
from gateway.loop import READ, WRITE, Loop, Timer
from gateway.tlsleg import TlsLeg, describe_failure, server_name

logger = gwlog.get("checks")

TICK = 0.25
MAX_RESPONSE = 16384


class CheckMode(enum.Enum):
    """--health-check."""
    NONE = "none"
    TCP = "tcp"
    ETCD = "etcd"
    AUTO = "auto"


@dataclass
class CheckPolicy:
    mode: CheckMode
    interval: float
    fall: int
    rise: int
    dial_timeout: float
    retry_delay: float
    tls_members: bool = False  # every member's client port is TLS (SRV, no --insecure-discovery)


class _SlotState:
    __slots__ = ("key", "fails", "oks", "next_due", "inflight", "speaks_tls", "confirming")

    def __init__(self, key: tuple):
        self.key = key
        self.fails = 0
        self.oks = 0
        self.next_due = 0.0
        self.inflight: _Check | None = None
        self.speaks_tls = False  # auto: its client port closed a plain request unanswered
        self.confirming = False  # a check started because a worker's dial timed out


class Phase(enum.Enum):
    CONNECTING = "connecting"
    HANDSHAKE = "handshake"
    SENDING = "sending"
    READING = "reading"


@dataclass(frozen=True)
class _Step:
    """One HTTP request of an etcd check."""
    method: str
    path: str
    body: bytes = b""

    def request(self, address: str) -> bytes:
        head = (f"{self.method} {self.path} HTTP/1.1\r\nHost: {address}\r\n"
                "Connection: close\r\nUser-Agent: etcd-gatewayd\r\n")
        if self.method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode() + self.body

    def what(self, base: str) -> str:
        """`base` is scheme://host:port."""
        return f"{self.method} {base}{self.path}"


STATUS = _Step("POST", "/v3/maintenance/status", b"{}")
HEALTH = _Step("GET", "/health")


class _Check:
    """One check of one endpoint: for each step, connecting -> [[handshake ->] sending
    -> reading]."""
    __slots__ = ("entry", "sock", "timer", "down_at", "steps", "phase", "request",
                 "response", "registered", "leg", "started")

    def __init__(self, entry: RosterEntry, down_at: float, steps: tuple[_Step, ...]):
        self.entry = entry
        self.sock: _socket.socket | None = None
        self.down_at = down_at
        self.steps = list(steps)   # what is left to ask; empty for a tcp check
        self.phase = Phase.CONNECTING
        self.timer: Timer | None = None
        self.request = b""
        self.response = b""
        self.registered = 0
        self.leg: TlsLeg | None = None
        self.started = time.monotonic()


@dataclass(frozen=True)
class MemberStatus:
    """What POST /v3/maintenance/status says of the member that answered."""
    member_id: str
    learner: bool
    leader: bool                      # a leader is known to the member
    alarms: MemberAlarm = MemberAlarm.NONE
    own_alarms: MemberAlarm = MemberAlarm.NONE  # alarms naming this member
    unsupported: bool = False         # 404: etcd before 3.4, roles cannot be seen

    @property
    def role(self) -> MemberRole:
        if self.unsupported:
            return MemberRole.UNKNOWN
        return MemberRole.LEARNER if self.learner else MemberRole.VOTER

    def problem(self) -> str | None:
        """Why the member cannot take new clients, or None."""
        if self.unsupported:
            return None
        if not self.leader:
            return "etcdserver: no leader"
        if self.own_alarms & MemberAlarm.CORRUPT:
            return "etcdserver: alarm CORRUPT on this member"
        return None


class Checker:
    def __init__(self, loop: Loop, table: HealthTable, policy: CheckPolicy):
        self.loop = loop
        self.table = table
        self.policy = policy
        self._states: dict[int, _SlotState] = {}
        self._timer: Timer | None = None
        self._tls: ssl.SSLContext | None = None
        self._unproven: dict[int, tuple] = {}   # slot -> address, checked before clients

    def configure(self, policy: CheckPolicy) -> None:
        """A new policy (reload): members are asked again whether they speak TLS."""
        self.policy = policy
        for state in self._states.values():
            state.speaks_tls = False

    def set_tls(self, ctx: ssl.SSLContext | None) -> None:
        """The context for members dialled with TLS (None: they are not)."""
        self._tls = ctx

    def check_first(self, slot: int, sockaddr: tuple) -> None:
        """`slot` holds a new address, published down: check it now, not after the
        retry delay (the master, right after publishing it)."""
        self._unproven[slot] = sockaddr

    @property
    def _scheme(self) -> str:
        return "http" if self._tls is None else "https"

    def first_round(self) -> None:
        """Check every member once before the gateway serves, bounded by the dial
        timeout, so that no client reaches a learner before its role is known."""
        self._schedule_checks(time.monotonic())
        deadline = time.monotonic() + self.policy.dial_timeout + TICK
        while any(s.inflight is not None for s in self._states.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.loop.run_once(min(left, TICK))

    def start(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)

    def close_after_fork(self) -> None:
        """In a new worker: close the inherited copies of in-flight check sockets
        (without touching the master's epoll), so the master's close ends them."""
        for state in self._states.values():
            if state.inflight is not None and state.inflight.sock is not None:
                state.inflight.sock.close()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for state in self._states.values():
            if state.inflight is not None:
                self._teardown(state.inflight)
        self._states.clear()

    def kinds(self) -> dict[str, list[str]]:
        """{check kind: [addresses]}: which check runs for which member (for the log)."""
        out: dict[str, list[str]] = {}
        for entry in self.table.roster():
            kind = self.table.check_kind(entry.slot).name.lower()
            out.setdefault(kind, []).append(entry.endpoint.address)
        return out

    # -- scheduling ------------------------------------------------------------------
    def _tick(self) -> None:
        self._timer = self.loop.call_later(TICK, self._tick)
        self._schedule_checks(time.monotonic())

    def _schedule_checks(self, now: float) -> None:
        roster = self.table.roster()
        live = set()
        for entry in roster:
            state = self._state_for(entry)
            live.add(entry.slot)
            kind = self._kind_for(state)
            self._show_kind(entry, kind)
            if state.inflight is not None:
                continue
            down_at = self.table.down_at(entry.slot)
            if down_at:
                unproven = self._unproven.get(entry.slot) == entry.endpoint.sockaddr
                if unproven or now - down_at >= self.policy.retry_delay:
                    self._start(entry, state, down_at, kind)
            elif self._suspect(entry, state):
                state.next_due = now + self.policy.interval
                self._start(entry, state, 0.0, kind)
            elif kind != CheckKind.NONE and now >= state.next_due:
                state.next_due = now + self.policy.interval
                self._start(entry, state, 0.0, kind)
        for slot in [s for s in self._unproven if s not in live]:
            del self._unproven[slot]
        for slot in [s for s in self._states if s not in live]:
            state = self._states.pop(slot)
            if state.inflight is not None:
                self._teardown(state.inflight)

    def _suspect(self, entry: RosterEntry, state: _SlotState) -> bool:
        """True once per suspicion: a worker's dial to this up member timed out (every
        mode but none checks it at once; a failing check then agrees, see _failed)."""
        if not self.table.dial_timeouts(entry.slot):
            state.confirming = False
            return False
        if state.confirming or self.policy.mode == CheckMode.NONE:
            return False
        state.confirming = True
        return True

    def _state_for(self, entry: RosterEntry) -> _SlotState:
        key = entry.endpoint.sockaddr
        state = self._states.get(entry.slot)
        if state is None or state.key != key:
            if state is not None and state.inflight is not None:
                self._teardown(state.inflight)
            state = self._states[entry.slot] = _SlotState(key)
        return state

    def show_kinds(self) -> None:
        """Right after a publish: say which check runs for each member, so that where
        no check can see roles (tcp, none, TLS passed through) a new member is not left
        waiting as `unchecked` until the next tick."""
        for entry in self.table.roster():
            self._show_kind(entry, self._kind_for(self._state_for(entry)))

    def _kind_for(self, state: _SlotState) -> CheckKind:
        mode = self.policy.mode
        if mode == CheckMode.NONE:
            return CheckKind.NONE
        if mode == CheckMode.TCP:
            return CheckKind.TCP
        if (mode == CheckMode.AUTO and self._tls is None
                and (self.policy.tls_members or state.speaks_tls)):
            return CheckKind.TCP  # TLS passed through: the gateway cannot speak to it
        return CheckKind.ETCD

    def _show_kind(self, entry: RosterEntry, kind: CheckKind) -> None:
        """Publish the member's check kind; a check that cannot see roles leaves the
        role unknown (and forgets alarms it can no longer see)."""
        table, slot = self.table, entry.slot
        table.set_check_kind(slot, kind)
        if kind != CheckKind.ETCD:
            self._record_role(entry, MemberRole.UNKNOWN)
            table.set_alarms(slot, MemberAlarm.NONE)

    # -- one check -------------------------------------------------------------------
    def _start(self, entry: RosterEntry, state: _SlotState, down_at: float,
               kind: CheckKind) -> None:
        if kind == CheckKind.ETCD:
            steps: tuple[_Step, ...] = ((STATUS, HEALTH) if self.policy.mode == CheckMode.ETCD
                                        else (STATUS,))
        else:
            steps = ()
        check = _Check(entry, down_at, steps)
        state.inflight = check
        check.timer = self.loop.call_later(self.policy.dial_timeout,
                                           functools.partial(self._timeout, check))
        self._connect(check)

    def _connect(self, check: _Check) -> None:
        ep = check.entry.endpoint
        try:
            sock, _ = dial_tcp.start(ep)  # connected at once or not: WRITE says so
        except dial_tcp.DialError as exc:
            self._finish(check, str(exc))
            return
        except OSError as exc:
            logger.warning("cannot check endpoint", extra=gwlog.fields(
                address=ep.address, error=exc.strerror))
            self._abandon(check)  # the gateway's own shortage: not the member's failure
            return
        check.sock, check.phase, check.response, check.leg = sock, Phase.CONNECTING, b"", None
        self._watch(check, WRITE)

    def _watch(self, check: _Check, mask: int) -> None:
        assert check.sock is not None
        check.registered = self.loop.set_interest(check.sock.fileno(), check.registered, mask,
                                                  functools.partial(self._ready, check))

    def _ready(self, check: _Check, fd: int, mask: int) -> None:
        ep = check.entry.endpoint
        sock = check.sock
        assert sock is not None
        try:
            if check.phase == Phase.CONNECTING:
                error = dial_tcp.outcome(sock, ep.address)
                if error is not None:
                    self._finish(check, error)
                    return
                if not check.steps:
                    self._finish(check, None)
                    return
                check.phase = Phase.SENDING
                check.request = check.steps[0].request(ep.address)
                if self._tls is not None:
                    try:
                        check.leg = TlsLeg.client(self._tls, sock, server_name(ep.label))
                    except (OSError, ValueError) as exc:
                        self.loop.forget(fd)  # the leg closed the fd (it left epoll)
                        check.registered = 0
                        self._finish(check, f"TLS with {ep.address}: {exc}")
                        return
                    check.sock = sock = check.leg.sock  # the same fd, now speaking TLS
                    check.phase = Phase.HANDSHAKE
            if check.phase == Phase.HANDSHAKE:
                assert check.leg is not None
                try:
                    want = check.leg.handshake()
                except (ssl.SSLError, OSError) as exc:
                    self._finish(check, f"TLS handshake with {ep.address}: "
                                        f"{describe_failure(exc)}")
                    return
                if want:
                    self._watch(check, want)
                    return
                check.phase = Phase.SENDING
                self._watch(check, WRITE)
                return
            if check.phase == Phase.SENDING:
                check.request = check.request[sock.send(check.request):]
                if not check.request:
                    check.phase = Phase.READING
                    self._watch(check, READ)
                return
            data = sock.recv(4096)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ssl.SSLZeroReturnError:  # close_notify: the answer is complete
            self._answered(check)
            return
        except OSError as exc:
            if exc.errno == errno.ECONNRESET and not check.response:
                self._answered(check)  # reset unanswered: judged as an empty answer
                return
            self._finish(check, f"{self._what(check)}: {exc.strerror or exc}")
            return
        check.response += data
        if data and len(check.response) < MAX_RESPONSE:
            return  # read until the member closes (Connection: close)
        self._answered(check)

    def _answered(self, check: _Check) -> None:
        """One step's answer is complete: judge it, then the next step or the end."""
        step = check.steps.pop(0)
        address = check.entry.endpoint.address
        self._close_socket(check)
        if step is STATUS:
            verdict = self._judge_status_step(check, address)
            if verdict is not None:
                self._finish(check, verdict)
                return
        else:
            error = judge_health(f"{self._scheme}://{address}", check.response)
            if error is not None:
                self._finish(check, error)
                return
        if check.steps:
            self._connect(check)
        else:
            self._finish(check, None)

    def _judge_status_step(self, check: _Check, address: str) -> str | None | _Done:
        """Record what the status says; an error, _DONE (a passed tcp check: the port
        speaks TLS), or None to go on."""
        entry = check.entry
        if (self.policy.mode == CheckMode.AUTO and self._tls is None and
                (not check.response or check.response[:1] in (b"\x15", b"\x16"))):
            state = self._states.get(entry.slot)
            if state is not None and not state.speaks_tls:
                state.speaks_tls = True
                logger.info("checking endpoint with tcp: its client port does not answer "
                            "plain HTTP (TLS passes through)",
                            extra=gwlog.fields(address=address))
                self._show_kind(entry, CheckKind.TCP)
            return _DONE
        result = judge_status(f"{self._scheme}://{address}", check.response)
        if isinstance(result, str):
            return result
        self._record_role(entry, result.role)
        self._record_alarms(entry, result.alarms)
        return result.problem()

    def _timeout(self, check: _Check) -> None:
        ep = check.entry.endpoint
        check.timer = None
        if (check.phase == Phase.CONNECTING
                and self.table.last_dial_ok(check.entry.slot) >= check.started):
            # the member accepted a client's dial while this connect waited: busy (a
            # full accept queue drops SYNs), not dead; no verdict either way
            self._abandon(check)
            logger.debug("health check connect timed out while dials succeed: no verdict",
                         extra=gwlog.fields(address=ep.address))
            return
        if check.phase == Phase.CONNECTING:
            self._finish(check, dial_tcp.timeout_error(ep.address, self.policy.dial_timeout))
            return
        if check.phase == Phase.HANDSHAKE:
            what = f"TLS handshake with {ep.address}: no answer"
        else:
            what = f"{self._what(check)}: no answer"
        self._finish(check, f"{what} within {self.policy.dial_timeout:g}s")

    def _what(self, check: _Check) -> str:
        """What the check was doing, for an error line."""
        address = check.entry.endpoint.address
        if not check.steps:
            return f"dial tcp {address}"
        return check.steps[0].what(f"{self._scheme}://{address}")

    def _close_socket(self, check: _Check) -> None:
        if check.sock is None:
            return
        if check.registered:
            self.loop.remove(check.sock.fileno())
            check.registered = 0
        check.sock.close()
        check.sock = None

    def _teardown(self, check: _Check) -> None:
        self._close_socket(check)
        if check.timer is not None:
            check.timer.cancel()
            check.timer = None

    def _abandon(self, check: _Check) -> None:
        self._teardown(check)
        state = self._states.get(check.entry.slot)
        if state is not None and state.inflight is check:
            state.inflight = None

    def _finish(self, check: _Check, outcome: str | None | _Done) -> None:
        self._teardown(check)
        slot = check.entry.slot
        state = self._states.get(slot)
        if state is None or state.inflight is not check:
            return
        state.inflight = None
        if outcome is None or outcome is _DONE:
            self._passed(check, state)
        else:
            assert isinstance(outcome, str)
            self._failed(check, state, outcome)

    # -- what the member said ----------------------------------------------------------
    def _record_role(self, entry: RosterEntry, role: MemberRole) -> None:
        table, slot = self.table, entry.slot
        before = table.role(slot)
        if not table.set_role(slot, role):
            return
        address = entry.endpoint.address
        if role == MemberRole.LEARNER:
            logger.warning("endpoint is a learner: no client is sent to it",
                           extra=gwlog.fields(address=address))
        elif before == MemberRole.LEARNER:
            logger.info("endpoint is no longer a learner", extra=gwlog.fields(
                address=address, role=role.name.lower()))

    def _record_alarms(self, entry: RosterEntry, alarms: MemberAlarm) -> None:
        if not self.table.set_alarms(entry.slot, alarms):
            return
        names = alarm_names(alarms)
        if names:
            logger.warning("endpoint reports an alarm", extra=gwlog.fields(
                address=entry.endpoint.address, alarms=names))
        else:
            logger.info("endpoint reports no alarm any more", extra=gwlog.fields(
                address=entry.endpoint.address))

    # -- verdicts --------------------------------------------------------------------
    def _passed(self, check: _Check, state: _SlotState) -> None:
        state.fails = 0
        if state.confirming:  # the suspicion of a timed-out dial is lifted
            self.table.clear_dial_timeouts(check.entry.slot)
        if not check.down_at:
            return
        state.oks += 1
        needed = 1 if self.policy.mode == CheckMode.NONE else self.policy.rise
        if state.oks < needed:
            return  # checked again at the next tick, back to back
        state.oks = 0
        state.next_due = time.monotonic() + self.policy.interval
        self._unproven.pop(check.entry.slot, None)
        if self.table.mark_up(check.entry.slot, if_down_at=check.down_at):
            logger.info("activated", extra=gwlog.fields(address=check.entry.endpoint.address))

    def _failed(self, check: _Check, state: _SlotState, error: str) -> None:
        table, slot = self.table, check.entry.slot
        table.add_at(table.counter_offset(table.master_row, slot, C_HEALTH_CHECK_FAILURES), 1)
        address = check.entry.endpoint.address
        state.oks = 0
        if check.down_at:
            self._unproven.pop(slot, None)
            table.mark_down(slot, error)
            logger.warning("failed to activate endpoint (stay inactive for another interval)",
                           extra=gwlog.fields(address=address,
                                              interval=self.policy.retry_delay, error=error))
            return
        kind = table.check_kind(slot).name.lower()
        if state.confirming and table.dial_timeouts(slot):
            # a client's dial timed out and this check agrees: dead, not busy
            table.clear_dial_timeouts(slot)
            state.fails = 0
            if table.mark_down(slot, error):
                logger.warning("deactivated endpoint", extra=gwlog.fields(
                    address=address, interval=self.policy.retry_delay, error=error,
                    reason=f"a dial timed out and the health check ({kind}) agrees"))
            return
        state.fails += 1
        if state.fails >= self.policy.fall and table.mark_down(slot, error):
            state.fails = 0
            logger.warning("deactivated endpoint", extra=gwlog.fields(
                address=address, interval=self.policy.retry_delay, error=error,
                reason=f"health check ({kind}) failed {self.policy.fall} times"))


class _Done:
    """A check that ended early and passed (the port speaks TLS: a tcp check)."""


_DONE = _Done()

_ALARM_RE = re.compile(r"memberID:(\d+)\s+alarm:([A-Z]+)")


def _http_answer(what: str, response: bytes) -> tuple[str, bytes] | str:
    """(status code, body) of an HTTP/1.1 answer read to EOF, or why it is not one."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].decode(errors="replace").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        return f"{what}: not an HTTP answer"
    headers = {k.strip().lower(): v.strip().lower()
               for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    return " ".join(parts[1:]), body


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def judge_health(base: str, response: bytes) -> str | None:
    """None when etcd's GET /health says it is healthy; else why not, in one line.
    `base` is scheme://host:port."""
    what = HEALTH.what(base)
    answer = _http_answer(what, response)
    if isinstance(answer, str):
        return answer
    status, body = answer
    if not status.startswith("200"):
        return f"{what}: status {status}"
    if b'"health":"true"' not in body.replace(b" ", b""):
        return f"{what}: {body[:80].decode(errors='replace').strip()}"
    return None


def judge_status(base: str, response: bytes) -> MemberStatus | str:
    """What POST /v3/maintenance/status answered, or why it is not an answer. `base` is
    scheme://host:port."""
    what = STATUS.what(base)
    answer = _http_answer(what, response)
    if isinstance(answer, str):
        return answer
    status, body = answer
    if status.startswith("404"):
        return MemberStatus(member_id="", learner=False, leader=True, unsupported=True)
    if not status.startswith("200"):
        return f"{what}: status {status}"
    try:
        doc = json.loads(body)
        member_id = str(doc["header"]["member_id"])
    except (ValueError, KeyError, TypeError):
        return f"{what}: {body[:80].decode(errors='replace').strip()}"
    alarms = own = MemberAlarm.NONE
    for text in doc.get("errors") or ():
        for alarm_member, name in _ALARM_RE.findall(str(text)):
            flag = MemberAlarm.__members__.get(name)
            if flag is None:
                continue
            alarms |= flag
            if alarm_member == member_id:
                own |= flag
    return MemberStatus(member_id=member_id, learner=bool(doc.get("isLearner")),
                        leader=str(doc.get("leader") or "0") != "0",
                        alarms=alarms, own_alarms=own)
