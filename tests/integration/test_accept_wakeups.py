"""How workers wait for new clients: one waker per connection (gateway/worker.py), seen
from outside on the real binary. That a stopped worker strands no client with it is
shown by tests/integration/test_watchdog.py (a SIGSTOPped worker, --worker-timeout=0)."""
import os

import pytest

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
