"""--allow-from: clients outside the list are closed at accept, before any dial."""
import signal
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.clients import roundtrip, wait_until
from tests.support.echo import EchoServer
from tests.support.ports import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


def scrape(metrics: str) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as resp:
        body = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(body) for s in f.samples}


def start(gateway_factory, echo, listen: str, allow: str):
    metrics = free_port()
    gw = gateway_factory([f"--listen-addr={listen}", f"--endpoints={echo.addr}",
                          f"--allow-from={allow}", "--health-check=none",
                          f"--metrics-addr=127.0.0.1:{metrics}"])
    gw.metrics = f"127.0.0.1:{metrics}"
    return gw


def served(family: int, host: str, port: int) -> bool:
    """Connect, send, and see whether the echo comes back (False: closed on us)."""
    with socket.socket(family) as s:
        s.settimeout(10)
        s.connect((host, port))
        try:
            return roundtrip(s, b"hello") == b"hello"
        except ConnectionResetError:
            return False


def test_a_client_outside_the_list_is_closed_before_any_member_is_dialled(
        gateway_factory, echo):
    port = free_port()
    gw = start(gateway_factory, echo, f"127.0.0.1:{port}", "10.0.0.0/8")
    assert not served(socket.AF_INET, "127.0.0.1", port)
    assert echo.accepted == 0                                # no member connection made
    figures = scrape(gw.metrics)
    assert figures[("etcd_gateway_denied_connections_total", ())] == 1
    assert figures[("etcd_gateway_listener_denied_connections_total",
                    (("listener", f"127.0.0.1:{port}"),))] == 1
    assert figures[("etcd_gateway_endpoint_connections_total",
                    (("endpoint", echo.addr),))] == 0
    line = gw.wait_log("refused client: not in --allow-from", 5)
    assert line["client"].startswith("127.0.0.1:")


def test_listed_clients_of_both_families_are_served(gateway_factory, echo):
    port = free_port()
    gw = start(gateway_factory, echo, f":{port}", "127.0.0.1/32,::1/128")
    assert served(socket.AF_INET, "127.0.0.1", port)   # ::ffff:127.0.0.1 on this socket
    assert served(socket.AF_INET6, "::1", port)
    assert echo.accepted == 2
    assert scrape(gw.metrics)[("etcd_gateway_denied_connections_total", ())] == 0


def test_an_ipv4_rule_matches_an_ipv4_client_of_a_dual_stack_listener(gateway_factory, echo):
    port = free_port()
    start(gateway_factory, echo, f":{port}", "127.0.0.0/8")
    assert served(socket.AF_INET, "127.0.0.1", port)
    assert not served(socket.AF_INET6, "::1", port)
    assert echo.accepted == 1


def test_a_reload_applies_a_new_list(gateway_factory, echo, tmp_path):
    port = free_port()
    conf = tmp_path / "gw.conf"
    conf.write_text(f"listen-addr = 127.0.0.1:{port}\nendpoints = {echo.addr}\n"
                    "allow-from = 10.0.0.0/8\nhealth-check = none\n")
    gw = gateway_factory(["-c", str(conf)])
    assert not served(socket.AF_INET, "127.0.0.1", port)
    conf.write_text(conf.read_text().replace("10.0.0.0/8", "10.0.0.0/8,127.0.0.0/8"))
    gw.signal(signal.SIGHUP)
    gw.wait_log("reloaded", 10)
    wait_until(lambda: served(socket.AF_INET, "127.0.0.1", port), 10,
               "the new --allow-from was not applied")
