"""The one non-blocking connect (gateway/dial.py), on real loopback sockets."""
import errno
import os
import resource
import select
import socket

import pytest

from gateway import dial
from gateway.endpoints import Endpoint
from tests.support.echo import dead_addr


def _endpoint(port: int) -> Endpoint:
    return Endpoint(f"127.0.0.1:{port}", socket.AF_INET, "127.0.0.1", port)


def _finish(sock: socket.socket, connected: bool, address: str) -> str | None:
    """Wait for a connect in progress, as a caller's loop would, and judge it."""
    if connected:
        return None
    _, writable, _ = select.select([], [sock], [], 5)
    assert writable, "the connect neither completed nor failed"
    return dial.outcome(sock, address)


def test_a_connect_to_a_listener_succeeds_on_a_non_blocking_socket():
    with socket.create_server(("127.0.0.1", 0)) as server:
        ep = _endpoint(server.getsockname()[1])
        sock, connected = dial.start(ep, [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        try:
            assert not sock.getblocking()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert _finish(sock, connected, ep.address) is None
        finally:
            sock.close()


def test_a_refused_connect_is_worded_as_the_original_gateway_words_it():
    port = int(dead_addr().rsplit(":", 1)[1])
    ep = _endpoint(port)
    expected = f"dial tcp 127.0.0.1:{port}: connect: connection refused"
    try:
        sock, connected = dial.start(ep)
    except dial.DialError as exc:  # refused at once (loopback usually is)
        assert str(exc) == expected
        return
    try:
        assert _finish(sock, connected, ep.address) == expected
    finally:
        sock.close()


def test_running_out_of_descriptors_is_an_os_error_not_the_members_fault():
    ep = _endpoint(int(dead_addr().rsplit(":", 1)[1]))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        with pytest.raises(OSError) as caught:
            dial.start(ep)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert caught.value.errno == errno.EMFILE
    assert not isinstance(caught.value, dial.DialError)
