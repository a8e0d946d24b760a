"""The worker's handling of sessions, on real sockets, without forking."""
import os
import socket

from gateway import log as gwlog
from gateway.addresses import HostPort
from gateway.endpoints import Endpoint
from gateway.health import C_ACTIVE, HealthTable
from gateway.listeners import open_listener
from gateway.relay import Session
from gateway.worker import State, Worker, WorkerSettings

SETTINGS = WorkerSettings(dial_timeout=1.0, dial_total_timeout=10.0, timeout_fall=2,
                          shutdown_timeout=5.0,
                          log=gwlog.Settings("error", "json", ""))


class Exploding(Session):
    __slots__ = ()

    def __call__(self, fd, mask):
        raise RuntimeError("a bug in the relay")


def test_a_session_whose_handler_fails_is_closed_and_the_worker_goes_on():
    table = HealthTable()
    slot = table.publish([Endpoint("e", socket.AF_INET, "127.0.0.1", 1)])[0].slot
    index = table.claim_worker_slot(os.getpid())
    listener = open_listener(HostPort("127.0.0.1", 0), 0o660, "")
    listener.slot = table.claim_listener_slot()
    worker = Worker(index, [listener], table, SETTINGS, os.getppid())
    app, client = socket.socketpair()
    upstream, member = socket.socketpair()
    for sock in (client, upstream):
        sock.setblocking(False)
    session = Exploding(client.detach(), upstream.detach(), worker.pool, worker._sync_session)
    session.slot = slot
    worker.session_count = 1
    table.add_at(table.counter_offset(index, slot, C_ACTIVE), 1)
    worker._sync(session)
    app.sendall(b"boom")
    worker.loop.run_once(0.5)
    assert session.client == -1                      # closed
    assert worker.session_count == 0
    assert table.counter(slot, C_ACTIVE, worker=index) == 0
    assert worker.state == State.SERVING
    try:                                             # the client sees its connection end
        assert app.recv(10) == b""
    except ConnectionResetError:
        pass
    assert session not in worker.loop.registered()  # unregistered
    for sock in (app, member, listener):
        sock.close()
    worker.loop.close()
