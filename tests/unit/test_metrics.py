"""The /metrics, /health and /endpoints pages, computed from a real shared table."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from gateway.health import (C_ACTIVE, C_BYTES_RECEIVED, C_BYTES_SENT, C_CONNECTIONS,
                            C_DIAL_FAILURES, C_HEALTH_CHECK_FAILURES, DIAL_BUCKETS,
                            G_ACCEPTED, G_REJECTED, G_SPIN_MICROS, GATEWAY, CheckKind, Endpoint,
                            HealthTable, MemberAlarm, MemberRole)
from gateway.metrics import (JSON_TYPE, PROMETHEUS_TYPE, GatewayInfo, MetricsApp,
                             escape_label, format_value, rfc3339)

PORTS = (2379, 22379, 32379)
ENDPOINT_SERIES = (
    "etcd_gateway_endpoint_up",
    "etcd_gateway_endpoint_active_connections",
    "etcd_gateway_endpoint_connections_total",
    "etcd_gateway_endpoint_dial_failures_total",
    "etcd_gateway_endpoint_health_check_failures_total",
    "etcd_gateway_endpoint_sent_bytes_total",
    "etcd_gateway_endpoint_received_bytes_total",
    "etcd_gateway_endpoint_dial_duration_seconds_bucket",
    "etcd_gateway_endpoint_dial_duration_seconds_sum",
    "etcd_gateway_endpoint_dial_duration_seconds_count",
)
GATEWAY_SERIES = (
    "etcd_gateway_accepted_connections_total",
    "etcd_gateway_rejected_connections_total",
    "etcd_gateway_workers",
    "etcd_gateway_reloads_total",
    "etcd_gateway_build_info",
)
WORKER_SERIES = (
    "etcd_gateway_worker_resident_memory_bytes",
    "etcd_gateway_worker_cpu_seconds_total",
    "etcd_gateway_worker_open_fds",
    "etcd_gateway_worker_active_connections",
)


class Gateway:
    """A table with three endpoints and two 'workers' that are this process."""

    def __init__(self) -> None:
        self.table = HealthTable(max_workers=4)  # default max_endpoints: GATEWAY is column 64
        roster = self.table.publish([
            Endpoint(f"member{i}", socket.AF_INET, "127.0.0.1", port)
            for i, port in enumerate(PORTS)])
        self.slots = {e.endpoint.address: e.slot for e in roster}
        for entry in roster:  # as the master's first etcd checks leave them
            self.table.set_role(entry.slot, MemberRole.VOTER)
            self.table.set_check_kind(entry.slot, CheckKind.ETCD)
        self.w0 = self.table.claim_worker_slot(os.getpid())
        self.w1 = self.table.claim_worker_slot(os.getpid())
        self.reloads = 3
        self.cpu_offsets: dict[int, float] = {}
        self.workers: dict[int, int] | None = None  # None: whatever the table says
        self.app = MetricsApp(self.table, self.info)

    def info(self) -> GatewayInfo:
        workers = self.table.live_workers() if self.workers is None else self.workers
        return GatewayInfo(workers=dict(workers), desired_workers=2,
                           reloads_total=self.reloads, cpu_offsets=dict(self.cpu_offsets),
                           version=__version__)

    def slot(self, port: int) -> int:
        return self.slots[f"127.0.0.1:{port}"]

    def add(self, worker: int, port: int, counter: int, n: int) -> None:
        self.table.add_at(self.table.counter_offset(worker, self.slot(port), counter), n)

    def scrape(self) -> dict[tuple[str, tuple], float]:
        """{(sample name, sorted labels): value} of a parsed /metrics page."""
        status, ctype, body = self.app.handle("GET", "/metrics")
        assert status == 200 and ctype == PROMETHEUS_TYPE
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                assert key not in out, f"duplicate series {key}"
                out[key] = s.value
        return out


def ep_key(name: str, port: int, **extra: str) -> tuple[str, tuple]:
    return name, tuple(sorted({"endpoint": f"127.0.0.1:{port}", **extra}.items()))


def wk_key(name: str, worker: int) -> tuple[str, tuple]:
    return name, (("worker", str(worker)),)


@pytest.fixture
def gw() -> Gateway:
    return Gateway()


def test_every_series_is_present_and_the_page_parses(gw):
    gw.table.count_connection(gw.table.cell(gw.w0, gw.slot(PORTS[0]), 0), 0.002)
    samples = gw.scrape()
    names = {name for name, _ in samples}
    for name in ENDPOINT_SERIES:
        assert name in names, name
        for port in PORTS:
            labelled = [labels for n, labels in samples if n == name
                        and ("endpoint", f"127.0.0.1:{port}") in labels]
            assert labelled, (name, port)
    for name in GATEWAY_SERIES + WORKER_SERIES:
        assert name in names, name
    for name in WORKER_SERIES:
        assert wk_key(name, gw.w0) in samples and wk_key(name, gw.w1) in samples
    assert samples[("etcd_gateway_build_info", (("version", __version__),))] == 1
    assert samples[("etcd_gateway_workers", ())] == 2
    assert samples[("etcd_gateway_reloads_total", ())] == 3


def test_help_and_type_lines_precede_each_family(gw):
    body = gw.app.handle("GET", "/metrics")[2].decode()
    types = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
    assert types["etcd_gateway_endpoint_up"] == "gauge"
    assert types["etcd_gateway_endpoint_connections_total"] == "counter"
    assert types["etcd_gateway_endpoint_dial_duration_seconds"] == "histogram"
    assert types["etcd_gateway_worker_cpu_seconds_total"] == "counter"
    assert body.count("# HELP ") == len(types)
    assert body.endswith("\n")


def test_counter_values_are_totals_over_workers(gw):
    a, b, c = PORTS
    gw.add(gw.w0, a, C_CONNECTIONS, 5)
    gw.add(gw.w1, a, C_CONNECTIONS, 7)
    gw.add(gw.w0, a, C_ACTIVE, 2)
    gw.add(gw.w1, a, C_ACTIVE, 1)
    gw.add(gw.w0, b, C_DIAL_FAILURES, 4)
    gw.add(gw.table.master_row, b, C_HEALTH_CHECK_FAILURES, 9)
    gw.add(gw.w0, c, C_BYTES_SENT, 123456789)
    gw.add(gw.w1, c, C_BYTES_RECEIVED, 987654321)
    gw.table.add_at(gw.table.counter_offset(gw.w0, GATEWAY, G_ACCEPTED), 12)
    gw.table.add_at(gw.table.counter_offset(gw.w1, GATEWAY, G_REJECTED), 3)
    samples = gw.scrape()
    assert samples[ep_key("etcd_gateway_endpoint_connections_total", a)] == 12
    assert samples[ep_key("etcd_gateway_endpoint_connections_total", b)] == 0
    assert samples[ep_key("etcd_gateway_endpoint_active_connections", a)] == 3
    assert samples[ep_key("etcd_gateway_endpoint_dial_failures_total", b)] == 4
    assert samples[ep_key("etcd_gateway_endpoint_health_check_failures_total", b)] == 9
    assert samples[ep_key("etcd_gateway_endpoint_sent_bytes_total", c)] == 123456789
    assert samples[ep_key("etcd_gateway_endpoint_received_bytes_total", c)] == 987654321
    assert samples[("etcd_gateway_accepted_connections_total", ())] == 12
    assert samples[("etcd_gateway_rejected_connections_total", ())] == 3
    assert samples[wk_key("etcd_gateway_worker_active_connections", gw.w0)] == 2
    assert samples[wk_key("etcd_gateway_worker_active_connections", gw.w1)] == 1
    body = gw.app.handle("GET", "/metrics")[2].decode()
    assert 'etcd_gateway_endpoint_sent_bytes_total{endpoint="127.0.0.1:32379"} 123456789\n' in body


def test_busy_poll_seconds_are_the_workers_spin_times_in_seconds(gw):
    gw.table.set_at(gw.table.counter_offset(gw.w0, GATEWAY, G_SPIN_MICROS), 1_500_000)
    gw.table.set_at(gw.table.counter_offset(gw.w1, GATEWAY, G_SPIN_MICROS), 250_000)
    assert gw.scrape()[("etcd_gateway_busy_poll_seconds_total", ())] == 1.75


def test_worker_active_connections_sums_every_endpoint_slot(gw):
    a, b, c = PORTS
    gw.add(gw.w0, a, C_ACTIVE, 2)
    gw.add(gw.w0, b, C_ACTIVE, 3)
    gw.add(gw.w0, c, C_ACTIVE, 4)
    gw.add(gw.w1, c, C_ACTIVE, 1)
    samples = gw.scrape()
    assert samples[wk_key("etcd_gateway_worker_active_connections", gw.w0)] == 9
    assert samples[wk_key("etcd_gateway_worker_active_connections", gw.w1)] == 1


def test_dial_histogram_is_cumulative_and_inf_equals_count(gw):
    a = PORTS[0]
    durations = [0.0001, 0.0007, 0.003, 0.003, 0.04, 0.3, 2.0, 10.0]  # 10 s: beyond 5 s
    for i, seconds in enumerate(durations):
        gw.table.count_connection(gw.table.cell(gw.w0 if i % 2 else gw.w1, gw.slot(a), 0), seconds)
    samples = gw.scrape()
    name = "etcd_gateway_endpoint_dial_duration_seconds"
    buckets = sorted((float(dict(labels)["le"]), value) for (n, labels), value
                     in samples.items()
                     if n == name + "_bucket" and ("endpoint", f"127.0.0.1:{a}") in labels)
    assert [b for b, _ in buckets] == [*DIAL_BUCKETS, float("inf")]
    values = [v for _, v in buckets]
    assert values == sorted(values)
    expected = [sum(1 for d in durations if d <= bound) for bound in DIAL_BUCKETS]
    assert values[:-1] == expected
    assert values[-1] == len(durations)
    assert samples[ep_key(name + "_count", a)] == len(durations)
    assert samples[ep_key(name + "_sum", a)] == pytest.approx(sum(durations), abs=1e-5)
    other = sorted(v for (n, labels), v in samples.items()
                   if n == name + "_bucket" and ("endpoint", f"127.0.0.1:{PORTS[1]}") in labels)
    assert set(other) == {0}


def test_counters_do_not_go_back_when_a_worker_is_replaced(gw):
    a = PORTS[0]
    gw.add(gw.w1, a, C_CONNECTIONS, 40)
    gw.add(gw.w1, a, C_BYTES_SENT, 1000)
    gw.add(gw.w1, a, C_ACTIVE, 2)
    gw.table.count_connection(gw.table.cell(gw.w1, gw.slot(a), 0), 0.01)
    gw.table.add_at(gw.table.counter_offset(gw.w1, GATEWAY, G_ACCEPTED), 40)
    before = gw.scrape()
    gw.table.release_worker_slot(gw.w1)
    after = gw.scrape()
    for name in ("etcd_gateway_endpoint_connections_total",
                 "etcd_gateway_endpoint_sent_bytes_total",
                 "etcd_gateway_endpoint_dial_duration_seconds_count"):
        assert after[ep_key(name, a)] == before[ep_key(name, a)]
    assert after[("etcd_gateway_accepted_connections_total", ())] == 40
    assert after[ep_key("etcd_gateway_endpoint_active_connections", a)] == 0  # a gauge
    assert after[("etcd_gateway_workers", ())] == 1
    assert wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w1) not in after


def test_worker_cpu_counter_adds_the_offsets_of_dead_predecessors(gw):
    own = sum(psutil.Process().cpu_times()[:2])
    first = gw.scrape()[wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w1)]
    assert first >= own - 0.05
    # the worker in slot 1 dies after 100 CPU seconds; its replacement takes the slot
    gw.table.release_worker_slot(gw.w1)
    gw.cpu_offsets[gw.w1] = 100.0
    assert gw.table.claim_worker_slot(os.getpid()) == gw.w1
    second = gw.scrape()
    value = second[wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w1)]
    assert value >= 100.0 + own - 0.05
    assert value >= first
    # worker 0 had no predecessor: just its own time
    assert second[wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w0)] < 100.0


def test_worker_cpu_counter_never_goes_back_even_without_offsets(gw):
    gw.cpu_offsets[gw.w0] = 50.0
    high = gw.scrape()[wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w0)]
    gw.cpu_offsets.clear()
    again = gw.scrape()[wk_key("etcd_gateway_worker_cpu_seconds_total", gw.w0)]
    assert again >= high >= 50.0


def test_worker_process_figures_are_real(gw):
    samples = gw.scrape()
    me = psutil.Process()
    rss = samples[wk_key("etcd_gateway_worker_resident_memory_bytes", gw.w0)]
    assert 0.5 * me.memory_info().rss < rss < 2 * me.memory_info().rss
    fds = samples[wk_key("etcd_gateway_worker_open_fds", gw.w0)]
    assert abs(fds - me.num_fds()) < 10


def test_a_vanished_worker_is_skipped_not_an_error(gw):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    gw.workers = {0: os.getpid(), 1: child.pid, 2: 0}  # gone; and one not forked yet
    samples = gw.scrape()
    assert wk_key("etcd_gateway_worker_resident_memory_bytes", 0) in samples
    assert wk_key("etcd_gateway_worker_resident_memory_bytes", 1) not in samples
    assert wk_key("etcd_gateway_worker_cpu_seconds_total", 1) not in samples
    assert wk_key("etcd_gateway_worker_active_connections", 1) in samples  # from the table
    assert child.pid not in gw.app._procs
    gw.workers = {0: os.getpid()}
    gw.scrape()
    assert list(gw.app._procs) == [os.getpid()]  # one cached Process per live pid


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    gw = Gateway()
    weird = 'v1 "quoted" back\\slash\nnewline'
    gw.app = MetricsApp(gw.table, lambda: GatewayInfo(
        workers={}, desired_workers=1, reloads_total=0, cpu_offsets={}, version=weird))
    samples = gw.scrape()
    assert samples[("etcd_gateway_build_info", (("version", weird),))] == 1
    body = gw.app.handle("GET", "/metrics")[2].decode()
    assert 'version="v1 \\"quoted\\" back\\\\slash\\nnewline"' in body


def test_ipv6_endpoint_label(gw):
    slot = gw.table.publish([Endpoint("v6", socket.AF_INET6, "::1", 2379)])[0].slot
    gw.table.set_role(slot, MemberRole.VOTER)
    samples = gw.scrape()
    assert samples[("etcd_gateway_endpoint_up", (("endpoint", "[::1]:2379"),))] == 1


def test_format_value():
    assert format_value(3) == "3"
    assert format_value(1.0) == "1.0"
    assert format_value(0.0005) == "0.0005"
    assert format_value(float("inf")) == "+Inf"


def test_health_is_200_while_an_endpoint_is_up_else_503(gw):
    status, ctype, body = gw.app.handle("GET", "/health")
    assert (status, ctype) == (200, JSON_TYPE)
    assert json.loads(body) == {"health": "true", "endpoints_up": 3, "endpoints": 3,
                                 "draining": False}
    gw.table.mark_down(gw.slot(PORTS[0]), "refused")
    gw.table.mark_down(gw.slot(PORTS[1]), "refused")
    assert json.loads(gw.app.handle("GET", "/health")[2])["endpoints_up"] == 1
    gw.table.mark_down(gw.slot(PORTS[2]), "refused")
    status, _, body = gw.app.handle("GET", "/health")
    assert status == 503
    assert json.loads(body) == {"health": "false", "endpoints_up": 0, "endpoints": 3,
                                 "draining": False}
    samples = gw.scrape()
    assert all(samples[ep_key("etcd_gateway_endpoint_up", p)] == 0 for p in PORTS)


def test_endpoints_lists_every_roster_entry(gw):
    a, b, _ = PORTS
    gw.add(gw.w0, a, C_CONNECTIONS, 6)
    gw.add(gw.w1, a, C_ACTIVE, 2)
    gw.add(gw.w0, a, C_BYTES_SENT, 100)
    gw.add(gw.w0, a, C_BYTES_RECEIVED, 200)
    gw.add(gw.w0, b, C_DIAL_FAILURES, 1)
    gw.add(gw.table.master_row, b, C_HEALTH_CHECK_FAILURES, 2)
    gw.table.mark_down(gw.slot(b), "dial tcp 127.0.0.1:22379: connection refused")
    status, ctype, body = gw.app.handle("GET", "/endpoints")
    assert (status, ctype) == (200, JSON_TYPE)
    rows = {r["endpoint"]: r for r in json.loads(body)}
    assert list(rows) == [f"127.0.0.1:{p}" for p in PORTS]
    first = rows[f"127.0.0.1:{a}"]
    assert first == {
        "endpoint": "127.0.0.1:2379", "label": "member0", "state": "up", "role": "voter",
        "check": "etcd", "alarms": [], "priority": 0,
        "weight": 0, "active_connections": 2, "connections_total": 6,
        "dial_failures_total": 0, "health_check_failures_total": 0,
        "sent_bytes_total": 100, "received_bytes_total": 200, "last_error": "",
        "last_change": first["last_change"], "last_change_iso": first["last_change_iso"]}
    second = rows[f"127.0.0.1:{b}"]
    assert second["state"] == "down"
    assert second["dial_failures_total"] == 1 and second["health_check_failures_total"] == 2
    assert second["last_error"] == "dial tcp 127.0.0.1:22379: connection refused"
    assert second["last_change"] == gw.table.last_change(gw.slot(b))
    parsed = datetime.fromisoformat(second["last_change_iso"].replace("Z", "+00:00"))
    assert abs(parsed.timestamp() - second["last_change"]) < 0.001
    assert second["last_change_iso"].endswith("Z")


def test_rfc3339():
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1700000000.25) == "2023-11-14T22:13:20.250Z"


def test_other_paths_and_methods(gw):
    assert gw.app.handle("GET", "/nope")[0] == 404
    assert gw.app.handle("GET", "/")[0] == 404
    assert gw.app.handle("HEAD", "/metrics")[0] == 200
    assert gw.app.handle("POST", "/metrics")[0] == 405


# -- member roles and alarms ---------------------------------------------------------
def test_a_learner_is_shown_as_learner_and_not_up(gw):
    learner = gw.slot(PORTS[1])
    gw.table.set_role(learner, MemberRole.LEARNER)
    rows = {r["endpoint"]: r for r in json.loads(gw.app.handle("GET", "/endpoints")[2])}
    row = rows[f"127.0.0.1:{PORTS[1]}"]
    assert (row["state"], row["role"]) == ("learner", "learner")
    samples = gw.scrape()
    assert samples[ep_key("etcd_gateway_endpoint_up", PORTS[1])] == 0
    assert samples[ep_key("etcd_gateway_endpoint_learner", PORTS[1])] == 1
    assert samples[ep_key("etcd_gateway_endpoint_learner", PORTS[0])] == 0
    assert samples[ep_key("etcd_gateway_endpoint_state", PORTS[1], state="learner")] == 1
    assert samples[ep_key("etcd_gateway_endpoint_state", PORTS[1], state="up")] == 0


def test_health_counts_only_members_in_rotation(gw):
    gw.table.set_role(gw.slot(PORTS[0]), MemberRole.LEARNER)
    gw.table.mark_down(gw.slot(PORTS[1]), "refused")
    gw.table.set_role(gw.slot(PORTS[2]), MemberRole.UNCHECKED)
    status, _, body = gw.app.handle("GET", "/health")
    assert status == 503 and json.loads(body)["endpoints_up"] == 0


def test_an_alarm_is_listed_and_exported(gw):
    gw.table.set_alarms(gw.slot(PORTS[0]), MemberAlarm.NOSPACE)
    rows = json.loads(gw.app.handle("GET", "/endpoints")[2])
    assert rows[0]["alarms"] == ["NOSPACE"] and rows[0]["state"] == "up"
    samples = gw.scrape()
    assert samples[ep_key("etcd_gateway_endpoint_alarm", PORTS[0], alarm="NOSPACE")] == 1
    assert samples[ep_key("etcd_gateway_endpoint_alarm", PORTS[0], alarm="CORRUPT")] == 0
