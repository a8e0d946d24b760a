"""The worker's dial path, on real sockets in this process (no fork): a timed-out
dial moves the client on to the next candidate, running out of descriptors at
socket() rejects the client and pauses accepting, and dials under way when the worker
stops are abandoned cleanly, and a member on this host is relayed to within the accept."""
import os
import resource
import socket
import time

import pytest

from gateway import log as gwlog
from gateway.addresses import HostPort
from gateway.endpoints import Endpoint
from gateway.health import (C_ACTIVE, C_BYTES_SENT, C_CONNECTIONS, G_ACCEPTED,
                            G_OPEN, G_REJECTED, GATEWAY, HealthTable)
from gateway.listeners import Kind, Listener, bind
from gateway.worker import Accepting, State, Worker, WorkerSettings
from tests.support.echo import HungListener


def _settings(dial_timeout: float) -> WorkerSettings:
    return WorkerSettings(dial_timeout=dial_timeout, dial_total_timeout=dial_timeout,
                          timeout_fall=2, shutdown_timeout=5.0,
                          log=gwlog.Settings("error", "json", ""))


def _endpoint(port: int) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", socket.AF_INET, "127.0.0.1", port)


class Rig:
    """A worker with no listener of its own, a roster, and a TCP client the test
    admits as if the worker had accepted it."""

    def __init__(self, ports: list[int], dial_timeout: float = 10.0):
        self.table = HealthTable()
        self.slots = [e.slot for e in self.table.publish([_endpoint(p) for p in ports])]
        index = self.table.claim_worker_slot(os.getpid())
        self.worker = Worker(index, [], self.table, _settings(dial_timeout), os.getppid())
        self.worker._resume_accepting()
        with socket.create_server(("127.0.0.1", 0)) as front:
            self.app = socket.create_connection(front.getsockname(), timeout=5)
            client, _ = front.accept()
        client.setblocking(False)
        self.client_fd = client.detach()

    def admit(self) -> None:
        self.worker._admit(self.client_fd, ("127.0.0.1", 40000))

    def run_until(self, condition, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not reached in time"
            self.worker.loop.run_once(0.05)

    def rejected(self) -> int:
        return self.table.counter(GATEWAY, G_REJECTED, worker=self.worker.index)

    def close(self) -> None:
        self.worker._close_all()
        self.worker.loop.close()
        self.app.close()


@pytest.fixture
def hung():
    listener = HungListener()
    yield listener
    listener.close()


@pytest.fixture
def member():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    yield server
    server.close()


def _first_bytes(member: socket.socket) -> bytes:
    """What the member's next accepted connection received first (bounded waits)."""
    conn, _ = member.accept()
    with conn:
        conn.settimeout(5)
        return conn.recv(64)


def test_a_timed_out_dial_moves_the_client_to_the_next_candidate(hung, member):
    rig = Rig([hung.port, member.getsockname()[1]], dial_timeout=0.3)
    try:
        rig.admit()  # round robin from a fresh counter: the hung member first
        rig.run_until(lambda: rig.worker.session_count == 1)
        conn, _ = member.accept()
        conn.close()
        assert rig.table.dial_timeouts(rig.slots[0]) == 1  # counted, as a suspect...
        assert rig.table.is_up(rig.slots[0])               # ...not yet marked down
        assert rig.rejected() == 0
    finally:
        rig.close()


def test_out_of_descriptors_at_socket_rejects_the_client_and_pauses_accepting(member):
    rig = Rig([member.getsockname()[1]])
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest_free = os.open(os.devnull, os.O_RDONLY)
        os.close(lowest_free)
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
        try:
            rig.admit()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert rig.worker._accepting == Accepting.NO_FDS
        assert rig.rejected() == 1
        assert not rig.worker.dials
        with pytest.raises(ConnectionResetError):  # closed hard: the client knows at once
            rig.app.recv(1)
        rig.run_until(lambda: rig.worker._accepting == Accepting.OPEN)  # after the pause
    finally:
        rig.close()


def test_dials_under_way_when_the_worker_stops_are_abandoned(hung):
    rig = Rig([hung.port])
    try:
        rig.admit()
        rig.worker.loop.run_once(0.05)
        assert len(rig.worker.dials) == 1
        assert rig.worker._dialling[rig.slots[0]] == 1  # counts toward the member's load
        rig.worker.begin_drain()
        assert rig.worker.state == State.DRAINING  # a dial under way keeps it draining
        rig.worker._close_all()
        assert not rig.worker.dials
        assert not any(rig.worker._dialling)
        assert not list(rig.worker.loop.registered())
        with pytest.raises(ConnectionResetError):
            rig.app.recv(1)
    finally:
        rig.close()


def test_a_member_on_this_host_is_relayed_to_within_the_accept_no_wakeup_needed(member):
    """On loopback the handshake completes inside connect(): the worker sees it at
    once (TCP_INFO), starts the session and relays the bytes the client already sent,
    all before its loop turns again."""
    rig = Rig([member.getsockname()[1]])
    try:
        rig.app.sendall(b"first request")
        time.sleep(0.05)  # the bytes are in the client socket before the accept
        rig.admit()
        assert rig.worker.session_count == 1 and not rig.worker.dials
        assert _first_bytes(member) == b"first request"
    finally:
        rig.close()


def test_a_connect_completed_at_once_leaves_no_dial_counted_toward_the_members_load(member):
    """A guard against a leaked count on the usual path: a connect done when connect()
    returns starts its session within the accept, and no dial is left in flight."""
    rig = Rig([member.getsockname()[1]])
    try:
        rig.admit()
        assert rig.worker.session_count == 1
        assert not any(rig.worker._dialling)
    finally:
        rig.close()


def test_a_connect_seen_complete_when_writable_counts_as_in_flight_until_then(
        member, monkeypatch):
    """A connect that TCP_INFO does not show as done (a member on another host) waits
    for WRITE: it counts toward the member's dial load (least-connections reads it)
    until the session begins, and not after."""
    monkeypatch.setattr("gateway.dial._established", lambda sock: False)
    rig = Rig([member.getsockname()[1]])
    try:
        rig.app.sendall(b"after the wait")
        rig.admit()
        assert rig.worker.session_count == 0 and len(rig.worker.dials) == 1
        assert rig.worker._dialling[rig.slots[0]] == 1
        rig.run_until(lambda: rig.worker.session_count == 1)
        assert not rig.worker.dials
        assert not any(rig.worker._dialling)
        assert _first_bytes(member) == b"after the wait"
    finally:
        rig.close()


def test_a_refused_connect_is_not_taken_for_an_established_one():
    with socket.create_server(("127.0.0.1", 0)) as gone:
        port = gone.getsockname()[1]
    rig = Rig([port])
    try:
        rig.admit()
        rig.run_until(lambda: rig.rejected() == 1)
        assert rig.worker.session_count == 0
    finally:
        rig.close()


def test_the_tick_accepts_a_client_no_wakeup_announced(member):
    """With exclusive wake-ups, a client whose wake-up went to a worker that stopped
    before accepting is announced to no other worker: each tick accepts unbidden."""
    table, index, sock, worker = _accepting_worker(member)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5) as app:
            app.sendall(b"hello")
            time.sleep(0.05)
            worker._sweep_listeners()  # no loop turn: nobody was woken
            assert worker.session_count == 1
            assert _first_bytes(member) == b"hello"
    finally:
        worker._close_all()
        worker.loop.close()


def test_a_member_marked_down_is_readmitted_by_a_clients_successful_dial(member):
    """Every member down: each is tried once for a new client, and the one that
    answers is back in rotation at once, for every worker (no wait for a check)."""
    rig = Rig([member.getsockname()[1]])
    table, slot = rig.table, rig.slots[0]
    try:
        table.mark_down(slot, "dial tcp: connect: connection refused")
        rig.admit()
        assert rig.worker.session_count == 1
        assert table.is_up(slot)
    finally:
        rig.close()


def test_a_relayed_connection_is_in_the_tables_counters_as_it_opens_and_closes(member):
    """No count waits for a flush: the master's load refresh, --max-connections and
    the metrics read the table, so a session is counted there as it starts and ends."""
    rig = Rig([member.getsockname()[1]])
    table, index, slot = rig.table, rig.worker.index, rig.slots[0]
    try:
        rig.app.sendall(b"0123456789")
        time.sleep(0.05)
        rig.admit()
        assert table.counter(slot, C_CONNECTIONS, worker=index) == 1
        assert table.counter(slot, C_ACTIVE, worker=index) == 1
        assert table.dial_histogram(slot)[2] == 1  # the dial's, counted with it
        assert _first_bytes(member) == b"0123456789"
        rig.app.close()
        rig.run_until(lambda: rig.worker.session_count == 0)
        assert table.counter(slot, C_ACTIVE, worker=index) == 0
        assert table.counter(slot, C_BYTES_SENT, worker=index) == 10
        assert table.counter(GATEWAY, G_OPEN, worker=index) == 0
    finally:
        rig.close()


def test_accepted_clients_are_counted_in_the_table_with_the_open_count(member):
    table, index, sock, worker = _accepting_worker(member)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5):
            time.sleep(0.05)
            worker._sweep_listeners()
            assert table.counter(GATEWAY, G_ACCEPTED, worker=index) == 1
            assert table.counter(GATEWAY, G_OPEN, worker=index) == 1
    finally:
        worker._close_all()
        worker.loop.close()


def test_an_accepted_client_is_relayed_non_blocking(member):
    """A client socket comes out of accept() blocking; the worker makes it
    non-blocking before its session reads or writes it (a blocking write to a full
    client would stall every session of the worker)."""
    table, index, sock, worker = _accepting_worker(member)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5) as app:
            app.sendall(b"first request")  # so that a blocking first read would return
            time.sleep(0.05)
            worker._sweep_listeners()
            [session] = worker._live_sessions()
            assert os.get_blocking(session.client) is False
    finally:
        worker._close_all()
        worker.loop.close()


def _accepting_worker(member) -> tuple[HealthTable, int, socket.socket, Worker]:
    """A worker (in this process) reading one TCP listener, dialling `member`:
    (table, its worker index, the listening socket, the worker)."""
    table = HealthTable()
    table.publish([_endpoint(member.getsockname()[1])])
    index = table.claim_worker_slot(os.getpid())
    sock = bind(HostPort("127.0.0.1", 0))
    door = Listener(sock, "front", Kind.TCP, None, slot=table.claim_listener_slot())
    worker = Worker(index, [door], table, _settings(10.0), os.getppid())
    worker._resume_accepting()
    return table, index, sock, worker
