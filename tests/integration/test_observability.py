"""Metrics, health endpoint, status command, active checks and per-connection logs."""
import json
import os
import signal
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.echo import EchoServer, dead_addr
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port
from tests.support.clients import echo_once, wait_until

pytestmark = pytest.mark.integration




def start(gateway_factory, endpoints, *extra):
    addr, metrics = free_port(), free_port()
    gw = gateway_factory(["--listen-addr", f"127.0.0.1:{addr}", "--endpoints",
                          ",".join(endpoints), f"--metrics-addr=127.0.0.1:{metrics}", *extra])
    gw.sockaddr = ("127.0.0.1", addr)
    gw.metrics = f"127.0.0.1:{metrics}"
    return gw


def get(gw, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{gw.metrics}{path}", timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(gw) -> dict[tuple, float]:
    """{(sample name, frozenset(labels)): value} of one scrape, parsed by prometheus_client."""
    status, body = get(gw, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(gw, name: str, **labels) -> float:
    return samples(gw).get((name, frozenset(labels.items())), float("nan"))




def test_the_whole_metrics_page_parses_and_has_every_series(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr])
        echo_once(gw.sockaddr, b"x")
        names = {name for name, _ in samples(gw)}
    for name in ("etcd_gateway_endpoint_up", "etcd_gateway_endpoint_active_connections",
                 "etcd_gateway_endpoint_connections_total",
                 "etcd_gateway_endpoint_dial_failures_total",
                 "etcd_gateway_endpoint_health_check_failures_total",
                 "etcd_gateway_endpoint_sent_bytes_total",
                 "etcd_gateway_endpoint_received_bytes_total",
                 "etcd_gateway_endpoint_dial_duration_seconds_bucket",
                 "etcd_gateway_endpoint_dial_duration_seconds_sum",
                 "etcd_gateway_endpoint_dial_duration_seconds_count",
                 "etcd_gateway_accepted_connections_total",
                 "etcd_gateway_rejected_connections_total", "etcd_gateway_workers",
                 "etcd_gateway_reloads_total", "etcd_gateway_build_info",
                 "etcd_gateway_worker_resident_memory_bytes",
                 "etcd_gateway_worker_cpu_seconds_total", "etcd_gateway_worker_open_fds",
                 "etcd_gateway_worker_active_connections"):
        assert name in names, name


def test_byte_and_connection_counters_are_exact(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--health-check=none")
        for size in (1000, 250_000, 3):
            assert len(echo_once(gw.sockaddr, b"b" * size)) == size
        ep = {"endpoint": echo.addr}
        wait_until(lambda: value(gw, "etcd_gateway_endpoint_active_connections", **ep) == 0,
                   5, "connections still counted as active")
        assert value(gw, "etcd_gateway_endpoint_connections_total", **ep) == 3
        assert value(gw, "etcd_gateway_endpoint_sent_bytes_total", **ep) == 251_003
        assert value(gw, "etcd_gateway_endpoint_received_bytes_total", **ep) == 251_003
        assert value(gw, "etcd_gateway_accepted_connections_total") == 3
        assert value(gw, "etcd_gateway_endpoint_dial_duration_seconds_count", **ep) == 3


def test_byte_counters_are_current_for_a_long_lived_connection(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--health-check=none")
        ep = {"endpoint": echo.addr}
        with socket.create_connection(gw.sockaddr, timeout=5) as s:
            s.sendall(b"z" * 5000)
            got = b""
            while len(got) < 5000:
                got += s.recv(65536)
            # still open: the counters must not wait for the close
            wait_until(lambda: value(gw, "etcd_gateway_endpoint_sent_bytes_total", **ep) == 5000,
                       3, "bytes of an open connection not counted within a second or so")
            assert value(gw, "etcd_gateway_endpoint_active_connections", **ep) == 1


def test_endpoint_up_falls_to_0_for_a_dead_endpoint(gateway_factory):
    with EchoServer() as echo:
        dead = dead_addr()
        gw = start(gateway_factory, [dead, echo.addr], "--health-check=tcp",
                   "--health-check-interval=200ms")
        wait_until(lambda: value(gw, "etcd_gateway_endpoint_up", endpoint=dead) == 0, 5,
                   "the dead endpoint stays up")
        assert value(gw, "etcd_gateway_endpoint_up", endpoint=echo.addr) == 1
        assert value(gw, "etcd_gateway_endpoint_health_check_failures_total",
                     endpoint=dead) >= 2


def test_health_is_503_when_every_endpoint_is_down(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--health-check=tcp",
                   "--health-check-interval=200ms",
                   "--retry-delay=1m")
        status, body = get(gw, "/health")
        assert status == 200 and json.loads(body)["health"] == "true"
        echo.stop()
        wait_until(lambda: get(gw, "/health")[0] == 503, 5, "/health stays 200")
        assert json.loads(get(gw, "/health")[1])["health"] == "false"


def test_rejected_clients_are_counted(gateway_factory):
    gw = start(gateway_factory, [dead_addr()], "--health-check=none")
    for _ in range(3):
        try:
            echo_once(gw.sockaddr, b"x")
        except OSError:
            pass
    wait_until(lambda: value(gw, "etcd_gateway_rejected_connections_total") == 3, 15,
               "rejections not counted")


def test_endpoints_json_lists_state_counters_and_last_error(gateway_factory):
    with EchoServer() as echo:
        dead = dead_addr()
        gw = start(gateway_factory, [dead, echo.addr], "--health-check=none")
        for _ in range(4):
            echo_once(gw.sockaddr, b"q")
        status, body = get(gw, "/endpoints")
        assert status == 200
        rows = {row["endpoint"]: row for row in json.loads(body)}
        assert rows[dead]["state"] == "down"
        assert "connection refused" in rows[dead]["last_error"]
        assert rows[dead]["dial_failures_total"] == 1
        assert rows[echo.addr]["state"] == "up"
        assert rows[echo.addr]["connections_total"] == 4
        assert rows[echo.addr]["last_change"] > 0


def test_counters_survive_killing_the_workers(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--health-check=none", "--workers=2")
        for _ in range(10):
            echo_once(gw.sockaddr, b"k" * 100)
        ep = {"endpoint": echo.addr}
        wait_until(lambda: value(gw, "etcd_gateway_endpoint_sent_bytes_total", **ep) == 1000,
                   5, "counters not there")
        before = samples(gw)
        for pid in gw.worker_pids():
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(gw.worker_pids()) == 2 and
                   gw.count_log("worker died; replacing it") >= 2, 10, "workers not replaced")
        after = samples(gw)
        for (name, labels), old in before.items():
            if name.endswith("_total") and "worker" not in dict(labels):
                assert after[(name, labels)] >= old, name
        assert after[("etcd_gateway_endpoint_connections_total",
                      frozenset(ep.items()))] == 10
        for (name, labels), old in before.items():
            if name == "etcd_gateway_worker_cpu_seconds_total":
                assert after[(name, labels)] >= old


def test_status_prints_the_endpoints_table(gateway_factory):
    with EchoServer() as echo:
        dead = dead_addr()
        gw = start(gateway_factory, [dead, echo.addr], "--health-check=none")
        for _ in range(3):
            echo_once(gw.sockaddr, b"s")
        result = run_gateway(["status", "--metrics-addr", gw.metrics])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].split()[:2] == ["ENDPOINT", "STATE"]
        by_endpoint = {line.split()[0]: line.split() for line in lines[1:] if line.strip()}
        assert by_endpoint[dead][1] == "down"
        assert by_endpoint[echo.addr][1] == "up"


def test_debug_logs_one_line_per_connection_at_close(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--log-level=debug", "--health-check=none")
        echo_once(gw.sockaddr, b"d" * 1234)
        line = gw.wait_log("connection closed", 5)
        assert line["endpoint"] == echo.addr
        assert line["sent_bytes"] == 1234 and line["received_bytes"] == 1234
        assert line["client"].startswith("127.0.0.1:")
        assert line["end"] == "closed" and line["duration"] >= 0


def test_reloads_are_counted_and_no_counter_goes_back(gateway_factory, tmp_path):
    with EchoServer() as echo:
        conf = tmp_path / "gw.conf"
        conf.write_text(f"endpoints = {echo.addr}\nhealth-check = none\n")
        metrics, port = free_port(), free_port()
        gw = gateway_factory(["-c", str(conf), f"--listen-addr=127.0.0.1:{port}",
                              f"--metrics-addr=127.0.0.1:{metrics}"])
        gw.metrics = f"127.0.0.1:{metrics}"
        for _ in range(5):
            echo_once(("127.0.0.1", port), b"r" * 10)
        ep = {"endpoint": echo.addr}
        wait_until(lambda: value(gw, "etcd_gateway_endpoint_sent_bytes_total", **ep) == 50, 5,
                   "bytes not counted")
        # a changed worker setting replaces every worker: their counts must carry over
        conf.write_text(f"endpoints = {echo.addr}\nhealth-check = none\ndial-timeout = 2s\n")
        gw.signal(signal.SIGHUP)
        gw.wait_log("reloaded", 5)
        wait_until(lambda: gw.count_log("worker exited") >= 2, 10, "old workers not retired")
        assert value(gw, "etcd_gateway_reloads_total") == 1
        assert value(gw, "etcd_gateway_endpoint_connections_total", **ep) == 5
        assert value(gw, "etcd_gateway_endpoint_sent_bytes_total", **ep) == 50
        assert value(gw, "etcd_gateway_accepted_connections_total") == 5


# -- active etcd health checks against a real cluster ------------------------------------
def test_a_sigstopped_member_is_marked_down_and_clients_do_not_notice(etcd_cluster,
                                                                        gateway_factory):
    victim = etcd_cluster.client_endpoints()[1]
    gw = start(gateway_factory, etcd_cluster.client_endpoints(), "--health-check=etcd",
               "--health-check-interval=300ms", "--dial-timeout=500ms", "--retry-delay=1m")
    etcd_cluster.pause(1)
    try:
        gw.wait_log("deactivated endpoint", 10, predicate=lambda e: e["address"] == victim)
        assert value(gw, "etcd_gateway_endpoint_up", endpoint=victim) == 0
        failures = []
        for i in range(20):
            result = etcd_cluster.etcdctl("put", f"/obs/{i}", "v",
                                          endpoints=f"{gw.sockaddr[0]}:{gw.sockaddr[1]}")
            if result.returncode != 0:
                failures.append(result.stderr)
        assert failures == []
    finally:
        etcd_cluster.resume(1)
