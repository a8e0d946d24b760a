"""Signals from the master's first instruction, and a drain that says so: the real
binary, a UDP socket that never answers as a slow SRV resolver, a FIFO that holds
start-up at the config read, and /health during a drain."""
import json
import os
import select
import signal
import socket
import urllib.error
import urllib.request

import pytest

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def silent_resolver():
    """A UDP port that receives DNS queries and never answers (nor reads them)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def slow_srv_gateway(gateway_factory, resolver: socket.socket):
    """A gateway whose start-up is stuck in SRV lookups against `resolver`; returned
    once its first query has arrived (so it is mid start-up)."""
    port = resolver.getsockname()[1]
    gw = gateway_factory(["--discovery-srv=example.test", "--insecure-discovery",
                          f"--discovery-srv-resolver=127.0.0.1:{port}",
                          f"--listen-addr=127.0.0.1:{free_port()}"], wait_for=None)
    readable, _, _ = select.select([resolver], [], [], 20)
    assert readable, "the gateway sent no SRV query"
    return gw


def test_sighup_and_sigusr1_during_start_up_are_not_fatal(gateway_factory, silent_resolver):
    gw = slow_srv_gateway(gateway_factory, silent_resolver)
    gw.signal(signal.SIGHUP)
    gw.signal(signal.SIGUSR1)
    status = gw.wait(60)
    # start-up went on to its own end: nothing was found, exit 1 with the reason
    assert status == 1, gw.stderr_text()
    assert "--discovery-srv" in gw.stderr_text()
    assert "Traceback" not in gw.stderr_text()


def test_sigterm_during_start_up_exits_cleanly(gateway_factory, silent_resolver):
    gw = slow_srv_gateway(gateway_factory, silent_resolver)
    gw.signal(signal.SIGTERM)
    assert gw.wait(60) == 0, gw.stderr_text()
    assert gw.find_logs("stopped during start-up")[0]["signal"] == "SIGTERM"
    assert "Traceback" not in gw.stderr_text()


def test_signals_during_start_up_are_acted_on_once_running(gateway_factory, tmp_path):
    fifo = tmp_path / "gateway.fifo"
    os.mkfifo(fifo)
    port = free_port()
    with EchoServer() as echo:
        gw = gateway_factory(["-c", str(fifo), "--health-check=none", "--workers=1"],
                             wait_for=None)
        # this open returns once the gateway has opened the FIFO: it is mid start-up,
        # waiting for its config
        with open(fifo, "w") as writer:
            for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN):
                gw.signal(signum)
            writer.write(f"endpoints = {echo.addr}\nlisten-addr = 127.0.0.1:{port}\n")
        gw.wait_log("ready to proxy client requests", 20)
        gw.wait_log("reloaded", 20)
        gw.wait_log("reopened log file", 20)
        wait_until(lambda: len(gw.worker_pids()) == 2, 20, "SIGTTIN was not acted on")
        acted = [e["signal"] for e in gw.find_logs("acting on a signal received during "
                                                   "start-up")]
        assert acted == ["SIGHUP", "SIGUSR1", "SIGTTIN"]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert roundtrip(client, b"running") == b"running"


def get_health(metrics: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://{metrics}/health", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture
def draining(gateway_factory):
    """A gateway draining (SIGTERM) with one client session still open."""
    metrics = f"127.0.0.1:{free_port()}"
    port = free_port()
    with EchoServer() as echo:
        gw = gateway_factory([f"--endpoints={echo.addr}", f"--listen-addr=127.0.0.1:{port}",
                              f"--metrics-addr={metrics}", "--health-check=none",
                              "--workers=1", "--shutdown-timeout=60s"])
        assert get_health(metrics)[0] == 200
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert roundtrip(client, b"open") == b"open"
        gw.signal(signal.SIGTERM)
        gw.wait_log("draining connections", 10)
        gw.metrics = metrics
        try:
            yield gw
        finally:
            client.close()
        assert gw.wait(30) == 0


def test_health_is_503_and_says_draining_during_a_drain(draining):
    status, body = get_health(draining.metrics)
    assert status == 503
    assert body["draining"] is True and body["health"] == "false"


def test_sighup_during_a_drain_is_logged_as_ignored(draining):
    draining.signal(signal.SIGHUP)
    draining.wait_log("reload ignored: draining", 10)
    assert draining.count_log("reloaded") == 0


def test_worker_count_signals_during_a_drain_change_nothing_and_say_so(draining):
    started = draining.count_log("started worker")
    for signum in (signal.SIGTTIN, signal.SIGTTOU):
        name = signal.Signals(signum).name
        draining.signal(signum)
        draining.wait_log("worker count unchanged: draining", 10,
                          lambda e, name=name: e["signal"] == name)
    assert draining.count_log("worker count changed") == 0
    assert draining.count_log("started worker") == started
    assert len(draining.worker_pids()) == 1
