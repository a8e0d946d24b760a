"""The worker watchdog (--worker-timeout), with a real SIGSTOP on a real worker."""
import os
import signal
import time

import pytest

from tests.support.clients import echo_once, wait_until
from tests.support.echo import EchoServer
from tests.support.metrics import scrape
from tests.support.ports import free_ports

pytestmark = pytest.mark.integration

CANARY = "canary-token-0c5e77a1"


def test_a_stopped_worker_is_bypassed_then_killed_and_replaced(gateway_factory):
    port, metrics = free_ports(2)
    with EchoServer() as echo:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={echo.addr}",
                              "--workers=3", "--worker-timeout=3s", "--health-check=none",
                              f"--metrics-addr=127.0.0.1:{metrics}"],
                             env={"CANARY_SECRET": CANARY})
        wait_until(lambda: len(gw.worker_pids()) == 3, 10, "3 workers never came up")
        victim = gw.worker_pids()[0]
        os.kill(victim, signal.SIGSTOP)
        try:
            # the others share the listener: no client waits for the stopped one
            for i in range(60):
                payload = b"while stopped %d" % i
                assert echo_once(("127.0.0.1", port), payload, timeout=2) == payload
            line = gw.wait_log("worker timeout", 20)
            assert line["worker_pid"] == victim and isinstance(line["worker"], int)
            wait_until(lambda: victim not in gw.worker_pids() and len(gw.worker_pids()) == 3,
                       10, "the wedged worker was not replaced")
        finally:
            try:
                os.kill(victim, signal.SIGCONT)
            except ProcessLookupError:
                pass
        assert gw.find_logs("worker exited", lambda e: e.get("worker_pid") == victim)
        assert not gw.find_logs("workers keep dying")
        assert scrape(f"127.0.0.1:{metrics}")["etcd_gateway_worker_timeouts_total"] == 1
        assert echo_once(("127.0.0.1", port), b"after") == b"after"
    assert CANARY not in gw.stderr_text() + gw.stdout_text()  # a kill logs no environment


def test_a_worker_timeout_of_zero_leaves_a_stopped_worker_alone(gateway_factory):
    port, = free_ports(1)
    with EchoServer() as echo:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={echo.addr}",
                              "--workers=2", "--worker-timeout=0", "--health-check=none"])
        wait_until(lambda: len(gw.worker_pids()) == 2, 10, "2 workers never came up")
        victim = gw.worker_pids()[0]
        os.kill(victim, signal.SIGSTOP)
        try:
            for i in range(20):
                assert echo_once(("127.0.0.1", port), b"%d" % i, timeout=2) == b"%d" % i
            time.sleep(4)   # longer than the 3 s the other test turns the watchdog on for
            assert victim in gw.worker_pids()
            assert not gw.find_logs("worker timeout")
        finally:
            os.kill(victim, signal.SIGCONT)
