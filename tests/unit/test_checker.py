"""The master's member checks as a state machine (gateway/checks.py), with `tcp` checks
against real loopback sockets on a real loop: fall and rise counting, readmission
only after the retry delay, and a slot whose endpoint changed starting afresh."""
import socket
import time

import pytest

from gateway.checks import Checker, CheckMode, CheckPolicy
from gateway.endpoints import Endpoint
from gateway.health import C_HEALTH_CHECK_FAILURES, HealthTable
from gateway.loop import Loop
from tests.support.echo import HungListener, dead_addr


def _endpoint(port: int) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", socket.AF_INET, "127.0.0.1", port)


def _dead_port() -> int:
    return int(dead_addr().rsplit(":", 1)[1])


class Rig:
    def __init__(self, ports: list[int], max_endpoints: int = 64, interval: float = 0.05,
                 retry_delay: float = 0.3, dial_timeout: float = 1.0):
        self.loop = Loop()
        self.table = HealthTable(max_endpoints=max_endpoints)
        self.slot = self.table.publish([_endpoint(p) for p in ports])[0].slot
        self.checker = Checker(self.loop, self.table, CheckPolicy(
            mode=CheckMode.TCP, interval=interval, fall=2, rise=2, dial_timeout=dial_timeout,
            retry_delay=retry_delay))

    def failures(self) -> int:
        table = self.table
        return table.counter(self.slot, C_HEALTH_CHECK_FAILURES, worker=table.master_row)

    def run_until(self, condition, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            self.loop.run_once(0.01)

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.loop.run_once(0.01)

    def close(self) -> None:
        self.checker.close()
        self.loop.close()


@pytest.fixture
def member():
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = server.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_an_up_member_is_marked_down_after_fall_failed_checks_not_before():
    rig = Rig([_dead_port()])
    try:
        rig.checker.start()
        rig.run_until(lambda: rig.failures() >= 1)
        assert rig.table.is_up(rig.slot)        # one failure is not enough (fall 2)
        rig.run_until(lambda: not rig.table.is_up(rig.slot))
        assert rig.failures() == 2
        assert "connection refused" in rig.table.last_error(rig.slot)
    finally:
        rig.close()


def test_a_down_member_is_readmitted_after_the_retry_delay_by_rise_good_checks(member):
    rig = Rig([member.getsockname()[1]], interval=60.0, retry_delay=0.5)
    try:
        rig.table.mark_down(rig.slot, "a worker's dial failed")
        rig.checker.start()
        rig.run_for(0.25)
        assert not rig.table.is_up(rig.slot)    # still inside its retry delay
        assert _accepted(member) == 0           # and not even checked yet
        rig.run_until(lambda: rig.table.is_up(rig.slot))
        assert _accepted(member) == 2           # rise 2: two good checks, back to back
    finally:
        rig.close()


def test_a_failed_readmission_check_keeps_the_member_out_for_another_retry_delay():
    rig = Rig([_dead_port()], retry_delay=0.3)
    try:
        rig.table.mark_down(rig.slot, "a worker's dial failed")
        first_down = rig.table.down_at(rig.slot)
        rig.checker.start()
        rig.run_until(lambda: rig.failures() == 1)
        assert not rig.table.is_up(rig.slot)
        assert rig.table.down_at(rig.slot) > first_down  # its retry delay starts again
    finally:
        rig.close()


def test_a_slot_whose_endpoint_changed_counts_its_failures_afresh():
    # one endpoint slot: a reload's new endpoint takes the very slot of the old one
    rig = Rig([_dead_port()], max_endpoints=1)
    try:
        rig.checker.start()
        rig.run_until(lambda: rig.failures() == 1)      # the old endpoint: one failure
        rig.run_until(lambda: rig.checker._states[rig.slot].inflight is None)
        new_slot = rig.table.publish([_endpoint(_dead_port())])[0].slot
        assert new_slot == rig.slot
        assert rig.failures() == 0                      # its counters start at zero
        rig.run_until(lambda: rig.failures() >= 1)      # the new one's first failure...
        assert rig.table.is_up(rig.slot)                # ...is not the old one's second
        rig.run_until(lambda: not rig.table.is_up(rig.slot))
    finally:
        rig.close()


def test_a_check_whose_connect_times_out_says_so_in_the_workers_words():
    hung = HungListener()
    rig = Rig([hung.port], dial_timeout=0.3)
    try:
        rig.checker.start()
        rig.run_until(lambda: not rig.table.is_up(rig.slot))   # fall 2: two timeouts
        assert rig.table.last_error(rig.slot) == (
            f"dial tcp 127.0.0.1:{hung.port}: i/o timeout (dial timeout 0.3s)")
    finally:
        rig.close()
        hung.close()
