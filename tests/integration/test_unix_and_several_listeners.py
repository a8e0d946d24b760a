"""Unix socket and multiple listeners: real gateways, real etcd, real signals."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import accepts, roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.gateway_proc import REPO, gateway_command, run_gateway, stop_process_group
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def sockdir():
    """A directory every user may traverse (pytest's own tmp dirs are 0700), so that
    the socket file's own mode decides who may connect."""
    path = tempfile.mkdtemp(prefix="gw-sock-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


def unix_roundtrip(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        return roundtrip(s, payload)


def unix_accepts(path: str) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1)
            s.connect(path)
            return True
    except OSError:
        return False


def reload(gw, conf_path, text: str) -> None:
    before = gw.count_log("reloaded")
    conf_path.write_text(text)
    gw.signal(signal.SIGHUP)
    wait_until(lambda: gw.count_log("reloaded") > before, 10, "no reload")


# -- unix socket against a real cluster ----------------------------------------------
def test_etcdctl_works_through_the_unix_socket(etcd_cluster, gateway_factory, sockdir):
    path = f"{sockdir}/gateway.sock"
    gateway_factory([f"--listen-addr=unix://{path}",
                     "--endpoints", ",".join(etcd_cluster.client_endpoints())])
    endpoint = f"unix://{path}"
    put = etcd_cluster.etcdctl("put", "/gw/unix", "over-a-unix-socket", endpoints=endpoint)
    assert put.returncode == 0, put.stderr
    got = etcd_cluster.etcdctl("get", "/gw/unix", "--print-value-only", endpoints=endpoint)
    assert got.returncode == 0, got.stderr
    assert got.stdout.strip() == "over-a-unix-socket"


def _etcdctl_as_nobody(path: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", "etcdctl", f"--endpoints=unix://{path}",
         "--dial-timeout=3s", "--command-timeout=5s", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_a_user_outside_the_sockets_group_is_refused_by_the_kernel(
        etcd_cluster, gateway_factory, sockdir):
    path, metrics = f"{sockdir}/gateway.sock", free_port()
    gateway_factory([f"--listen-addr=unix://{path}", f"--metrics-addr=127.0.0.1:{metrics}",
                     "--endpoints", ",".join(etcd_cluster.client_endpoints())])
    result = _etcdctl_as_nobody(path, "get", "/gw/unix")
    assert result.returncode != 0
    # etcdctl only says it could not connect; the connect itself, as nobody:
    probe = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c",
         "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])", path],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert "PermissionError" in probe.stderr, probe.stderr
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
        assert "etcd_gateway_accepted_connections_total 0\n" in resp.read().decode()


def test_the_sockets_group_may_connect(etcd_cluster, gateway_factory, sockdir):
    path = f"{sockdir}/gateway.sock"
    gateway_factory([f"--listen-addr=unix://{path}", "--listen-socket-group=nogroup",
                     "--endpoints", ",".join(etcd_cluster.client_endpoints())])
    put = etcd_cluster.etcdctl("put", "/gw/group", "member-of-nogroup",
                               endpoints=etcd_cluster.client_endpoints())
    assert put.returncode == 0, put.stderr
    result = _etcdctl_as_nobody(path, "get", "/gw/group", "--print-value-only")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "member-of-nogroup"


def test_a_stale_socket_file_is_replaced(gateway_factory, sockdir, echo):
    path = f"{sockdir}/gateway.sock"
    crashed = socket.socket(socket.AF_UNIX)
    crashed.bind(path)
    crashed.close()  # as a gateway killed with SIGKILL leaves it
    gw = gateway_factory([f"--listen-addr=unix://{path}", f"--endpoints={echo.addr}"])
    assert unix_roundtrip(path, b"fresh") == b"fresh"
    assert gw.find_logs("replaced a stale unix socket file")


def test_a_live_socket_is_refused_with_one_line(sockdir, echo):
    path = f"{sockdir}/gateway.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(path)
    live.listen(1)
    try:
        result = run_gateway([f"--listen-addr=unix://{path}", f"--endpoints={echo.addr}"],
                             timeout=20)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert "in use by another process" in lines[-1] and path in lines[-1]
        assert "Traceback" not in result.stderr
        assert unix_accepts(path)  # still the other process's
    finally:
        live.close()


def test_the_socket_file_is_kept_across_reloads_and_removed_on_exit(
        gateway_factory, sockdir, echo, tmp_path):
    path = f"{sockdir}/gateway.sock"
    conf = tmp_path / "gw.conf"
    conf.write_text(f"listen-addr = unix://{path}\nendpoints = {echo.addr}\n")
    gw = gateway_factory(["-c", str(conf)])
    inode = os.stat(path).st_ino
    reload(gw, conf, f"listen-addr = unix://{path}\nendpoints = {echo.addr}\n"
                     "dial-timeout = 2s\n")
    assert os.stat(path).st_ino == inode
    assert unix_roundtrip(path, b"after reload") == b"after reload"
    gw.signal(signal.SIGTERM)
    assert gw.wait(20) == 0
    assert not os.path.exists(path)


def test_a_reload_changes_the_sockets_mode(gateway_factory, sockdir, echo, tmp_path):
    path = f"{sockdir}/gateway.sock"
    conf = tmp_path / "gw.conf"
    conf.write_text(f"listen-addr = unix://{path}\nendpoints = {echo.addr}\n")
    gw = gateway_factory(["-c", str(conf)])
    assert os.stat(path).st_mode & 0o777 == 0o660
    reload(gw, conf, f"listen-addr = unix://{path}\nendpoints = {echo.addr}\n"
                     "listen-socket-mode = 0600\n")
    assert os.stat(path).st_mode & 0o777 == 0o600


# -- several listeners -----------------------------------------------------------------
def test_one_gateway_serves_a_unix_and_a_tcp_listener(gateway_factory, sockdir, echo):
    path, port, metrics = f"{sockdir}/gateway.sock", free_port(), free_port()
    gateway_factory([f"--listen-addr=unix://{path},127.0.0.1:{port}",
                     f"--endpoints={echo.addr}", f"--metrics-addr=127.0.0.1:{metrics}"])
    assert unix_roundtrip(path, b"unix") == b"unix"
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert roundtrip(s, b"tcp") == b"tcp"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    accepted = {s.labels["listener"]: s.value
                for f in text_string_to_metric_families(body) for s in f.samples
                if s.name == "etcd_gateway_listener_accepted_connections_total"}
    assert accepted == {f"unix://{path}": 1, f"127.0.0.1:{port}": 2}


def test_a_reload_that_drops_the_tcp_listener_keeps_its_open_connection(
        gateway_factory, sockdir, echo, tmp_path):
    path, port = f"{sockdir}/gateway.sock", free_port()
    conf = tmp_path / "gw.conf"
    conf.write_text(f"listen-addr = unix://{path},127.0.0.1:{port}\nendpoints = {echo.addr}\n")
    gw = gateway_factory(["-c", str(conf)])
    held = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert roundtrip(held, b"before") == b"before"
        reload(gw, conf, f"listen-addr = unix://{path}\nendpoints = {echo.addr}\n")
        wait_until(lambda: not accepts(("127.0.0.1", port)), 10,
                   "the dropped TCP listener still accepts")
        assert roundtrip(held, b"after") == b"after"      # untouched
        assert unix_roundtrip(path, b"unix") == b"unix"   # the kept listener serves
        assert gw.find_logs("stopped listening")
    finally:
        held.close()


def test_a_reload_adds_a_listener(gateway_factory, sockdir, echo, tmp_path):
    path, port = f"{sockdir}/gateway.sock", free_port()
    conf = tmp_path / "gw.conf"
    conf.write_text(f"listen-addr = 127.0.0.1:{port}\nendpoints = {echo.addr}\n")
    gw = gateway_factory(["-c", str(conf)])
    reload(gw, conf, f"listen-addr = 127.0.0.1:{port},unix://{path}\nendpoints = {echo.addr}\n")
    assert unix_roundtrip(path, b"added") == b"added"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert roundtrip(s, b"kept") == b"kept"
    assert gw.find_logs("listening", lambda e: e.get("address") == f"unix://{path}")


def test_socket_activation_adopts_every_socket_systemd_passes(sockdir, echo, tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    path = f"{sockdir}/activated.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(16)
    err = open(tmp_path / "stderr.log", "wb")
    # as systemd does: the sockets on fds 3 and 4, LISTEN_PID naming the process
    activate = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2'); "
                "os.execv(sys.argv[3], sys.argv[3:])")
    proc = subprocess.Popen(
        [sys.executable, "-c", activate, str(tcp.fileno()), str(unix.fileno()),
         *gateway_command([f"--endpoints={echo.addr}", "--listen-addr=127.0.0.1:1"])],
        pass_fds=(tcp.fileno(), unix.fileno()), stderr=err, stdin=subprocess.DEVNULL,
        cwd=REPO, start_new_session=True)
    tcp.close()
    unix.close()
    try:
        log = tmp_path / "stderr.log"
        wait_until(lambda: b"ready to proxy" in log.read_bytes(), 15, "the gateway did not start")
        assert log.read_bytes().count(b"adopted listener from systemd") == 2
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert roundtrip(s, b"tcp") == b"tcp"
        assert unix_roundtrip(path, b"unix") == b"unix"
    finally:
        stop_process_group(proc)
        err.close()
    assert os.path.exists(path)  # systemd's file: not the gateway's to remove
