"""The pages of the HTTP endpoint: /metrics (Prometheus), /health, /endpoints and
/certificates (the TLS certificates loaded, with their expiry).

design: every page is computed on request from the shared health table (counters are
totals over live workers, the retired row and the master, so they never go back when a
worker is replaced) and from a `GatewayInfo` snapshot the master hands over through a
callable. Per-worker process figures come from psutil, one cached `Process` per pid;
a worker that exits between the listing and the reading is skipped. The CPU counter of a
worker index adds the CPU time of the index's dead predecessors (`cpu_offsets`) and is
held monotonic, so it survives worker replacement. No state is global: all of it lives
on the `MetricsApp` instance, which runs in the master's single thread.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import psutil

from gateway import log as gwlog
from gateway.health import (C_ACTIVE, C_BYTES_RECEIVED, C_BYTES_SENT, C_CONNECTIONS,
                            C_DIAL_FAILURES, C_HEALTH_CHECK_FAILURES, G_ACCEPTED,
                            G_LIMITED, G_OPEN, G_REJECTED, G_WORKER_TIMEOUTS, GATEWAY,
                            G_DENIED, G_SPIN_MICROS, L_ACCEPTED, L_DENIED, LISTENER0, TLS_SIDES,
                            EndpointState, HealthTable, MemberAlarm, MemberRole, RosterEntry,
                            alarm_names, tls_counter)
from gateway.httpd import Response
from gateway.tlsleg import REASONS as TLS_FAILURE_REASONS

logger = gwlog.get("metrics")

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
PREFIX = "etcd_gateway_"

# (name without prefix, counter, help) of the per-endpoint counters
_ENDPOINT_COUNTERS = (
    ("endpoint_connections_total", C_CONNECTIONS,
     "Client connections relayed to the endpoint."),
    ("endpoint_dial_failures_total", C_DIAL_FAILURES,
     "Failed connects to the endpoint (refused, unreachable or timed out)."),
    ("endpoint_health_check_failures_total", C_HEALTH_CHECK_FAILURES,
     "Failed active health checks of the endpoint."),
    ("endpoint_sent_bytes_total", C_BYTES_SENT,
     "Bytes relayed from clients to the endpoint."),
    ("endpoint_received_bytes_total", C_BYTES_RECEIVED,
     "Bytes relayed from the endpoint to clients."),
)


@dataclass
class GatewayInfo:
    """What only the master knows, as of one request."""
    workers: dict[int, int] = field(default_factory=dict)       # worker index -> pid
    listeners: dict[int, str] = field(default_factory=dict)     # listener slot -> label
    desired_workers: int = 0
    reloads_total: int = 0
    cpu_offsets: dict[int, float] = field(default_factory=dict)  # index -> dead CPU s
    version: str = ""
    draining: bool = False   # the listener is closed: new clients are refused
    certificates: list[dict[str, Any]] = field(default_factory=list)  # tls.CertInfo.as_json
    resolution_failures: dict[str, int] = field(default_factory=dict)  # name -> lookups


@dataclass(frozen=True)
class WorkerUsage:
    rss: int
    cpu: float       # user + system seconds of the current process
    fds: int


# -- Prometheus text format ------------------------------------------------------------
def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (Go's float formatting)."""
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return f"{int(value)}.0"
    return repr(value)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


class Exposition:
    """Builds one text exposition: families in order, HELP and TYPE once each."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")

    def sample(self, name: str, labels: dict[str, str], value: float) -> None:
        self.lines.append(f"{PREFIX}{name}{_labels(labels)} {format_value(value)}")

    def text(self) -> bytes:
        return ("\n".join(self.lines) + "\n").encode("utf-8")


# -- the application -------------------------------------------------------------------
class MetricsApp:
    """`handle(method, path)` for `HttpServer`: /metrics, /health, /endpoints."""

    def __init__(self, table: HealthTable, info: Callable[[], GatewayInfo]):
        self.table = table
        self.info = info
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_seen: dict[int, float] = {}   # worker index -> last CPU value served

    def handle(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return 405, TEXT_TYPE, b"method not allowed\n"
        if path == "/metrics":
            return 200, PROMETHEUS_TYPE, self.metrics()
        if path == "/health":
            return self.health()
        if path == "/endpoints":
            return 200, JSON_TYPE, self.endpoints()
        if path == "/certificates":
            return 200, JSON_TYPE, json.dumps(self.info().certificates, indent=1).encode()
        return 404, TEXT_TYPE, (b"not found: try /metrics, /health, /endpoints or "
                                b"/certificates\n")

    # -- /health -----------------------------------------------------------------------
    def health(self) -> Response:
        """200 while clients can be served: an endpoint is up and the gateway is not
        draining (a draining gateway has closed its listener: a load balancer must
        stop sending clients), else 503."""
        roster = self.table.roster()
        up = sum(1 for entry in roster if self.table.in_rotation(entry.slot))
        draining = self.info().draining
        healthy = up > 0 and not draining
        body = {"health": "true" if healthy else "false", "endpoints_up": up,
                "endpoints": len(roster), "draining": draining}
        return (200 if healthy else 503), JSON_TYPE, json.dumps(body).encode()

    # -- /endpoints --------------------------------------------------------------------
    def endpoints(self) -> bytes:
        table = self.table
        rows = table.total_rows()
        out = []
        for entry in table.roster():
            slot, ep = entry.slot, entry.endpoint
            changed = table.last_change(slot)
            out.append({
                "endpoint": ep.address,
                "label": ep.label,
                "state": table.state(slot).value,
                "role": table.role(slot).name.lower(),
                "check": table.check_kind(slot).name.lower(),
                "alarms": alarm_names(table.alarms(slot)),
                "priority": ep.priority,
                "weight": ep.weight,
                "active_connections": table.counter(slot, C_ACTIVE, rows=rows),
                "connections_total": table.counter(slot, C_CONNECTIONS, rows=rows),
                "dial_failures_total": table.counter(slot, C_DIAL_FAILURES, rows=rows),
                "health_check_failures_total": table.counter(slot, C_HEALTH_CHECK_FAILURES, rows=rows),
                "sent_bytes_total": table.counter(slot, C_BYTES_SENT, rows=rows),
                "received_bytes_total": table.counter(slot, C_BYTES_RECEIVED, rows=rows),
                "last_error": table.last_error(slot),
                "last_change": changed,
                "last_change_iso": rfc3339(changed),
            })
        return json.dumps(out, indent=1).encode()

    # -- /metrics ----------------------------------------------------------------------
    def metrics(self) -> bytes:
        table = self.table
        info = self.info()
        roster = table.roster()
        rows = table.total_rows()
        out = Exposition()
        self._endpoint_metrics(out, roster, rows)

        out.family("accepted_connections_total", "counter",
                   "Client connections accepted by the workers (not those --allow-from denied).")
        out.sample("accepted_connections_total", {}, table.counter(GATEWAY, G_ACCEPTED, rows=rows))
        out.family("rejected_connections_total", "counter",
                   "Client connections closed at once (no endpoint up, or overload).")
        out.sample("rejected_connections_total", {}, table.counter(GATEWAY, G_REJECTED, rows=rows))
        self._listener_metrics(out, info, rows)
        out.family("open_connections", "gauge",
                   "Client connections held now across all workers (dialling or relayed).")
        out.sample("open_connections", {}, table.counter(GATEWAY, G_OPEN, rows=rows))
        out.family("max_connections", "gauge",
                   "The --max-connections limit (0: no limit).")
        out.sample("max_connections", {}, table.max_connections)
        out.family("connection_limit_pauses_total", "counter",
                   "Times a worker stopped accepting because --max-connections was reached.")
        out.sample("connection_limit_pauses_total", {},
                   table.counter(GATEWAY, G_LIMITED, rows=rows))
        out.family("workers", "gauge", "Worker processes alive.")
        out.sample("workers", {}, len(info.workers))
        out.family("desired_workers", "gauge", "Worker processes wanted.")
        out.sample("desired_workers", {}, info.desired_workers)
        out.family("reloads_total", "counter", "Configuration reloads applied.")
        out.sample("reloads_total", {}, info.reloads_total)
        out.family("worker_timeouts_total", "counter",
                   "Workers killed and replaced by the watchdog (--worker-timeout).")
        out.sample("worker_timeouts_total", {},
                   table.counter(GATEWAY, G_WORKER_TIMEOUTS, rows=rows))
        out.family("busy_poll_seconds_total", "counter",
                   "Time the workers spent polling without sleeping after busy turns "
                   "(--busy-poll): at most the CPU it cost, as each empty poll yields "
                   "to any process ready to run on the same CPU.")
        out.sample("busy_poll_seconds_total", {},
                   table.counter(GATEWAY, G_SPIN_MICROS, rows=rows) / 1e6)
        out.family("build_info", "gauge", "Always 1; the version is a label.")
        out.sample("build_info", {"version": info.version}, 1)
        self._tls_metrics(out, info, rows)
        self._name_metrics(out, info)

        self._worker_metrics(out, info, [entry.slot for entry in roster])
        return out.text()

    def _endpoint_metrics(self, out: Exposition, roster: list[RosterEntry],
                          rows: list[int]) -> None:
        table = self.table
        labels = [(entry.slot, {"endpoint": entry.endpoint.address}) for entry in roster]
        out.family("endpoint_up", "gauge",
                   "1 while the endpoint is in rotation, 0 while it is marked down, a "
                   "learner or not checked yet.")
        for slot, lab in labels:
            out.sample("endpoint_up", lab, 1 if table.in_rotation(slot) else 0)
        out.family("endpoint_state", "gauge",
                   "1 for the endpoint's state: up, down, learner or unchecked.")
        for slot, lab in labels:
            current = table.state(slot)
            for state in EndpointState:
                out.sample("endpoint_state", {**lab, "state": state.value},
                           1 if state == current else 0)
        out.family("endpoint_learner", "gauge",
                   "1 while the member says it is a learner (it gets no client).")
        for slot, lab in labels:
            out.sample("endpoint_learner", lab,
                       1 if table.role(slot) == MemberRole.LEARNER else 0)
        out.family("endpoint_alarm", "gauge",
                   "1 for each etcd alarm (NOSPACE, CORRUPT) the member reports.")
        for slot, lab in labels:
            alarms = table.alarms(slot)
            for alarm in (MemberAlarm.NOSPACE, MemberAlarm.CORRUPT):
                out.sample("endpoint_alarm", {**lab, "alarm": str(alarm.name)},
                           1 if alarm in alarms else 0)
        out.family("endpoint_active_connections", "gauge",
                   "Client connections currently relayed to the endpoint.")
        for slot, lab in labels:
            out.sample("endpoint_active_connections", lab, table.counter(slot, C_ACTIVE, rows=rows))
        for name, counter, help_text in _ENDPOINT_COUNTERS:
            out.family(name, "counter", help_text)
            for slot, lab in labels:
                out.sample(name, lab, table.counter(slot, counter, rows=rows))
        name = "endpoint_dial_duration_seconds"
        out.family(name, "histogram", "Time to connect to the endpoint (successful dials).")
        for slot, lab in labels:
            buckets, total, count = table.dial_histogram(slot, rows=rows)
            highest = 0
            for bound, cumulative in buckets:
                highest = max(highest, cumulative)  # racing writers: keep it monotonic
                out.sample(name + "_bucket", {**lab, "le": format_value(float(bound))},
                           highest)
            count = max(count, highest)
            out.sample(name + "_bucket", {**lab, "le": "+Inf"}, count)
            out.sample(name + "_sum", lab, float(total))
            out.sample(name + "_count", lab, count)

    def _listener_metrics(self, out: Exposition, info: GatewayInfo, rows: list[int]) -> None:
        table = self.table
        out.family("listener_accepted_connections_total", "counter",
                   "Client connections accepted on the listener.")
        for slot, label in sorted(info.listeners.items()):
            out.sample("listener_accepted_connections_total", {"listener": label},
                       table.counter(LISTENER0 + slot, L_ACCEPTED, rows=rows))
        out.family("listener_denied_connections_total", "counter",
                   "Clients closed at accept on the listener: not in --allow-from.")
        for slot, label in sorted(info.listeners.items()):
            out.sample("listener_denied_connections_total", {"listener": label},
                       table.counter(LISTENER0 + slot, L_DENIED, rows=rows))
        out.family("denied_connections_total", "counter",
                   "Clients closed at accept: not in --allow-from.")
        out.sample("denied_connections_total", {}, table.counter(GATEWAY, G_DENIED, rows=rows))

    def _tls_metrics(self, out: Exposition, info: GatewayInfo, rows: list[int]) -> None:
        table = self.table
        out.family("tls_handshakes_total", "counter",
                   "TLS handshakes completed: side=client (the gateway terminates TLS) or "
                   "member (it dials members with TLS).")
        for side, name in enumerate(TLS_SIDES):
            out.sample("tls_handshakes_total", {"side": name},
                       table.counter(GATEWAY, tls_counter(side), rows=rows))
        out.family("tls_handshake_failures_total", "counter",
                   "TLS handshakes that failed, by side and reason (certificate, "
                   "no-certificate, protocol, timeout, closed, other).")
        for side, name in enumerate(TLS_SIDES):
            for reason, label in enumerate(TLS_FAILURE_REASONS):
                out.sample("tls_handshake_failures_total", {"side": name, "reason": label},
                           table.counter(GATEWAY, tls_counter(side, reason), rows=rows))
        out.family("tls_certificate_expiry_timestamp_seconds", "gauge",
                   "When each loaded certificate expires (Unix time): alert before it.")
        for cert in info.certificates:
            out.sample("tls_certificate_expiry_timestamp_seconds",
                       {"option": cert["option"], "file": cert["file"],
                        "subject": cert["subject"], "serial": cert["serial"]},
                       float(cert["not_after"]))

    def _name_metrics(self, out: Exposition, info: GatewayInfo) -> None:
        out.family("endpoint_name_resolution_failures_total", "counter",
                   "Lookups in which an --endpoints host name did not resolve (it keeps "
                   "its last known addresses).")
        for name in sorted(info.resolution_failures):
            out.sample("endpoint_name_resolution_failures_total", {"name": name},
                       info.resolution_failures[name])

    def _worker_metrics(self, out: Exposition, info: GatewayInfo, slots: list[int]) -> None:
        table = self.table
        usage = self._usage(info.workers)
        families = (
            ("worker_resident_memory_bytes", "gauge", "Resident memory of the worker."),
            ("worker_cpu_seconds_total", "counter",
             "User and system CPU time of the worker index, its replaced predecessors "
             "included."),
            ("worker_open_fds", "gauge", "Open file descriptors of the worker."),
            ("worker_active_connections", "gauge",
             "Client connections the worker is relaying now."),
        )
        rows: dict[str, list[tuple[dict[str, str], float]]] = {f[0]: [] for f in families}
        for index in sorted(info.workers):
            lab = {"worker": str(index)}
            active = sum(table.counter(slot, C_ACTIVE, worker=index) for slot in slots)
            rows["worker_active_connections"].append((lab, active))
            u = usage.get(index)
            if u is None:
                continue
            cpu = max(u.cpu + info.cpu_offsets.get(index, 0.0), self._cpu_seen.get(index, 0.0))
            self._cpu_seen[index] = cpu
            rows["worker_resident_memory_bytes"].append((lab, u.rss))
            rows["worker_cpu_seconds_total"].append((lab, float(cpu)))
            rows["worker_open_fds"].append((lab, u.fds))
        for name, kind, help_text in families:
            out.family(name, kind, help_text)
            for lab, value in rows[name]:
                out.sample(name, lab, value)

    def _usage(self, workers: dict[int, int]) -> dict[int, WorkerUsage]:
        """{index: usage} for the workers that could be read; drops cached dead pids."""
        live = {pid for pid in workers.values() if pid > 0}
        for pid in [p for p in self._procs if p not in live]:
            del self._procs[pid]
        out: dict[int, WorkerUsage] = {}
        for index, pid in workers.items():
            if pid <= 0:
                continue  # slot claimed, fork not done yet
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    out[index] = WorkerUsage(rss=proc.memory_info().rss,
                                             cpu=times.user + times.system,
                                             fds=proc.num_fds())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                self._procs.pop(pid, None)  # exited (or became a zombie) meanwhile
        return out


def rfc3339(epoch: float) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    stamp = datetime.fromtimestamp(epoch, timezone.utc)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

