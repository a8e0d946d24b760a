"""The listener: binding, and the options accepted client sockets inherit from it."""
import socket

import pytest

from gateway.addresses import HostPort
from gateway.listeners import ListenError, bind


def test_accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener():
    listener = bind(HostPort("127.0.0.1", 0))
    try:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        listener.setblocking(True)
        conn, _ = listener.accept()
        with client, conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        listener.close()


def test_the_listener_is_non_blocking_with_a_deep_backlog():
    listener = bind(HostPort("127.0.0.1", 0))
    try:
        assert listener.getblocking() is False
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    finally:
        listener.close()


def test_a_taken_port_is_a_one_line_error_naming_the_option():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as info:
            bind(HostPort("127.0.0.1", port), option="--metrics-addr")
    assert str(info.value).startswith("option --metrics-addr: cannot listen on 127.0.0.1:")
