"""Dial failures: dead, hung and returning members, and every member down."""
import socket
import time

import pytest

from tests.support.echo import EchoServer, HungListener, dead_addr
from tests.support.ports import free_port
from tests.support.clients import echo_once

pytestmark = pytest.mark.integration




def start(gateway_factory, endpoints, *extra):
    addr = f"127.0.0.1:{free_port()}"
    gw = gateway_factory(["--listen-addr", addr, "--endpoints", ",".join(endpoints), *extra])
    gw.addr = addr
    return gw


def test_a_dead_endpoint_is_skipped_without_client_errors(gateway_factory):
    with EchoServer() as a, EchoServer() as b:
        dead = dead_addr()
        gw = start(gateway_factory, [dead, a.addr, b.addr], "--retry-delay=1m",
                   "--health-check=none")  # so only clients reach the members
        results = [echo_once(gw.addr, b"n%d" % i) for i in range(30)]
        assert results == [b"n%d" % i for i in range(30)]
        line = gw.wait_log("deactivated endpoint", 5)
        assert line["address"] == dead
        assert "connection refused" in line["error"]
        assert a.accepted + b.accepted == 30


def test_a_hung_endpoint_delays_no_client_beyond_the_dial_timeout(gateway_factory):
    with HungListener() as hung, EchoServer() as good:
        gw = start(gateway_factory, [hung.addr, good.addr], "--dial-timeout=300ms",
                   "--retry-delay=1m")
        for i in range(6):
            began = time.monotonic()
            assert echo_once(gw.addr, b"h%d" % i) == b"h%d" % i
            # a bound, not a benchmark: one dial timeout plus generous slack
            assert time.monotonic() - began < 0.3 + 2.0
        line = gw.wait_log("deactivated endpoint", 5)
        assert line["address"] == hung.addr and "timeout" in line["error"]


def test_all_endpoints_down_closes_the_client_promptly(gateway_factory):
    port = free_port()
    gw = start(gateway_factory, [f"127.0.0.1:{port}"], "--retry-delay=1m",
               "--dial-timeout=300ms")
    began = time.monotonic()
    host, gport = gw.addr.rsplit(":", 1)
    try:  # closed (FIN) or reset, even before connect() returns: both are prompt
        with socket.create_connection((host, int(gport)), timeout=10) as s:
            s.sendall(b"anyone?")
            data = s.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    assert data == b""
    assert time.monotonic() - began < 5
    gw.wait_log("rejected client: no endpoint could be reached", 5)


def test_service_returns_as_soon_as_a_member_is_back(gateway_factory):
    port = free_port()
    gw = start(gateway_factory, [f"127.0.0.1:{port}"], "--retry-delay=1m",
               "--dial-timeout=300ms", "--health-check=none")
    try:
        reply = echo_once(gw.addr)
    except ConnectionResetError:
        reply = b""
    assert reply == b""
    gw.wait_log("deactivated endpoint", 5)
    with EchoServer.on_port(port) as back:
        # well before the 1m retry delay: the all-down path tries it anyway
        assert echo_once(gw.addr, b"back") == b"back"
        assert back.accepted == 1
    gw.wait_log("activated", 5, predicate=lambda e: e.get("address") == f"127.0.0.1:{port}")


def test_a_member_that_returns_is_probed_and_readmitted(gateway_factory):
    with EchoServer() as steady:
        port = free_port()
        returning = f"127.0.0.1:{port}"
        gw = start(gateway_factory, [returning, steady.addr], "--retry-delay=1s",
                   "--health-check=tcp")  # echo servers, not etcd
        for _ in range(4):
            assert echo_once(gw.addr) == b"ping"
        gw.wait_log("deactivated endpoint", 5, predicate=lambda e: e["address"] == returning)
        gw.wait_log("failed to activate endpoint (stay inactive for another interval)", 5,
                    predicate=lambda e: e["address"] == returning)
        with EchoServer.on_port(port) as back:
            gw.wait_log("activated", 5, predicate=lambda e: e["address"] == returning)
            for _ in range(8):
                assert echo_once(gw.addr) == b"ping"
            assert back.accepted >= 3


def test_a_failure_seen_by_one_worker_is_seen_by_all(gateway_factory):
    with EchoServer() as good:
        dead = dead_addr()
        gw = start(gateway_factory, [dead, good.addr], "--workers=2", "--retry-delay=1m",
                   "--log-level=debug", "--health-check=none")
        for _ in range(40):
            assert echo_once(gw.addr) == b"ping"
        gw.wait_log("connection closed", 5)
        served_by = {e["pid"] for e in gw.find_logs("connection closed")}
        assert len(served_by) == 2, "both workers should have served clients"
        # sequential clients: the worker that failed first marked it for both, so the
        # other never dialled it (per-worker marks would give one line per worker)
        assert len(gw.find_logs("deactivated endpoint")) == 1
        assert good.accepted == 40
