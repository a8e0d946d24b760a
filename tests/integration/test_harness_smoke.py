"""Smoke tests of the test harness itself: real etcd, echo server, hung listener."""
from __future__ import annotations

import socket
import time

import pytest

from tests.support.echo import EchoServer, HungListener, dead_addr
from tests.support.etcd_cluster import EtcdCluster

pytestmark = pytest.mark.integration


def _hostport(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def test_cluster_put_get_direct(etcd_cluster: EtcdCluster) -> None:
    m0 = etcd_cluster.members[0]
    assert len(etcd_cluster.members) == 3
    assert all(m.pid is not None for m in etcd_cluster.members)
    put = etcd_cluster.etcdctl("put", "smoke/key", "value-1", endpoints=m0.client_addr)
    assert put.returncode == 0, put.stderr
    assert put.stdout.strip() == "OK"
    get = etcd_cluster.etcdctl("get", "smoke/key", "--print-value-only", endpoints=m0.client_addr)
    assert get.returncode == 0, get.stderr
    assert get.stdout.strip() == "value-1"
    # ids from the HTTP status API and from `member list` use the same form
    names = etcd_cluster.member_name_by_id()
    assert names[etcd_cluster.member_id_of(m0.client_addr)] == m0.name


def test_echo_half_close_and_hung_listener() -> None:
    payload = b"0123456789abcdef" * 8192  # 128 KiB
    with EchoServer() as echo:
        with socket.create_connection(_hostport(echo.addr), timeout=5) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            got = bytearray()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:  # the server's SHUT_WR after echoing everything
                    break
                got += chunk
            else:
                pytest.fail("echo server did not half-close")
        assert bytes(got) == payload
        assert echo.accepted == 1

    with HungListener() as hung:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1)
        t0 = time.monotonic()
        with pytest.raises((socket.timeout, TimeoutError)):
            s.connect(_hostport(hung.addr))
        assert time.monotonic() - t0 >= 0.9
        s.close()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(_hostport(dead_addr()), timeout=1)
