"""--balance least-connections against a real three-member etcd cluster."""
import time
from collections import Counter

import pytest

from tests.support.clients import wait_until
from tests.support.held import StatusConnection
from tests.support.ports import free_port

pytestmark = pytest.mark.integration

SETTLE = 0.2  # > the master's load refresh period (50 ms): other workers see each client


def hold(port: int, count: int) -> list[tuple[StatusConnection, str]]:
    """`count` held connections through the gateway, opened one after another, each
    with the member that serves it."""
    out = []
    for _ in range(count):
        conn = StatusConnection("127.0.0.1", port)
        out.append((conn, conn.member_id()))
        time.sleep(SETTLE)
    return out


def test_least_connections_steers_new_clients_to_a_restarted_member(etcd_cluster,
                                                                    gateway_factory):
    port = free_port()
    gateway_factory(["--listen-addr", f"127.0.0.1:{port}",
                     "--endpoints", ",".join(etcd_cluster.client_endpoints()),
                     "--balance", "least-connections", "--workers", "2",
                     "--retry-delay", "1s", "--health-check-interval", "1s"])
    ids = [etcd_cluster.member_id_of(ep) for ep in etcd_cluster.client_endpoints()]
    held = hold(port, 30)
    try:
        assert Counter(member for _, member in held) == {i: 10 for i in ids}
        victim = 1
        etcd_cluster.kill(victim)
        try:
            cut = [conn for conn, member in held if member == ids[victim]]
            kept = [conn for conn, member in held if member != ids[victim]]
            wait_until(lambda: all(conn.closed() for conn in cut), 15,
                       "the killed member's connections did not end")
            assert not any(conn.closed() for conn in kept)
            for conn in cut:  # as an etcd client does when its connection ends
                conn.close()
        finally:
            etcd_cluster.restart(victim)
        # readmitted once the gateway can reach it again; then 10 new clients
        wait_until(lambda: _serves(port, ids[victim]), 30, "the restarted member is not used")
        fresh = hold(port, 10)
        held.extend(fresh)
        assert [member for _, member in fresh] == [ids[victim]] * 10
    finally:
        for conn, _ in held:
            conn.close()


def _serves(port: int, member: str) -> bool:
    """One short-lived client: does it land on `member`? (With least-connections and the
    others at 10, a member back in rotation takes every new client.)"""
    conn = StatusConnection("127.0.0.1", port)
    try:
        return conn.member_id() == member
    finally:
        conn.close()
        time.sleep(SETTLE)
