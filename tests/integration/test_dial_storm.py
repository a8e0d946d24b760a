"""Busy is not dead: a reconnect storm against a member whose accept queue overflows
resets no client and deactivates nothing; a black-holed member among live ones is
found by few clients, each losing about one dial timeout."""
import errno
import selectors
import socket
import time

import pytest

from tests.support.clients import echo_once
from tests.support.echo import EchoServer, HungListener
from tests.support.metrics import scrape
from tests.support.ports import free_ports
from tests.support.slow_backend import SlowBackend

pytestmark = pytest.mark.integration

CLIENTS = 2000


def storm(addr: tuple[str, int], n: int, bound: float) -> tuple[int, list[str]]:
    """Connect `n` clients at once, each sends a line first; (greeted, failures) once
    each got its answer or failed."""
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    failures: list[str] = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            failures.append(f"connect: {errno.errorcode.get(err, err)}")
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        pending[s] = b""
    greeted = 0
    deadline = time.monotonic() + bound
    while pending and time.monotonic() < deadline:
        for key, events in sel.select(timeout=0.5):
            s = key.fileobj
            if events & selectors.EVENT_WRITE:  # connected to the gateway: speak first
                try:
                    s.send(b"hi\n")
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                except OSError as exc:
                    failures.append(f"send: {exc!r}")
                    sel.unregister(s)
                    s.close()
                    del pending[s]
                    continue
            try:
                data = s.recv(64)
            except OSError as exc:
                failures.append(f"recv: {exc!r}")
                data = None
            if data:
                pending[s] += data
                if not pending[s].endswith(b"\n"):
                    continue
                greeted += pending[s].startswith(b"hello ") and pending[s].endswith(b" hi\n")
            elif data is not None:
                failures.append("closed before the greeting")
            sel.unregister(s)
            s.close()
            del pending[s]
    for s in pending:
        failures.append("no greeting within the bound")
        s.close()
    return greeted, failures


def test_a_storm_against_a_member_whose_accept_queue_overflows_resets_no_client(
        gateway_factory):
    port, member_port = free_ports(2)
    # backlog 16, one accept loop: 2,000 connects at once overflow the queue and
    # the kernel drops SYNs (retransmitted after 1 s, when the dial timeout fires)
    with SlowBackend(member_port, backlog=16, delay=0) as member:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={member.addr}",
                              "--workers=2", "--dial-timeout=1s",
                              "--health-check=tcp"])  # not etcd: a connect is the check
        greeted, failures = storm(("127.0.0.1", port), CLIENTS, bound=60)
        assert failures == []
        assert greeted == CLIENTS
        assert gw.find_logs("dial timed out; member kept in rotation")  # the storm was real
        assert not gw.find_logs("deactivated endpoint")
        assert not gw.find_logs("rejected client: no endpoint could be reached")


def test_a_black_holed_member_among_live_ones_costs_few_clients_and_is_marked_down(
        gateway_factory):
    port, metrics = free_ports(2)
    with EchoServer() as a, EchoServer() as b, HungListener() as hung:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}",
                              f"--endpoints={hung.addr},{a.addr},{b.addr}",
                              "--workers=2", "--dial-timeout=1s",
                              "--health-check=tcp",  # echo servers, not etcd
                              "--health-check-interval=1h",  # only a suspicion checks
                              f"--metrics-addr=127.0.0.1:{metrics}"])
        for i in range(60):
            payload = b"client %d" % i
            assert echo_once(("127.0.0.1", port), payload, timeout=5) == payload
        line = gw.wait_log("deactivated endpoint", 10)
        assert line["address"] == hung.addr
        assert "agrees" in line["reason"] or "in a row" in line["reason"]
        failures = scrape(f"127.0.0.1:{metrics}")
        hung_dials = failures[f'etcd_gateway_endpoint_dial_failures_total{{endpoint="{hung.addr}"}}']
        assert 1 <= hung_dials <= 2   # the clients that met it before it was a suspect
        assert a.accepted + b.accepted >= 60   # (and one tcp check each at start)
    assert not gw.find_logs("rejected client: no endpoint could be reached")


def test_a_lone_black_holed_member_closes_the_client_after_the_total_wait(gateway_factory):
    port, = free_ports(1)
    with HungListener() as hung:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={hung.addr}",
                              "--workers=1", "--dial-timeout=300ms",
                              "--dial-total-timeout=2s", "--health-check=none"])
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            s.sendall(b"anyone?")
            try:
                assert s.recv(16) == b""
            except ConnectionResetError:
                pass
        line = gw.wait_log("rejected client: no endpoint could be reached", 10)
        assert "rounds of dials" in line["reason"]
        deactivated = gw.wait_log("deactivated endpoint", 5)
        assert deactivated["reason"] == "2 dials in a row timed out"
