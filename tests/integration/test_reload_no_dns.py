"""A reload never waits on DNS in the master: the real binary, its own resolver.

The gateway runs with a resolver of its own (tests/support/resolv.py): a hosts file
the test rewrites and a DNS server that the test then replaces with a UDP socket that
never answers, with a 30 s query timeout, so any lookup the master made while
reloading would hold its loop (checks, watchdog, /health) for 30 s. /health is asked
with a 10 s bound right after the signal: a bound on the test, not a timing goal.
"""
from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

import pytest

from tests.support.echo import EchoServer
from tests.support.ports import free_port
from tests.support.resolv import PrivateResolution

pytestmark = pytest.mark.integration

ANSWER_BOUND = 10.0   # well under the 30 s a DNS query would hang


@pytest.fixture
def resolution(tmp_path):
    with PrivateResolution(tmp_path / "resolution") as private:
        yield private


def blackhole_dns(resolution: PrivateResolution) -> socket.socket:
    """Replace the gateway's DNS server by a socket that never answers, and make its
    resolver wait 30 s per query (resolv.conf rewritten in place: glibc re-reads it)."""
    resolution.dns.stop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((resolution.dns.host, 53))
    with open(resolution.resolv_path, "w") as f:
        f.write(f"nameserver {resolution.dns.host}\noptions timeout:30 attempts:1\n")
    return sock


def health_answers(metrics: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{metrics}/health", timeout=ANSWER_BOUND):
            return True
    except urllib.error.HTTPError:
        return True  # an answer all the same (503: no healthy member)


def start(gateway_factory, resolution, conf, text: str):
    """A gateway configured by `conf` (`text`, and a metrics address: in the file, so
    that a reload can change it)."""
    metrics = f"127.0.0.1:{free_port()}"
    conf.write_text(f"{text}metrics-addr = {metrics}\n")
    gw = gateway_factory(["-c", str(conf), "--workers", "1", "--health-check", "tcp"],
                         prefix=resolution.prefix())
    gw.metrics = metrics
    return gw


def test_a_reload_adding_a_listen_name_is_refused_without_a_lookup(gateway_factory,
                                                                  resolution, tmp_path):
    name, new_name = resolution.name("gateway"), resolution.name("another")
    resolution.set_hosts({name: "127.0.0.1"})
    port, new_port = free_port(), free_port()
    conf = tmp_path / "gateway.conf"
    with EchoServer() as echo:
        gw = start(gateway_factory, resolution, conf,
                   f"endpoints = {echo.addr}\nlisten-addr = {name}:{port}\n")
        with blackhole_dns(resolution):
            conf.write_text(f"endpoints = {echo.addr}\nmetrics-addr = {gw.metrics}\n"
                            f"listen-addr = {name}:{port},{new_name}:{new_port}\n")
            gw.signal(signal.SIGHUP)
            assert health_answers(gw.metrics)
            failed = gw.wait_log("reload failed; keeping the running configuration",
                                 ANSWER_BOUND)
            assert "--listen-addr" in failed["error"] and new_name in failed["error"]


def test_a_reload_keeping_a_listen_name_does_not_look_it_up_again(gateway_factory,
                                                                  resolution, tmp_path):
    name = resolution.name("gateway")
    resolution.set_hosts({name: "127.0.0.1"})
    port = free_port()
    conf = tmp_path / "gateway.conf"
    with EchoServer() as echo:
        gw = start(gateway_factory, resolution, conf,
                   f"endpoints = {echo.addr}\nlisten-addr = {name}:{port}\n")
        with blackhole_dns(resolution):
            resolution.set_hosts({})  # the name now goes to the silent DNS server
            conf.write_text(f"endpoints = {echo.addr}\nlisten-addr = {name}:{port}\n"
                            f"metrics-addr = {gw.metrics}\nretry-delay = 3s\n")
            gw.signal(signal.SIGHUP)
            assert health_answers(gw.metrics)
            line = gw.wait_log("reloaded", ANSWER_BOUND)
            assert line["changed"]["retry-delay"][1] == "3s"


def test_a_reload_to_a_new_metrics_name_is_refused_without_a_lookup(gateway_factory,
                                                                   resolution, tmp_path):
    conf = tmp_path / "gateway.conf"
    with EchoServer() as echo:
        listen = f"listen-addr = 127.0.0.1:{free_port()}\n"
        gw = start(gateway_factory, resolution, conf, f"endpoints = {echo.addr}\n{listen}")
        new_name = resolution.name("metrics")
        with blackhole_dns(resolution):
            conf.write_text(f"endpoints = {echo.addr}\n{listen}"
                            f"metrics-addr = {new_name}:{free_port()}\n")
            gw.signal(signal.SIGHUP)
            assert health_answers(gw.metrics)
            failed = gw.wait_log("reload failed; keeping the running configuration",
                                 ANSWER_BOUND)
            assert "--metrics-addr" in failed["error"] and new_name in failed["error"]
