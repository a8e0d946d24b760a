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


# -- unix sockets ----------------------------------------------------------------------
import os  # noqa: E402
import stat  # noqa: E402

from gateway.addresses import UnixPath, parse_listen_list  # noqa: E402
from gateway.listeners import Kind, open_listener  # noqa: E402


def test_a_unix_listener_gets_the_mode_asked_for_and_no_tcp_options(tmp_path):
    path = str(tmp_path / "gw.sock")
    lst = open_listener(UnixPath(path), 0o640, "")
    try:
        assert lst.kind == Kind.UNIX and lst.label == f"unix://{path}"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        lst.sock.setblocking(True)
        conn, _ = lst.sock.accept()
        with pytest.raises(OSError):
            conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        conn.close()
        client.close()
    finally:
        lst.close()


def test_the_socket_group_is_set_by_name_or_number(tmp_path):
    for group in ("nogroup", "65534"):
        path = str(tmp_path / f"{group}.sock")
        lst = open_listener(UnixPath(path), 0o660, group)
        try:
            assert os.stat(path).st_gid == 65534
        finally:
            lst.close()


def test_closing_removes_the_socket_file(tmp_path):
    path = str(tmp_path / "gw.sock")
    open_listener(UnixPath(path), 0o660, "").close()
    assert not os.path.exists(path)


def test_a_forked_child_closing_its_copy_leaves_the_file(tmp_path):
    path = str(tmp_path / "gw.sock")
    lst = open_listener(UnixPath(path), 0o660, "")
    try:
        pid = os.fork()
        if pid == 0:
            lst.close()
            os._exit(0)
        os.waitpid(pid, 0)
        assert os.path.exists(path)
    finally:
        lst.close()


def test_a_file_that_replaced_ours_is_not_removed(tmp_path):
    path = str(tmp_path / "gw.sock")
    lst = open_listener(UnixPath(path), 0o660, "")
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX)
    other.bind(path)
    try:
        lst.close()
        assert os.path.exists(path)
    finally:
        other.close()


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = str(tmp_path / "gw.sock")
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(path)
    crashed.close()  # the file stays, nobody listens
    lst = open_listener(UnixPath(path), 0o660, "")
    lst.close()


def test_a_live_socket_is_not_stolen(tmp_path):
    path = str(tmp_path / "gw.sock")
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(ListenError, match="in use by another process"):
            open_listener(UnixPath(path), 0o660, "")
        assert os.path.exists(path)
    finally:
        live.close()


def test_a_file_that_is_not_a_socket_is_not_replaced(tmp_path):
    path = tmp_path / "gw.sock"
    path.write_text("data")
    with pytest.raises(ListenError, match="not a socket"):
        open_listener(UnixPath(str(path)), 0o660, "")
    assert path.read_text() == "data"


def test_listen_addresses_are_comma_separated_repeatable_and_deduplicated():
    assert parse_listen_list(["unix:///run/gw.sock,127.0.0.1:1", "127.0.0.1:1", ":2"]) == [
        UnixPath("/run/gw.sock"), HostPort("127.0.0.1", 1), HostPort("", 2)]


@pytest.mark.parametrize("text", ["unix://run/gw.sock", "unix://", "unix:///run/",
                                  "unix:///" + "x" * 120])
def test_bad_unix_paths_are_refused(text):
    with pytest.raises(ValueError):
        parse_listen_list([text])
