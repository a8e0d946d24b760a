"""Bytes under load and the gateway's resources: integrity, scale, leaks, limits."""
import hashlib
import socket
import struct
import threading
import time

import psutil
import pytest

from tests.support.echo import EchoServer
from tests.support.ports import free_port
from tests.support.clients import wait_until

pytestmark = pytest.mark.integration

MiB = 1 << 20


def start(gateway_factory, endpoints, *extra, prefix=None):
    addr = f"127.0.0.1:{free_port()}"
    kwargs = {"prefix": prefix} if prefix else {}
    gw = gateway_factory(["--listen-addr", addr, "--endpoints", ",".join(endpoints), *extra],
                         **kwargs)
    host, port = addr.rsplit(":", 1)
    gw.sockaddr = (host, int(port))
    return gw


def worker_fds(gw) -> int:
    return sum(psutil.Process(pid).num_fds() for pid in gw.worker_pids())


def worker_rss(gw) -> int:
    return sum(psutil.Process(pid).memory_info().rss for pid in gw.worker_pids())




def echo_transfer(sockaddr, size: int, seed: int) -> tuple[str, str]:
    """Send `size` pseudo-random bytes, half-close, read the echo; both SHA-256s."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    with socket.create_connection(sockaddr, timeout=60) as s:
        def send():
            left = size
            while left:
                chunk = block[:min(left, len(block))]
                s.sendall(chunk)
                sent_hash.update(chunk)
                left -= len(chunk)
            s.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send)
        sender.start()
        received = 0
        while True:
            data = s.recv(1 << 18)
            if not data:
                break
            got_hash.update(data)
            received += len(data)
        sender.join(60)
    assert received == size
    return sent_hash.hexdigest(), got_hash.hexdigest()


def test_four_parallel_64_mib_echoes_arrive_intact_and_end_with_half_close(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--health-check=none")
        results = [None] * 4

        def run(i):
            results[i] = echo_transfer(gw.sockaddr, 64 * MiB, i)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for sent, got in results:
            assert sent == got
        assert echo.half_closes == 4


def test_two_thousand_concurrent_connections(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr])
        clients = []
        try:
            for _ in range(2000):
                s = socket.create_connection(gw.sockaddr, timeout=10)
                clients.append(s)
            for i, s in enumerate(clients):
                s.sendall(struct.pack("!I", i))
            for i, s in enumerate(clients):
                assert s.recv(4) == struct.pack("!I", i)
            wait_until(lambda: echo.active >= 2000, 10, "backend did not see 2000 connections")
        finally:
            for s in clients:
                s.close()


def abusive_clients(sockaddr, rounds: int) -> None:
    """Connections that end badly: resets mid-stream, abandonment, half-sent data."""
    for i in range(rounds):
        kind = i % 4
        s = socket.create_connection(sockaddr, timeout=5)
        if kind == 0:                 # reset after sending
            s.sendall(b"x" * 1000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif kind == 1:               # abandoned at once
            pass
        elif kind == 2:               # half-sent, then reset while the echo is in flight
            s.sendall(b"y" * 200_000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:                         # a clean exchange
            s.sendall(b"ok")
            s.recv(2)
        s.close()


def test_no_descriptor_or_memory_leak_after_connections_that_end_badly(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--workers=2")
        abusive_clients(gw.sockaddr, 40)   # warm up: imports, pools, allocator arenas
        time.sleep(1.5)                     # idle pipes are trimmed after a quiet tick
        baseline_fds = worker_fds(gw)
        abusive_clients(gw.sockaddr, 400)
        first_rss = worker_rss(gw)
        abusive_clients(gw.sockaddr, 400)
        wait_until(lambda: worker_fds(gw) <= baseline_fds, 15,
                   f"worker fds stay above the baseline of {baseline_fds}")
        # a leak grows with every round; allocator noise does not
        assert worker_rss(gw) - first_rss < 8 * MiB


def test_a_client_that_reads_nothing_does_not_grow_the_gateway(gateway_factory):
    with EchoServer(flood=True) as flood:
        gw = start(gateway_factory, [flood.addr], "--workers=1")
        before = worker_rss(gw)
        s = socket.create_connection(gw.sockaddr, timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        try:
            wait_until(lambda: flood.bytes_sent > 0, 5, "the member never flooded")
            last, stable_since = -1, time.monotonic()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:   # until backpressure stops the member
                time.sleep(0.5)
                if flood.bytes_sent == last:
                    if time.monotonic() - stable_since > 1.5:
                        break
                else:
                    last, stable_since = flood.bytes_sent, time.monotonic()
            assert flood.bytes_sent < 64 * MiB   # kernel buffers + one pipe, not a heap
            assert worker_rss(gw) - before < 8 * MiB
        finally:
            s.close()


def test_running_out_of_descriptors_is_survived(gateway_factory):
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--workers=1",
                   prefix=["prlimit", "--nofile=200:200", "--"])
        held = []
        try:
            for _ in range(150):   # 2 fds each in the worker: more than it has
                s = socket.create_connection(gw.sockaddr, timeout=5)
                s.settimeout(5)
                held.append(s)
            gw.wait_log("out of file descriptors: pausing accept", 15)
            assert gw.running
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 15
        while True:  # service resumes once descriptors are free again
            try:
                with socket.create_connection(gw.sockaddr, timeout=5) as s:
                    s.sendall(b"again")
                    if s.recv(10) == b"again":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "service did not resume"
            time.sleep(0.2)
        assert gw.running


def test_both_legs_have_keepalive(gateway_factory):
    """`ss -o` shows a keepalive timer on every socket with SO_KEEPALIVE on."""
    import subprocess
    with EchoServer() as echo:
        gw = start(gateway_factory, [echo.addr], "--workers=1", "--health-check=none")
        with socket.create_connection(gw.sockaddr, timeout=5) as s:
            s.sendall(b"k")
            assert s.recv(1) == b"k"
            worker = gw.worker_pids()[0]
            out = subprocess.run(["ss", "-tnpo", "state", "established"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            legs = [line for line in out.splitlines() if f"pid={worker}," in line]
            client_leg = [leg for leg in legs if f"127.0.0.1:{gw.sockaddr[1]} " in leg]
            member_leg = [leg for leg in legs if f"{echo.addr} " in leg]
            assert client_leg and member_leg, out
            for line in client_leg + member_leg:
                assert "timer:(keepalive" in line, line
