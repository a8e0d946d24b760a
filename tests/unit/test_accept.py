"""The one accept loop (gateway/accept.py), on real sockets."""
import errno
import os
import resource
import socket

from gateway.accept import accept_batch


def _listener() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _never(exc: OSError) -> None:
    raise AssertionError(f"not expected: {exc}")


def test_a_batch_takes_what_is_waiting_and_stops_when_none_is_left():
    with _listener() as lst:
        clients = [socket.create_connection(lst.getsockname()) for _ in range(3)]
        try:
            taken = list(accept_batch(lst.accept, 64, _never, _never))
            assert len(taken) == 3
            for conn, _ in taken:
                conn.close()
        finally:
            for c in clients:
                c.close()


def test_a_batch_takes_at_most_its_size():
    with _listener() as lst:
        clients = [socket.create_connection(lst.getsockname()) for _ in range(3)]
        try:
            first = list(accept_batch(lst.accept, 2, _never, _never))
            rest = list(accept_batch(lst.accept, 2, _never, _never))
            assert (len(first), len(rest)) == (2, 1)
            for conn, _ in first + rest:
                conn.close()
        finally:
            for c in clients:
                c.close()


def test_out_of_descriptors_ends_the_batch_and_is_reported_as_exhaustion():
    exhausted = []
    with _listener() as lst:
        client = socket.create_connection(lst.getsockname())
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        probe = os.open(os.devnull, os.O_RDONLY)  # the lowest free descriptor...
        os.close(probe)
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))  # ...is now past the limit
        try:
            taken = list(accept_batch(lst.accept, 64, exhausted.append, _never))
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()
    assert taken == []
    assert [exc.errno for exc in exhausted] == [errno.EMFILE]


def test_any_other_error_ends_the_batch_and_is_reported_as_a_failure():
    failed = []
    with socket.socket() as not_listening:
        not_listening.setblocking(False)
        assert list(accept_batch(not_listening.accept, 64, _never, failed.append)) == []
    assert [exc.errno for exc in failed] == [errno.EINVAL]
