"""How workers wait for new clients: one waker per connection, and long-lived clients
spread over the workers, whether they connect one after another or all at once
(gateway/worker.py), seen from outside on the real binary.
That a stopped worker strands no client with it is shown by
tests/integration/test_watchdog.py (a SIGSTOPped worker, --worker-timeout=0)."""
import contextlib
import os
import socket
import time
from collections.abc import Iterator

import psutil
import pytest

from gateway.worker import TICK
from tests.support.clients import echo_once, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_ports

pytestmark = pytest.mark.integration

EPOLLEXCLUSIVE = 1 << 28


def listening_inode(port: int) -> int:
    """The inode of the socket listening on 127.0.0.1:port (/proc/net/tcp, state 0A)."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
                return int(fields[9])
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def epoll_events_for(pid: int, inode: int) -> list[int]:
    """The event masks `pid`'s epoll instances hold for the socket with `inode`."""
    fds = [fd for fd in os.listdir(f"/proc/{pid}/fd")
           if _readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]"]
    masks = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if _readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
            continue
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] == "tfd:" and parts[1] in fds:
                    masks.append(int(parts[3], 16))
    return masks


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def test_each_worker_waits_on_the_shared_listener_as_an_exclusive_waker(gateway_factory):
    port, = free_ports(1)
    with EchoServer() as echo:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={echo.addr}",
                              "--workers=2", "--health-check=none"])
        wait_until(lambda: len(gw.worker_pids()) == 2, 10, "2 workers never came up")
        assert echo_once(("127.0.0.1", port), b"up") == b"up"
        inode = listening_inode(port)
        for pid in gw.worker_pids():
            masks = epoll_events_for(pid, inode)
            assert masks, f"worker {pid} does not wait on the listener"
            assert all(m & EPOLLEXCLUSIVE and m & 1 for m in masks), [hex(m) for m in masks]


def clients_per_worker(gw, port: int) -> list[int]:
    """Established client connections each worker holds on the listener's port."""
    counts = []
    for pid in gw.worker_pids():
        proc = psutil.Process(pid)
        listing = getattr(proc, "net_connections", None) or proc.connections  # psutil < 6
        counts.append(sum(1 for c in listing("tcp")
                          if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port))
    return counts


@contextlib.contextmanager
def two_workers_seeing_each_other(gateway_factory, *flags: str
                                  ) -> Iterator[tuple[object, int, list[socket.socket]]]:
    """A gateway of two workers in front of an echo server, each worker having seen
    the other (Worker._find_peers, per tick): (the gateway, its port, a list for the
    test's clients, closed at the end)."""
    port, = free_ports(1)
    clients: list[socket.socket] = []
    with EchoServer() as echo:
        gw = gateway_factory([f"--listen-addr=127.0.0.1:{port}", f"--endpoints={echo.addr}",
                              "--workers=2", "--health-check=none", *flags])
        wait_until(lambda: len(gw.worker_pids()) == 2, 10, "2 workers never came up")
        time.sleep(2.5 * TICK)
        try:
            yield gw, port, clients
        finally:
            for client in clients:
                client.close()


def test_long_lived_clients_opened_one_after_another_are_spread_over_the_workers(
        gateway_factory):
    # the kernel wakes the first worker asleep in the listener's line, the same one
    # each time: a worker that holds more clients than another steps to the back.
    # No busy polling: a worker spinning is not asleep, and may take the next client
    # whatever the line's order
    with two_workers_seeing_each_other(gateway_factory, "--busy-poll=0") as (gw, port, clients):
        for _ in range(8):  # one at a time, each relayed before the next connects
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        counts = clients_per_worker(gw, port)
        assert sum(counts) == 8 and min(counts) >= 3, counts


def test_long_lived_clients_opened_all_at_once_are_spread_over_the_workers(gateway_factory):
    # a pool opening its connections together (iperf3's streams, an application's
    # gRPC channels at start): the worker that is awake, busy polling (the default),
    # would take the whole burst; one far ahead of the other pauses its accepts
    with two_workers_seeing_each_other(gateway_factory) as (gw, port, clients):
        for _ in range(12):  # every connect started before any is relayed
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(("127.0.0.1", port))
            clients.append(client)
        for client in clients:
            client.settimeout(10)
            client.sendall(b"x")
            assert client.recv(1) == b"x"
        counts = clients_per_worker(gw, port)
        assert sum(counts) == 12 and min(counts) >= 3, counts
