"""The real binary's command line: refusals, start-up, process shape."""
import socket

import psutil
import pytest

from tests.support.echo import EchoServer
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def listen() -> str:
    return f"127.0.0.1:{free_port()}"


def assert_refused(args, *words, env=None):
    result = run_gateway(args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


@pytest.mark.parametrize("args, words", [
    (["--retry-delay", "123"], ["--retry-delay", "123"]),
    (["--retry-delay=0s"], ["--retry-delay", "0s"]),
    (["--retry-delay=-5s"], ["--retry-delay", "-5s"]),
    (["--dial-timeout=0s"], ["--dial-timeout", "0s"]),
    (["--endpoints=ftp://127.0.0.1:2379"], ["--endpoints", "ftp://127.0.0.1:2379",
                                            "unknown scheme"]),
    (["--endpoints=https://127.0.0.1:2379,127.0.0.1:2380"], ["--endpoints", "mixes https://"]),
    (["--endpoints=127.0.0.1:http"], ["--endpoints", "http"]),
    (["--endpoints=127.0.0.1:70000"], ["--endpoints", "70000"]),
    (["--endpoints="], ["--endpoints"]),
    (["--listen-addr=nonsense"], ["--listen-addr", "nonsense"]),
    (["--workers=many"], ["--workers", "many"]),
    (["-c", "/nonexistent/gateway.conf"], ["--config", "/nonexistent/gateway.conf"]),
    (["--bogus-flag=1"], ["--bogus-flag"]),
    (["--max-connections=-1"], ["--max-connections", "-1"]),
    (["--max-connections=lots"], ["--max-connections", "lots"]),
    (["--balance=random"], ["--balance", "random", "least-connections"]),
    (["--listen-addr=unix://run/gw.sock"], ["--listen-addr", "unix://run/gw.sock", "absolute"]),
    (["--listen-socket-mode=0999"], ["--listen-socket-mode", "0999", "octal"]),
    (["--listen-socket-group=no-such-group"], ["--listen-socket-group", "no-such-group"]),
    (["--allow-from=10.0.0.0/33"], ["--allow-from", "10.0.0.0/33"]),
    (["--allow-from=127.0.0.1/32,nonsense"], ["--allow-from", "nonsense"]),
])
def test_bad_values_exit_2_with_one_line_naming_option_and_value(args, words):
    assert_refused(args, *words)


def test_unknown_key_in_config_file_is_refused(tmp_path):
    path = tmp_path / "gw.conf"
    path.write_text("endpoints = 127.0.0.1:2379\nretry = 5s\n")
    assert_refused(["-c", str(path)], str(path), "retry")


def test_bad_environment_value_names_the_variable():
    assert_refused([], "--dial-timeout", "7", "ETCD_GATEWAY_DIAL_TIMEOUT",
                   env={"ETCD_GATEWAY_DIAL_TIMEOUT": "7"})


def test_endpoint_resolving_to_the_listen_address_is_refused():
    port = free_port()
    assert_refused([f"--listen-addr=127.0.0.1:{port}", f"--endpoints=localhost:{port}"],
                   "--endpoints", f"localhost:{port}", "--listen-addr")


def test_endpoint_on_a_wildcard_listener_is_refused():
    port = free_port()
    assert_refused([f"--listen-addr=:{port}", f"--endpoints=127.0.0.1:{port}"],
                   "--endpoints", f"127.0.0.1:{port}")


def test_unresolvable_endpoint_is_refused():
    assert_refused(["--listen-addr", listen(), "--endpoints=no-such-host.invalid:2379"],
                   "--endpoints", "no-such-host.invalid")


def test_port_already_in_use_exits_1_with_one_line():
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_gateway([f"--listen-addr=127.0.0.1:{port}"])
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) >= 1
    assert "Traceback" not in result.stderr
    assert "--listen-addr" in result.stderr and str(port) in result.stderr


def test_help_and_version_exit_0():
    assert run_gateway(["--help"]).returncode == 0
    result = run_gateway(["--version"])
    assert result.returncode == 0 and "etcd-gatewayd" in result.stdout


def test_workers_3_gives_three_worker_processes(gateway_factory):
    with EchoServer() as echo:
        gw = gateway_factory(["--listen-addr", listen(), "--endpoints", echo.addr,
                              "--workers", "3"])
        assert len(gw.worker_pids()) == 3


def test_start_word_config_file_and_environment_work_together(gateway_factory, tmp_path):
    with EchoServer() as echo:
        addr = listen()
        path = tmp_path / "gw.conf"
        path.write_text(f"endpoints = {echo.addr}\nretry-delay = 5s\n")
        gw = gateway_factory(["start", "-c", str(path), "--workers=1"],
                             env={"ETCD_GATEWAY_LISTEN_ADDR": addr})
        ready = gw.wait_log("ready to proxy client requests", 5)
        assert ready["endpoints"] == [echo.addr]
        assert ready["listen-addr"] == addr
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(b"via config")
            assert s.recv(100) == b"via config"


def test_json_logs_have_etcd_keys(gateway_factory):
    with EchoServer() as echo:
        gw = gateway_factory(["--listen-addr", listen(), "--endpoints", echo.addr])
        line = gw.wait_log("ready to proxy client requests", 5)
        for key in ("level", "ts", "caller", "msg", "endpoints"):
            assert key in line
        assert line["level"] == "info"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def test_ipv6_listen_and_endpoint(gateway_factory):
    if not ipv6_loopback():
        pytest.fail("this machine has no ::1; the IPv6 test needs it")
    backend = socket.create_server(("::1", 0), family=socket.AF_INET6)
    bport = backend.getsockname()[1]
    port = free_port("::1")
    # a bare socket, not etcd: no check may take the one accept
    gateway_factory([f"--listen-addr=[::1]:{port}", f"--endpoints=[::1]:{bport}",
                     "--health-check=none"])
    client = socket.create_connection(("::1", port), timeout=5)
    conn, _ = backend.accept()
    client.sendall(b"six")
    assert conn.recv(10) == b"six"
    for s in (client, conn, backend):
        s.close()


def test_master_raises_the_soft_open_files_limit(gateway_factory):
    with EchoServer() as echo:
        gw = gateway_factory(["--listen-addr", listen(), "--endpoints", echo.addr,
                              "--workers=1"], prefix=["prlimit", "--nofile=512:4096", "--"])
        line = gw.wait_log("raised open-files limit", 5)
        assert (line["from"], line["to"]) == (512, 4096)
        soft, hard = psutil.Process(gw.pid).rlimit(psutil.RLIMIT_NOFILE)
        assert soft == hard == 4096


def test_listen_on_every_interface_with_an_empty_host(gateway_factory):
    with EchoServer() as echo:
        port = free_port()
        gateway_factory([f"--listen-addr=:{port}", "--endpoints", echo.addr])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"any")
            assert s.recv(10) == b"any"


def test_an_endpoint_with_an_overlong_dns_label_is_one_line():
    assert_refused(["--listen-addr", listen(), "--endpoints", "a" * 70 + ".example:2379"],
                   "--endpoints", "cannot resolve")


@pytest.mark.parametrize("args, option", [
    (["--discovery-srv=-1"], "--discovery-srv"),
    (["--discovery-srv=bad..name"], "--discovery-srv"),
    (["--discovery-srv=example.com", "--discovery-srv-name=no spaces"],
     "--discovery-srv-name"),
])
def test_srv_names_that_are_not_dns_names_are_refused_before_any_lookup(args, option):
    # the only DNS server the gateway may ask is this socket: it must see no query
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as resolver:
        resolver.bind(("127.0.0.1", 0))
        resolver.setblocking(False)
        port = resolver.getsockname()[1]
        line = assert_refused([*args, f"--discovery-srv-resolver=127.0.0.1:{port}",
                               "--listen-addr", listen()], option, "invalid value")
        with pytest.raises(BlockingIOError):
            resolver.recvfrom(512)
    assert "DNS" in line
