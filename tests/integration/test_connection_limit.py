"""--max-connections: beyond N clients the gateway stops accepting; the kernel's
backlog holds the next ones, served (not reset) as soon as a connection closes."""
import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

SETTLE = 0.3  # several load refresh periods (50 ms): every worker has seen every client


def metric(metrics: str, name: str) -> float:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    raise AssertionError(f"no {name} in /metrics")


@pytest.fixture
def limited(gateway_factory):
    with EchoServer() as echo:
        port, metrics = free_port(), free_port()
        gw = gateway_factory(["--listen-addr", f"127.0.0.1:{port}", "--endpoints", echo.addr,
                              "--max-connections", "5", "--workers", "2", "--health-check", "none",
                              f"--metrics-addr=127.0.0.1:{metrics}"])
        gw.sockaddr, gw.metrics, gw.echo = ("127.0.0.1", port), f"127.0.0.1:{metrics}", echo
        yield gw


def test_a_client_beyond_the_limit_waits_in_the_backlog_and_is_served_when_one_closes(
        limited):
    held = []
    try:
        for i in range(5):
            s = socket.create_connection(limited.sockaddr, timeout=10)
            held.append(s)
            assert roundtrip(s, b"held %d" % i) == b"held %d" % i
        time.sleep(SETTLE)
        assert metric(limited.metrics, "etcd_gateway_open_connections") == 5
        # the kernel completes the handshake (backlog), but no worker accepts it
        sixth = socket.create_connection(limited.sockaddr, timeout=10)
        held.append(sixth)
        sixth.sendall(b"sixth")
        sixth.settimeout(1.5)
        with pytest.raises(TimeoutError):
            sixth.recv(100)
        assert limited.echo.accepted == 5
        assert metric(limited.metrics, "etcd_gateway_connection_limit_pauses_total") >= 1
        limited.wait_log("connection limit reached: pausing accept", 5)
        held.pop(0).close()
        sixth.settimeout(10)
        assert sixth.recv(100) == b"sixth"  # served, not reset
        assert limited.echo.accepted == 6
        for s in held:  # nobody else was disturbed
            assert roundtrip(s, b"still") == b"still"
    finally:
        for s in held:
            s.close()


def test_accepting_resumes_on_its_own_after_a_burst_beyond_the_limit(limited):
    clients = [socket.create_connection(limited.sockaddr, timeout=10) for _ in range(12)]
    try:
        for s in clients:
            s.sendall(b"x")
        answered = 0
        while clients:  # each client is served in turn as earlier ones close
            s = clients.pop(0)
            assert s.recv(1) == b"x"
            answered += 1
            s.close()
        assert answered == 12
        wait_until(lambda: metric(limited.metrics, "etcd_gateway_open_connections") == 0, 10,
                   "connections still counted after every client closed")
        assert metric(limited.metrics, "etcd_gateway_rejected_connections_total") == 0
    finally:
        for s in clients:
            s.close()
