"""Link-local IPv6 endpoints keep their zone end to end: parsed, shown, published in
the shared table, dialled (the real binary, relaying to a server on a link-local
address of this host)."""
import json
import socket
import threading
import urllib.request

import pytest

from tests.support.clients import roundtrip
from tests.support.gateway_proc import run_gateway
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


def link_local_address() -> tuple[str, str]:
    """(address, interface) of a link-local IPv6 address of this host."""
    with open("/proc/net/if_inet6") as f:
        for line in f:
            hexaddr, _, _, scope, _, name = line.split()
            if scope == "20":  # link scope
                groups = [hexaddr[i:i + 4] for i in range(0, 32, 4)]
                return str(socket.inet_ntop(socket.AF_INET6, bytes.fromhex("".join(groups)))), name
    raise AssertionError("this host has no link-local IPv6 address (an interface other "
                         "than lo with IPv6 on has one): the test needs one")


@pytest.fixture
def link_local_echo():
    """An echo server on a link-local address; yields '[addr%if]:port'."""
    address, interface = link_local_address()
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind((address, 0, 0, socket.if_nametoindex(interface)))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"[{address}%{interface}]:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_a_link_local_endpoint_keeps_its_zone_and_is_relayed_to(gateway_factory,
                                                                link_local_echo):
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    checked = run_gateway(["--check-config", f"--endpoints={link_local_echo}"])
    assert checked.returncode == 0, checked.stderr
    assert f"resolved endpoints: {link_local_echo}" in checked.stdout
    gw = gateway_factory([f"--endpoints={link_local_echo}", f"--listen-addr=127.0.0.1:{port}",
                          f"--metrics-addr={metrics}", "--health-check=tcp"])
    assert gw.find_logs("ready to proxy client requests")[0]["endpoints"] == [link_local_echo]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        assert roundtrip(client, b"over the link") == b"over the link"
    with urllib.request.urlopen(f"http://{metrics}/endpoints", timeout=5) as resp:
        shown = json.loads(resp.read())
    assert [e["endpoint"] for e in shown] == [link_local_echo]
    assert shown[0]["state"] == "up" and shown[0]["dial_failures_total"] == 0


@pytest.mark.parametrize("endpoint, words", [
    ("[fe80::1%no-such-if0]:2379", ["no interface 'no-such-if0'"]),
    ("[fe80::1]:2379", ["link-local", "needs its interface"]),
])
def test_a_link_local_endpoint_without_a_usable_zone_is_refused_in_one_line(endpoint, words):
    result = run_gateway(["--check-config", f"--endpoints={endpoint}"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--endpoints" in lines[0]
    for word in words:
        assert word in lines[0]
